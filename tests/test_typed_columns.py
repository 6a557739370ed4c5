"""Typed raw columns normalised at ingest (issue 13): a hospital export with string categories,
yes/no flags, a lab value missing for 17% of patients and string labels with a few missing,
drafted, reviewed as an owner would, uploaded (``prepare``, no live site) and trained on."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datasite import schema as ds_schema
from datasite.schema import draft, prepare
from shared.data import parse_published, published_description
from shared.schema import DRAFT_KEY, SchemaError, clip_table, meta_from_schema, normalise

N, N_NO_LABEL = 3200, 23
GRADES, SEXES = ["I", "II", "III"], ["F", "M"]


def messy_export(n: int = N, seed: int = 0) -> pd.DataFrame:
    """A cohort as exported: text categories, mixed-case yes/no, a lab value 17% missing, string
    labels (a few missing); the outcome depends on grade, smoking, age and the lab value."""
    rng = np.random.default_rng(seed)
    age = rng.integers(25, 90, n)
    grade = rng.integers(0, 3, n)
    smoker = rng.random(n) < 0.3
    crp = np.round(rng.gamma(2.0, 20.0, n), 1)
    logit = -2.2 + 1.6 * grade + 1.2 * smoker + 0.04 * (age - 57) + 0.01 * (crp - 40)
    dead = rng.random(n) < 1 / (1 + np.exp(-logit))
    df = pd.DataFrame({
        "age": age,
        "sex": np.array(SEXES)[rng.integers(0, 2, n)],
        "grade": np.array(GRADES)[grade],
        "smoker": np.where(smoker, rng.choice(["yes", "Yes", "YES"], n),
                           rng.choice(["no", "No"], n)),
        "crp": np.where(rng.random(n) < 0.17, np.nan, crp),
        "outcome": np.where(dead, "dead", "alive").astype(object),
    })
    df.loc[rng.choice(n, N_NO_LABEL, replace=False), "outcome"] = np.nan
    return df


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    df = messy_export()
    path = tmp_path_factory.mktemp("typed") / "cohort.csv"
    df.to_csv(path, index=False)
    return df, path


def reviewed(drafted: dict) -> dict:
    """The draft as an owner fixes it: marker removed, domain bounds instead of data ranges."""
    s = {k: v for k, v in drafted.items() if k != DRAFT_KEY}
    s["columns"]["age"]["bounds"] = [0, 120]
    s["columns"]["crp"]["bounds"] = [0, 300]
    return s


@pytest.fixture(scope="module")
def uploaded(export):
    df, path = export
    schema = reviewed(draft(path, label="outcome"))
    return (df, schema, *prepare("cohort", schema, table=str(path)))


def test_draft_proposes_types_from_the_messy_export(export):
    df, path = export
    d = draft(path, label="outcome")
    assert d[DRAFT_KEY] is True
    cols = d["columns"]
    assert cols["sex"] == {"type": "category", "categories": SEXES}
    assert cols["grade"] == {"type": "category", "categories": GRADES}
    assert cols["smoker"] == {"type": "bool"}
    assert cols["crp"]["type"] == "float" and cols["crp"]["missing"] is True
    assert cols["age"]["type"] == "int" and "missing" not in cols["age"]
    assert d["label"] == {"column": "outcome", "classes": ["alive", "dead"]}
    assert d["records"] == N - N_NO_LABEL
    with pytest.raises(SchemaError, match=DRAFT_KEY):
        normalise(d)  # still a draft
    import yaml

    text = ds_schema.draft_text(path, label="outcome")
    assert yaml.safe_load(text) == d  # names survive YAML (quoted where YAML would read a bool)


def test_stored_codes_follow_the_declared_order(uploaded):
    df, schema, payload, meta, mock, notes = uploaded
    kept = df[df["outcome"].notna()].reset_index(drop=True)
    assert len(payload) == N - N_NO_LABEL == meta.n_records
    assert list(payload.columns) == ["age", "sex", "grade", "smoker", "crp", "outcome"]
    assert (payload["grade"].to_numpy() == kept["grade"].map(GRADES.index).to_numpy()).all()
    assert (payload["sex"].to_numpy() == kept["sex"].map(SEXES.index).to_numpy()).all()
    assert payload["smoker"].dtype == bool
    assert (payload["smoker"] == kept["smoker"].str.lower().eq("yes")).all()
    assert (payload["outcome"].to_numpy() == (kept["outcome"] == "dead").to_numpy()).all()
    assert payload["outcome"].dtype == np.int64 and payload["grade"].dtype == np.int64


def test_declared_order_not_alphabetical(export):
    """Codes follow the order the owner declares, whatever the data's order."""
    df, path = export
    schema = reviewed(draft(path, label="outcome"))
    schema["columns"]["grade"]["categories"] = ["III", "II", "I"]
    schema["label"]["classes"] = ["dead", "alive"]
    payload = prepare("cohort", schema, table=str(path))[0]
    kept = df[df["outcome"].notna()].reset_index(drop=True)
    assert (payload["grade"].to_numpy() == kept["grade"].map(["III", "II", "I"].index)).all()
    assert (payload["outcome"].to_numpy() == (kept["outcome"] == "alive").to_numpy()).all()


