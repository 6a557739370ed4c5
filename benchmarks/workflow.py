"""Submit-to-released time on a real HTTP datasite vs calling the job directly, same run.

    .venv/bin/python benchmarks/workflow.py [--repeats 3]

(a) a near-trivial job (DP-SGD, 1 epoch) and (b) a small DP-SGD job (20 epochs), each
timed end to end (submit -> owner run -> release -> researcher wait returns) and as a direct
in-process call of shared.runner.run_job on the same data. Prints overhead in s and as a ratio.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import researcher
    from datasite.config import init_site
    from datasite.lifecycle import free_port
    from datasite.demo_data import schema_path, write_breast_cancer_csv
    from datasite.owner import OwnerSite
    from researcher import jobs
    from shared.runner import run_job

    base = Path(tempfile.mkdtemp(prefix="dpds-bench-"))
    owner = OwnerSite(init_site("bench", home=base / "bench", port=free_port()))
    owner.up()
    try:
        csv = base / "bc.csv"
        write_breast_cancer_csv(csv)
        meta = owner.upload("bc", table=str(csv), schema=schema_path(csv), budget_epsilon=1000.0,
                            delta=1e-5)
        owner.add_user("bench@uni.edu", "bench-password")
        site = researcher.connect(owner.url, "bench@uni.edu", "bench-password")
        df = pd.read_csv(csv)
        print(f"{'job':<22}{'direct s':>10}{'end-to-end s':>14}{'overhead s':>12}{'ratio':>8}")
        for label, epochs in (("(a) trivial (1 epoch)", 1), ("(b) DP-SGD 20 epochs", 20)):
            direct, e2e = [], []
            for r in range(args.repeats):
                job = jobs.DPSGD(dataset="bc", label="diagnosis", epsilon=2.0, delta=1e-5,
                                 epochs=epochs, batch_size=64, seed=r)
                t = time.perf_counter()
                run_job(job.spec.to_dict(), df, meta)
                direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                req = site.submit(job)
                owner.run(req.id, progress=False)
                owner.release(req.id)
                req.wait(timeout=120, poll=0.2, progress=False)
                e2e.append(time.perf_counter() - t)
            d, e = statistics.median(direct), statistics.median(e2e)
            print(f"{label:<22}{d:>10.2f}{e:>14.2f}{e - d:>12.2f}{e / d:>8.1f}")
    finally:
        owner.down()


if __name__ == "__main__":
    main()
