"""Certified removal: time per removal (single, batched) vs retraining from scratch, removals per
budget, accuracy after 100 and 1,000 removals vs retraining without them.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/removal.py [--n-images 6000] [--backbone pixels]

Single-threaded (BLAS and torch), float64 numpy on CPU.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import removal as R  # noqa: E402
from shared.training.split import split_indices  # noqa: E402


def _median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def bench(name, X, y, classes, lam, s, eps=1.0, delta=1e-4, n_single=50, batch=10,
          checkpoints=(100, 1000), seed=0) -> dict:
    tr, te = split_indices(X, y, 0.2, seed)
    Xtr, ytr, Xte, yte = X[tr], y[tr], X[te], y[te]
    n_models = 1 if len(classes) == 2 else len(classes)
    out = {"dataset": name, "n_train": len(tr), "d": X.shape[1], "n_models": n_models,
           "lam": lam, "s": s, "eps": eps, "delta": delta,
           "budget": R.residual_budget(s, eps, delta),
           "training_epsilon(delta=1e-5)": R.training_epsilon(lam, s, len(tr), 1e-5, n_models)}
    t_train = _median_time(lambda: R.train_removable(Xtr, ytr, classes, lam, s, eps, delta,
                                                     seed=seed), 3)
    model = R.train_removable(Xtr, ytr, classes, lam, s, eps, delta, seed=seed)
    out["train_s"] = t_train
    out["test_accuracy_trained"] = float(np.mean(R.predict(model, Xte) == yte))
    t = time.perf_counter()
    session = R.RemovalSession(model, Xtr, ytr)
    out["session_setup_s"] = time.perf_counter() - t
    order = np.random.default_rng(seed + 1).permutation(len(tr))

    # single removals (timed), then batches; count removals until the first retrain
    singles, pos, first_retrain = [], 0, None
    for _ in range(n_single):
        t = time.perf_counter()
        c = session.remove(int(order[pos]))
        singles.append(time.perf_counter() - t)
        pos += 1
        if c["retrained"] and first_retrain is None:
            first_retrain = pos
    singles_clean = [t for t in singles]  # retrain steps included: that is the real cost
    out["single_removal_s_median"] = float(np.median(singles_clean))
    out["single_removal_s_mean"] = float(np.mean(singles_clean))
    batches = []
    while pos + batch <= min(len(order), 200):
        t = time.perf_counter()
        c = session.remove(order[pos:pos + batch])
        batches.append(time.perf_counter() - t)
        pos += batch
        if c["retrained"] and first_retrain is None:
            first_retrain = pos
    out["batch_size"] = batch
    out["batched_removal_s_per_record_median"] = float(np.median(batches)) / batch
    out["ratio_retrain_over_single"] = t_train / out["single_removal_s_median"]
    out["ratio_retrain_over_batched_per_record"] = (
        t_train / out["batched_removal_s_per_record_median"])
    t = time.perf_counter()
    R.remove(session.model, Xtr[session.live_rows], ytr[session.live_rows], [0])
    out["one_shot_remove_s"] = time.perf_counter() - t

    # removals one by one from a fresh model until checkpoints; retrains counted
    model = R.train_removable(Xtr, ytr, classes, lam, s, eps, delta, seed=seed)
    session = R.RemovalSession(model, Xtr, ytr)
    b0 = R.draw_b(s, model.weights.shape, seed, 0)
    per_budget, since, acc = [], 0, {}
    done = 0
    t_all = time.perf_counter()
    for cp in checkpoints:
        if cp > len(tr) - 10:
            break
        while done < cp:
            c = session.remove(int(order[done]))
            done += 1
            since += 1
            if c["retrained"]:
                per_budget.append(since - 1)
                since = 0
        live = session.live_rows
        fresh = R.train_removable(Xtr[live], ytr[live], classes, lam, s, eps, delta,
                                  seed=seed + 1000 + cp)
        row = {"removals": cp, "retrains": session.model.n_retrains,
               "residual_used": session.model.residual_used,
               "test_accuracy_updated": float(np.mean(R.predict(session.model, Xte) == yte)),
               "test_accuracy_retrained_fresh_b": float(np.mean(R.predict(fresh, Xte) == yte))}
        if session.model.n_retrains == 0:  # same b: the exact target of the Newton updates
            ys = R.class_signs(ytr[live], model.n_models)
            W = np.column_stack([R.minimise(Xtr[live], ys[:, k], lam * len(live), b0[:, k])
                                 for k in range(model.n_models)])
            row["rel_param_distance_to_exact_same_b"] = float(
                np.linalg.norm(session.model.weights - W) / np.linalg.norm(W))
        acc[str(cp)] = row
    out["sequential_total_s"] = time.perf_counter() - t_all
    out["removals_per_budget"] = per_budget or f">{since} (no retrain needed)"
    out["checkpoints"] = acc
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-images", type=int, default=6000)
    ap.add_argument("--backbone", default="pixels")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from datasite.demo_data import breast_cancer_frame, make_synthetic_cxr
    from shared.data import power_of_ten_scale

    results = []
    df = breast_cancer_frame()
    cols = [c for c in df.columns if c != "diagnosis"]
    pipe = R.table_pipeline(cols, [power_of_ten_scale(df[c].abs().max()) for c in cols])
    X = R.make_features(df[cols].to_numpy(), pipe)
    y = df["diagnosis"].to_numpy()
    for lam, s in ((1e-4, 1.0), (1e-4, 0.3)):
        results.append(bench("breast_cancer(public_scale)", X, y, [0, 1], lam, s,
                             checkpoints=(100,)))
        print(json.dumps(results[-1], indent=1), flush=True)

    data = make_synthetic_cxr(n=args.n_images, size=28, seed=0, n_classes=3)
    from shared.training.backbones import extract_features

    t = time.perf_counter()
    F = extract_features(data["images"], args.backbone, device="cpu")
    t_feat = time.perf_counter() - t
    X = R.make_features(F, R.unit_pipeline(args.backbone))
    y = data["labels"]
    for lam, s in ((1e-3, 1.0), (1e-3, 10.0)):
        r = bench(f"synthetic_cxr3({args.backbone})", X, y, [0, 1, 2], lam, s)
        r["feature_extraction_s"] = t_feat
        results.append(r)
        print(json.dumps(r, indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
