"""The ledger's incremental composition: a quote at N committed jobs costs O(new events)
convolutions, and its numbers are bit-identical to composing every history from scratch."""
from __future__ import annotations

import random
import uuid

import pytest

from datasite import records
from datasite.ledger import Ledger
from datasite.ledger_tables import charges, entries
from datasite.state import State, engine_for, now
from shared.privacy.accounting import dpsgd_event, event_to_json

DELTA = 1e-6
N_PAST = 40  # committed jobs written straight into the tables (each its own sigma)


def _event(rng: random.Random, steps: int = 5) -> str:
    # every job its own sigma (cheap events: few steps keep the from-scratch side fast)
    return event_to_json(dpsgd_event(0.02, 1.5 + rng.random(), steps))


def _insert(led: Ledger, ev: str, researcher: str) -> None:
    """A committed job, rows as Ledger.commit leaves them."""
    rid = uuid.uuid4().hex
    with led.engine.begin() as c:
        t = now()
        c.execute(entries.insert().values(request_id=rid, dataset="t", researcher=researcher,
                                          state="committed", event_json=ev, realised_json=ev,
                                          epsilon=1.0, created_at=t, updated_at=t))
        c.execute(charges.insert().values(request_id=rid, part=0, kind="all", event_json=ev))


_RDP: dict = {}  # event JSON -> its RDP vector, shared by every from-scratch accountant


def _scratch(led: Ledger) -> Ledger:
    """The same tables read by an accountant with no cached PLD at all (memory or database):
    every history composed from its first event. Only the events' RDP vectors (a pure function
    of each event, which orders the record classes) are shared between these accountants."""
    fresh = Ledger.__new__(Ledger)
    fresh.__dict__.update(led.__dict__)
    fresh.accountant = records.HistoryAccountant()
    fresh.accountant.fine.rdp = _RDP
    return fresh


def _fresh_process(led: Ledger) -> records.HistoryAccountant:
    """What a new process has: nothing in memory, the site database's authenticated state."""
    led.accountant = records.HistoryAccountant(led.engine, led.accountant.mac_key)
    return led.accountant


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    from datasite.config import init_site

    site = init_site("inc", home=tmp_path_factory.mktemp("inc") / "site")
    led = Ledger(State(engine_for(site)), site)
    led.set_budget("t", 1e6, DELTA)
    rng = random.Random(0)
    for i in range(N_PAST):
        _insert(led, _event(rng), f"r{i % 3}@x")
    led.spent("t")  # the first read composes the history once and stores its state
    # through the API: plain jobs, refunded ones, per-record (DP-AL-like) jobs, one pending
    for i in range(6):
        rid = f"job{i}"
        ev = _event(rng)
        led.reserve(rid, "t", f"r{i % 3}@x", ev)
        led.start(rid)
        if i % 3 == 2:
            led.refund(rid, "failed")  # a history that shrinks back
        else:
            led.commit(rid, ev)
    alts = [_event(rng), _event(rng), _event(rng)]
    for j in range(2):
        rid = f"pr{j}"
        led.reserve(rid, "t", "r0@x", alts[0], alternatives=alts)
        led.start(rid)
        led.commit(rid, alts[0], record_charges=[(list(range(0, 30)), alts[j]),
                                                  (list(range(20, 50)), alts[2])])
    led.reserve("pending", "t", "r1@x", _event(rng))  # reserved, not committed
    for i in range(3):
        _insert(led, _event(rng), "r2@x")  # committed after the pending reservation
    return led, rng


def test_numbers_identical_to_full_recomposition(ledger):
    led, rng = ledger
    new = _event(rng)
    alts = [_event(rng), _event(rng)]
    scratch = _scratch(led)
    for who in ("r0@x", "r1@x"):
        incremental = led.quote("t", who, new)
        assert incremental == scratch.quote("t", who, new)  # every field, exactly
        assert led.quote("t", who, alts[0], alternatives=alts) == \
            scratch.quote("t", who, alts[0], alternatives=alts)
    _fresh_process(led)  # from the database state alone
    assert led.spent("t") == scratch.spent("t")
    assert led.spent("t", "r2@x") == scratch.spent("t", "r2@x")
    hist = led.record_histogram("t", n_records=60)
    assert hist == scratch.record_histogram("t", n_records=60)
    assert hist["classes"] >= 3  # per-record parts made several histories


