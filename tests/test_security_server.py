"""Attacks on the low-side PySyft server through its own API, and the proof each one fails.

Attack classes (datasite/server.py refuses them at syft's single dispatch point):

* identity change: a researcher rewrites her e-mail / verify key / role (budgets are keyed
  by identity), a guest or researcher registers accounts, a guest triggers password resets;
* compute and infrastructure: a researcher asks for a worker pool (image build, containers);
* SSRF: a guest makes the server open HTTP connections to an address of its choosing
  (``network.exchange_credentials_with``, ``network.add_peer``, forwarded calls);
* disk filling: a researcher allocates blob storage and writes files to the server's disk;
* custom API endpoints: creating or calling ``api.*`` endpoints;
* closed by default: every service path outside the allow-lists is refused for a researcher
  and for a guest, including paths a researcher's client does not even list.

Legitimate use stays open: the researcher reads the mock (blob storage) and a released result.
"""
from __future__ import annotations

import http.server
import threading

import pytest
import syft as sy
from syft.client.api import SyftAPICall
from syft.server.credentials import SyftVerifyKey
from syft.service.response import SyftError
from syft.service.service import ServiceConfigRegistry
from syft.service.user.user import UserUpdate
from syft.service.user.user_roles import ServiceRole
from syft.types.uid import UID

import researcher
from datasite.lifecycle import free_port
from datasite.server import GUEST_PATHS, RESEARCHER_PATHS
from researcher import jobs

from conftest import RESEARCHER

# one backend is enough: the guard sits in front of storage; ``live_site`` is module-scoped
pytestmark = [pytest.mark.slow, pytest.mark.backends("sqlite")]

REFUSED = "not open to (researchers|guests)"


@pytest.fixture(scope="module")
def alice(live_site):
    return researcher.connect(live_site.url, *RESEARCHER)


def _raw_call(client, path, args=(), kwargs=None, blocking=True):
    """Send a signed call to ``path`` whether or not the client's API lists it."""
    return client.api.make_call(SyftAPICall(server_uid=client.id, path=path, args=list(args),
                                            kwargs=kwargs or {}, blocking=blocking))


def _admin_view(live_site, email):
    return next(u for u in live_site.client.users.get_all() if u.email == email)


@pytest.fixture
def listener():
    """A local HTTP server that records every request it gets (the SSRF target)."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self):
            hits.append((self.command, self.path))
            self.send_response(404)
            self.end_headers()

        do_GET = do_POST = do_PUT = _record

        def log_message(self, *args):
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port, hits
    server.shutdown()
    server.server_close()


def test_the_key_recorded_at_registration_is_the_one_her_login_gets(live_site, alice):
    """``users add`` reads the new account's verify key from PySyft's password exchange alone
    (no API fetched); every budget and request is bound to it, so it must be her login's."""
    assert live_site.state.researcher_keys()[RESEARCHER[0]] == str(alice.client.verify_key)


def test_a_second_login_reuses_the_client_only_after_the_server_accepts_the_password(
        live_site, alice):
    """A login again to the same account in the same thread gets the thread's client back
    (no second client API: about 1 s), but only once the server has accepted the password:
    after the owner changes it, the old one is refused, as in a fresh login. A cache keyed on
    the password given (syft's own, which it switched off) would let the old one in. Another
    thread gets a client of its own."""
    again = researcher.connect(live_site.url, *RESEARCHER)
    assert again.client is alice.client
    uid = _admin_view(live_site, RESEARCHER[0]).id
    new_password = "alice-new-password-2"
    assert not isinstance(live_site.client.users.update(uid=uid, password=new_password),
                          SyftError)
    try:
        with pytest.raises(researcher.ConnectError, match="wrong email or password"):
            researcher.connect(live_site.url, *RESEARCHER)
        assert researcher.connect(live_site.url, RESEARCHER[0], new_password).client \
            is alice.client  # the same account: its key did not change
    finally:
        live_site.client.users.update(uid=uid, password=RESEARCHER[1])
    other = []
    t = threading.Thread(target=lambda: other.append(researcher.connect(live_site.url,
                                                                        *RESEARCHER)))
    t.start()
    t.join()
    assert other[0].client is not alice.client
    assert str(other[0].client.verify_key) == str(alice.client.verify_key)


def test_another_owner_object_of_the_site_reuses_the_threads_root_client(live_site):
    """An in-process CLI command, a console page or a notebook cell opening the same site again
    checks the root password with the server and gets this thread's root client back."""
    from datasite.owner import OwnerSite

    assert OwnerSite(live_site.home).client is live_site.client