def test_missing_labels_dropped_and_counted_for_the_owner(uploaded, export):
    _, schema, _, _, _, notes = uploaded
    assert sum(f"{N_NO_LABEL} records have no label 'outcome'" in n for n in notes) == 1
    wrong = dict(schema, records=N)  # the count with the unlabelled records: refused
    with pytest.raises(SchemaError, match=f"{N - N_NO_LABEL} records with a label "
                                          f"\\({N_NO_LABEL} more without a label"):
        prepare("cohort", wrong, table=str(export[1]))


def test_missing_values_kept_as_nan_where_allowed(uploaded):
    df, _, payload, meta, mock, notes = uploaded
    kept = df[df["outcome"].notna()].reset_index(drop=True)
    assert (payload["crp"].isna() == kept["crp"].isna()).all()
    assert 0.14 < payload["crp"].isna().mean() < 0.20
    assert meta.features["crp"] == "float64" and mock["crp"].dtype == np.float64
    assert mock["crp"].isna().any()  # code tried on the mock meets missing values too
    assert any("column 'crp':" in n and "missing values kept" in n for n in notes)
    clipped = clip_table(payload, meta)
    assert (clipped["crp"].isna() == payload["crp"].isna()).all()
    from shared.training.preprocess import bounds_scale

    X = bounds_scale(payload[["crp"]].to_numpy(), [[0, 300]])
    assert np.isfinite(X).all() and (X[payload["crp"].isna().to_numpy()] == 0).all()


def test_published_metadata_carries_names_and_no_counts(uploaded):
    df, schema, payload, meta, *_ = uploaded
    back = parse_published(published_description(meta))
    assert back == meta
    assert back.columns["grade"]["names"] == GRADES
    assert back.columns["grade"]["categories"] == [0, 1, 2]
    assert back.columns["sex"]["names"] == SEXES
    assert back.columns["crp"] == {"type": "float", "unit": "", "bounds": [0, 300],
                                   "missing": True}
    assert back.class_names == {"0": "alive", "1": "dead"} and back.labels == [0, 1]
    assert back == meta_from_schema(schema, "cohort")  # a function of the schema alone
    text = published_description(meta)
    n_missing = str(int(payload["crp"].isna().sum()))
    assert n_missing not in text and str(N_NO_LABEL) not in text


def test_dp_sgd_trains_on_the_normalised_table_and_beats_the_majority(uploaded):
    from shared.runner import run_job
    from shared.training import declared_bounds, load_model, predict_proba, split_indices, table_xy

    _, _, payload, meta, *_ = uploaded
    spec = dict(kind="dpsgd_table", dataset="cohort", label="outcome", epsilon=4.0, delta=1e-5)
    result = run_job(spec, payload, meta, pin_randomness=0)
    # the held-out records of the job's own split (the spec's default test_fraction and seed)
    X, y, *_ = table_xy(clip_table(payload, meta), "outcome", [0, 1],
                        feature_bounds=declared_bounds(meta), columns=meta.columns)
    _, te = split_indices(X, y, 0.2, 0)
    probs = predict_proba(load_model(result), result["model_config"], payload.iloc[te])
    truth = payload["outcome"].to_numpy()[te]
    accuracy = float(np.mean(probs.argmax(1) == truth))
    majority = max(truth.mean(), 1 - truth.mean())
    assert accuracy > majority + 0.10, (accuracy, majority)  # pins 0-2: 0.77 vs 0.55


