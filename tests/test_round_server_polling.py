"""The round server's poll costs O(new requests), not O(all requests ever), and backs off when
idle (issue 15). Fake requests stand in for PySyft's: each counts the round trips the real one
would make (its status, its code), so no live server is needed (test_federation checks the live
server's journal)."""
from __future__ import annotations

from types import SimpleNamespace

from datasite import rounds
from datasite.request_journal import JournalReader, record
from datasite.round_inbox import RequestFeed, RoundInbox, poll_interval

SCHEDULE = "sched-1"


class FakeRequest:
    """A request whose ``status`` and code reads are counted (each is a server round trip)."""

    reads = 0

    def __init__(self, status="PENDING", spec=None, readable=True):
        self._status, self.spec, self.readable = status, spec, readable

    @property
    def status(self):
        FakeRequest.reads += 1
        return SimpleNamespace(name=self._status)


def fake_classify(calls):
    def classify(req, schedule_id):
        FakeRequest.reads += 1  # fetching the code
        calls.append(req)
        if not req.readable:
            return None, False
        spec = req.spec or {}
        return (spec if spec.get("schedule") == schedule_id else None), True
    return classify


def old_requests(n):
    """What a site holds after a while: released and denied jobs, other schedules' rounds, and
    jobs waiting for the owner's review (pending, not rounds)."""
    kinds = [lambda: FakeRequest("APPROVED"), lambda: FakeRequest("REJECTED"),
             lambda: FakeRequest("PENDING", {"kind": "fed_round", "schedule": "other"}),
             lambda: FakeRequest("PENDING", {"kind": "dp_stats"})]
    return {f"old{i}": kinds[i % 4]() for i in range(n)}


def test_a_poll_with_no_new_request_classifies_nothing():
    calls = []
    inbox = RoundInbox(SCHEDULE, classify=fake_classify(calls))
    reqs = old_requests(1000)
    assert inbox.new_rounds(reqs, claimed=lambda rid: False) == []  # the first poll sees all
    assert len(calls) == 500  # the pending ones, once each
    calls.clear()
    FakeRequest.reads = 0
    for _ in range(5):
        assert inbox.new_rounds(reqs, claimed=lambda rid: False) == []
    assert calls == [] and FakeRequest.reads == 0  # no status, no code: nothing per old request


def test_a_new_round_costs_o1_and_is_returned_once():
    calls = []
    inbox = RoundInbox(SCHEDULE, classify=fake_classify(calls))
    reqs = old_requests(1000)
    inbox.new_rounds(reqs, claimed=lambda rid: False)
    calls.clear()
    FakeRequest.reads = 0
    reqs["new"] = FakeRequest("PENDING", {"kind": "fed_round", "schedule": SCHEDULE, "round": 0})
    reqs["noise"] = FakeRequest("PENDING", {"kind": "dp_stats"})
    found = inbox.new_rounds(reqs, claimed=lambda rid: False)
    assert [rid for rid, _, _ in found] == ["new"]
    assert len(calls) == 2 and FakeRequest.reads == 4  # status and code of the two new ones
    assert inbox.new_rounds(reqs, claimed=lambda rid: False) == []  # handled: not again


def test_claimed_requests_are_skipped_without_round_trips():
    calls = []
    inbox = RoundInbox(SCHEDULE, classify=fake_classify(calls))
    FakeRequest.reads = 0
    reqs = {"r": FakeRequest("PENDING", {"kind": "fed_round", "schedule": SCHEDULE})}
    assert inbox.new_rounds(reqs, claimed=lambda rid: True) == []
    assert calls == [] and FakeRequest.reads == 0


def test_a_code_that_could_not_be_read_is_tried_again():
    """A transient failure to read the code must not lose a round for good."""
    calls = []
    inbox = RoundInbox(SCHEDULE, classify=fake_classify(calls))
    req = FakeRequest("PENDING", {"kind": "fed_round", "schedule": SCHEDULE}, readable=False)
    assert inbox.new_rounds({"r": req}, claimed=lambda rid: False) == []
    req.readable = True
    assert [rid for rid, _, _ in inbox.new_rounds({"r": req}, claimed=lambda rid: False)] == ["r"]


