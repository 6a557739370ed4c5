"""The owner's reading of PySyft requests: which carry code, and who really sent them.

A request on the low side may be anything PySyft can express (a worker pool, a peer, ...),
and the e-mail on it is whatever its sender typed last. The owner's tools read requests only
through these functions, so a request they do not understand is listed as such instead of
crashing them, and every request is tied to the identity registered with ``datasite users add``.
"""
from __future__ import annotations

NOT_CODE = "not_code"


def code_of(req):
    """The request's UserCode, or None when it carries none (or it cannot be read)."""
    try:
        code = req.code
        if type(code).__name__ in ("SyftError", "SyftException") or code is None:
            return None
        code.raw_code  # noqa: B018  (a code object we cannot read is treated as no code)
        return code
    except Exception:
        return None


def change_summary(req) -> str:
    """A short, owner-readable description of a request without code: its change types."""
    try:
        names = sorted({type(c).__name__ for c in (req.changes or [])})
    except Exception:
        names = []
    return ", ".join(names) or "a request with no changes"


def sender_key(req) -> str:
    """The verify key that signed the request (what PySyft authenticated; never the e-mail)."""
    try:
        return str(req.requesting_user_verify_key)
    except Exception:
        return ""


def sender_identity(state, req) -> str | None:
    """The researcher identity the owner registered for the request's verify key, or None."""
    key = sender_key(req)
    return state.researcher_by_key(key) if key else None


def shown_sender(state, req) -> str:
    """Who the owner should read as the sender: the registered identity, or a clear warning."""
    who = sender_identity(state, req)
    if who is not None:
        return who
    return f"UNREGISTERED user (calls itself {str(getattr(req, 'requesting_user_email', ''))!r})"