def test_dp_statistics_drop_missing_values(uploaded):
    from shared.runner import run_job

    _, _, payload, meta, *_ = uploaded
    spec = {"kind": "dp_stats", "dataset": "cohort", "delta": 0.0, "queries": [
        {"type": "mean", "column": "crp", "bounds": [0, 300], "epsilon": 5.0},
        {"type": "histogram", "column": "grade", "categories": [0, 1, 2], "epsilon": 5.0}]}
    result = run_job(spec, payload, meta, pin_randomness=0)
    mean = result["answers"][0]["value"]
    assert np.isfinite(mean) and abs(mean - payload["crp"].mean()) < 5


# -- refusals -------------------------------------------------------------------------------------
def _upload_with(tmp_path, df, schema):
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    return prepare("t", schema, table=str(path))


def _small_schema(df, **columns):
    base = {"kind": "table", "records": int(df["outcome"].notna().sum()),
            "label": {"column": "outcome", "classes": ["alive", "dead"]},
            "columns": {"age": {"type": "int", "bounds": [0, 120]},
                        "sex": {"type": "category", "categories": SEXES},
                        "grade": {"type": "category", "categories": GRADES},
                        "smoker": {"type": "bool"},
                        "crp": {"type": "float", "bounds": [0, 300], "missing": True}}}
    base["columns"].update(columns)
    return base


def test_undeclared_category_is_refused_with_count_and_column(tmp_path):
    df = messy_export(200, seed=1)
    df.loc[df.index[df["outcome"].notna()][:7], "grade"] = "IV"
    with pytest.raises(SchemaError, match=r"column 'grade': 7 values are not declared "
                                          r"categories \('IV'"):
        _upload_with(tmp_path, df, _small_schema(df))


def test_undeclared_label_is_refused(tmp_path):
    df = messy_export(200, seed=1)
    df.loc[:2, "outcome"] = "lost"
    with pytest.raises(SchemaError, match=r"3 records have a label that is not a declared class "
                                          r"\(lost"):
        _upload_with(tmp_path, df, _small_schema(df))


def test_missing_value_where_not_allowed_is_refused(tmp_path):
    df = messy_export(200, seed=1)
    n = int(df.loc[df["outcome"].notna(), "crp"].isna().sum())  # unlabelled records are dropped
    with pytest.raises(SchemaError, match=rf"column 'crp': {n} missing values; declare missing: "
                                          "true"):
        _upload_with(tmp_path, df, _small_schema(df, crp={"type": "float", "bounds": [0, 300]}))


def test_bool_words_and_bad_bools(tmp_path):
    df = messy_export(200, seed=1)
    words = ["true", "FALSE", "Yes", "no", "y", "N", "1", "0", "t", "F"]
    df["smoker"] = [words[i % len(words)] for i in range(len(df))]
    payload = _upload_with(tmp_path, df, _small_schema(df))[0]
    want = [w.lower() in ("true", "yes", "y", "1", "t") for w in df["smoker"]]
    assert (payload["smoker"].to_numpy() == np.array(want)[df["outcome"].notna()]).all()
    df.loc[df.index[df["outcome"].notna()][:2], "smoker"] = "maybe"
    with pytest.raises(SchemaError, match=r"'smoker' is declared bool but 2 values"):
        _upload_with(tmp_path, df, _small_schema(df))


def test_schema_forms():
    """String categories and classes normalise to codes plus names, idempotently; integer
    forms are unchanged; YAML booleans must be quoted."""
    s = _small_schema(pd.DataFrame({"outcome": ["a", "b"]}))
    n = normalise(s)
    assert n["columns"]["grade"] == {"type": "category", "unit": "", "categories": [0, 1, 2],
                                     "names": GRADES}
    assert n["label"] == {"column": "outcome", "classes": [0, 1],
                          "names": {"0": "alive", "1": "dead"}}
    assert normalise(n) == n
    ints = dict(s, label={"column": "outcome", "classes": {1: "benign", 0: "malignant"}},
                columns={"stage": {"type": "category", "categories": [3, 1, 2]}})
    n = normalise(ints)
    assert n["columns"]["stage"] == {"type": "category", "unit": "", "categories": [1, 2, 3]}
    assert n["label"]["classes"] == [0, 1] and n["label"]["names"] == {"1": "benign",
                                                                      "0": "malignant"}
    with pytest.raises(SchemaError, match="YAML boolean"):
        normalise(dict(s, columns={"x": {"type": "category", "categories": [True, False]}}))
    with pytest.raises(SchemaError, match="missing is true or false"):
        normalise(dict(s, columns={"x": {"type": "bool", "missing": "yes"}}))


