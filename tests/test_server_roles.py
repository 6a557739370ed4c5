"""The server's role lookups (datasite/server_roles.py): read once per API call, never reused by
the next call, so an account the owner deletes or demotes loses its access at once.

An in-process PySyft server built exactly as ``python -m datasite.server`` builds it
(``build_worker``); syft's in-memory clients send signed calls through the same dispatch
guard as HTTP ones.
"""
from __future__ import annotations

import pytest
from syft.client.api import SyftAPICall
from syft.service.response import SyftError
from syft.service.user.user_roles import ServiceRole
from syft.store.db.stash import ObjectStash

from datasite.config import init_site
from datasite.server import build_worker
from datasite.server_roles import call_scope

EMAIL, PASSWORD = "eve@uni.edu", "eve-password-123"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    mp = pytest.MonkeyPatch()  # build_worker sets syft's environment; later servers need theirs
    for var in ("SERVER_UID", "SERVER_PRIVATE_KEY", "SYFT_TEMP_ROOT"):
        mp.delenv(var, raising=False)
    try:
        worker = build_worker(init_site("roles", home=tmp_path_factory.mktemp("roles") / "s"))
        root = worker.root_client
        res = root.users.create(email=EMAIL, name="Eve", password=PASSWORD,
                                password_verify=PASSWORD)
        assert not isinstance(res, SyftError), res
        yield worker, root
    finally:
        mp.undo()


def _as_eve(worker):
    return worker.get_guest_client(verbose=False).login(email=EMAIL, password=PASSWORD)


def _raw(client, path):
    return client.api.make_call(SyftAPICall(server_uid=client.id, path=path, args=[], kwargs={}))


@pytest.fixture
def lookups(monkeypatch):
    """The credentials of syft's own role queries (the memo's misses), in order."""
    lookup = ObjectStash.get_role.lookup
    seen: list[str] = []

    def counted(self, credentials, session=None):
        seen.append(str(credentials))
        return lookup(self, credentials, session=session)

    monkeypatch.setattr(ObjectStash.get_role, "lookup", counted)
    return seen


def _each_call(eve, root, seen: list[str]) -> list[list[str]]:
    """The role queries of three calls (a researcher's and the owner's), call by call."""
    per_call = []
    for client, path in ((eve, "dataset.get_all"), (root, "request.get_all"),
                         (root, "user.get_all")):
        before = len(seen)
        assert not isinstance(_raw(client, path), SyftError)
        per_call.append(seen[before:])
    return per_call


def test_one_role_query_per_caller_per_call(server, lookups, monkeypatch):
    worker, root = server
    eve = _as_eve(worker)
    memoized = _each_call(eve, root, lookups)
    assert all(len(q) == len(set(q)) >= 1 for q in memoized), memoized
    # the same calls with every lookup going to syft's query (the memo off)
    wrapper = ObjectStash.get_role
    monkeypatch.setattr(ObjectStash, "get_role", lambda self, credentials, session=None:
                        wrapper.lookup(self, credentials, session=session))
    plain = _each_call(eve, root, lookups)
    assert sum(map(len, plain)) >= 2 * sum(map(len, memoized)), (plain, memoized)


def test_a_deleted_researcher_is_refused_from_her_next_call(server):
    """Attack: keep using a session after the owner deleted the account. A role remembered
    beyond one call would still let her through as a researcher."""
    worker, root = server
    eve = _as_eve(worker)
    assert not isinstance(_raw(eve, "dataset.get_all"), SyftError)
    uid = next(u.id for u in root.users.get_all() if u.email == EMAIL)
    assert not isinstance(root.users.delete(uid=uid), SyftError)
    try:
        refused = _raw(eve, "dataset.get_all")
        assert isinstance(refused, SyftError) and "not open to guests" in refused.message
    finally:
        res = root.users.create(email=EMAIL, name="Eve", password=PASSWORD,
                                password_verify=PASSWORD)
        assert not isinstance(res, SyftError), res


def test_a_role_changed_inside_a_call_is_seen_in_that_call(server):
    worker, root = server
    eve = _as_eve(worker)
    stash = worker.services.user.stash
    key = eve.verify_key
    user = stash.get_by_verify_key(credentials=root.verify_key, verify_key=key).unwrap()
    with call_scope():
        assert stash.get_role(key) == ServiceRole.DATA_SCIENTIST
        user.role = ServiceRole.GUEST
        stash.update(credentials=root.verify_key, obj=user).unwrap()
        assert stash.get_role(key) == ServiceRole.GUEST
    user.role = ServiceRole.DATA_SCIENTIST
    stash.update(credentials=root.verify_key, obj=user).unwrap()
