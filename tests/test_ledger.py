"""The privacy ledger: budgets enforced, tight composition, audit chain, concurrency, crashes."""
from __future__ import annotations

import multiprocessing as mp
import uuid

import pytest
from sqlalchemy import text

from datasite.ledger import Ledger, LedgerError
from datasite.state import State, engine_for
from shared.privacy.accounting import compose_epsilon, dpsgd_event, epsilon, event_to_json

from conftest import _pg_database

DELTA = 1e-5


def _event(q=0.01, sigma=1.0, steps=200):
    return event_to_json(dpsgd_event(q, sigma, steps))


def _ledger(tmp_path, backend):
    from datasite.config import init_site

    db = _pg_database() if backend == "postgres" else None
    site = init_site("l", home=tmp_path / f"l-{uuid.uuid4().hex[:6]}", db_url=db)
    return Ledger(State(engine_for(site)), site), site


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request, tmp_path):
    return _ledger(tmp_path, request.param)[0]


def test_budget_enforced_with_composed_spend(ledger):
    ledger.set_budget("cxr", 2.0, DELTA)
    ledger.set_budget("cxr", 1.0, None, researcher="alice@x")
    e = _event()
    one = epsilon(__import__("shared.privacy.accounting", fromlist=["event_from_json"]).event_from_json(e), DELTA)
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
    # the ledger composes at one fixed pessimistic interval (records.LEDGER_INTERVAL): an upper
    # bound within 0.2% of the refined PLD epsilon
    assert s["epsilon"] == pytest.approx(compose_epsilon([e] * (n + 1), DELTA), rel=2e-3)


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
    ok, why = ledger.verify()
    assert ok and why.startswith("audit log intact") and "signed" in why
    with ledger.engine.begin() as c:
        c.execute(text("UPDATE dpds_audit SET payload = '{\"epsilon\": 0.0}' WHERE action = 'reserve'"))
    ok, why = ledger.verify()
    assert not ok and "altered" in why


def _reserve_many(args):
    root, backend_url, worker, k = args
    from datasite.config import SiteHome

    home = SiteHome(__import__("pathlib").Path(root))
    led = Ledger(State(engine_for(home)), home)
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
    # six processes of their own, each with its own connection; forked from one server that
    # imported the ledger once (spawned, each paid those imports: ~6 s of CPU apiece here)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["datasite.ledger", "datasite.state", "datasite.config"])
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
    state.set_state("old", "ran", runner_pid=123)  # a field update; "ran" stays "ran"
    assert state.request("old")["runner_pid"] == 123


# -- signed audit chain: attacks by whoever holds the database ---------------------------------
def _released(ledger, rid, event, researcher="r@x"):
    ledger.reserve(rid, "t", researcher, event)
    ledger.start(rid)
    ledger.commit(rid, event)
    ledger.released(rid)


def _rewrite_released_as_refunded(ledger, rid, key_hex=None):
    """The attack: flip a released job to refunded in the table AND in the chain, recompute
    every later hash; re-sign only with the site's key (``key_hex``)."""
    import json as _json

    from datasite.audit_log import audit
    from shared.audit_chain import entry_digest, link, sign_head

    with ledger.engine.begin() as c:
        c.execute(text("UPDATE dpds_ledger SET state = 'refunded' WHERE request_id = :r"), {"r": rid})
        rows = c.execute(audit.select().order_by(audit.c.seq)).all()
        prev = None
        for r in rows:
            values = r._asdict()
            if r.request_id == rid and r.action == "released":
                p = _json.loads(r.payload)
                p.update(state="refunded", reason="job failed")
                values.update(action="refunded", payload=_json.dumps(p, sort_keys=True))
            if prev is not None:
                values["prev_hash"] = prev
            values["hash"] = link(values["prev_hash"], entry_digest(
                values["nonce"], r.seq, r.at, r.actor, values["action"], r.request_id,
                values["payload"]))
            if key_hex:
                values["sig"] = sign_head(key_hex, r.seq, values["hash"])
            c.execute(audit.update().where(audit.c.seq == r.seq).values(**values))
            prev = values["hash"]
    if key_hex:  # the key holder can rewrite the head file beside the key, too
        head = ledger.audit_log.head_file
        head.write_text(_json.dumps({"seq": r.seq, "hash": prev, "sig": values["sig"]}))


def _site_ledger(tmp_path):
    led, site = _ledger(tmp_path, "sqlite")
    led.set_budget("t", 8.0, DELTA)
    big = _event(q=0.05, sigma=0.9, steps=300)
    _released(led, "big", big)
    return led, site


