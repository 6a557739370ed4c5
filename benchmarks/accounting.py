"""What privacy accounting costs the datasite, and what tight composition saves.

    .venv/bin/python benchmarks/accounting.py [--repeats 3] [--sizes 10 100 1000]

(1) Pricing one DP-SGD request: shared.privacy.pricing.planned_event on a realistic spec (it calibrates
    sigma) and shared.privacy.reporting.privacy_report (eps, RDP, TPR bounds, mu-GDP) of the result.
(2) Checking a ledger of N = 10, 100, 1,000 committed jobs on a temporary SQLite site: a mix of
    five DP-SGD configurations (researchers re-run similar jobs), timing Ledger.quote (what
    review does), Ledger.spent, and one full reserve -> start -> commit of a new job. The
    baseline, measured in the same run, is the PLD epsilon of one job's event alone; for
    N <= 100 also composing the N events one by one (no grouping of identical events).
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
    (dict(epsilon=0.05, epochs=3, batch_size=128), 0.20),
    (dict(epsilon=0.1, epochs=5, batch_size=256), 0.30),
    (dict(epsilon=0.2, epochs=10, batch_size=256), 0.25),
    (dict(epsilon=0.3, epochs=15, batch_size=1024), 0.15),
    (dict(epsilon=0.5, epochs=20, batch_size=512), 0.10),
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


def _ledger(base: Path, n_jobs: int, events: list[str], eps_of: dict[str, float], seed: int):
    """A fresh SQLite site whose ledger holds ``n_jobs`` committed jobs drawn from ``events``."""
    from datasite.config import init_site
    from datasite.ledger import Ledger
    from datasite.ledger_tables import entries
    from datasite.state import State, engine_for, now

    site = init_site(f"b{n_jobs}", home=base / f"site-{n_jobs}-{uuid.uuid4().hex[:6]}")
    ledger = Ledger(State(engine_for(site)))
    ledger.set_budget("ehr", 1e6, DELTA)  # large: the point is timing, not refusals
    rng = random.Random(seed)
    weights = [w for _, w in CONFIGS]
    history = rng.choices(events, weights=weights, k=n_jobs)
    researchers = [f"r{i}@uni.edu" for i in range(8)]
    with ledger.engine.begin() as c:
        for ev in history:
            t = now()
            c.execute(entries.insert().values(
                request_id=uuid.uuid4().hex, dataset="ehr", researcher=rng.choice(researchers),
                state="committed", event_json=ev, realised_json=ev, epsilon=eps_of[ev],
                created_at=t, updated_at=t))
    return ledger, history


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
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
        inner = ev.event
        print(f"  eps={cfg['epsilon']:<5g} epochs={cfg['epochs']:<3d} batch={cfg['batch_size']:<5d}"
              f" -> q={inner.sampling_probability:.5f} sigma={inner.event.noise_multiplier:.3f} "
              f"steps={ev.count:<5d} share={share:.0%}")

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
    base = Path(tempfile.mkdtemp(prefix="dpds-acct-"))
    new_job = events[1]
    t_one, _ = _timed(cold(lambda: epsilon(event_from_json(new_job), DELTA)), args.repeats)
    rows, savings = [], []
    for n in args.sizes:
        ledger, history = _ledger(base, n, events, eps_of, seed=n)
        t_quote, q = _timed(cold(lambda: ledger.quote("ehr", "r0@uni.edu", new_job)), args.repeats)
        t_spent, s = _timed(cold(lambda: ledger.spent("ehr")), args.repeats)
        rid = uuid.uuid4().hex

        def life_cycle():
            clear_pld_cache()
            ledger.reserve(rid, "ehr", "r0@uni.edu", new_job)
            ledger.start(rid)
            ledger.commit(rid, new_job)
        t = time.perf_counter()
        life_cycle()  # once: it changes the ledger
        t_cycle = time.perf_counter() - t
        t_ungrouped = None
        if n <= 100:
            evs = [event_from_json(e) for e in history]
            t_ungrouped, eps_ungrouped = _timed(
                cold(lambda: epsilon(dp_accounting.ComposedDpEvent(evs), DELTA)), 1)
            assert abs(eps_ungrouped - s["epsilon"]) <= 2e-3 * s["epsilon"] + 1e-9, \
                (eps_ungrouped, s["epsilon"])
        rows.append((n, t_quote, t_spent, t_cycle, t_ungrouped))
        savings.append((n, s["epsilon"], s["naive_epsilon"], q["dataset_after"]))

    print(f"\n(2) checking a ledger of N committed jobs (SQLite, 5 distinct events), median of "
          f"{args.repeats}; baseline = PLD epsilon of one job alone = {t_one:.3f} s")
    print(f"  {'N':>6}{'quote s':>10}{'x base':>8}{'spent s':>10}{'x base':>8}"
          f"{'reserve+commit s':>18}{'x base':>8}{'ungrouped spent s':>19}{'grouped speed-up':>18}")
    for n, tq, ts, tc, tu in rows:
        un = f"{tu:>19.2f}{tu / ts:>17.1f}x" if tu is not None else f"{'(skipped)':>19}{'':>18}"
        print(f"  {n:>6}{tq:>10.3f}{tq / t_one:>8.1f}{ts:>10.3f}{ts / t_one:>8.1f}"
              f"{tc:>18.3f}{tc / t_one:>8.1f}{un}")

    print(f"\n(3) epsilon of the history at delta={DELTA:g}: tight (PLD composition) vs naive "
          "(sum of per-job epsilons)")
    print(f"  {'N':>6}{'tight eps':>12}{'naive eps':>12}{'naive/tight':>13}{'saved':>10}")
    for n, tight, naive, _ in savings:
        print(f"  {n:>6}{tight:>12.3f}{naive:>12.3f}{naive / tight:>13.2f}"
              f"{1 - tight / naive:>10.1%}")


if __name__ == "__main__":
    main()