def test_each_check_fails_when_its_code_is_switched_off(tmp_path, monkeypatch):
    """Mutation checks: with the mapping, the label drop or the missing-value refusal disabled,
    the tests above would fail."""
    from datasite import typed_columns

    df = messy_export(200, seed=1)
    df.loc[:6, "grade"] = "IV"
    monkeypatch.setattr(typed_columns, "_by_name",
                        lambda x, names: (np.zeros(len(x)), []))  # mapping off
    assert _upload_with(tmp_path, df, _small_schema(df))[0]["grade"].eq(0).all()
    monkeypatch.undo()
    real = typed_columns._finish
    monkeypatch.setattr(typed_columns, "_finish",
                        lambda v, spec, c: real(v, {**spec, "missing": True}, c))
    df = messy_export(200, seed=1)
    _upload_with(tmp_path, df, _small_schema(df, crp={"type": "float", "bounds": [0, 300]}))
    monkeypatch.undo()
    monkeypatch.setattr(ds_schema, "label_codes", lambda x, label: (
        np.where(x.isna(), 0.0, (x == "dead").astype(float)), []))  # no label drop
    payload, _, _, notes = _upload_with(tmp_path, df, dict(_small_schema(df), records=len(df)))
    assert len(payload) == len(df) and not any("no label" in n for n in notes)


@pytest.mark.parametrize("spec", [
    dict(kind="removal_logreg", delta=1e-4, lam=1e-4, perturbation=0.3),
    dict(kind="dpal", epsilon=3.0, delta=1e-4, eps_selection=0.6, start_size=200,
         query_sizes=[200], batch_size=64, epochs_per_round=2),
    dict(kind="fed_dpsgd_table", epsilon=3.0, delta=1e-5, rounds=2, epochs=1, batch_size=256),
], ids=lambda s: s["kind"])
def test_other_table_kinds_run_with_missing_values(uploaded, spec):
    """Every table kind preprocesses through the declared bounds, which fill NaN with the
    declared midpoint: none crashes on the missing lab value, on the real table or the mock."""
    from shared.runner import run_job

    _, _, payload, meta, mock, _ = uploaded
    spec = dict(spec, dataset="cohort", label="outcome")
    assert payload["crp"].isna().any() and mock["crp"].isna().any()
    for data, is_mock in ((payload, False), (mock, True)):
        result = run_job(spec, data, meta, pin_randomness=0, mock=is_mock)
        assert np.isfinite(result["metrics"]["test_accuracy"])


def test_formula_like_category_names_are_noted_for_the_owner(tmp_path):
    df = messy_export(200, seed=1)
    df["sex"] = df["sex"].map({"F": "=F", "M": "M"})
    notes = _upload_with(tmp_path, df, _small_schema(
        df, sex={"type": "category", "categories": ["=F", "M"]}))[3]
    assert sum(n.startswith("category of column 'sex' '=F' starts with '='") for n in notes) == 1


# -- dates and dropped columns --------------------------------------------------------------------
DATE_SCHEMA = {"kind": "table", "records": 60, "label": {"column": "y", "classes": [0, 1]},
               "columns": {
                   "age": {"type": "int", "bounds": [0, 120]},
                   "admitted": {"type": "date", "origin": "2000-01-01",
                                "bounds": ["2010-01-01", "2030-01-01"]},
                   "born": {"type": "date", "origin": "2000-01-01",
                            "bounds": ["1900-01-01", "2030-01-01"], "format": "%d/%m/%Y"},
                   "visit_id": {"type": "drop"}}}


