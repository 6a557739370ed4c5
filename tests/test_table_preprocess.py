"""Issue 13, real tables: table jobs map the schema's columns with a public scikit-learn
ColumnTransformer (one-hot categories, bounds to [-1, 1], missing indicators), the same at
training, evaluation and prediction; older model configs keep predicting as before."""
from __future__ import annotations

import json
from contextlib import ExitStack
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from datasite.mock import synthetic_mock
from researcher import jobs
from shared.jobs import DPSGDTableSpec
from shared.privacy.private_metrics import mock_evaluation
from shared.randomness import pinned_randomness
from shared.schema import meta_from_schema
from shared.training.models import build_model, model_config
from shared.training.preprocess import (DECLARED_BOUNDS, PUBLIC_SCALE, ROW_L2, SCHEMA_COLUMNS,
                                        declared_bounds, feature_names, model_inputs,
                                        preprocess, schema_transformer, table_preprocessing)
from shared.training.results import load_model, predict, predict_proba
from shared.training.serialise import model_bytes
from shared.training.table import table_xy, train_dpsgd_table

GRADES = ["I", "II", "III"]
NAMES = ["age", "smoker", "grade=I", "grade=II", "grade=III", "stage=1", "stage=2", "stage=3",
         "stage=4", "crp", "crp_missing"]


def _meta(records: int = 600):
    schema = {"kind": "table", "records": records,
              "label": {"column": "y", "classes": ["no", "yes"]},
              "columns": {"age": {"type": "int", "unit": "years", "bounds": [18, 90]},
                          "smoker": {"type": "bool"},
                          "grade": {"type": "category", "categories": GRADES},
                          "stage": {"type": "category", "categories": [1, 2, 3, 4]},
                          "crp": {"type": "float", "bounds": [0, 300], "missing": True}}}
    return meta_from_schema(schema, "cohort")