def test_full_recomposition_is_a_plain_fold_in_ledger_order(ledger):
    """The from-scratch side itself: dp_accounting's PLDs composed one by one in ledger order."""
    led, _ = ledger
    with led.engine.connect() as c:
        done, _, _ = led._jobs(c, "t", "r2@x")  # r2: whole-dataset jobs only
    seq = [ev for parts in done for _, ev in parts]
    comp = records._Composer(records.LEDGER_INTERVAL)
    pld = records._dense(comp.event(seq[0]))
    for ev in seq[1:]:
        pld = pld.compose(comp.event(ev))
    eps = pld.get_epsilon_for_delta(DELTA)
    got = _scratch(led).spent("t", "r2@x")["epsilon"]
    assert got == pytest.approx(eps, rel=1e-9, abs=1e-12)


def test_one_new_job_costs_a_constant_number_of_convolutions(ledger):
    led, rng = ledger
    with led.engine.connect() as c:
        done, pending, _ = led._jobs(c, "t")
    n_classes = len(records.classes(done))
    assert n_classes <= 8
    # per view (dataset, researcher) and record class: the pending jobs' events and the new one
    bound = 2 * n_classes * (1 + len(pending))
    acc = _fresh_process(led)
    led.quote("t", "r0@x", _event(rng))
    assert 0 < acc.fine.convolutions <= bound
    rid, ev = uuid.uuid4().hex, _event(rng)
    acc = _fresh_process(led)
    led.reserve(rid, "t", "r0@x", ev)
    led.start(rid)
    led.commit(rid, ev)
    assert acc.fine.convolutions <= 2 * bound  # reserve's two views, then commit's one
    acc = _fresh_process(led)
    led.spent("t")
    led.quote("t", "r0@x", _event(rng))
    # r0's view also composes the job just committed (commit updates the dataset view only)
    assert 0 < acc.fine.convolutions <= bound + n_classes
    # the same reads without the stored state compose every job
    scratch = _scratch(led)
    scratch.quote("t", "r0@x", _event(rng))
    assert scratch.accountant.fine.convolutions >= N_PAST


def test_a_planted_state_is_not_used(ledger):
    """A database writer without the site key cannot plant a smaller composed PLD."""
    from sqlalchemy import delete, insert, select

    led, _ = ledger
    true = _scratch(led).spent("t")["epsilon"]
    with led.engine.connect() as c:
        done, _, _ = led._jobs(c, "t")
    seqs = [k.sequence for k in records.classes(done)]
    acc = records.HistoryAccountant()
    tiny = acc.fine.state(seqs[0][:1])  # the PLD of one job, planted as the whole history's
    with led.engine.begin() as c:
        for q in seqs:
            key = acc.fine.keys(q)[-1]
            c.execute(delete(records.pld_cache).where(records.pld_cache.c.key == key))
            c.execute(insert(records.pld_cache).values(key=key, blob=records._dump(tiny),
                                                       mac="0" * 64))
        assert c.execute(select(records.pld_cache.c.key)).first() is not None
    _fresh_process(led)
    assert led.spent("t")["epsilon"] == true
    # the same row with a valid MAC would be believed: the MAC is what refuses it
    acc = _fresh_process(led)
    with led.engine.begin() as c:
        for q in seqs:
            key = acc.fine.keys(q)[-1]
            blob = records._dump(tiny)
            c.execute(delete(records.pld_cache).where(records.pld_cache.c.key == key))
            c.execute(insert(records.pld_cache).values(key=key, blob=blob,
                                                       mac=acc._mac(key, blob)))
    assert led.spent("t")["epsilon"] < true
    with led.engine.begin() as c:  # leave the module's ledger sound
        c.execute(delete(records.pld_cache))


def test_spend_over_time_series_is_linear_and_the_ledgers_numbers():
    """The console's and `datasite ledger --plot`'s spend curves: each point extends the one
    before (n - 1 convolutions for n jobs), and each is the ledger's epsilon of that prefix,
    bit-identical to composing the prefix afresh."""
    rng = random.Random(1)
    events = [_event(rng) for _ in range(12)]
    led = Ledger.__new__(Ledger)
    led.accountant = records.HistoryAccountant()
    series = led.epsilon_series(events, DELTA)
    assert led.accountant.fine.convolutions == len(events) - 1
    fresh = [records.HistoryAccountant().epsilon(events[:i + 1], DELTA)
             for i in (0, 5, 11)]
    assert [series[i] for i in (0, 5, 11)] == fresh
    assert all(a <= b for a, b in zip(series, series[1:]))  # spend only grows
    # and it is what the charts meant: the tight composition, within the ledger's resolution
    assert series[-1] == pytest.approx(Ledger.epsilon_of(events, DELTA), rel=0.03)
    # the way it was drawn before: every prefix composed from nothing, O(n^2)
    per_prefix = records.HistoryAccountant()
    for i in range(len(events)):
        per_prefix.fine.states.clear()
        per_prefix.epsilon(events[:i + 1], DELTA)
    assert per_prefix.fine.convolutions == sum(range(len(events)))