def test_a_code_that_stays_unreadable_is_given_up_on():
    """... but does not cost every poll for ever."""
    from datasite.round_inbox import MAX_TRIES

    calls = []
    inbox = RoundInbox(SCHEDULE, classify=fake_classify(calls))
    req = FakeRequest("PENDING", {"kind": "fed_round", "schedule": SCHEDULE}, readable=False)
    for _ in range(MAX_TRIES + 10):
        inbox.new_rounds({"r": req}, claimed=lambda rid: False)
    assert len(calls) == MAX_TRIES


def test_a_request_without_code_is_classified_once():
    """The real classifier: a request without code (e.g. a worker-pool request) is final."""
    req = SimpleNamespace(code=None, changes=[], status=SimpleNamespace(name="PENDING"))
    inbox = RoundInbox(SCHEDULE)
    assert inbox.new_rounds({"r": req}, claimed=lambda rid: False) == []
    assert "r" in inbox.seen


class FakeSite:
    """What ``_serve_pending`` uses of an OwnerSite, with no round ever arriving."""

    def __init__(self, reqs, own=None, home=None):
        self.reqs, self.own, self.lookups, self.home = reqs, own, 0, home
        self.state = SimpleNamespace(request=self._request)

    def _request(self, rid):
        if rid == SCHEDULE:
            return self.own
        self.lookups += 1
        return None

    def syft_requests(self):
        return self.reqs


def test_serve_pending_polls_in_o_new():
    """Through the round server's own poll: the second poll over 1,000 old requests makes no
    status or code round trip and no state lookup (the old loop made them for every request)."""
    calls = []
    site = FakeSite(old_requests(1000))
    own = {"spec_json": '{"dataset": "d"}', "researcher": "r@x"}
    inbox = RoundInbox(SCHEDULE, classify=fake_classify(calls))
    assert rounds._serve_pending(site, SCHEDULE, own, inbox) is False
    FakeRequest.reads, site.lookups = 0, 0
    calls.clear()
    assert rounds._serve_pending(site, SCHEDULE, own, inbox) is False
    assert (FakeRequest.reads, site.lookups, calls) == (0, 0, [])


def test_poll_interval_is_fast_while_active_and_backs_off_when_idle():
    assert poll_interval(0.0) == 1.0 and poll_interval(120.0) == 1.0  # active: within ~1 s
    assert 1.0 < poll_interval(300.0) < 5.0
    assert poll_interval(3000.0) == 5.0  # idle: bounded
    assert all(poll_interval(a) <= poll_interval(b) for a, b in [(0, 200), (200, 400), (400, 9e9)])


