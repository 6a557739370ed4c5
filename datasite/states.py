"""The states a request and its ledger entry move through, and the only moves allowed.

Two records follow one request on the owner's side, each moved only through the tables below
(``State.set_state`` / ``State.claim_for_run`` for requests, ``Ledger`` for entries): an illegal
move raises instead of writing. PySyft's own request status is read, never trusted for a
decision (a REJECTED request without a row here shows as denied).

=============  ======================================  ==============================
request        meaning                                  its ledger entry
=============  ======================================  ==============================
pending        no row yet: submitted, maybe priced      estimated (once priced)
running        claimed; the job (or schedule) runs      reserved -> running
ran            result kept, waiting for the owner       running
serving        a schedule's rounds are being served     running
released       result deposited for the researcher      committed -> released
stopped        a schedule ended early                   released (rounds that ran)
                                                        or refunded (none ran)
failed         the job failed or was interrupted        refunded
denied         refused by the owner                     denied, refunded, or none
=============  ======================================  ==============================

A round of a schedule is a message: its request row moves running -> released (or denied)
and has no ledger entry of its own; its schedule's entry pays for it.
"""
from __future__ import annotations

from enum import StrEnum

from .config import SiteError


class Request(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RAN = "ran"
    SERVING = "serving"
    RELEASED = "released"
    STOPPED = "stopped"
    FAILED = "failed"
    DENIED = "denied"


class Entry(StrEnum):
    ESTIMATED = "estimated"
    RESERVED = "reserved"
    RUNNING = "running"
    COMMITTED = "committed"
    RELEASED = "released"
    REFUNDED = "refunded"
    DENIED = "denied"


# state -> the states it may move to (staying put, to update a field, is always allowed)
REQUEST_MOVES: dict[Request, frozenset[Request]] = {
    Request.PENDING: frozenset({Request.RUNNING, Request.DENIED}),
    Request.RUNNING: frozenset({Request.RAN, Request.SERVING, Request.RELEASED, Request.FAILED,
                                Request.DENIED}),
    Request.RAN: frozenset({Request.RELEASED, Request.DENIED}),
    Request.SERVING: frozenset({Request.RELEASED, Request.STOPPED, Request.DENIED}),
    Request.FAILED: frozenset({Request.RUNNING, Request.DENIED}),  # a failed job may run again
    Request.RELEASED: frozenset(),
    Request.STOPPED: frozenset(),
    Request.DENIED: frozenset(),
}

# A request that may be claimed to run (once more, for a failed one).
CLAIMABLE = frozenset({Request.PENDING, Request.FAILED})

ENTRY_MOVES: dict[Entry | None, frozenset[Entry]] = {
    None: frozenset({Entry.ESTIMATED, Entry.RESERVED}),
    Entry.ESTIMATED: frozenset({Entry.RESERVED, Entry.DENIED}),
    Entry.RESERVED: frozenset({Entry.RUNNING, Entry.REFUNDED}),
    Entry.RUNNING: frozenset({Entry.COMMITTED, Entry.REFUNDED}),
    Entry.COMMITTED: frozenset({Entry.RELEASED}),
    Entry.RELEASED: frozenset(),
    Entry.REFUNDED: frozenset(),
    Entry.DENIED: frozenset(),
}
# Entries whose spend counts against the budgets.
SPENDING = tuple(e.value for e in (Entry.RESERVED, Entry.RUNNING, Entry.COMMITTED, Entry.RELEASED))


class IllegalMove(SiteError):
    """A state change the tables above do not allow (a bug, or a race another process won)."""


def check_request_move(request_id: str, current: str | None, new: str) -> Request:
    """``new`` as a :class:`Request`, if a request in ``current`` (None: no row) may move there."""
    old = Request(current) if current is not None else Request.PENDING
    to = Request(new)
    if to != old and to not in REQUEST_MOVES[old]:
        raise IllegalMove(f"Request {request_id[:8]} is {old}; it cannot become {to}.")
    return to


def entry_sources(to: str) -> tuple[Entry, ...]:
    """The ledger entry states from which an entry may move to ``to``."""
    target = Entry(to)
    return tuple(s for s, moves in ENTRY_MOVES.items() if s is not None and target in moves)