def test_researcher_cannot_change_her_identity(live_site, alice):
    before = _admin_view(live_site, RESEARCHER[0])
    me = alice.client.account
    users = alice.client.api.services.user
    attempts = {
        "account.set_email": lambda: me.set_email("mallory@evil.org"),
        "update(email=)": lambda: users.update(uid=me.id, email="mallory@evil.org"),
        "update(verify_key=)": lambda: users.update(uid=me.id,
                                                    verify_key=live_site.client.verify_key),
        "update(role=)": lambda: users.update(uid=me.id, role=ServiceRole.ADMIN),
    }
    for attempt in attempts.values():
        with pytest.raises(sy.SyftException, match="may change only your|not open"):
            attempt()
    # the same, bypassing the client's signature checks: a whole UserUpdate, by kwarg or position
    for args, kwargs in (((), {"uid": me.id, "user_update": UserUpdate(email="m@evil.org")}),
                         ((me.id, UserUpdate(verify_key=live_site.client.verify_key)), {})):
        res = _raw_call(alice.client, "user.update", args, kwargs)
        assert isinstance(res, SyftError) and "may change only your" in res.message, res
    after = _admin_view(live_site, RESEARCHER[0])
    assert (after.email, after.role) == (before.email, before.role)
    by_key = live_site.client.api.services.user.get_by_verify_key(alice.client.verify_key)
    assert by_key.email == RESEARCHER[0]  # her key is still hers
    # her display name stays hers to change
    users.update(uid=me.id, name="Alice B.")
    assert _admin_view(live_site, RESEARCHER[0]).name == "Alice B."
    users.update(uid=me.id, name=before.name)


def test_nobody_but_the_owner_registers_users(live_site, alice):
    """Even with PySyft's sign-up switched on, guests and researchers cannot register."""
    admin = live_site.client
    admin.settings.allow_guest_signup(enable=True)
    try:
        guest = sy.login_as_guest(url=live_site.url)
        for client, email in ((guest, "eve@x.org"), (alice.client, "mallory@x.org")):
            try:
                res = client.register(name="E", email=email, password="evepassword1",
                                      password_verify="evepassword1")
            except Exception as e:
                res = e
            assert "created by the data owner" in str(getattr(res, "message", res)), res
    finally:
        admin.settings.allow_guest_signup(enable=False)
    emails = {u.email for u in admin.users.get_all()}
    assert not emails & {"eve@x.org", "mallory@x.org"}


def test_researcher_keeps_her_password_in_her_hands(live_site, alice):
    """She may change her password; a guest cannot trigger PySyft's "forgot password" (it
    notifies the user and the owner, and tells whether an e-mail is the admin's)."""
    email, password = RESEARCHER
    notes = len(alice.client.api.services.notifications.get_all())
    guest = sy.login_as_guest(url=live_site.url)
    for target in (email, live_site.config.root_email):
        res = guest.forgot_password(email=target)
        assert isinstance(res, SyftError) and "go through the data owner" in res.message, res
    assert len(alice.client.api.services.notifications.get_all()) == notes

    me = alice.client.account
    me.set_password("a-new-password-2", confirm=False)
    try:
        assert researcher.connect(live_site.url, email, "a-new-password-2").client.verify_key \
            == alice.client.verify_key
    finally:
        me.set_password(password, confirm=False)


def test_researcher_cannot_request_a_worker_pool(live_site, alice):
    from syft.custom_worker.config import PrebuiltWorkerConfig

    before = len(live_site.client.requests.get_all())
    pools = alice.client.api.services.worker_pool
    with pytest.raises(sy.SyftException, match=REFUSED):
        pools.create_image_and_pool_request(pool_name="mine", num_workers=4,
                                            config=PrebuiltWorkerConfig(tag="evil/miner:latest"))
    with pytest.raises(sy.SyftException, match=REFUSED):
        pools.pool_creation_request(pool_name="mine", num_workers=4, image_uid=UID())
    assert len(live_site.client.requests.get_all()) == before


