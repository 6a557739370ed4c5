"""One-run privacy audit: empirical epsilon lower bound vs claimed epsilon for several jobs on
the breast-cancer table (569 records), m canaries, 95% confidence.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audit.py [--canaries 1000] [--repeats 3]

Configurations: DP-SGD logreg at eps=1 and eps=8, the eps=1 job with its noise switched off
(the test-only hook of shared.training.engine: the job still reports its calibrated sigma),
DP-SGD MLP at eps=8, and DP active learning at eps=4. Fresh OS randomness each repeat; prints a table and
(--json) the reports.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.training import engine  # noqa: E402
from shared.privacy.audit import audit_job  # noqa: E402
from shared.data import TABLE, DatasetMeta  # noqa: E402

BASE = dict(kind="dpsgd_table", dataset="bc", label="diagnosis", delta=1e-5, epochs=5,
            batch_size=64, learning_rate=0.1)
CONFIGS = [
    ("DP-SGD logreg eps=1", {**BASE, "epsilon": 1.0}, False),
    ("DP-SGD logreg eps=8", {**BASE, "epsilon": 8.0}, False),
    ("DP-SGD logreg eps=1, NO NOISE (test hook)", {**BASE, "epsilon": 1.0}, True),
    ("DP-SGD mlp eps=8", {**BASE, "epsilon": 8.0, "model": "mlp"}, False),
    ("DP-AL logreg eps=4 (entropy, step-amplified)",
     dict(kind="dpal", dataset="bc", label="diagnosis", epsilon=4.0, delta=1e-5,
          start_size=150, query_sizes=[50, 50], batch_size=32, eps_selection=1.0), False),
]


def table():
    from sklearn.datasets import load_breast_cancer

    df = load_breast_cancer(as_frame=True).frame
    df = df.rename(columns=lambda c: c.replace(" ", "_")).rename(columns={"target": "diagnosis"})
    meta = DatasetMeta(name="bc", kind=TABLE, n_records=len(df), label="diagnosis",
                       labels=[0, 1], features={c: "float64" for c in df if c != "diagnosis"})
    return df, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--canaries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    df, meta = table()
    reports = []
    print(f"{'job':48s} {'claimed eps':>11s} {'empirical eps >= (95%), per run':>34s} "
          f"{'violation':>9s} {'s/run':>6s}")
    for name, spec, noise_off in CONFIGS:
        engine.TEST_ONLY_DISABLE_NOISE = noise_off
        try:
            runs = [audit_job(spec, df, meta, canaries=args.canaries)
                    for _ in range(args.repeats)]
        finally:
            engine.TEST_ONLY_DISABLE_NOISE = False
        reports += [{"config": name, **{k: v for k, v in r.items() if k != "spec"}} for r in runs]
        lbs = ", ".join(f"{r['epsilon_lower_bound']:.2f}" for r in runs)
        print(f"{name:48s} {runs[0]['claimed_epsilon']:11.3f} {lbs:>34s} "
              f"{str(any(r['violation'] for r in runs)):>9s} "
              f"{sum(r['seconds'] for r in runs) / len(runs):6.1f}")
    if args.json:
        print(json.dumps(reports, indent=2, default=str))


if __name__ == "__main__":
    main()
