"""Who may log in to the owner's console: the root account and owner accounts, never a researcher.

The console does not ask PySyft who someone is: it checks the site's root password (the file
``datasite init`` wrote) or an owner account kept in the site's own state (scrypt hashes). A
researcher's PySyft account is not in either place, so its password opens nothing here; a
researcher's address is refused outright, and cannot be made an owner account either.

Failed logins are counted per account name in the site's state (not in memory), so restarting
the console does not reset a lockout: after :data:`MAX_FAILURES` failures within
:data:`WINDOW_S`, the account is locked for :data:`LOCK_S`, even with the right password.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time

from ..config import SiteError

OWNERS_KEY = "console_owners"      # settings row: {email: "scrypt$n$r$p$salt$hash"}
FAILURES_KEY = "console_failures"  # settings row: {account: {"times": [...], "locked_until": t}}
MAX_FAILURES = 5
WINDOW_S = 15 * 60
LOCK_S = 15 * 60
MAX_TRACKED = 1000  # failure records kept (names tried); the oldest go first
_SCRYPT = dict(n=2**14, r=8, p=1)
_failures_lock = threading.Lock()  # read-modify-write of the failures row, within this process


_DUMMY = "scrypt$16384$8$1$" + "00" * 16 + "$" + "00" * 32  # hashed for unknown accounts


class LoginRefused(Exception):
    """A login was refused; the message is safe to show on the login page."""


def _hash(password: str, salt: bytes) -> str:
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT, dklen=32)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def _matches(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                             p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


def owner_accounts(state) -> dict[str, str]:
    return json.loads(state.setting(OWNERS_KEY) or "{}")


def add_owner(site, email: str, password: str) -> None:
    """An owner account for the console (``datasite console NAME --add-owner EMAIL``); logged
    in the audit chain. Researchers' addresses are refused: one person, one role."""
    email = email.strip().lower()
    if "@" not in email or len(email) > 254 or any(c.isspace() for c in email):
        raise SiteError(f"{email!r} is not an e-mail address.")
    if len(password) < 12:
        raise SiteError("Choose an owner password of at least 12 characters.")
    if email in site.state.researcher_keys():
        raise SiteError(f"{email} is a researcher on {site.name}; an owner account needs an "
                        "address of its own.")
    owners = owner_accounts(site.state)
    owners[email] = _hash(password, secrets.token_bytes(16))
    site.state.set_setting(OWNERS_KEY, json.dumps(owners, sort_keys=True))
    site.ledger.log("console_owner_added", None, {"account": email})


def _failures(state) -> dict:
    return json.loads(state.setting(FAILURES_KEY) or "{}")


def locked_for(state, account: str, now: float | None = None) -> float:
    """Seconds ``account`` stays locked (0: not locked)."""
    rec = _failures(state).get(account.strip().lower())
    now = time.time() if now is None else now
    return max(0.0, (rec or {}).get("locked_until", 0) - now)


def _record_failure(state, account: str, now: float) -> None:
    with _failures_lock:
        fails = _failures(state)
        rec = fails.pop(account, {"times": [], "locked_until": 0})
        rec["times"] = [t for t in rec["times"] if now - t < WINDOW_S] + [now]
        if len(rec["times"]) >= MAX_FAILURES:
            rec["locked_until"], rec["times"] = now + LOCK_S, []
        fails[account] = rec
        while len(fails) > MAX_TRACKED:  # dicts keep insertion order: drop the oldest
            fails.pop(next(iter(fails)))
        state.set_setting(FAILURES_KEY, json.dumps(fails))


def _clear_failures(state, account: str) -> None:
    with _failures_lock:
        fails = _failures(state)
        if fails.pop(account, None) is not None:
            state.set_setting(FAILURES_KEY, json.dumps(fails))


def check_login(home, config, state, account: str, password: str) -> str:
    """The account name if ``password`` opens it; LoginRefused otherwise (one message for a
    wrong password, an unknown account and a researcher, so none is told apart)."""
    account = (account or "").strip().lower()[:320]
    now = time.time()
    wait = locked_for(state, account, now)
    if wait > 0:
        raise LoginRefused(f"Too many failed logins for this account: it is locked for "
                           f"{int(wait // 60) + 1} more minute(s). Wait, or ask another owner.")
    ok = False
    if account and account not in state.researcher_keys():
        if account == config.root_email.lower():
            ok = hmac.compare_digest(password.encode(), home.root_password().encode())
        else:
            owners = owner_accounts(state)
            ok = _matches(password, owners.get(account, _DUMMY)) and account in owners
    if not ok:
        _record_failure(state, account, now)
        raise LoginRefused("Wrong account or password (researchers' accounts cannot log in "
                           "here).")
    _clear_failures(state, account)
    return account