def test_guest_cannot_make_the_server_connect_out(live_site, listener):
    from syft.abstract_server import ServerType
    from syft.service.network.routes import HTTPServerRoute
    from syft.service.network.server_peer import ServerPeer

    port, hits = listener
    route = HTTPServerRoute(host_or_ip="127.0.0.1", port=port, protocol="http")
    guest = sy.login_as_guest(url=live_site.url)
    before = len(live_site.client.requests.get_all())
    server_key = SyftVerifyKey.from_string(str(live_site.client.metadata.verify_key))
    peer = ServerPeer(id=UID(), name="evil", verify_key=guest.verify_key, server_routes=[route],
                      server_type=ServerType.DATASITE, admin_email="e@evil.org")
    for client in (guest, live_site.client):  # switched off for the owner too: nothing peers
        net = client.api.services.network
        with pytest.raises(sy.SyftException, match="switched off"):
            net.exchange_credentials_with(self_server_route=route, remote_server_route=route,
                                          remote_server_verify_key=guest.verify_key)
        with pytest.raises(sy.SyftException, match="switched off"):
            net.add_peer(peer=peer, challenge=b"0" * 16, self_server_route=route,
                         verify_key=server_key)
    # a call addressed to another server would be forwarded to its peer route
    res = guest.api.make_call(SyftAPICall(server_uid=UID(), path="metadata.get_metadata",
                                          args=[], kwargs={}))
    assert isinstance(res, SyftError) and "does not forward" in res.message
    assert hits == []
    assert len(live_site.client.requests.get_all()) == before


def _blob_files(live_site):
    return {p: p.stat().st_size for p in (live_site.home.syft_dir / "blob").rglob("*")
            if p.is_file()}


def test_researcher_cannot_write_to_the_servers_disk(live_site, alice):
    from syft.types.blob_storage import CreateBlobStorageEntry

    before = _blob_files(live_site)
    blob = alice.client.api.services.blob_storage
    entry = CreateBlobStorageEntry(id=UID(), type_=bytes, file_size=5_000_000)
    with pytest.raises(sy.SyftException, match=REFUSED):
        blob.allocate(obj=entry)
    with pytest.raises(sy.SyftException, match=REFUSED):
        blob.write_to_disk(uid=entry.id, data=b"\0" * 5_000_000)
    with pytest.raises(sy.SyftException, match=REFUSED):
        blob.mark_write_complete(uid=entry.id, etags=[])
    with pytest.raises(sy.SyftException, match=REFUSED):  # action.set stores a blob too
        sy.ActionObject.from_obj(b"\0" * 5_000_000).send(alice.client)
    assert _blob_files(live_site) == before


def test_custom_api_endpoints_are_closed(live_site, alice):
    @sy.api_endpoint(path="evil.echo")
    def echo(context, x: int) -> int:
        return x

    # a researcher's client does not even list api.add: she sends the signed call by hand
    res = _raw_call(alice.client, "api.add", kwargs={"endpoint": echo})
    assert isinstance(res, SyftError) and "not open to researchers" in res.message, res
    for path in ("api.call", "api.call_public", "api.call_private", "api.api_endpoints"):
        res = _raw_call(alice.client, path, kwargs={"path": "evil.echo"})
        assert isinstance(res, SyftError) and "not open to researchers" in res.message, path
    assert live_site.client.api.services.api.get_all() == []


@pytest.mark.parametrize("who", ["researcher", "guest"])
def test_every_path_outside_the_allow_list_is_refused(live_site, alice, who):
    """Closed by default: every path syft registers, listed to this client or not (and one
    no syft has), is refused unless the allow-list names it -- blocking or queued."""
    client = alice.client if who == "researcher" else sy.login_as_guest(url=live_site.url)
    allowed = RESEARCHER_PATHS if who == "researcher" else GUEST_PATHS
    paths = set(ServiceConfigRegistry.__service_config_registry__) | {"made.up_path", "queue"}
    assert allowed <= paths  # the allow-list names real endpoints only
    open_paths = []
    for path in sorted(paths - allowed):
        for blocking in (True, False):
            res = _raw_call(client, path, blocking=blocking)
            if not (isinstance(res, SyftError)
                    and ("not open to" in res.message or "switched off" in res.message)):
                open_paths.append((path, blocking, res))
    assert open_paths == []


def test_researcher_still_reads_mock_and_released_results(live_site, alice):
    """Reads stay open: the mock and a released result both come from blob storage."""
    assert len(alice.datasets["breast_cancer"].mock) > 0
    req = alice.submit(jobs.DPSGD(dataset="breast_cancer", label="diagnosis", epsilon=1.0,
                                  delta=1e-5, epochs=1, batch_size=64))
    syft_req = next(r for r in live_site.client.requests.get_all() if r.id.to_string() == req.id)
    pad = "x" * 1_000_000  # a large result lives in blob storage with its own ACL
    syft_req.deposit_result({"kind": "dpsgd_table", "metrics": {"test_accuracy": 0.5},
                             "pad": pad})
    result = req.wait(timeout=60, progress=False)
    assert result.metrics == {"test_accuracy": 0.5} and result.raw["pad"] == pad