def test_serve_backs_off_when_idle_and_stops_at_the_idle_timeout(monkeypatch, tmp_path):
    """``serve`` itself: with no round coming it sleeps 1 s at first, longer later, and ends the
    schedule at ``idle_timeout``; each poll after the first touches no old request."""
    clock = [0.0]
    sleeps, ended = [], []
    monkeypatch.setattr(rounds.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(rounds.time, "sleep", lambda s: (sleeps.append(s), clock.__setitem__(
        0, clock[0] + s)))
    monkeypatch.setattr(rounds, "finish", lambda site, sid, reason: ended.append(reason))
    calls = []
    monkeypatch.setattr(rounds, "RoundInbox",
                        lambda sid: RoundInbox(sid, classify=fake_classify(calls)))
    own = {"state": rounds.SERVING, "spec_json": '{"dataset": "d"}', "researcher": "r@x"}
    site = FakeSite(old_requests(200), own, SimpleNamespace(syft_dir=tmp_path))  # no journal
    assert rounds.serve(site, SCHEDULE, idle_timeout=1800.0) == rounds.Request.STOPPED
    assert len(ended) == 1 and len(calls) == 100  # the pending old ones, classified once
    assert sleeps[0] == 1.0 and max(sleeps) == 5.0
    assert sum(s == 1.0 for s in sleeps) <= 121  # 1 s polls only in the active window
    assert len(sleeps) < 1800 / 2  # the old server: 1,800 polls of every request


def test_the_journal_gives_each_new_id_once_and_waits_for_a_whole_line(tmp_path):
    path = tmp_path / "j.log"
    reader = JournalReader(path)
    assert reader.new_ids() is None  # no journal yet
    record(path, "aa11")
    record(path, "bb22")
    assert reader.new_ids() == ["aa11", "bb22"] and reader.new_ids() == []
    with open(path, "a") as f:
        f.write("cc3")  # a writer mid-line
    assert reader.new_ids() == []
    with open(path, "a") as f:
        f.write("3\n")
    assert reader.new_ids() == ["cc33"]
    try:
        record(path, "x\nforged")
    except ValueError:
        pass
    else:
        raise AssertionError("a line must be exactly one id")


class Counting:
    def __init__(self, reqs):
        self.reqs, self.listings, self.fetches = reqs, 0, []

    def list_all(self):
        self.listings += 1
        return dict(self.reqs)

    def fetch(self, rid):
        self.fetches.append(rid)
        return self.reqs.get(rid)


def test_with_a_journal_a_poll_lists_nothing_and_fetches_only_new_requests(tmp_path):
    """1,000 old requests: after the first poll, a poll with nothing new makes no listing and no
    fetch; a new request costs one fetch; the full listing comes back only every full_every."""
    path = tmp_path / "j.log"
    reqs = old_requests(1000)
    for rid in reqs:
        record(path, rid)
    src, clock, calls = Counting(reqs), [0.0], []
    feed = RequestFeed(src.list_all, src.fetch, JournalReader(path), full_every=60.0,
                       clock=lambda: clock[0])
    inbox = RoundInbox(SCHEDULE, classify=fake_classify(calls))
    claimed = lambda rid: False  # noqa: E731
    assert inbox.new_rounds(feed.requests(inbox.seen), claimed) == []
    assert src.listings == 1
    FakeRequest.reads, calls[:] = 0, []
    for _ in range(30):
        clock[0] += 1.0
        assert inbox.new_rounds(feed.requests(inbox.seen), claimed) == []
    assert (src.listings, src.fetches, FakeRequest.reads, calls) == (1, [], 0, [])

    reqs["new"] = FakeRequest("PENDING", {"kind": "fed_round", "schedule": SCHEDULE})
    record(path, "new")
    record(path, "gone")  # deleted (denied) before the poll: skipped
    clock[0] += 1.0
    assert [rid for rid, _, _ in inbox.new_rounds(feed.requests(inbox.seen), claimed)] == ["new"]
    assert src.fetches == ["new", "gone"] and src.listings == 1 and len(calls) == 1

    clock[0] += 60.0  # the safety net: a full listing, whose old requests cost nothing
    calls[:] = []
    assert inbox.new_rounds(feed.requests(inbox.seen), claimed) == []
    assert src.listings == 2 and calls == []


def test_without_a_journal_every_poll_lists_but_classifies_only_new(tmp_path):
    """An older server writes no journal: the feed lists every poll (O(all) transfer, the only
    thing PySyft 0.9.5 offers), yet old requests are not classified again."""
    src, calls = Counting(old_requests(1000)), []
    feed = RequestFeed(src.list_all, src.fetch, JournalReader(tmp_path / "none.log"))
    inbox = RoundInbox(SCHEDULE, classify=fake_classify(calls))
    inbox.new_rounds(feed.requests(inbox.seen), lambda rid: False)
    calls[:] = []
    inbox.new_rounds(feed.requests(inbox.seen), lambda rid: False)
    assert src.listings == 2 and calls == []


def test_the_server_journals_each_submitted_request(monkeypatch, tmp_path):
    """The hook the site's server process puts on RequestService.submit."""
    from syft.service.request.request_service import RequestService

    from datasite import server

    made = SimpleNamespace(id=SimpleNamespace(to_string=lambda: "abc123"))
    monkeypatch.setattr(RequestService, "submit", lambda self, context, request, **kw: made)
    monkeypatch.setattr(server, "JOURNALS", {})
    path = tmp_path / "syft" / "request-journal.log"
    server._journal_requests(SimpleNamespace(id="srv-1"), path)
    assert path.exists()  # created at start: readers take a missing journal for an old server
    ctx = SimpleNamespace(server=SimpleNamespace(id="srv-1"))
    assert RequestService.submit(None, ctx, request="r") is made
    assert RequestService.submit(None, context=ctx, request="r") is made
    assert JournalReader(path).new_ids() == ["abc123", "abc123"]
