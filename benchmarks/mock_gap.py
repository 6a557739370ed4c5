"""How much does code tried on the mock transfer? The same DP-SGD job trained on the
schema-only mock, on DP synthetic mocks (shared.synth) and on the real table, always evaluated
on the same held-out real records.

    .venv/bin/python benchmarks/mock_gap.py [--seeds 0 1 2] [--mock-eps 0.5 1 4] [--job-eps 1]

For each table and seed: the product's per-record split of the real table (as the job computes
it); the ``dpsgd_table`` job with its default options at ``--job-eps`` (delta 1e-5) trained on

* ``real``: the real table (the job's own split; its held-out records are the test set);
* ``schema mock``: :func:`datasite.mock.synthetic_mock` (the default; no privacy cost);
* ``DP mock eps=E``: :func:`shared.synth.dp_copula_mock` of the whole real table at (E, 1e-5);

each mock as large as an upload makes it (``min(n, 2000)`` records). Every model is evaluated on
the held-out real records (accuracy, AUC), beside the majority rate. Tables: breast cancer
(``datasite.demo_data``) and GBSG2 (``lifelines``, as in ``benchmarks/table_utility.py``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DELTA = 1e-5


def evaluate(result: dict, df, meta, te) -> dict:
    from sklearn.metrics import roc_auc_score

    from shared.training.results import load_model, predict_proba

    model = load_model(result)
    test = df.iloc[te]
    p = predict_proba(model, result["model_config"], test.drop(columns=[meta.label]))
    classes = list(result["model_config"]["classes"])
    y = test[meta.label].to_numpy()
    pred = np.asarray(classes)[p.argmax(axis=1)]
    return {"acc": float((pred == y).mean()),
            "auc": float(roc_auc_score(y == classes[1], p[:, 1]))}


def train(data, meta, job_eps: float, seed: int) -> dict:
    from shared.runner import run_job

    spec = dict(kind="dpsgd_table", dataset=meta.name, label=meta.label, epsilon=job_eps,
                delta=DELTA, seed=seed, metrics_epsilon=0.0)
    return run_job(spec, data, meta, pin_randomness=seed, mock=True)


def bench(name, df, schema, seeds, mock_eps, job_eps) -> list[str]:
    from datasite.mock import synthetic_mock
    from shared.randomness import pinned_randomness
    from shared.schema import meta_from_schema
    from shared.synth import dp_copula_mock
    from table_utility import product_split

    meta = meta_from_schema(schema, name)
    n_mock = min(len(df), 2000)
    rows, t0 = {}, time.perf_counter()
    for seed in seeds:
        tr, te = product_split(df, meta, seed)
        y = df[meta.label].to_numpy()
        rows.setdefault("majority", []).append(
            {"acc": float(max(np.mean(y[te] == c) for c in meta.labels)), "auc": 0.5})
        rows.setdefault("real", []).append(evaluate(train(df, meta, job_eps, seed), df, meta, te))
        mock = synthetic_mock(meta, n=n_mock, seed=seed)
        rows.setdefault("schema mock", []).append(
            evaluate(train(mock, meta, job_eps, seed), df, meta, te))
        for eps in mock_eps:
            with pinned_randomness(seed):
                dp, _ = dp_copula_mock(df, meta, eps, DELTA, n_mock)
            rows.setdefault(f"DP mock eps={eps:g}", []).append(
                evaluate(train(dp, meta, job_eps, seed), df, meta, te))
    mean = {k: {m: statistics.mean(r[m] for r in v) for m in ("acc", "auc")}
            for k, v in rows.items()}
    out = [f"{name}: {len(df)} records, {len(meta.columns)} features, mock {n_mock} records, "
           f"job eps={job_eps:g}, {len(seeds)} seeds, {time.perf_counter() - t0:.0f} s",
           f"  {'trained on':18s} {'accuracy':>9s} {'AUC':>7s}   (on held-out real records)"]
    for k, m in mean.items():
        out.append(f"  {k:18s} {m['acc']:9.3f} {m['auc']:7.3f}")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--mock-eps", type=float, nargs="+", default=[0.5, 1.0, 4.0])
    ap.add_argument("--job-eps", type=float, default=1.0)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from table_utility import breast_cancer, gbsg2

    for make in (breast_cancer, gbsg2):
        print("\n".join(bench(*make(), args.seeds, args.mock_eps, args.job_eps)), flush=True)


if __name__ == "__main__":
    main()
