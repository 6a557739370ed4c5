"""What the per-record ledger costs: a quote against 1,000 jobs (must stay under 1 s).

    .venv/bin/python benchmarks/ledger_records.py [--jobs 1000] [--records 5000] [--dpal 0.3]

A temporary SQLite site (signed, as `datasite init` makes it) whose ledger holds ``--jobs``
committed jobs on one table of ``--records`` records: DP-SGD jobs from five configurations
(every record pays) and a share ``--dpal`` of DP-AL jobs, each record in a random one of the
job's groups (start set, two rounds, never labelled, held out). Rows are written as
Ledger.commit leaves them (building them through reserve() would itself cost N quotes).
Timed: Ledger.quote of a new DP-AL job (i) cold: new process state, no cached PLDs at all;
(ii) warm: the same Ledger again (a review refreshing); (iii) a fresh Ledger object on the same
database (a new `datasite review` process: PLDs come from the HMAC'd cache table); and
Ledger.spent, and the per-record histogram of `datasite ledger`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DELTA = 1e-6


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def build(base: Path, n_jobs: int, n_records: int, dpal_share: float, seed: int = 0):
    from datasite.config import init_site
    from datasite.ledger import Ledger
    from datasite.ledger_tables import charges, entries
    from datasite.state import now, open_state
    from shared.privacy.accounting import dpsgd_event, event_to_json
    from shared.dpal import make_plan

    site = init_site("bench", home=base / f"site-{uuid.uuid4().hex[:6]}")
    ledger = Ledger(open_state(site))
    ledger.set_budget("ehr", 1e6, DELTA)  # large: the point is timing, not refusals
    n_pool = int(n_records * 0.8)
    plan = make_plan(n_pool=n_pool, start_size=100, query_sizes=[50, 50], epsilon=0.5,
                     delta=DELTA, eps_selection=0.1, batch_size=32, epochs_per_round=2,
                     mode="naive", accountant="pld")
    alts = list(plan.group_events) + [plan.unlabelled_event]
    worst = plan.group_events[plan.worst_group()]
    sgd = [event_to_json(dpsgd_event(q, s, t)) for q, s, t in
           [(0.005, 4.0, 600), (0.01, 5.0, 500), (0.0025, 3.0, 1200), (0.02, 8.0, 250),
            (0.005, 6.0, 2000)]]
    rng = np.random.default_rng(seed)
    with ledger.engine.begin() as c:
        for _ in range(n_jobs):
            rid, t = uuid.uuid4().hex, now()
            dpal = rng.random() < dpal_share
            ev = worst if dpal else sgd[rng.integers(len(sgd))]
            c.execute(entries.insert().values(
                request_id=rid, dataset="ehr", researcher=f"r{rng.integers(8)}@uni.edu",
                state="released", event_json=ev, realised_json=ev, epsilon=0.1,
                created_at=t, updated_at=t))
            if not dpal:
                c.execute(charges.insert().values(request_id=rid, part=0, kind="all",
                                                  event_json=ev))
                continue
            order = rng.permutation(n_records)
            cuts = np.cumsum(plan.group_sizes)  # start set, round 1, round 2; then unlabelled
            parts = np.split(order[:n_pool], cuts)
            for k, ids in enumerate(parts):  # the held-out records pay nothing here
                c.execute(charges.insert().values(
                    request_id=rid, part=k, kind="ids", event_json=alts[k],
                    record_ids=json.dumps(sorted(int(i) for i in ids))))
    return site, ledger, alts, worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--dpal", type=float, default=0.3)
    args = ap.parse_args()
    from datasite.ledger import Ledger
    from datasite.state import open_state

    with tempfile.TemporaryDirectory() as tmp:
        t_build, (site, ledger, alts, worst) = _timed(
            lambda: build(Path(tmp), args.jobs, args.records, args.dpal))
        print(f"built {args.jobs} jobs on {args.records} records in {t_build:.1f} s")
        cold, q = _timed(lambda: ledger.quote("ehr", "r0@uni.edu", worst, alternatives=alts))
        warm, q2 = _timed(lambda: ledger.quote("ehr", "r1@uni.edu", worst, alternatives=alts))
        fresh = Ledger(open_state(site))
        cached, q3 = _timed(lambda: fresh.quote("ehr", "r2@uni.edu", worst, alternatives=alts))
        t_spent, spent = _timed(lambda: fresh.spent("ehr"))
        t_hist, hist = _timed(lambda: fresh.record_histogram("ehr", args.records))
        assert q["dataset_after"] == q2["dataset_after"] == q3["dataset_after"]
        print(f"quote, cold (no cached PLD):          {cold:7.3f} s")
        print(f"quote, warm (same Ledger):            {warm:7.3f} s")
        print(f"quote, new process (DB-cached PLDs):  {cached:7.3f} s")
        print(f"spent:                                {t_spent:7.3f} s")
        print(f"per-record histogram ({hist['classes']} distinct histories): {t_hist:7.3f} s")
        print(f"worst record eps={spent['epsilon']:.4f} (delta={DELTA:g}) vs naive sum "
              f"{spent['naive_epsilon']:.1f}; after the quoted job {q['dataset_after']:.4f}")
        for b in hist["bins"]:
            print(f"  eps {b['from']:.3f}-{b['to']:.3f}: {b['records']} records")


if __name__ == "__main__":
    main()