def _table(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """A stored table (codes, NaN for missing crp), columns NOT in the declared order; the
    label is grade II (the middle code): no monotone function of the code separates it."""
    rng = np.random.default_rng(seed)
    grade = rng.integers(0, 3, n)
    crp = rng.uniform(0, 300, n)
    crp[rng.random(n) < 0.2] = np.nan
    return pd.DataFrame({"crp": crp, "stage": rng.integers(1, 5, n), "y": (grade == 1).astype(int),
                         "grade": grade, "age": rng.integers(18, 91, n),
                         "smoker": rng.random(n) < 0.3})


def _train(df, meta, columns=True, epsilon=8.0, epochs=30, seed=0):
    spec = DPSGDTableSpec(dataset="cohort", label="y", epsilon=epsilon, delta=1e-5,
                          epochs=epochs, metrics_epsilon=0.0, seed=seed).validate(meta)
    spec = spec.resolved(meta)
    with ExitStack() as stack:
        stack.enter_context(pinned_randomness(seed))
        stack.enter_context(mock_evaluation())  # exact held-out metrics (the test's own data)
        return train_dpsgd_table(df, spec, classes=meta.labels,
                                 feature_scales=meta.feature_scales,
                                 feature_bounds=declared_bounds(meta),
                                 columns=meta.columns if columns else None)


# -- the map ---------------------------------------------------------------------------------------
def test_categories_become_one_hot_over_the_declared_codes():
    meta = _meta()
    df = pd.DataFrame({"crp": [150.0] * 4, "stage": [1, 4, 9, 2], "y": [0] * 4,
                       "grade": [0, 1, 2, 7], "age": [18, 90, 54, 200],
                       "smoker": [True, False, True, False]})
    F = model_inputs(df, meta)
    assert list(F.columns) == NAMES  # declared order, whatever the stored order
    grade = F[["grade=I", "grade=II", "grade=III"]].to_numpy()
    np.testing.assert_array_equal(grade, [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]])  # 7: none
    stage = F[["stage=1", "stage=2", "stage=3", "stage=4"]].to_numpy()
    np.testing.assert_array_equal(stage, [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_allclose(F["age"], [-1, 1, 0, 1])  # bounds to [-1, 1], 200 clipped to 90
    np.testing.assert_array_equal(F["smoker"], [1, -1, 1, -1])  # bool: -1 / 1
    # before: the code was a number, grade II sat between I and III on one axis
    old = table_preprocessing(["grade"], declared_bounds(meta), meta.feature_scales)
    assert old["preprocessing"] == DECLARED_BOUNDS and old["feature_bounds"] == [[0.0, 2.0]]


def test_missing_values_get_an_indicator_and_the_public_fill():
    meta = _meta()
    df = pd.DataFrame({"age": [50] * 3, "smoker": [False] * 3, "grade": [0] * 3,
                       "stage": [1] * 3, "crp": [np.nan, 0.0, 150.0], "y": [0] * 3})
    F = model_inputs(df, meta)
    np.testing.assert_array_equal(F["crp_missing"], [1, 0, 0])
    np.testing.assert_allclose(F["crp"], [0, -1, 0])  # missing -> the declared midpoint (0)
    # a column not declared missing gets no indicator
    assert [c for c in F.columns if c.endswith("_missing")] == ["crp_missing"]


# -- no statistic of the records ---------------------------------------------------------------
def _neighbours():
    """Two tables that differ in one record: D' adds a record with missing crp (no other
    record misses it), the only smoker, an extreme age."""
    meta = _meta()
    d = _table(200)
    d["crp"] = d["crp"].fillna(10.0)
    d["smoker"] = False
    extra = pd.DataFrame({"crp": [np.nan], "stage": [4], "y": [1], "grade": [1], "age": [90],
                          "smoker": [True]})
    return meta, d, pd.concat([d, extra], ignore_index=True)


PROBE = pd.DataFrame({"age": [30, 60], "smoker": [False, True], "grade": [0, 2],
                      "stage": [2, 3], "crp": [np.nan, 100.0]})
COLS = ["age", "smoker", "grade", "stage", "crp"]


def test_attack_two_neighbouring_tables_give_the_same_transform():
    """ATTACK: the transform (config and outputs on a fixed probe) is a function of the schema:
    neighbouring tables give identical ones, so it releases nothing about the extra record."""
    meta, d, d2 = _neighbours()
    preps = [table_xy(t, "y", meta.labels, meta.feature_scales, declared_bounds(meta),
                      meta.columns)[4] for t in (d, d2)]
    assert preps[0]["preprocessing"] == SCHEMA_COLUMNS
    assert json.dumps(preps[0], sort_keys=True) == json.dumps(preps[1], sort_keys=True)
    outs = [preprocess(PROBE[COLS].to_numpy(), p) for p in preps]
    np.testing.assert_array_equal(outs[0], outs[1])
    # the fitted sklearn objects hold the same parameters (fitted on the declarations only)
    fitted = [schema_transformer(p["schema_columns"]) for p in preps]
    assert [repr(t.get_params()) for t in fitted] == [repr(fitted[0].get_params())] * 2
    # and a trained model's released config is the same map for both tables
    configs = [_train(t, meta, epochs=1)["model_config"] for t in (d, d2)]
    assert configs[0] == configs[1]


def test_defence_off_a_transform_fitted_on_the_records_differs_between_neighbours():
    """The comparison with the defence switched off: the usual sklearn preprocessing, fitted on
    the table, changes with one record (the same check as above fails)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import MissingIndicator
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    meta, d, d2 = _neighbours()

    def fitted_on(table):
        ct = ColumnTransformer([
            ("num", StandardScaler(), [0, 1]),  # means and stds of the records
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), [2, 3]),
            # default features="missing-only": an indicator only if some record misses crp
            ("miss", MissingIndicator(error_on_new=False), [4])],
            sparse_threshold=0.0)
        return ct.fit(table[COLS].to_numpy(dtype=np.float64))

    outs = [fitted_on(t).transform(PROBE[COLS].to_numpy(dtype=np.float64)) for t in (d, d2)]
    assert outs[0].shape != outs[1].shape or not np.array_equal(outs[0], outs[1])
    # the extra record's missing crp alone adds a feature: its presence is readable
    assert outs[1].shape[1] == outs[0].shape[1] + 1


# -- saved configs -------------------------------------------------------------------------------
def test_a_saved_config_maps_new_rows_as_training_did():
    meta = _meta()
    df = _table()
    result = json.loads(json.dumps(_train(df, meta, epochs=2), default=lambda b: b.hex()))
    result["model_state"] = bytes.fromhex(result["model_state"])  # JSON round trip of the config
    config = result["model_config"]
    assert config["preprocessing"] == SCHEMA_COLUMNS and config["feature_names"] == NAMES
    assert config["n_features"] == len(NAMES)
    model = load_model(result)
    X = preprocess(df[config["feature_columns"]].to_numpy(), config)
    with torch.no_grad():
        inside = torch.softmax(model(torch.from_numpy(X)), 1).numpy()
    np.testing.assert_allclose(predict_proba(model, config, df), inside, rtol=1e-6)
    # a researcher's rows may name the categories (the schema's names) instead of codes
    named = df.astype({"grade": object})
    named["grade"] = [GRADES[g] for g in df["grade"]]
    np.testing.assert_allclose(predict_proba(model, config, named), inside, rtol=1e-6)
    with pytest.raises(ValueError, match="'age' must hold numbers"):
        predict(model, config, named.assign(age="old"))


@pytest.mark.parametrize("prep", [
    {"preprocessing": DECLARED_BOUNDS, "feature_bounds": [[0.0, 10.0], [-100.0, 100.0]]},
    {"preprocessing": PUBLIC_SCALE, "feature_scales": [10.0, 100.0]},
    {"preprocessing": ROW_L2}])
def test_models_released_with_older_configs_predict_as_before(prep):
    """declared_bounds, public_scale and row_l2_normalise configs keep their own map."""
    by_hand = {DECLARED_BOUNDS: [[0.0, 0.5], [-1.0, 0.0]],  # (x - mid) / half
               PUBLIC_SCALE: [[0.5, 0.5], [-1.0, 0.0]],  # clip(x / s, -1, 1)
               ROW_L2: [[5 / np.hypot(5, 50), 50 / np.hypot(5, 50)], [-1.0, 0.0]]}
    torch.manual_seed(0)
    lin = build_model("logreg", 2, 2)
    config = model_config("logreg", 2, 2)
    config.update(classes=[0, 1], feature_columns=["a", "b"], **prep)
    df = pd.DataFrame({"a": [5.0, -20.0], "b": [50.0, 0.0]})
    model = load_model({"model_state": model_bytes(lin), "model_config": config})
    with torch.no_grad():
        want = torch.softmax(lin(torch.tensor(by_hand[prep["preprocessing"]],
                                              dtype=torch.float32)), 1).numpy()
    np.testing.assert_allclose(predict_proba(model, config, df), want, rtol=1e-5)


def test_metadata_without_declarations_keeps_the_older_maps():
    meta = _meta()
    cols = ["age", "crp"]
    assert table_preprocessing(cols, declared_bounds(meta), None, None)["preprocessing"] \
        == DECLARED_BOUNDS
    partial = {"age": meta.columns["age"]}  # a column without declaration: not schema_columns
    assert table_preprocessing(cols, declared_bounds(meta), None, partial)["preprocessing"] \
        == DECLARED_BOUNDS


# -- what the researcher sees ------------------------------------------------------------------
def test_the_researcher_sees_the_feature_names_on_the_mock():
    meta = _meta()
    mock = synthetic_mock(meta, 50, seed=1)
    site = SimpleNamespace(datasets={"cohort": SimpleNamespace(meta=meta, mock=mock)})
    job = jobs.DPSGD("cohort", "y", epsilon=1.0, delta=1e-5)
    assert job.feature_names(site) == feature_names(meta) == NAMES
    F = job.features(site)
    assert list(F.columns) == NAMES and len(F) == 50
    assert F["crp_missing"].isin([0, 1]).all() and F["crp_missing"].sum() > 0  # mock misses 10%
    rows = F[["grade=I", "grade=II", "grade=III"]].sum(axis=1)
    assert (rows == 1).all()  # every mock grade is a declared one


# -- utility -----------------------------------------------------------------------------------
def test_one_hot_learns_a_category_effect_the_code_as_a_number_cannot():
    """The label is grade II (the middle code): a linear model on the code scaled to [-1, 1]
    stays near the majority rate, on the one-hot columns it learns it."""
    meta, df = _meta(), _table()
    majority = max(df["y"].mean(), 1 - df["y"].mean())
    before = _train(df, meta, columns=False)["metrics"]["test_accuracy"]
    after = _train(df, meta)["metrics"]["test_accuracy"]
    assert before < majority + 0.05, (before, majority)
    assert after > 0.9, (after, majority)


def test_removal_and_dpal_map_the_schema_the_same_way():
    """Certified removal and DP-AL read the same declarations: one-hot categories and missing
    indicators (rows of norm <= 1 for the certificate), and the removal model released as a
    torch model predicts what the removal model itself predicts on raw rows."""
    from shared.jobs.dpal import DPALSpec, dpal_features
    from shared.jobs.removal import RemovalSpec
    from shared.removal import (job_features, make_features, table_model_state,
                                train_removable)
    from shared.removal import predict_proba as removal_proba

    meta, df = _meta(), _table()
    X, _, extras = dpal_features(DPALSpec(dataset="cohort", label="y", epsilon=2.0,
                                          delta=1e-5), df, meta)
    assert extras["preprocessing"] == SCHEMA_COLUMNS and X.shape == (len(df), len(NAMES))
    F, y, pipeline, cols = job_features(RemovalSpec(dataset="cohort", label="y", delta=1e-6),
                                        df, meta)
    assert pipeline["preprocessing"] == SCHEMA_COLUMNS and F.shape == (len(df), len(NAMES) + 1)
    assert np.linalg.norm(F, axis=1).max() <= 1 + 1e-12
    model = train_removable(F, y, [0, 1], 1e-3, 1.0, eps=1.0, delta=1e-6, seed=0,
                            feature_pipeline=pipeline)
    state, config = table_model_state(model, cols, pipeline)
    torch_model = load_model({"model_state": state, "model_config": config})
    got = predict_proba(torch_model, config, df)
    want = removal_proba(model, make_features(df[cols].to_numpy(), pipeline))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_a_declared_date_is_a_scaled_number_and_keeps_the_schema_map():
    """A date column (float days since its origin, bounds in days) must not drop the whole
    table back to the older bounds-only map (categories would lose their one-hot)."""
    schema = {"kind": "table", "records": 10, "label": {"column": "y", "classes": [0, 1]},
              "columns": {"admitted": {"type": "date", "origin": "2000-01-01",
                                       "bounds": ["2015-01-01", "2024-01-01"]},
                          "grade": {"type": "category", "categories": GRADES}}}
    meta = meta_from_schema(schema, "dated")
    assert feature_names(meta) == ["admitted", "grade=I", "grade=II", "grade=III"]
    lo, hi = meta.columns["admitted"]["bounds"]
    df = pd.DataFrame({"admitted": [lo, (lo + hi) / 2, hi + 400], "grade": [0, 1, 2],
                       "y": [0, 1, 0]})
    X = model_inputs(df, meta)
    np.testing.assert_allclose(X["admitted"], [-1, 0, 1])