def _dated(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """ISO admission dates, day-first birth dates, an id column the owner drops."""
    rng = np.random.default_rng(seed)
    admitted = pd.Timestamp("2012-01-01") + pd.to_timedelta(rng.integers(0, 4000, n), unit="D")
    born = admitted - pd.to_timedelta(rng.integers(7000, 30000, n), unit="D")
    return pd.DataFrame({"age": rng.integers(20, 90, n),
                         "admitted": admitted.strftime("%Y-%m-%d"),
                         "born": born.strftime("%d/%m/%Y"),
                         "visit_id": [f"V{i:05d}" for i in range(n)],
                         "y": rng.integers(0, 2, n)})


def _days(texts, fmt: str) -> np.ndarray:
    return ((pd.to_datetime(pd.Series(texts), format=fmt) - pd.Timestamp("2000-01-01"))
            / pd.Timedelta(days=1)).to_numpy()


def test_dates_become_days_since_the_origin_and_drop_columns_go(tmp_path):
    from shared.training import declared_bounds

    df = _dated()
    payload, meta, mock, notes = _upload_with(tmp_path, df, DATE_SCHEMA)
    assert list(payload.columns) == ["age", "admitted", "born", "y"]  # visit_id never stored
    assert payload["admitted"].dtype == np.float64 and payload["born"].dtype == np.float64
    assert (payload["admitted"].to_numpy() == _days(df["admitted"], "%Y-%m-%d")).all()
    assert (payload["born"].to_numpy() == _days(df["born"], "%d/%m/%Y")).all()
    assert payload.loc[0, "admitted"] == (pd.Timestamp(df.loc[0, "admitted"])
                                          - pd.Timestamp("2000-01-01")).days
    # published: days, the origin, no dropped column; jobs see a float column bounded in days
    assert "visit_id" not in meta.features and "visit_id" not in meta.columns
    assert meta.columns["admitted"] == {"type": "date", "unit": "days since 2000-01-01",
                                        "origin": "2000-01-01", "bounds": [3653, 10958]}
    assert meta.features["admitted"] == "float64" and meta.feature_scales["born"] == 36524
    assert declared_bounds(meta) == {"age": [0.0, 120.0], "admitted": [3653.0, 10958.0],
                                     "born": [-36524.0, 10958.0]}
    assert list(mock.columns) == ["age", "admitted", "born", "y"]
    assert mock["admitted"].between(3653, 10958).all()
    assert (mock["admitted"] == mock["admitted"].round()).all()  # whole days
    assert "V00007" not in published_description(meta)


def test_date_forms_day_first_month_first_times_and_datetimes():
    """The declared format decides how 03/04/2021 reads; ISO times give fractions of a day;
    datetime cells (Excel, Parquet) are read as they are, time zones by their wall clock."""
    from datasite.typed_columns import coerce_column

    day_first = {"type": "date", "origin": "2021-01-01", "bounds": [0, 400],
                 "format": "%d/%m/%Y"}
    col, problems, _ = coerce_column(pd.Series(["03/04/2021", "01/01/2021"]), day_first, "d")
    assert not problems and col.tolist() == [92.0, 0.0]  # 3 April
    month_first = dict(day_first, format="%m/%d/%Y")
    assert coerce_column(pd.Series(["03/04/2021"]), month_first, "d")[0].tolist() == [62.0]
    iso = {k: v for k, v in day_first.items() if k != "format"}
    col = coerce_column(pd.Series(["2021-01-02T12:00", "2021-01-01 06:00:00"]), iso, "d")[0]
    assert col.tolist() == [1.5, 0.25]
    import datetime as dt

    cells = pd.Series([dt.datetime(2021, 1, 3), dt.date(2021, 1, 2),
                       pd.Timestamp("2021-01-05", tz="Europe/Zurich")], dtype=object)
    assert coerce_column(cells, iso, "d")[0].tolist() == [2.0, 1.0, 4.0]
    stamps = pd.Series(pd.to_datetime(["2021-01-11", None, "2021-01-01"]))
    col, problems, _ = coerce_column(stamps, dict(iso, missing=True), "d")
    assert not problems and col.isna().tolist() == [False, True, False] and col[0] == 10.0
    compact = dict(day_first, format="%Y%m%d")  # numbers read through the declared format
    assert coerce_column(pd.Series([20210111]), compact, "d")[0].tolist() == [10.0]


def test_unparseable_dates_are_refused_with_count_and_rows(tmp_path):
    df = _dated()
    df.loc[[4, 9, 30], "born"] = ["31/02/1970", "unknown", "1970-05-04"]  # ISO is not %d/%m/%Y
    with pytest.raises(SchemaError, match=r"column 'born' is declared date but 3 values are not "
                                          r"dates written as '%d/%m/%Y': '1970-05-04', "
                                          r"'31/02/1970', 'unknown' \(spreadsheet rows 6, 11, 32"):
        _upload_with(tmp_path, df, DATE_SCHEMA)
    wrong = dict(DATE_SCHEMA, columns={**DATE_SCHEMA["columns"],
                                       "born": {**DATE_SCHEMA["columns"]["born"],
                                                "format": "%m/%d/%Y"}})
    with pytest.raises(SchemaError, match=r"'born' is declared date but \d+ values"):
        _upload_with(tmp_path, _dated(), wrong)  # day-first dates read as month-first fail
    # missing: true keeps them as NaN, with a note naming the rows (owner only)
    allowed = dict(DATE_SCHEMA, columns={**DATE_SCHEMA["columns"],
                                         "born": {**DATE_SCHEMA["columns"]["born"],
                                                  "missing": True}})
    payload, meta, _, notes = _upload_with(tmp_path, df, allowed)
    assert payload["born"].isna().tolist() == [i in (4, 9, 30) for i in range(len(df))]
    assert any("'born': 3 values that are not dates" in n and "rows 6, 11, 32" in n
               for n in notes)
    assert "unknown" not in published_description(meta)


def test_dates_outside_bounds_are_kept_noted_and_clipped_in_jobs(tmp_path):
    df = _dated()
    df.loc[2, "admitted"] = "2045-06-01"  # after the declared upper bound 2030-01-01
    payload, meta, _, notes = _upload_with(tmp_path, df, DATE_SCHEMA)
    assert payload.loc[2, "admitted"] == (pd.Timestamp("2045-06-01")
                                          - pd.Timestamp("2000-01-01")).days
    assert any("'admitted': 1 values outside the declared bounds [3653, 10958]" in n
               for n in notes)
    assert clip_table(payload, meta).loc[2, "admitted"] == 10958


def test_a_date_column_trains_like_a_float_column(tmp_path):
    """DP-SGD on a table with date columns: declared bounds in days scale them like any float
    (no crash, finite accuracy, on the real table and the mock)."""
    from shared.runner import run_job

    payload, meta, mock, _ = _upload_with(tmp_path, _dated(400), dict(DATE_SCHEMA, records=400))
    spec = dict(kind="dpsgd_table", dataset="t", label="y", epsilon=2.0, delta=1e-5, epochs=2)
    for data, is_mock in ((payload, False), (mock, True)):
        result = run_job(spec, data, meta, pin_randomness=0, mock=is_mock)
        assert np.isfinite(result["metrics"]["test_accuracy"])


def test_a_column_holding_datetimes_must_be_declared_a_date():
    """A datetime column declared float would silently become nanoseconds: refused."""
    from datasite.typed_columns import coerce_column

    stamps = pd.Series(pd.to_datetime(["2021-01-11", "2021-01-01"]))
    col, problems, _ = coerce_column(stamps, {"type": "float", "bounds": [0, 1]}, "when")
    assert col is None and "holds dates but is declared float" in problems[0]


def test_draft_proposes_dates_with_origin_and_year_bounds(tmp_path):
    df = _dated()
    df.loc[5, "admitted"] = None
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    cols = draft(path, label="y")["columns"]
    years = pd.to_datetime(df["admitted"]).dt.year.dropna().astype(int)
    assert cols["admitted"] == {"type": "date", "origin": "2000-01-01", "missing": True,
                                "bounds": [f"{years.min()}-01-01", f"{years.max() + 1}-01-01"]}
    born = pd.to_datetime(df["born"], format="%d/%m/%Y").dt.year
    assert cols["born"] == {"type": "date", "origin": "2000-01-01", "format": "%d/%m/%Y",
                            "bounds": [f"{born.min()}-01-01", f"{born.max() + 1}-01-01"]}
    assert cols["visit_id"] == {"type": "category", "categories": []}  # free text: noted
    notes = ds_schema.draft_notes(draft(path, label="y"))
    assert any("'visit_id' holds free text" in n and "{type: drop}" in n for n in notes)
    assert any("'born' is drafted as dates written '%d/%m/%Y'" in n for n in notes)
    month_first = df.assign(born=pd.to_datetime(df["born"], format="%d/%m/%Y")
                            .dt.strftime("%m/%d/%Y"))
    month_first.to_csv(path, index=False)  # days above 12 settle the layout
    assert draft(path, label="y")["columns"]["born"]["format"] == "%m/%d/%Y"
    reviewed_schema = {k: v for k, v in draft(path, label="y").items() if k != DRAFT_KEY}
    reviewed_schema["columns"]["visit_id"] = {"type": "drop"}
    payload = prepare("t", reviewed_schema, table=str(path))[0]
    assert (payload["born"].to_numpy() == _days(month_first["born"], "%m/%d/%Y")).all()