def test_rewritten_history_is_caught_by_signature_and_by_researcher_heads(tmp_path):
    from shared.audit_chain import check_head, verify_key_of

    led, site = _site_ledger(tmp_path)
    seen = led.head_for("r@x")
    led.mark_sent("r@x", seen)
    _released(led, "small", _event(steps=50))
    before = led.spent("t")["epsilon"]
    assert led.verify()[0]

    _rewrite_released_as_refunded(led, "big")  # without the key
    assert led.spent("t")["epsilon"] < before / 2  # what the attack is worth
    ok, why = led.verify()
    assert not ok and "signature" in why
    bad_seq = int(why.split()[1])
    assert led.entry("big") and bad_seq > 0  # the first rewritten entry is named

    _rewrite_released_as_refunded(led, "big", key_hex=site.signing_key_hex())  # with the key
    assert led.verify()[0]  # the key holder can re-sign: the site alone cannot tell
    vk = verify_key_of(site.signing_key_hex())
    assert check_head(seen, [], vk) == []
    problems = check_head(led.head_for("r@x"), [seen], vk)
    assert problems and "rewritten" in problems[0]

    # an honest later head passes the same check
    led2, site2 = _site_ledger(tmp_path)
    h1 = led2.head_for("r@x")
    led2.mark_sent("r@x", h1)
    _released(led2, "small", _event(steps=50))
    assert check_head(led2.head_for("r@x"), [h1], verify_key_of(site2.signing_key_hex())) == []


def test_truncated_history_is_caught(tmp_path):
    from shared.audit_chain import check_head, verify_key_of

    led, site = _site_ledger(tmp_path)
    seen = led.head_for("r@x")
    with led.engine.begin() as c:  # drop the job's last entries; make the table agree
        c.execute(text("DELETE FROM dpds_audit WHERE seq > (SELECT MAX(seq) - 2 FROM dpds_audit)"))
        c.execute(text("UPDATE dpds_ledger SET state = 'running', realised_json = NULL "
                       "WHERE request_id = 'big'"))
    ok, why = led.verify()
    assert not ok and "truncated" in why
    problems = check_head(led.head_for("r@x"), [seen], verify_key_of(site.signing_key_hex()))
    assert problems and "truncated" in problems[0]


def test_the_attacks_pass_verify_without_signing(tmp_path, monkeypatch):
    """The same attacks against the plain hash chain: verify says intact (so the tests above
    would fail if signing were off)."""
    from datasite import audit_log

    monkeypatch.setattr(audit_log, "SIGN_AUDIT", False)
    led, _ = _site_ledger(tmp_path)
    _released(led, "small", _event(steps=50))
    before = led.spent("t")["epsilon"]
    _rewrite_released_as_refunded(led, "big")
    assert led.spent("t")["epsilon"] < before / 2
    assert led.verify()[0]
    led, _ = _site_ledger(tmp_path)
    with led.engine.begin() as c:
        c.execute(text("DELETE FROM dpds_audit WHERE seq > (SELECT MAX(seq) - 2 FROM dpds_audit)"))
        c.execute(text("UPDATE dpds_ledger SET state = 'running', realised_json = NULL "
                       "WHERE request_id = 'big'"))
    assert led.verify()[0]


def test_a_table_edit_outside_the_chain_is_caught(ledger):
    ledger.set_budget("t", 8.0, DELTA)
    _released(ledger, "big", _event(q=0.05, sigma=0.9, steps=300))
    with ledger.engine.begin() as c:
        c.execute(text("UPDATE dpds_ledger SET state = 'refunded' WHERE request_id = 'big'"))
    ok, why = ledger.verify()
    assert not ok and "state is refunded in the table but released in the signed chain" in why
    with ledger.engine.begin() as c:
        c.execute(text("UPDATE dpds_ledger SET state = 'released' WHERE request_id = 'big'"))
        c.execute(text("UPDATE dpds_budgets SET epsilon = 80"))
    ok, why = ledger.verify()
    assert not ok and "budget of t" in why


# -- per-record accounting ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def dpal_plan():
    """A real DP-AL schedule (naive mode: its groups end at different epsilons)."""
    from shared.dpal import make_plan

    return make_plan(n_pool=200, start_size=40, query_sizes=[20, 20], epsilon=2.0, delta=DELTA,
                     eps_selection=0.5, batch_size=16, epochs_per_round=2, mode="naive",
                     accountant="pld")


def _dpal_job(led, rid, plan, parts):
    """Reserve a DP-AL job (each record may get any group's event), commit its groups."""
    alts = list(plan.group_events) + [plan.unlabelled_event]
    worst = plan.group_events[plan.worst_group()]
    led.reserve(rid, "t", "r@x", worst, alternatives=alts)
    led.start(rid)
    led.commit(rid, worst, record_charges=[(ids, alts[k]) for k, ids in parts])
    led.released(rid)


