"""The one place a datasite hands anything to a researcher through PySyft's ``deposit_result``.

Job templates give a :class:`shared.protocol.ResultPayload`, never a dict (:func:`deposit`);
custom functions give their decoded output (:func:`deposit_output`).
For templates, a :class:`shared.protocol.ResultPayload`, never a dict: what is deposited is always
its :meth:`~shared.protocol.ResultPayload.public_view` (no ``_owner_*`` key, no realised
privacy event, the kind's ``public_payload`` hook applied), so an owner-only value cannot be
released by a caller forgetting to strip it. ``tests/test_architecture.py`` checks that no other
module calls ``deposit_result``.
"""
from __future__ import annotations

from typing import Iterable

from shared.protocol import OWNER_PREFIX, ResultPayload

from .config import SiteError

# Public by declaration, added by the site: the signed audit head (a hash chain over the
# ledger's entries, SECURITY.md), so researchers can catch a rewritten history.
EXTRA_KEYS = frozenset({"audit_head"})


def deposit(req, result: ResultPayload, *, spec=None, only: Iterable[str] | None = None,
            extra: dict | None = None) -> dict:
    """Deposit the public view of ``result`` as ``req``'s result; returns what was deposited.

    ``only``: keep just these keys of the public view (a round releases its model and DP
    metrics, nothing else); ``extra``: values from :data:`EXTRA_KEYS` only."""
    if not isinstance(result, ResultPayload):
        raise TypeError("deposit takes a ResultPayload (shared.protocol), not a raw result")
    view = result.public_view(spec)
    if only is not None:
        keep = set(only)
        view = {k: v for k, v in view.items() if k in keep}
    bad = [k for k in (extra or {}) if k not in EXTRA_KEYS or k.startswith(OWNER_PREFIX)]
    if bad:
        raise ValueError(f"not public by declaration: {bad}")
    view.update(extra or {})
    res = req.deposit_result(view)
    if type(res).__name__ == "SyftError":
        raise SiteError(f"Depositing the result failed: {res.message}")
    return view


def deposit_output(req, value) -> None:
    """Deposit a custom function's output as ``req``'s result: the value the owner previewed,
    decoded from the sandbox's data files (:func:`shared.custom.output.decode`: no pickle, so
    nothing the researcher's code built can run here). Nothing else is added to it."""
    res = req.deposit_result(value)
    if type(res).__name__ == "SyftError":
        raise SiteError(f"Depositing the result failed: {res.message}")
