"""What drawing a spend-over-time curve costs at N committed jobs (the console's Datasets page,
``datasite ledger --plot``): one composed epsilon per job.

    .venv/bin/python benchmarks/spend_chart.py [--sizes 5 10 20 40] [--steps 200] \
        [--old-up-to 20]

Each job is a DP-SGD event of ``--steps`` steps with its own sigma (the usual case). Measured in
the same run, on the same events:
* new: ``Ledger.epsilon_series`` -- the ledger's accountant, each prefix extending the one
  before (n - 1 convolutions);
* old (the baseline, up to ``--old-up-to`` jobs: it grows as n^2): ``Ledger.epsilon_of`` of
  every prefix, composed from nothing, as the charts did before.
Prints seconds for each, their ratio, and the largest difference between the two curves.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 40])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--old-up-to", type=int, default=20)
    p.add_argument("--delta", type=float, default=1e-6)
    args = p.parse_args()

    from datasite import records
    from datasite.ledger import Ledger
    from shared.privacy.accounting import dpsgd_event, event_to_json

    print(f"{'jobs':>5}{'new s':>9}{'old s':>9}{'old/new':>9}{'max |diff| eps':>16}{'final eps':>11}")
    for n in args.sizes:
        rng = random.Random(n)
        events = [event_to_json(dpsgd_event(0.02, 1.0 + rng.random(), args.steps))
                  for _ in range(n)]
        led = Ledger.__new__(Ledger)  # the accountant alone: no database, nothing cached
        led.accountant = records.HistoryAccountant()
        t = time.perf_counter()
        new = led.epsilon_series(events, args.delta)
        t_new = time.perf_counter() - t
        if n <= args.old_up_to:
            t = time.perf_counter()
            old = [Ledger.epsilon_of(events[:i + 1], args.delta) for i in range(n)]
            t_old = time.perf_counter() - t
            diff = max(abs(a - b) for a, b in zip(new, old))
            print(f"{n:>5}{t_new:>9.2f}{t_old:>9.2f}{t_old / t_new:>9.1f}{diff:>16.4f}"
                  f"{new[-1]:>11.3f}", flush=True)
        else:
            print(f"{n:>5}{t_new:>9.2f}{'-':>9}{'-':>9}{'-':>16}{new[-1]:>11.3f}", flush=True)


if __name__ == "__main__":
    main()
