"""What privacy accounting costs the datasite, and what tight composition saves.

    .venv/bin/python benchmarks/accounting.py [--repeats 3] [--sizes 100 1000 10000]
        [--modes repeated distinct]

(1) Pricing one DP-SGD request: shared.privacy.pricing.planned_event on a realistic spec (it calibrates
    sigma) and shared.privacy.reporting.privacy_report (eps, RDP, TPR bounds, mu-GDP) of the result.
(2) Checking a ledger of N = 100, 1,000, 10,000 committed jobs on a temporary SQLite site, in
    two modes: "repeated", a mix of five DP-SGD configurations (researchers re-run similar jobs),
    and "distinct", the same mix with every job its own sigma (each base sigma perturbed by up to
    0.1%, upwards: the usual case, every job calibrated for its own data). Timed: the first
    Ledger.quote (it composes each history once and stores the ledger's incremental state, the
    composed PLD of each history, in the site database), then -- each call with a fresh
    in-memory accountant, as a new process would have, the database state warm -- Ledger.quote
    (what review does), Ledger.spent, and one full reserve -> start -> commit of a new job
    (with its own new event in distinct mode); and Ledger.quote in the same long-lived process
    ("warm": the job's own epsilon not cached, a new sigma per call in distinct mode). The baseline, measured in the same run, is the
    PLD epsilon of one job's event alone; for N <= 100 also composing the N events one by one
    with dp_accounting (no grouping of identical events).
(3) The epsilon of that history by tight (PLD) composition against adding epsilons.

The history is written straight into the ledger table (rows exactly as Ledger.commit leaves
them): building it through reserve() would itself cost N quotes.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DELTA = 1e-6
N_RECORDS = 50_000  # a hospital table: 40,000 training records after the 20% hold-out

# Five job configurations a group of researchers would run (and re-run) on one table, with the
# share of the history each makes up.
CONFIGS = [
    (dict(epsilon=0.05, epochs=3, batch_size=512), 0.20),  # sample rates >= 1% (the jobs'
    (dict(epsilon=0.1, epochs=5, batch_size=512), 0.30),  # bounds check)
    (dict(epsilon=0.2, epochs=10, batch_size=1024), 0.25),
    (dict(epsilon=0.3, epochs=15, batch_size=1024), 0.15),
    (dict(epsilon=0.5, epochs=20, batch_size=2048), 0.10),
]


def _meta():
    from shared.data import TABLE, DatasetMeta

    feats = {f"x{i}": "float64" for i in range(20)}
    return DatasetMeta(name="ehr", kind=TABLE, n_records=N_RECORDS, label="y", labels=[0, 1],
                       features={**feats, "y": "int64"},
                       feature_scales={k: 10.0 for k in feats})


def _spec(**kw) -> dict:
    return dict(kind="dpsgd_table", dataset="ehr", label="y", delta=DELTA, model="logreg", **kw)


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _distinct(event_json: str, rng: random.Random) -> str:
    """The same job with its own sigmas: each larger by up to 0.1% (so its epsilon is at most
    the base job's, which the benchmark stores as the entry's naive epsilon)."""
    import json

    from shared.privacy.accounting import event_from_json, event_to_json

    def perturb(node):
        if isinstance(node, dict):
            return {k: v * (1 + 1e-3 * rng.random()) if k == "noise_multiplier" else perturb(v)
                    for k, v in node.items()}
        return [perturb(v) for v in node] if isinstance(node, list) else node
    return event_to_json(event_from_json(json.dumps(perturb(json.loads(event_json)))))


def _ledger(base: Path, n_jobs: int, events: list[str], eps_of: dict[str, float], seed: int,
            distinct: bool):
    """A fresh SQLite site whose ledger holds ``n_jobs`` committed jobs drawn from ``events``
    (each with its own sigma if ``distinct``), rows as Ledger.commit leaves them."""
    from datasite.config import init_site
    from datasite.ledger import Ledger
    from datasite.ledger_tables import charges, entries
    from datasite.state import State, engine_for, now

    site = init_site(f"b{n_jobs}", home=base / f"site-{n_jobs}-{uuid.uuid4().hex[:6]}")
    ledger = Ledger(State(engine_for(site)), site)  # site: its key authenticates the PLD cache
    ledger.set_budget("ehr", 1e6, DELTA)  # large: the point is timing, not refusals
    rng = random.Random(seed)
    weights = [w for _, w in CONFIGS]
    bases = rng.choices(events, weights=weights, k=n_jobs)
    history = [_distinct(ev, rng) for ev in bases] if distinct else bases
    researchers = [f"r{i}@uni.edu" for i in range(8)]
    with ledger.engine.begin() as c:
        for b, ev in zip(bases, history):
            t, rid = now(), uuid.uuid4().hex
            c.execute(entries.insert().values(
                request_id=rid, dataset="ehr", researcher=rng.choice(researchers),
                state="committed", event_json=ev, realised_json=ev, epsilon=eps_of[b],
                created_at=t, updated_at=t))
            c.execute(charges.insert().values(request_id=rid, part=0, kind="all", event_json=ev,
                                              record_ids=None))
    return ledger, history


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--modes", nargs="+", choices=["repeated", "distinct"],
                    default=["repeated", "distinct"])
    args = ap.parse_args()

    import dp_accounting

    from shared.privacy.accounting import clear_pld_cache, epsilon, event_from_json, event_to_json
    from shared.privacy.reporting import privacy_report
    from shared.privacy.pricing import planned_event

    def cold(fn):  # no help from the PLD cache: every timed call starts from nothing
        def run():
            clear_pld_cache()
            return fn()
        return run

    meta = _meta()
    print(f"dataset: {N_RECORDS} records, delta={DELTA:g}; job configurations:")
    events, eps_of = [], {}
    for cfg, share in CONFIGS:
        ev = planned_event(_spec(**cfg), meta)
        js = event_to_json(ev)
        events.append(js)
        eps_of[js] = epsilon(ev, DELTA)
        sgd = next(e for e in getattr(ev, "events", [ev]) if hasattr(e, "count"))
        print(f"  eps={cfg['epsilon']:<5g} epochs={cfg['epochs']:<3d} batch={cfg['batch_size']:<5d}"
              f" -> q={sgd.event.sampling_probability:.5f} sigma={sgd.event.event.noise_multiplier:.3f}"
              f" steps={sgd.count:<5d} share={share:.0%}")

    # -- (1) pricing one request ------------------------------------------------------------------
    spec = _spec(**CONFIGS[2][0])
    t_plan, ev = _timed(cold(lambda: planned_event(spec, meta)), args.repeats)
    t_report, rep = _timed(cold(lambda: privacy_report(ev, DELTA)), args.repeats)
    t_eps, _ = _timed(cold(lambda: epsilon(ev, DELTA)), args.repeats)
    print(f"\n(1) pricing one DP-SGD request (eps={spec['epsilon']}, {spec['epochs']} epochs, "
          f"batch {spec['batch_size']}), median of {args.repeats}:")
    print(f"  {'step':<44}{'s':>8}{'x eps alone':>13}")
    for label, t in (("baseline: PLD epsilon of the event", t_eps),
                     ("planned_event (calibrates sigma)", t_plan),
                     ("privacy_report (eps, RDP, TPR, mu)", t_report),
                     ("total: planned_event + privacy_report", t_plan + t_report)):
        print(f"  {label:<44}{t:>8.3f}{t / t_eps:>13.1f}")
    print(f"  report: eps={rep['epsilon']:.4f} mu={rep['mu']:.4f} (fit error "
          f"{rep['mu_fit_error']:.4f}) TPR bound at FPR 0.1%/1%/10%: "
          + "/".join(f"{rep['tpr_bound'][k]:.4f}" for k in ("0.001", "0.01", "0.1"))
          + "  [(eps,delta) alone: "
          + "/".join(f"{rep['tpr_bound_eps_delta'][k]:.4f}" for k in ("0.001", "0.01", "0.1"))
          + "]")

    # -- (2) + (3) ledgers ------------------------------------------------------------------------
    from datasite.records import HistoryAccountant

    base = Path(tempfile.mkdtemp(prefix="dpds-acct-"))
    t_one, _ = _timed(cold(lambda: epsilon(event_from_json(events[1]), DELTA)), args.repeats)
    rows, savings = [], []
    for mode in args.modes:
        for n in args.sizes:
            ledger, history = _ledger(base, n, events, eps_of, seed=n, distinct=mode == "distinct")
            rng = random.Random(-n)
            new_job = _distinct(events[1], rng) if mode == "distinct" else events[1]

            def fresh(fn):  # a new process: nothing in memory, the database state warm
                def run():
                    clear_pld_cache()
                    ledger.accountant = HistoryAccountant(ledger.engine, ledger.accountant.mac_key)
                    return fn()
                return run
            # the first read composes every history once (dataset's, r0's) and stores the state
            t_build, _ = _timed(fresh(lambda: ledger.quote("ehr", "r0@uni.edu", new_job)), 1)
            t_quote, q = _timed(fresh(lambda: ledger.quote("ehr", "r0@uni.edu", new_job)),
                                args.repeats)

            def warm():  # a long-lived site: a quote for a job not seen before (its own sigma)
                clear_pld_cache()
                job = _distinct(events[1], rng) if mode == "distinct" else new_job
                return ledger.quote("ehr", "r0@uni.edu", job)
            t_warm, _ = _timed(warm, args.repeats)
            t_spent, s = _timed(fresh(lambda: ledger.spent("ehr")), args.repeats)
            rid = uuid.uuid4().hex

            def life_cycle():
                ledger.reserve(rid, "ehr", "r0@uni.edu", new_job)
                ledger.start(rid)
                ledger.commit(rid, new_job)
            t_cycle, _ = _timed(fresh(life_cycle), 1)  # once: it changes the ledger
            t_ungrouped = None
            if n <= 100:
                evs = [event_from_json(e) for e in history]
                t_ungrouped, eps_ungrouped = _timed(
                    cold(lambda: epsilon(dp_accounting.ComposedDpEvent(evs), DELTA)), 1)
                assert abs(eps_ungrouped - s["epsilon"]) <= 2e-3 * s["epsilon"] + 1e-9, \
                    (eps_ungrouped, s["epsilon"])
            rows.append((mode, n, t_build, t_quote, t_warm, t_spent, t_cycle, t_ungrouped))
            savings.append((mode, n, s["epsilon"], s["naive_epsilon"], q["dataset_after"]))
            print(f"  [{mode} N={n}: first quote {t_build:.2f} s, quote {t_quote:.3f} s]",
                  flush=True)

    print(f"\n(2) checking a ledger of N committed jobs (SQLite), median of {args.repeats}; "
          f"baseline = PLD epsilon of one job alone = {t_one:.3f} s; 'fresh': a new in-memory "
          "accountant per call, the database state warm (built by the first quote)")
    print(f"  {'mode':<9}{'N':>6}{'first quote s':>14}{'quote s':>10}{'x base':>8}"
          f"{'warm quote s':>13}{'spent s':>10}{'x base':>8}{'reserve+commit s':>18}{'x base':>8}"
          f"{'dp_acc. ungrouped s':>21}")
    for mode, n, tb, tq, tw, ts, tc, tu in rows:
        un = f"{tu:>21.2f}" if tu is not None else f"{'(skipped)':>21}"
        print(f"  {mode:<9}{n:>6}{tb:>14.2f}{tq:>10.3f}{tq / t_one:>8.1f}{tw:>13.3f}"
              f"{ts:>10.3f}{ts / t_one:>8.1f}{tc:>18.3f}{tc / t_one:>8.1f}{un}")

    print(f"\n(3) epsilon of the history at delta={DELTA:g}: tight (PLD composition) vs naive "
          "(sum of per-job epsilons)")
    print(f"  {'mode':<9}{'N':>6}{'tight eps':>12}{'naive eps':>12}{'naive/tight':>13}{'saved':>10}")
    for mode, n, tight, naive, _ in savings:
        print(f"  {mode:<9}{n:>6}{tight:>12.3f}{naive:>12.3f}{naive / tight:>13.2f}"
              f"{1 - tight / naive:>10.1%}")


if __name__ == "__main__":
    main()
