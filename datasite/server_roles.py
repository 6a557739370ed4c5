"""One role lookup per caller per API call on the datasite server.

syft 0.9.5 asks ``ObjectStash.get_role`` for the caller's role on every permission-checked
stash access, and each ask queries the User table and deserializes the whole User object: a
third of a busy site server's CPU (py-spy over ``tests/test_federation.py``: 18.7 of 60 s).
Within one API call the answer is remembered (:func:`call_scope`, entered by the dispatch
guard in ``datasite.server``). Nothing outlives the call, so a researcher deleted or demoted
by the owner is refused from her next call on; a write to the user stash inside a call
forgets what was remembered, so the call itself sees a role it changed.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

# credentials -> role, for the API call in progress (None: not inside a call)
_MEMO: contextvars.ContextVar[dict | None] = contextvars.ContextVar("dpds_role_memo",
                                                                     default=None)
# the user stash's writes; any of them may change a role
_USER_WRITES = ("set", "update", "delete_by_uid", "upsert", "apply_partial_update")


@contextlib.contextmanager
def call_scope():
    """Remember roles looked up until the block ends (one API call)."""
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def _forget() -> None:
    memo = _MEMO.get()
    if memo is not None:
        memo.clear()


def install() -> None:
    """Wrap syft's role lookup and the user stash's writes (once per process)."""
    from syft.service.user.user_stash import UserStash
    from syft.store.db.stash import ObjectStash

    lookup = ObjectStash.get_role
    if getattr(lookup, "_dpds_memo", False):
        return

    @functools.wraps(lookup)
    def get_role(self, credentials, session=None):
        memo = _MEMO.get()
        if memo is None:
            return get_role.lookup(self, credentials, session=session)
        key = str(credentials)
        if key not in memo:
            memo[key] = get_role.lookup(self, credentials, session=session)
        return memo[key]

    get_role._dpds_memo = True
    get_role.lookup = lookup  # syft's query (tests count its calls)
    ObjectStash.get_role = get_role

    for name in _USER_WRITES:
        write = getattr(UserStash, name)

        def forgetting(self, *args, _write=write, **kwargs):
            _forget()  # before: the write may read roles; after: they may have changed
            try:
                return _write(self, *args, **kwargs)
            finally:
                _forget()

        setattr(UserStash, name, functools.wraps(write)(forgetting))
