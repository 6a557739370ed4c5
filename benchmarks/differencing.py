"""Differencing attack on forget (issue 10, section 1): how often the researcher names the
forgotten patient first, against the old noiseless Newton release and against fresh releases.

    .venv/bin/python benchmarks/differencing.py [--runs 20] [--forgets 10]

Breast-cancer table (569 records), lam=1e-3, s=10 (the live test's settings); each run trains a
model with OS randomness and forgets ``--forgets`` uniformly chosen records one after another;
the attacker holds every earlier release and knows every other record
(:mod:`shared.privacy.differencing`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasite.forget as F  # noqa: E402
from datasite.demo_data import breast_cancer_frame  # noqa: E402
from shared import removal as R  # noqa: E402
from shared.data import power_of_ten_scale  # noqa: E402
from shared.privacy.differencing import forget_sequence_ranks, identification_bound  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--forgets", type=int, default=10)
    ap.add_argument("--lam", type=float, default=1e-3)
    ap.add_argument("--s", type=float, default=10.0)
    args = ap.parse_args(argv)
    df = breast_cancer_frame()
    cols = [c for c in df.columns if c != "diagnosis"]
    scales = [power_of_ten_scale(float(df[c].abs().max())) for c in cols]
    X = R.make_features(df[cols].to_numpy(), R.table_pipeline(cols, scales))
    y = df["diagnosis"].to_numpy()
    rng = np.random.default_rng()
    out = {"records": len(X), "forgets": args.runs * args.forgets,
           "bound_per_forget": identification_bound(args.lam, args.s,
                                                    len(X) - args.forgets, 1e-6)}
    for name, noiseless in (("noiseless_newton", True), ("fresh_release", False)):
        F._RELEASE_NOISELESS_NEWTON_FOR_TESTS = noiseless
        t = time.perf_counter()
        ranks = np.concatenate([forget_sequence_ranks(F.updated_models, X, y, args.forgets,
                                                      args.lam, args.s, rng)
                                for _ in range(args.runs)])
        out[name] = {"named_first": float(np.mean(ranks == 0)),
                     "in_top_10": float(np.mean(ranks < 10)),
                     "median_rank": float(np.median(ranks)),
                     "seconds": round(time.perf_counter() - t, 2)}
    F._RELEASE_NOISELESS_NEWTON_FOR_TESTS = False
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
