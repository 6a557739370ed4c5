"""Finding a schedule's new round requests in O(new requests) per poll, and when to poll.

PySyft 0.9.5 gives a client no server-side filter that makes this O(new): ``request.get_all``
takes no arguments, and ``get_all_pending`` / ``get_all_info`` load every request on the server
and filter or page in Python afterwards (the stash's SQL filters are not exposed for requests).
So the site's server journals new request ids (``request_journal``); a poll fetches only the
requests named there since the last poll, with a full listing now and then (and on every poll
when there is no journal) as a safety net. Either way a request is classified (its status, its
claim, its code fetched and recognised: several round trips each) only the first time its id
is seen. A request's code never changes, and a request that is claimed, decided or
not a round of this schedule stays so; only a code that could not be read is looked at again
(a few times: a request whose code stays unreadable would otherwise cost every poll).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from .request_journal import JournalReader

Classify = Callable[[Any, str], "tuple[dict | None, bool]"]
MAX_TRIES = 5  # reads of an unreadable code before the request counts as no round


def classify_round(req, schedule_id: str) -> tuple[dict | None, bool]:
    """(spec, final): the spec of ``req`` if it is a round request of this schedule, else None;
    ``final`` is False only when the request has code that could not be read (try again)."""
    from shared.jobs import MESSAGE, SPEC_KINDS
    from shared.template import recognise

    from .inbox import code_of

    code = code_of(req)
    if code is None:  # a request without code is no round of anything
        return None, not _has_code_change(req)
    spec = recognise(code.raw_code) or {}
    kind = SPEC_KINDS.get(spec.get("kind"))
    is_message = kind is not None and kind.LIFECYCLE == MESSAGE
    return (spec if is_message and spec.get("schedule") == schedule_id else None), True


def _has_code_change(req) -> bool:
    try:
        return any(type(c).__name__ == "UserCodeStatusChange" for c in (req.changes or []))
    except Exception:
        return True  # cannot tell: look again next poll


class RoundInbox:
    """The round requests of one schedule that the server has not seen before."""

    def __init__(self, schedule_id: str, classify: Classify = classify_round):
        self.schedule_id = schedule_id
        self.seen: set[str] = set()  # ids classified for good; never fetched or recognised again
        self._classify = classify
        self._tries: dict[str, int] = {}

    def new_rounds(self, requests: dict[str, Any],
                   claimed: Callable[[str], bool]) -> list[tuple[str, Any, dict]]:
        """(id, request, round spec) for each pending, unclaimed round of this schedule among
        ``requests`` not seen before; ``claimed(id)`` says the site already tracks the request."""
        found = []
        for rid, req in requests.items():
            if rid in self.seen:
                continue
            # the cheap local check first: status costs round trips to the server
            if claimed(rid) or req.status.name != "PENDING":
                self.seen.add(rid)
                continue
            spec, final = self._classify(req, self.schedule_id)
            self._tries[rid] = tries = self._tries.get(rid, 0) + 1
            if final or spec is not None or tries >= MAX_TRIES:
                self.seen.add(rid)  # a returned round is handled (run or refused) by the caller
                self._tries.pop(rid, None)
            if spec is not None:
                found.append((rid, req, spec))
        return found


def poll_interval(idle_s: float, poll: float = 1.0, max_poll: float = 5.0,
                  active_window: float = 120.0) -> float:
    """Seconds to sleep before the next poll after ``idle_s`` seconds without a round: ``poll``
    while a schedule is active (the next round follows the last within ``active_window``),
    then growing with the idle time up to ``max_poll``."""
    if idle_s <= active_window:
        return poll
    return min(max_poll, poll * idle_s / active_window)


class RequestFeed:
    """The requests one poll looks at: those the journal names since the last poll, fetched one
    by one; every ``full_every`` seconds, and whenever the journal is missing, all of them."""

    def __init__(self, list_all: Callable[[], dict], fetch: Callable[[str], Any],
                 journal: JournalReader, full_every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self._list_all, self._fetch, self.journal = list_all, fetch, journal
        self.full_every, self._clock = full_every, clock
        self._last_full: float | None = None

    def requests(self, seen: set[str]) -> dict[str, Any]:
        now = self._clock()
        if self._last_full is None or now - self._last_full >= self.full_every \
                or not self.journal.exists():
            self.journal.skip_to_end()  # before listing: what is appended after comes next time
            self._last_full = now
            return self._list_all()
        ids = self.journal.new_ids()
        if ids is None:  # the journal went away: list everything until it is back
            self._last_full = None
            return self._list_all()
        found = {}
        for rid in dict.fromkeys(ids):
            if rid not in seen and (req := self._fetch(rid)) is not None:
                found[rid] = req  # a request deleted since (a denied one) is simply gone
        return found