def test_dpal_jobs_composed_per_record_match_brute_force(tmp_path, dpal_plan):
    from shared.privacy.accounting import event_from_json, pld_of
    from datasite.records import LEDGER_INTERVAL

    led, _ = _ledger(tmp_path, "sqlite")
    led.set_budget("t", 20.0, DELTA)
    N, U = 60, len(dpal_plan.group_events)  # alternative U: labelled never (selections only)
    g = {k: v for k, v in enumerate(dpal_plan.group_events + [dpal_plan.unlabelled_event])}
    rng = __import__("numpy").random.default_rng(0)
    ids = rng.permutation(1000)[:N].tolist()  # record ids need not be 0..N-1
    a = [(0, ids[0:20]), (1, ids[20:30]), (2, ids[30:40]), (U, ids[40:60])]
    b = [(U, ids[0:20]), (0, ids[20:40]), (1, ids[40:50]), (2, ids[50:60])]
    _dpal_job(led, "A", dpal_plan, a)
    # before B runs, its reservation assumes each record gets B's worst event for it
    worst = dpal_plan.worst_group()
    q = led.quote("t", "r@x", g[worst], alternatives=list(g.values()))
    pair = pld_of(event_from_json(g[worst]), LEDGER_INTERVAL)
    assert q["dataset_after"] == pytest.approx(pair.compose(pair).get_epsilon_for_delta(DELTA),
                                               rel=1e-3)
    _dpal_job(led, "B", dpal_plan, b)

    # brute force: every record's own two events, composed one record at a time
    of = {}
    for job in (a, b):
        for k, rs in job:
            for r in rs:
                of.setdefault(r, []).append(k)
    assert len(of) == N and all(len(v) == 2 for v in of.values())
    plds = {k: pld_of(event_from_json(e), LEDGER_INTERVAL) for k, e in g.items()}
    per_record = [plds[x].compose(plds[y]).get_epsilon_for_delta(DELTA) for x, y in of.values()]
    spent = led.spent("t")
    assert spent["epsilon"] == pytest.approx(max(per_record), rel=1e-3)
    # what charging each job its worst group would say: no record got the worst group twice
    assert spent["epsilon"] < 0.97 * pair.compose(pair).get_epsilon_for_delta(DELTA)

    hist = led.record_histogram("t", n_records=N + 5)  # 5 records no job touched
    assert sum(b["records"] for b in hist["bins"]) == N + 5
    assert hist["classes"] <= 8 and hist["unnamed_records"] == 5
    assert led.verify()[0]


def test_per_record_commit_refuses_unreserved_events(tmp_path, dpal_plan):
    led, _ = _ledger(tmp_path, "sqlite")
    led.set_budget("t", 20.0, DELTA)
    alts = list(dpal_plan.group_events)
    led.reserve("A", "t", "r@x", alts[0], alternatives=alts)
    led.start("A")
    with pytest.raises(LedgerError, match="did not allow"):
        led.commit("A", alts[0], record_charges=[([1, 2], _event(steps=10))])
    led.commit("A", alts[0], record_charges=[([1, 2], alts[1])])
    with led.engine.begin() as c:  # a record dropped from the charges: verify notices
        c.execute(text("UPDATE dpds_charges SET record_ids = '[1]' WHERE request_id = 'A'"))
    ok, why = led.verify()
    assert not ok and "per-record charges differ" in why


def test_request_and_entry_states_move_only_along_the_state_machine(tmp_path):
    """One state machine (datasite/states.py): a released request cannot be re-run or denied,
    a denied one cannot be released, a refunded entry cannot be committed."""
    from datasite.config import init_site
    from datasite.states import IllegalMove

    site = init_site("sm", home=tmp_path / "sm")
    state = State(engine_for(site))
    assert state.claim_for_run("r1", dataset="t")
    state.set_state("r1", "ran")
    state.set_state("r1", "released")
    assert not state.claim_for_run("r1", dataset="t")  # a job runs at most once
    for illegal in ("running", "denied", "ran"):
        with pytest.raises(IllegalMove, match="released"):
            state.set_state("r1", illegal)
    state.set_state("r2", "denied")
    with pytest.raises(IllegalMove):
        state.set_state("r2", "released")
    assert state.claim_for_run("r3") and not state.claim_for_run("r3")
    state.set_state("r3", "failed")
    assert state.claim_for_run("r3")  # a failed (refunded) job may run again

    ledger = Ledger(state, site)
    ledger.set_budget("t", 10.0, 1e-5)
    e = event_to_json(dpsgd_event(0.01, 1.0, 100))
    ledger.reserve("a", "t", "r@x", e)
    ledger.refund("a", reason="test")
    with pytest.raises(LedgerError, match="refunded"):
        ledger.start("a")
    with pytest.raises(LedgerError, match="refunded"):
        ledger.released("a")
