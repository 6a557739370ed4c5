"""Does a first DP table job learn? The product's DP logistic regression against non-private
scikit-learn logistic regression and the majority class, on real clinical tables.

    .venv/bin/python benchmarks/table_utility.py [--seeds 0 1 2] [--eps 1 2 4] [--sksurv-wheel W]

For each table and seed: the product's own per-record split (shared.training.split, computed
exactly as the job computes it), then on the same train/test records

* non-private: scikit-learn ``StandardScaler`` + ``LogisticRegression`` on the raw columns;
* DP: the product's ``dpsgd_table`` job with its *default* options (only ``dataset``, ``label``,
  ``epsilon``, ``delta`` given), through ``shared.runner.run_job`` on the DataFrame with the
  metadata published from the table's reviewed schema (``shared.schema.meta_from_schema``), at
  delta = 1e-5 and ``metrics_epsilon=0`` so that epsilon is the whole price. The model is
  evaluated exactly on the held-out split (``mock=True``: exact metrics; training is unchanged).

Tables: (a) scikit-learn's breast-cancer table (``datasite.demo_data``, its reviewed schema);
(b) GBSG2 (German Breast Cancer Study Group 2, 686 patients, shipped in ``lifelines``:
``pip install lifelines``), label = recurrence or death observed (``cens``), follow-up time
dropped; string columns numeric-encoded here, bounds declared from domain knowledge;
(c) optionally FLCHAIN (7,874 patients of the Mayo serum free light chain study, shipped in
``scikit-survival``): give ``--sksurv-wheel`` the wheel from ``pip download --no-deps
scikit-survival`` (installing it would upgrade numpy), label = death, follow-up and cause of death
dropped, missing creatinine filled with a public normal value plus a missing indicator.

Prints per table and epsilon the mean (over seeds) test accuracy, AUC, majority rate of the test
split, and the ratio DP / non-private; target: at eps=4 within 5 points of non-private in
accuracy and AUC, at eps=1 clearly above the majority rate.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DELTA = 1e-5


# -- tables --------------------------------------------------------------------------------------
def breast_cancer():
    from datasite.demo_data import breast_cancer_frame, breast_cancer_schema

    df = breast_cancer_frame()
    return "breast_cancer", df, breast_cancer_schema(len(df))


def gbsg2():
    from lifelines.datasets import load_gbsg2

    raw = load_gbsg2()
    df = pd.DataFrame({
        "hormone_therapy": (raw["horTh"] == "yes").astype(bool),
        "age": raw["age"].astype(np.int64),
        "postmenopausal": (raw["menostat"] == "Post").astype(bool),
        "tumour_size": raw["tsize"].astype(np.int64),
        "grade": raw["tgrade"].map({"I": 1, "II": 2, "III": 3}).astype(np.int64),
        "positive_nodes": raw["pnodes"].astype(np.int64),
        "progesterone_receptor": raw["progrec"].astype(np.int64),
        "oestrogen_receptor": raw["estrec"].astype(np.int64),
        "event": raw["cens"].astype(np.int64)})
    cols = {  # domain bounds (what the measure can be), not this table's range
        "hormone_therapy": {"type": "bool"},
        "age": {"type": "int", "unit": "years", "bounds": [18, 100]},
        "postmenopausal": {"type": "bool"},
        "tumour_size": {"type": "int", "unit": "mm", "bounds": [0, 200]},
        "grade": {"type": "category", "categories": [1, 2, 3]},
        "positive_nodes": {"type": "int", "bounds": [0, 60]},
        "progesterone_receptor": {"type": "int", "unit": "fmol/mg", "bounds": [0, 3000]},
        "oestrogen_receptor": {"type": "int", "unit": "fmol/mg", "bounds": [0, 3000]}}
    schema = {"kind": "table", "records": len(df), "description": "GBSG2 (lifelines)",
              "label": {"column": "event", "classes": {0: "censored", 1: "recurrence_or_death"}},
              "columns": cols}
    return "gbsg2", df, schema


def flchain(wheel: str):
    import io
    import zipfile

    from scipy.io import arff

    with zipfile.ZipFile(wheel) as z:
        text = z.read("sksurv/datasets/data/flchain.arff").decode()
    raw = pd.DataFrame(arff.loadarff(io.StringIO(text))[0])
    for c in raw.columns:
        if raw[c].dtype == object:
            raw[c] = raw[c].str.decode("utf-8")
    creat = pd.to_numeric(raw["creatinine"], errors="coerce")
    df = pd.DataFrame({
        "age": raw["age"].astype(float), "male": (raw["sex"] == "M").astype(bool),
        "sample_year": raw["sample.yr"].astype(float), "kappa": raw["kappa"].astype(float),
        "lambda": raw["lambda"].astype(float), "flc_group": raw["flc.grp"].astype(float),
        "creatinine": creat.fillna(1.0), "creatinine_missing": creat.isna(),
        "mgus": (raw["mgus"].astype(str) == "yes").astype(bool),
        "death": (raw["death"].astype(str) == "dead").astype(np.int64)})
    cols = {"age": {"type": "float", "unit": "years", "bounds": [18, 110]},
            "male": {"type": "bool"},
            "sample_year": {"type": "float", "bounds": [1990, 2010]},
            "kappa": {"type": "float", "unit": "mg/dL", "bounds": [0, 40]},
            "lambda": {"type": "float", "unit": "mg/dL", "bounds": [0, 40]},
            "flc_group": {"type": "float", "bounds": [1, 10]},
            "creatinine": {"type": "float", "unit": "mg/dL", "bounds": [0, 15]},
            "creatinine_missing": {"type": "bool"}, "mgus": {"type": "bool"}}
    schema = {"kind": "table", "records": len(df), "description": "FLCHAIN (scikit-survival)",
              "label": {"column": "death", "classes": {0: "alive", 1: "dead"}}, "columns": cols}
    return "flchain", df, schema


# -- one table -----------------------------------------------------------------------------------
def product_split(df: pd.DataFrame, meta, seed: int, test_fraction: float = 0.2):
    """(train, test) positions exactly as the dpsgd_table job splits ``df`` with ``seed``."""
    from shared.schema import clip_table
    from shared.training.preprocess import declared_bounds
    from shared.training.split import split_indices
    from shared.training.table import table_xy

    X, y, *_ = table_xy(clip_table(df, meta), meta.label, meta.labels,
                        meta.feature_scales or None, declared_bounds(meta), meta.columns or None)
    return split_indices(X, y, test_fraction, seed)


def nonprivate(df, meta, tr, te) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = df.drop(columns=[meta.label]).to_numpy(dtype=np.float64)
    y = df[meta.label].to_numpy()
    m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(X[tr], y[tr])
    p = m.predict_proba(X[te])[:, 1]
    return {"acc": float((m.predict(X[te]) == y[te]).mean()),
            "auc": float(roc_auc_score(y[te], p))}


def dp(df, meta, eps: float, seed: int, options: dict) -> dict:
    from shared.runner import run_job

    spec = dict(kind="dpsgd_table", dataset=meta.name, label=meta.label, epsilon=eps,
                delta=DELTA, seed=seed, metrics_epsilon=0.0, **options)
    r = run_job(spec, df, meta, pin_randomness=seed, mock=True)
    return {"acc": r["metrics"]["test_accuracy"], "auc": r["metrics"]["test_auc"]}


def bench(name, df, schema, seeds, epsilons, options) -> list[str]:
    from shared.schema import meta_from_schema

    meta = meta_from_schema(schema, name)
    rows, t0 = {}, time.perf_counter()
    for seed in seeds:
        tr, te = product_split(df, meta, seed)
        y = df[meta.label].to_numpy()
        rows.setdefault("majority", []).append(
            {"acc": float(max(np.mean(y[te] == c) for c in meta.labels)), "auc": 0.5})
        rows.setdefault("non-private", []).append(nonprivate(df, meta, tr, te))
        for eps in epsilons:
            rows.setdefault(f"DP eps={eps:g}", []).append(dp(df, meta, eps, seed, options))
    mean = {k: {m: statistics.mean(r[m] for r in v) for m in ("acc", "auc")}
            for k, v in rows.items()}
    ref = mean["non-private"]
    out = [f"{name}: {len(df)} records, {len(seeds)} seeds, {time.perf_counter() - t0:.0f} s",
           f"  {'':14s} {'accuracy':>9s} {'AUC':>7s} {'acc/np':>7s} {'AUC/np':>7s}"]
    for k, m in mean.items():
        out.append(f"  {k:14s} {m['acc']:9.3f} {m['auc']:7.3f} {m['acc'] / ref['acc']:7.3f} "
                   f"{m['auc'] / ref['auc']:7.3f}")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--eps", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    ap.add_argument("--sksurv-wheel", help="scikit-survival wheel (pip download --no-deps)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a dpsgd_table option instead of its default (e.g. epochs=20)")
    args = ap.parse_args(argv)
    options = {k: (float(v) if "." in v or "e" in v else int(v))
               for k, v in (o.split("=", 1) for o in args.option)}
    tables = [breast_cancer, gbsg2] + ([lambda: flchain(args.sksurv_wheel)]
                                        if args.sksurv_wheel else [])
    from shared.jobs import DPSGDTableSpec

    d = DPSGDTableSpec("x", "y", 1.0, DELTA)
    print(f"dpsgd_table defaults: model={d.model} epochs={d.epochs} batch_size={d.batch_size} "
          f"learning_rate={d.learning_rate} clip_norm={d.clip_norm}; options {options or '-'}")
    for make in tables:
        print("\n".join(bench(*make(), args.seeds, args.eps, options)), flush=True)


if __name__ == "__main__":
    main()
