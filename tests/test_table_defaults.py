"""Issue 13, defaults that learn: table features scaled from the owner's declared bounds to
[-1, 1] (every table consumer alike, older models still predicting), default table-job options
that beat the majority class, and per-class recall / balanced accuracy / macro AUC in metrics."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from datasite.demo_data import breast_cancer_frame, breast_cancer_schema
from shared.data import DatasetMeta
from shared.privacy import private_metrics as pm
from shared.runner import run_job
from shared.schema import meta_from_schema
from shared.training.models import build_model, model_config
from shared.training.preprocess import (DECLARED_BOUNDS, PUBLIC_SCALE, SCHEMA_COLUMNS,
                                        bounds_scale, declared_bounds, preprocess,
                                        table_preprocessing)
from shared.training.results import load_model, predict_proba
from shared.training.serialise import model_bytes

DELTA = 1e-5


def _cohort_meta() -> DatasetMeta:
    schema = {"kind": "table", "records": 400,
              "label": {"column": "y", "classes": [0, 1, 2]},
              "columns": {"age": {"type": "int", "unit": "years", "bounds": [18, 90]},
                          "smoker": {"type": "bool"},
                          "stage": {"type": "category", "categories": [1, 2, 3, 4]}}}
    return meta_from_schema(schema, "cohort")


def _cohort(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Three classes that the age and the stage separate (a learnable 3-class table)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return pd.DataFrame({"age": np.clip(30 + 20 * y + rng.integers(-8, 9, n), 18, 90),
                         "smoker": rng.random(n) < 0.3,
                         "stage": np.clip(1 + y + rng.integers(0, 2, n), 1, 4),
                         "y": y})


# -- the map ---------------------------------------------------------------------------------------
def test_declared_bounds_map_each_column_to_minus_one_one():
    meta = _cohort_meta()
    b = declared_bounds(meta)
    assert b == {"age": [18.0, 90.0], "smoker": [0.0, 1.0], "stage": [1.0, 4.0]}
    X = np.array([[18, 0, 1], [90, 1, 4], [54, 1, 2.5], [150, 0, -3], [np.nan, np.nan, np.nan]])
    Z = bounds_scale(X, [b[c] for c in ("age", "smoker", "stage")])
    np.testing.assert_allclose(Z, [[-1, -1, -1], [1, 1, 1], [0, 1, 0], [1, -1, -1], [0, 0, 0]])
    # centred: the old public scale put age 18..90 at 0.2..1 (never below 0)
    assert Z[:3, 0].min() == -1


def test_preprocessing_prefers_declared_bounds_and_falls_back():
    meta = _cohort_meta()
    cols = ["age", "smoker", "stage"]
    prep = table_preprocessing(cols, declared_bounds(meta), meta.feature_scales)
    assert prep == {"preprocessing": DECLARED_BOUNDS,
                    "feature_bounds": [[18.0, 90.0], [0.0, 1.0], [1.0, 4.0]]}
    # metadata without declarations (published before schemas): the older maps, unchanged
    assert table_preprocessing(cols, {}, meta.feature_scales)["preprocessing"] == PUBLIC_SCALE
    assert table_preprocessing(cols, {"age": [18, 90]}, None) == {
        "preprocessing": "row_l2_normalise"}


def test_a_model_released_with_the_old_scaling_still_predicts():
    """A config saying ``public_scale`` keeps its map at prediction (backwards compatible)."""
    torch.manual_seed(0)
    lin = build_model("logreg", 2, 2)
    config = model_config("logreg", 2, 2)
    config.update(classes=[0, 1], feature_columns=["a", "b"], preprocessing=PUBLIC_SCALE,
                  feature_scales=[10.0, 100.0])
    df = pd.DataFrame({"a": [5.0, -20.0], "b": [50.0, 0.0]})
    model = load_model({"model_state": model_bytes(lin), "model_config": config})
    with torch.no_grad():
        want = torch.softmax(lin(torch.tensor([[0.5, 0.5], [-1.0, 0.0]])), 1).numpy()
    np.testing.assert_allclose(predict_proba(model, config, df), want, rtol=1e-6)


# -- the jobs --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bc():
    df = breast_cancer_frame()
    return df, meta_from_schema(breast_cancer_schema(len(df)), "bc")


def test_default_table_job_beats_the_majority_class_at_eps_1(bc):
    """With the spec's defaults alone, a first job on the breast-cancer table learns at eps=1
    (before: every default run predicted the majority class, accuracy = majority rate)."""
    df, meta = bc
    spec = dict(kind="dpsgd_table", dataset="bc", label="diagnosis", epsilon=1.0, delta=DELTA,
                metrics_epsilon=0.0)
    r = run_job(spec, df, meta, pin_randomness=0, mock=True)
    assert r["model_config"]["preprocessing"] == SCHEMA_COLUMNS  # all floats: bounds to [-1, 1]
    m = r["metrics"]
    assert m["test_accuracy"] >= 0.90 and m["test_auc"] >= 0.95
    assert min(m["per_class_recall"].values()) >= 0.75  # the minority class is not missed
    # the researcher's side applies the same map: same probabilities from the raw columns
    cfg = r["model_config"]
    model = load_model(r)
    X = preprocess(df[cfg["feature_columns"]].to_numpy(), cfg)
    with torch.no_grad():
        inside = torch.softmax(model(torch.from_numpy(X)), 1).numpy()
    np.testing.assert_allclose(predict_proba(model, cfg, df), inside, rtol=1e-6)


def test_federated_dpal_and_removal_use_the_declared_bounds(bc):
    from shared.jobs.dpal import DPALSpec, dpal_features
    from shared.jobs.removal import RemovalSpec
    from shared.removal import job_features, table_model_state

    df, meta = bc
    cols = [c for c in df.columns if c != "diagnosis"]
    bounds = declared_bounds(meta)
    want = bounds_scale(df[cols].to_numpy(), [bounds[c] for c in cols])
    fed = dict(kind="fed_dpsgd_table", dataset="bc", label="diagnosis", epsilon=1.0,
               delta=DELTA, rounds=2, epochs=1, metrics_epsilon=0.0)
    assert run_job(fed, df, meta, pin_randomness=0)["model_config"]["preprocessing"] \
        == SCHEMA_COLUMNS  # the schema's map: here (all floats) the declared bounds alone
    dspec = DPALSpec(dataset="bc", label="diagnosis", epsilon=2.0, delta=DELTA)
    X, _, extras = dpal_features(dspec, df, meta)
    assert extras["preprocessing"] == SCHEMA_COLUMNS
    np.testing.assert_allclose(X, want, rtol=1e-6)
    rspec = RemovalSpec(dataset="bc", label="diagnosis", delta=1e-6)
    F, _, pipeline, _ = job_features(rspec, df, meta)
    assert pipeline["preprocessing"] == SCHEMA_COLUMNS
    assert np.linalg.norm(F, axis=1).max() <= 1 + 1e-12
    np.testing.assert_allclose(F[:, :-1] * np.sqrt(len(cols) + 1), want, rtol=1e-5, atol=1e-6)
    # a removal model trained under the old scaling keeps its own pipeline when a record goes
    old = dict(pipeline, preprocessing=PUBLIC_SCALE,
               feature_scales=[meta.feature_scales[c] for c in cols])
    old.pop("schema_columns")
    F_old, _, kept, _ = job_features(rspec, df, meta, pipeline=old)
    assert kept["preprocessing"] == PUBLIC_SCALE
    assert not np.allclose(F_old, F)
    # and its released torch model says the map it was trained with
    model = SimpleNamespace(weights=np.zeros((len(cols) + 1, 1)), classes=[0, 1])
    _, config = table_model_state(model, cols, pipeline)
    assert config["schema_columns"] == pipeline["schema_columns"]


# -- metrics ---------------------------------------------------------------------------------------
def test_per_class_recall_and_balanced_accuracy_are_post_processing_of_the_histogram():
    y = np.array([0] * 80 + [1] * 20)
    pred = np.array([0] * 80 + [1] * 5 + [0] * 15)  # the minority class is mostly missed
    with pm.mock_evaluation():
        exact = pm.release(y, pred, [0, 1], None, stream=(0,))
    assert exact["per_class_recall"] == {"0": 1.0, "1": 0.25}
    assert exact["test_accuracy"] == 0.85 and exact["balanced_accuracy"] == 0.625
    noisy = pm.release(y, pred, [0, 1], 2.0, stream=(0, 3, 0))
    h = noisy["noisy_counts"]
    for c in ("0", "1"):  # recall of each class from the released cells alone
        rec = h[c]["correct"] / (h[c]["correct"] + h[c]["wrong"])
        assert noisy["per_class_recall"][c] == pytest.approx(float(np.clip(rec, 0, 1)))
    assert noisy["balanced_accuracy"] == pytest.approx(np.mean(
        list(noisy["per_class_recall"].values())))
    none = pm.release(y, pred, [0, 1], None, stream=(0,), n_test=100)
    assert none["per_class_recall"] == {} and none["balanced_accuracy"] is None


def test_three_class_mock_run_reports_macro_auc():
    meta = dataclasses.replace(_cohort_meta(), n_records=400)
    df = _cohort()
    spec = dict(kind="dpsgd_table", dataset="cohort", label="y", epsilon=4.0, delta=DELTA)
    m = run_job(spec, df, meta, pin_randomness=0, mock=True)["metrics"]
    assert m["test_auc_average"] == "macro one-vs-rest" and m["test_auc"] > 0.8
    assert set(m["per_class_recall"]) == {"0", "1", "2"} and m["balanced_accuracy"] > 0.5


# -- batch size from the public record count ----------------------------------------------------
def _big_meta(records: int) -> DatasetMeta:
    schema = {"kind": "table", "records": records, "label": {"column": "y", "classes": [0, 1]},
              "columns": {"age": {"type": "int", "bounds": [18, 90]}}}
    return meta_from_schema(schema, "big")


def test_auto_batch_size_follows_the_public_count():
    from shared.jobs.bounds import STEPS_MAX, STEPS_PER_EPOCH_MAX, auto_batch_size, dpsgd_steps

    assert auto_batch_size(455, 30) == 64  # the measured default on small tables
    assert auto_batch_size(40, 30) == 40  # never above the training records
    assert auto_batch_size(10_000, 30) == 100  # a 1% sample rate
    for n, epochs in ((10_000, 30), (50_000, 300), (8_000, 30 * 10), (123_457, 100)):
        b = auto_batch_size(n, epochs)
        assert b <= n and -(-n // b) <= STEPS_PER_EPOCH_MAX
        assert dpsgd_steps(n, b, epochs) <= STEPS_MAX
        smaller_fails = (dpsgd_steps(n, b - 1, epochs) > STEPS_MAX
                         or -(-n // (b - 1)) > STEPS_PER_EPOCH_MAX)
        assert smaller_fails or b == 64  # the smallest batch that passes both checks


def test_a_large_table_trains_with_the_default_batch_but_not_a_fixed_64():
    """8,000 training records: the old fixed 64 fails the 1% sample-rate check; the default
    (0 = from the public count) passes it, prices, and is what the result reports."""
    from shared.errors import SpecError
    from shared.jobs import DPSGDTableSpec
    from shared.jobs.federated import FedScheduleSpec

    meta = _big_meta(10_000)
    spec = DPSGDTableSpec("big", "y", 2.0, 1e-6)
    spec.validate(meta)
    assert spec.batch_for(meta) == 80 and spec.resolved(meta).batch_size == 80
    assert spec.planned_event(meta) is not None
    with pytest.raises(SpecError, match="batch_size >= 80"):
        dataclasses.replace(spec, batch_size=64).validate(meta)
    # ten federated rounds of 30 epochs: 300 epochs over 8,000 records fit in STEPS_MAX
    fed = FedScheduleSpec("big", "y", 2.0, 1e-6, rounds=10)
    fed.validate(meta)
    assert fed.batch_for(meta) > 80
    with pytest.raises(SpecError, match="DP-SGD steps"):
        dataclasses.replace(fed, batch_size=80).validate(meta)
