"""The privacy ledger: budgets enforced, tight composition, audit chain, concurrency, crashes."""
from __future__ import annotations

import multiprocessing as mp
import uuid

import pytest
from sqlalchemy import text

from datasite.ledger import Ledger, LedgerError
from datasite.state import State, engine_for
from shared.accounting import compose_epsilon, dpsgd_event, epsilon, event_to_json

from conftest import _pg_database

DELTA = 1e-5


def _event(q=0.01, sigma=1.0, steps=200):
    return event_to_json(dpsgd_event(q, sigma, steps))


def _ledger(tmp_path, backend):
    from datasite.config import init_site

    db = _pg_database() if backend == "postgres" else None
    site = init_site("l", home=tmp_path / f"l-{uuid.uuid4().hex[:6]}", db_url=db)
    return Ledger(State(engine_for(site))), site


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request, tmp_path):
    return _ledger(tmp_path, request.param)[0]


def test_budget_enforced_with_composed_spend(ledger):
    ledger.set_budget("cxr", 2.0, DELTA)
    ledger.set_budget("cxr", 1.0, None, researcher="alice@x")
    e = _event()
    one = epsilon(__import__("shared.accounting", fromlist=["event_from_json"]).event_from_json(e), DELTA)
    q = ledger.quote("cxr", "alice@x", e)
    assert q["epsilon"] == pytest.approx(one) and q["fits"]
    ledger.reserve("r1", "cxr", "alice@x", e)
    ledger.start("r1")
    ledger.commit("r1", e)
    ledger.released("r1")
    spent = ledger.spent("cxr")
    assert spent["epsilon"] == pytest.approx(one)
    # alice's second job would exceed her share: refused with the numbers
    if 2 * one > 1.0:
        with pytest.raises(LedgerError, match="alice@x would reach"):
            ledger.reserve("r2", "cxr", "alice@x", e)
    # bob has no share: only the dataset budget applies; tight composition < adding epsilons
    n = 0
    while True:
        try:
            ledger.reserve(f"b{n}", "cxr", "bob@x", e)
            n += 1
        except LedgerError as err:
            assert "dataset cxr would reach" in str(err)
            break
    s = ledger.spent("cxr")
    assert s["epsilon"] <= 2.0 + 1e-9
    assert s["naive_epsilon"] > s["epsilon"]  # what tight composition saves
    assert s["epsilon"] == pytest.approx(compose_epsilon([e] * (n + 1), DELTA), rel=1e-6)


def test_refund_frees_and_commit_checks_realised(ledger):
    ledger.set_budget("t", 5.0, DELTA)
    small, big = _event(steps=100), _event(steps=400)
    ledger.reserve("a", "t", "r@x", small)
    ledger.start("a")
    with pytest.raises(LedgerError, match="more than the reserved"):
        ledger.commit("a", big)
    ledger.refund("a", "job failed")
    assert ledger.spent("t")["jobs"] == 0
    assert ledger.entry("a")["state"] == "refunded"
    with pytest.raises(LedgerError, match="refunded"):
        ledger.released("a")


def test_bad_input(ledger):
    for eps, delta in [(0, DELTA), (-1, DELTA), (float("nan"), DELTA), (1.0, 0), (1.0, 1.5)]:
        with pytest.raises(LedgerError):
            ledger.set_budget("x", eps, delta)
    with pytest.raises(LedgerError, match="no privacy budget"):
        ledger.spent("unknown")
    with pytest.raises(LedgerError, match="no privacy budget"):
        ledger.reserve("z", "unknown", "r@x", _event())
    ledger.set_budget("tiny", 0.1, DELTA)
    with pytest.raises(LedgerError, match="would reach"):
        ledger.reserve("z", "tiny", "r@x", _event(steps=1000))


def test_audit_chain_detects_tampering(ledger):
    ledger.set_budget("t", 5.0, DELTA)
    ledger.reserve("a", "t", "r@x", _event())
    ledger.start("a")
    assert ledger.verify() == (True, "audit log intact")
    with ledger.engine.begin() as c:
        c.execute(text("UPDATE dpds_audit SET payload = '{\"epsilon\": 0.0}' WHERE action = 'reserve'"))
    ok, why = ledger.verify()
    assert not ok and "altered" in why


def _reserve_many(args):
    root, backend_url, worker, k = args
    from datasite.config import SiteHome

    led = Ledger(State(engine_for(SiteHome(__import__("pathlib").Path(root)))))
    ok = 0
    for i in range(k):
        try:
            led.reserve(f"w{worker}-{i}", "c", f"r{worker}@x", _event(steps=100))
            ok += 1
        except LedgerError:
            pass
    return ok


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_reservations_never_overspend(tmp_path, backend):
    led, site = _ledger(tmp_path, backend)
    budget = 3.0
    led.set_budget("c", budget, DELTA)
    ctx = mp.get_context("spawn")
    with ctx.Pool(6) as pool:
        counts = pool.map(_reserve_many, [(str(site.root), None, w, 8) for w in range(6)])
    total = sum(counts)
    spent = led.spent("c")
    assert spent["jobs"] == total > 0
    assert spent["epsilon"] <= budget + 1e-9
    # the greedy maximum: one more job would not have fitted
    assert compose_epsilon([_event(steps=100)] * (total + 1), DELTA) > budget
    assert led.verify()[0]


def test_estimate_then_deny_or_reserve(ledger):
    ledger.set_budget("t", 5.0, DELTA)
    e = _event()
    ledger.estimate("a", "t", "r@x", e)
    ledger.estimate("b", "t", "r@x", e)
    assert ledger.spent("t")["jobs"] == 0  # estimates spend nothing
    ledger.deny("a", "not this cohort")
    ledger.reserve("b", "t", "r@x", e)
    assert ledger.entry("a")["state"] == "denied" and ledger.entry("b")["state"] == "reserved"
    assert ledger.spent("t")["jobs"] == 1
    with pytest.raises(LedgerError, match="denied"):
        ledger.reserve("a", "t", "r@x", e)
    assert ledger.verify()[0]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_old_schema_is_migrated_additively(tmp_path, backend):
    """A home written before a nullable column existed opens, gains the column, keeps rows."""
    from datasite.config import init_site
    from datasite.state import engine_for

    db = _pg_database() if backend == "postgres" else None
    site = init_site("m", home=tmp_path / "m", db_url=db)
    engine = engine_for(site)
    with engine.begin() as c:
        c.execute(text("INSERT INTO dpds_requests (request_id, state, updated_at) "
                       "VALUES ('old', 'ran', CURRENT_TIMESTAMP)"))
        c.execute(text("ALTER TABLE dpds_requests DROP COLUMN runner_pid"))
    state = State(engine_for(site))  # re-open: migration runs
    assert state.request("old")["state"] == "ran"
    assert "runner_pid" in state.request("old")
    state.set_state("old", "running", runner_pid=123)
    assert state.request("old")["runner_pid"] == 123
