"""The researcher's check of a datasite's signed audit heads (see shared/audit_chain.py)."""
from __future__ import annotations

import json
from pathlib import Path

from shared.audit_chain import check_head

from .errors import ResearcherError


class AuditMismatch(ResearcherError):
    """The site's ledger history is not the one it showed you before: tell the data owner's
    institution (their database or signing key was used to rewrite it)."""


def check_and_remember(seen: list[dict], received: list[dict], verify_key: str,
                       store: str | None = None) -> dict | None:
    """Check ``received`` heads (oldest first) against ``seen`` (and ``store``), append the
    good ones to both, return the newest; raise AuditMismatch on the first problem."""
    path = Path(store).expanduser() if store else None
    if path is not None and path.exists():
        for h in json.loads(path.read_text()):
            if h not in seen:
                seen.append(h)
    for head in received:
        if any(h["seq"] == head["seq"] and h["hash"] == head["hash"] for h in seen):
            continue
        problems = check_head(head, seen, verify_key)
        if problems:
            raise AuditMismatch("; ".join(problems))
        seen.append({k: head[k] for k in ("seq", "hash", "sig", "verify_key")})
    if path is not None:
        path.write_text(json.dumps(seen))
    return max(seen, key=lambda h: h["seq"]) if seen else None
