"""Do balanced class weights help the minority class? The dpsgd_table job with
``class_weights="none"`` and ``"balanced"`` (weights from the declared label rates) on
imbalanced tables, at the same epsilon and with everything else at its default.

    .venv/bin/python benchmarks/class_weights.py [--seeds 0 1 2] [--eps 2] [--sksurv-wheel W]

Tables: a synthetic 10%-positive table (two informative columns, one noise column, 5,000
records), and with ``--sksurv-wheel`` (``pip download --no-deps scikit-survival``) FLCHAIN
(death, ~28%) and GBSG2 (event, ~44%) from the wheel's data files. The declared rates are the
table's class shares (what an owner would publish for such a cohort). Metrics are exact on the
held-out split (``mock=True``: evaluation only, training unchanged): minority-class recall,
balanced accuracy, accuracy, mean over seeds.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from table_utility import DELTA, flchain  # noqa: E402  (this script's folder)


def synthetic(n: int = 5000, rate: float = 0.1, seed: int = 0):
    """A 10%-positive table whose label two bounded columns predict (noisily)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(np.int64)
    df = pd.DataFrame({"a": np.clip(rng.normal(0.8 * y, 1.0), -4, 4),
                       "b": np.clip(rng.normal(-0.6 * y, 1.0), -4, 4),
                       "c": np.clip(rng.normal(0.0, 1.0, n), -4, 4), "y": y})
    cols = {c: {"type": "float", "bounds": [-4, 4]} for c in "abc"}
    schema = {"kind": "table", "records": n, "description": "synthetic, 10% positive",
              "label": {"column": "y", "classes": [0, 1]}, "columns": cols}
    return "synthetic_10pct", df, schema


def gbsg2(wheel: str):
    from scipy.io import arff

    with zipfile.ZipFile(wheel) as z:
        raw = pd.DataFrame(arff.loadarff(io.StringIO(
            z.read("sksurv/datasets/data/GBSG2.arff").decode()))[0])
    for c in raw.columns:
        if raw[c].dtype == object:
            raw[c] = raw[c].str.decode("utf-8")
    df = pd.DataFrame({
        "hormone_therapy": raw["horTh"] == "yes", "age": raw["age"].astype(float),
        "postmenopausal": raw["menostat"] == "Post", "tumour_size": raw["tsize"].astype(float),
        "grade": raw["tgrade"].map({"I": 1, "II": 2, "III": 3}).astype(np.int64),
        "positive_nodes": raw["pnodes"].astype(float),
        "progesterone_receptor": raw["progrec"].astype(float),
        "oestrogen_receptor": raw["estrec"].astype(float),
        "event": raw["cens"].astype(float).astype(np.int64)})
    cols = {"hormone_therapy": {"type": "bool"},
            "age": {"type": "float", "bounds": [18, 100]}, "postmenopausal": {"type": "bool"},
            "tumour_size": {"type": "float", "bounds": [0, 200]},
            "grade": {"type": "category", "categories": [1, 2, 3]},
            "positive_nodes": {"type": "float", "bounds": [0, 60]},
            "progesterone_receptor": {"type": "float", "bounds": [0, 3000]},
            "oestrogen_receptor": {"type": "float", "bounds": [0, 3000]}}
    schema = {"kind": "table", "records": len(df), "description": "GBSG2 (scikit-survival)",
              "label": {"column": "event", "classes": [0, 1]}, "columns": cols}
    return "gbsg2", df, schema


def run(df, meta, eps: float, seed: int, weights: str) -> dict:
    from shared.runner import run_job

    spec = dict(kind="dpsgd_table", dataset=meta.name, label=meta.label, epsilon=eps,
                delta=DELTA, seed=seed, metrics_epsilon=0.0, class_weights=weights)
    m = run_job(spec, df, meta, pin_randomness=seed, mock=True)["metrics"]
    rec = m["per_class_recall"]
    minority = str(meta.labels[int(np.argmin(meta.label_rates))])
    return {"minority_recall": rec[minority], "balanced_accuracy": m["balanced_accuracy"],
            "accuracy": m["test_accuracy"], "auc": m["test_auc"]}


def bench(name, df, schema, seeds, epsilons) -> list[str]:
    from shared.schema import meta_from_schema

    label = schema["label"]["column"]
    shares = df[label].value_counts(normalize=True)
    schema["label"]["rates"] = [round(float(shares.get(c, 0.0)), 3)
                                for c in schema["label"]["classes"]]
    meta = meta_from_schema(schema, name)
    out = [f"{name}: {len(df)} records, declared rates {meta.label_rates}, {len(seeds)} seeds",
           f"  {'':24s} {'min. recall':>11s} {'bal. acc':>9s} {'accuracy':>9s} {'AUC':>6s}"]
    for eps in epsilons:
        for weights in ("none", "balanced"):
            rows = [run(df, meta, eps, s, weights) for s in seeds]
            mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
            out.append(f"  eps={eps:g} {weights:14s} {mean['minority_recall']:11.3f} "
                       f"{mean['balanced_accuracy']:9.3f} {mean['accuracy']:9.3f} "
                       f"{mean['auc']:6.3f}")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eps", type=float, nargs="+", default=[2.0])
    ap.add_argument("--sksurv-wheel", help="scikit-survival wheel (pip download --no-deps)")
    args = ap.parse_args(argv)
    tables = [synthetic] + ([lambda: flchain(args.sksurv_wheel), lambda: gbsg2(args.sksurv_wheel)]
                            if args.sksurv_wheel else [])
    for make in tables:
        print("\n".join(bench(*make(), args.seeds, args.eps)), flush=True)


if __name__ == "__main__":
    main()
