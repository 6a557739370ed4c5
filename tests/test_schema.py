"""The public schema: what is published before any job runs depends on the declaration alone.

The attack: an observer compares what two datasets that differ in one record publish. With the
declared schema the metadata JSON and the mock bytes are identical; published straight from a
draft of the data (the old data-derived path: ranges, powers of ten, classes as found) they
differ, i.e. the publication leaks the record.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datasite.demo_data import (breast_cancer_frame, breast_cancer_schema, schema_path,
                                write_breast_cancer_csv, write_schema)
from datasite.schema import DRAFT_HEADER, draft, prepare, read_schema
from shared import schema as shared_schema
from shared.data import published_description
from shared.schema import DRAFT_KEY, SchemaError


def _published(csv, schema) -> tuple[bytes, bytes]:
    """(metadata bytes, mock bytes) exactly as upload would publish them."""
    _, meta, mock, _ = prepare("bc", schema, table=csv)
    return (published_description(meta).encode(),
            mock.to_csv(index=False).encode() + str(mock.dtypes.to_dict()).encode())


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory):
    """The breast-cancer table and neighbours: one value made extreme, one record replaced by an
    extreme one, one record added."""
    d = tmp_path_factory.mktemp("nb")
    base = write_breast_cancer_csv(d / "bc.csv")
    df = breast_cancer_frame()
    changed = df.copy()
    changed.loc[7, "mean_area"] = -1e6  # far outside the declared bounds [0, 10000]
    replaced = df.copy()
    replaced.iloc[3] = df.iloc[3] * 50
    replaced.loc[3, "diagnosis"] = 0
    added = pd.concat([df, df.iloc[[0]] * 3], ignore_index=True)
    added["diagnosis"] = added["diagnosis"].astype(np.int64)
    paths = {"base": base}
    for name, frame in (("changed", changed), ("replaced", replaced), ("added", added)):
        (d / name).mkdir()
        paths[name] = d / name / "bc.csv"
        frame.to_csv(paths[name], index=False)
    return paths


def test_neighbours_publish_identical_metadata_and_mock(neighbours):
    schema = schema_path(neighbours["base"])
    base = _published(neighbours["base"], schema)
    for name in ("changed", "replaced"):
        assert _published(neighbours[name], schema) == base, name
    # the record count is public by declaration: a dataset with one more record does not
    # match the declaration, so nothing is published until the owner declares the new count ...
    with pytest.raises(SchemaError, match="570 records but the schema declares records: 569"):
        prepare("bc", schema, table=neighbours["added"])
    # ... and then the declared count is the only published difference
    _, meta_a, _, _ = prepare("bc", breast_cancer_schema(records=570), table=neighbours["added"])
    _, meta_b, _, _ = prepare("bc", schema, table=neighbours["base"])
    meta_a.n_records = meta_b.n_records
    assert meta_a.to_json() == meta_b.to_json()


def test_publishing_a_draft_of_the_data_would_leak(neighbours, tmp_path):
    """The same comparison against the old data-derived path (bounds and classes as found,
    i.e. a draft published unreviewed): the neighbours are told apart."""
    published = {}
    for name in ("base", "changed", "replaced"):
        drafted = draft(neighbours[name], label="diagnosis")
        assert drafted.pop(DRAFT_KEY) is True
        published[name] = _published(neighbours[name], drafted)
    for name in ("changed", "replaced"):
        meta_differs = published[name][0] != published["base"][0]
        mock_differs = published[name][1] != published["base"][1]
        assert meta_differs and mock_differs, name
    # e.g. the changed record's value shows up in the published bound of its column
    assert b"1000000" in published["changed"][0] and b"1000000" not in published["base"][0]


def test_out_of_bounds_values_are_clipped_inside_jobs(neighbours):
    """Clipping to the declared bounds: an extreme value enters a job as the bound itself (the
    public scale alone would clip it only to [-10000, 10000], a range the owner never declared)."""
    from shared.removal import job_features
    from shared.jobs.removal import RemovalSpec

    payload, meta, _, notes = prepare("bc", schema_path(neighbours["base"]),
                                      table=neighbours["changed"])
    assert any("'mean_area': 1 values outside the declared bounds" in n for n in notes)
    assert payload.loc[7, "mean_area"] == -1e6  # the owner's data is kept as it is
    spec = RemovalSpec(dataset="bc", label="diagnosis", delta=1e-6)
    at_bound = payload.copy()
    at_bound.loc[7, "mean_area"] = 0.0  # the declared lower bound
    X_bound = job_features(spec, at_bound, meta)[0]
    try:
        for clip in (True, False):
            shared_schema.CLIP_TO_BOUNDS = clip
            X = job_features(spec, payload, meta)[0]
            assert np.array_equal(X, X_bound) == clip
    finally:
        shared_schema.CLIP_TO_BOUNDS = True
    assert meta.feature_scales["mean_area"] == 10000.0  # from the declaration, not widened


def test_scales_and_classes_come_from_the_declaration(neighbours):
    _, meta, mock, _ = prepare("bc", schema_path(neighbours["base"]), table=neighbours["base"])
    assert meta.feature_scales["mean_radius"] == 50 and meta.feature_scales["radius_error"] == 25
    assert meta.labels == [0, 1] and meta.class_names == {"0": "malignant", "1": "benign"}
    assert meta.columns["mean_area"] == {"type": "float", "unit": "", "bounds": [0, 10000]}
    assert meta.description == "Wisconsin diagnostic breast cancer (scikit-learn)."
    assert len(mock) == 569


def test_upload_refusals_say_what_to_do(neighbours, tmp_path):
    csv = neighbours["base"]
    with pytest.raises(SchemaError, match=r"datasite schema draft .*bc.csv --label COLUMN"):
        prepare("bc", None, table=csv)
    bad = breast_cancer_schema()
    bad["label"]["classes"] = [1, 2]
    with pytest.raises(SchemaError, match=r"212 records have a label that is not a declared class"):
        prepare("bc", bad, table=csv)
    bad = breast_cancer_schema()
    del bad["columns"]["mean_area"]
    with pytest.raises(SchemaError, match="in the data but not declared: mean_area"):
        prepare("bc", bad, table=csv)
    bad = breast_cancer_schema()
    bad["columns"]["mean_radius"] = {"type": "float"}
    with pytest.raises(SchemaError, match="needs bounds"):
        prepare("bc", bad, table=csv)
    bad = breast_cancer_schema()
    bad["columns"]["mean_radius"] = {"type": "category", "categories": [0, 1]}
    with pytest.raises(SchemaError, match="non-integer"):
        prepare("bc", bad, table=csv)
    with pytest.raises(SchemaError, match="--label 'x' differs"):
        prepare("bc", breast_cancer_schema(), table=csv, label="x")


def test_draft_is_marked_and_refused_until_reviewed(neighbours, tmp_path, capsys):
    from datasite.cli import main

    out = tmp_path / "draft.yaml"
    assert main(["schema", "draft", str(neighbours["base"]), "--label", "diagnosis",
                 "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith(DRAFT_HEADER) and f"{DRAFT_KEY}: true" in text
    assert "FROM THE DATA" in capsys.readouterr().err
    with pytest.raises(SchemaError, match="still marked as drafted from the data"):
        read_schema(out)
    with pytest.raises(SchemaError, match="drafted_from_data"):
        prepare("bc", out, table=neighbours["base"])
    # the owner reviews it: the marker goes, and the upload goes through
    reviewed = tmp_path / "reviewed.yaml"
    reviewed.write_text(text.replace(f"{DRAFT_KEY}: true\n", ""))
    assert prepare("bc", reviewed, table=neighbours["base"])[1].n_records == 569
    # the draft's bounds are the data's range rounded outwards (hence: review them)
    assert read_schema(reviewed)["columns"]["mean_area"]["bounds"] == [100, 3000]


def test_image_schemas(tmp_path):
    from datasite.demo_data import cxr_schema, write_synthetic_cxr_npz

    npz = write_synthetic_cxr_npz(tmp_path / "cxr.npz", n_train=30, n_val=5, n_test=5, size=16)
    payload, meta, mock, _ = prepare("cxr", schema_path(npz), npz=npz)
    assert meta.image_shape == [16, 16] and meta.n_records == 40 and meta.labels == [0, 1]
    assert "train (30)" not in meta.description  # split sizes are not declared: not published
    assert mock["images"].shape == (40, 16, 16)
    wrong = cxr_schema(40, size=28)
    with pytest.raises(SchemaError, match=r"shape \[16, 16\], the schema declares \[28, 28\]"):
        prepare("cxr", wrong, npz=npz)
    write_schema(tmp_path / "one.yaml", {**cxr_schema(40, size=16),
                                         "label": {"classes": [0, 5]}})
    with pytest.raises(SchemaError, match="not a declared class"):
        prepare("cxr", tmp_path / "one.yaml", npz=npz)


# -- declared rates, dates, dropped columns --------------------------------------------------
RATED = {"kind": "table", "records": 400,
         "label": {"column": "outcome", "classes": ["alive", "dead"], "rates": [0.7, 0.3]},
         "columns": {"grade": {"type": "category", "categories": ["I", "II", "III"],
                               "rates": [0.5, 0.3, 0.2]},
                     "smoker": {"type": "bool", "rate": 0.25},
                     "crp": {"type": "float", "bounds": [0, 300], "missing": True,
                             "missing_rate": 0.17},
                     "admitted": {"type": "date", "origin": "2000-01-01",
                                  "bounds": ["2010-01-01", "2030-01-01"]},
                     "mrn": {"type": "drop"}}}


def _cohort(seed: int, smokers: float, missing: float, dead: float, n: int = 400):
    """A real table; different seeds and shares give tables with different real rates."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "grade": rng.choice(["I", "II", "III"], n, p=[0.2, 0.2, 0.6] if seed else None),
        "smoker": np.where(rng.random(n) < smokers, "yes", "no"),
        "crp": np.where(rng.random(n) < missing, np.nan, rng.uniform(0, 300, n).round(1)),
        "admitted": (pd.Timestamp("2012-01-01")
                     + pd.to_timedelta(rng.integers(0, 4000, n), unit="D")).strftime("%Y-%m-%d"),
        "mrn": [f"MRN{seed}{i:06d}" for i in range(n)],
        "outcome": np.where(rng.random(n) < dead, "dead", "alive")})


def _real_rates(df: pd.DataFrame) -> dict:
    """The schema with each rate taken from the data: what the draft must never do."""
    s = {**RATED, "label": {**RATED["label"],
                            "rates": [1 - (df["outcome"] == "dead").mean(),
                                      (df["outcome"] == "dead").mean()]}}
    shares = df["grade"].value_counts(normalize=True)
    s["columns"] = {**RATED["columns"],
                    "grade": {**RATED["columns"]["grade"],
                              "rates": [float(shares.get(g, 0)) for g in ["I", "II", "III"]]},
                    "smoker": {"type": "bool", "rate": float((df["smoker"] == "yes").mean())},
                    "crp": {**RATED["columns"]["crp"],
                            "missing_rate": float(df["crp"].isna().mean())}}
    return s


def test_mock_with_declared_rates_is_a_function_of_the_schema_alone(tmp_path):
    """The attack: two hospitals' tables with very different real shares (smokers, missing lab
    values, deaths, grades) and the same declared schema publish byte-identical metadata and
    mocks, whose shares are the declared ones. Switched off (rates taken from the data, as a
    draft must never do) the publications differ and carry each table's shares."""
    paths = {}
    for name, args in (("a", (0, 0.1, 0.05, 0.2)), ("b", (1, 0.6, 0.4, 0.5))):
        (tmp_path / name).mkdir()
        paths[name] = tmp_path / name / "cohort.csv"
        _cohort(*args).to_csv(paths[name], index=False)
    frames = {k: pd.read_csv(p) for k, p in paths.items()}
    smokers = {k: f["smoker"].eq("yes").mean() for k, f in frames.items()}
    assert abs(smokers["a"] - smokers["b"]) > 0.3
    published = {k: _published(p, RATED) for k, p in paths.items()}
    assert published["a"] == published["b"]
    mock = prepare("bc", RATED, table=paths["a"])[2]
    assert abs(mock["smoker"].mean() - 0.25) < 0.1 and "mrn" not in mock.columns
    assert b"MRN" not in published["a"][0] + published["a"][1]
    # defence off: rates from the data make the publications differ
    leaky = {k: _published(p, _real_rates(frames[k])) for k, p in paths.items()}
    assert leaky["a"][0] != leaky["b"][0] and leaky["a"][1] != leaky["b"][1]
    share = f'{frames["b"]["crp"].isna().mean()}'.encode()
    assert share in leaky["b"][0] and share not in published["b"][0]


def test_the_draft_never_fills_in_rates(tmp_path):
    path = tmp_path / "cohort.csv"
    _cohort(1, 0.6, 0.4, 0.5).to_csv(path, index=False)
    drafted = draft(path, label="outcome")
    assert "rates" not in drafted["label"]
    for c, d in drafted["columns"].items():
        assert not {"rates", "rate", "missing_rate"} & set(d), c
    assert drafted["columns"]["crp"]["missing"] is True  # what it does propose
    assert drafted["columns"]["admitted"]["type"] == "date"


@pytest.mark.parametrize("column, message", [
    ({"type": "float", "bounds": [0, 1], "missing_rate": 0.1}, "missing_rate needs missing: true"),
    ({"type": "float", "bounds": [0, 1], "missing": True, "missing_rate": 1.0},
     r"0 <= rate < 1, got 1.0"),
    ({"type": "float", "bounds": [0, 1], "missing": True, "missing_rate": -0.1}, "0 <= rate < 1"),
    ({"type": "float", "bounds": [0, 1], "missing": True, "missing_rate": "10%"},
     "expected a finite number"),
    ({"type": "category", "categories": ["a", "b"], "rates": [0.5, 0.6]},
     "shares must sum to 1, they sum to 1.1"),
    ({"type": "category", "categories": ["a", "b"], "rates": [1.0]},
     r"one share per category in the declared order \(2 numbers"),
    ({"type": "category", "categories": ["a", "b"], "rates": [1.5, -0.5]}, r"in \[0, 1\]"),
    ({"type": "bool", "rate": 1.2}, r"share of true values, in \[0, 1\]"),
    ({"type": "bool", "rates": [0.5, 0.5]}, "a bool column takes no rates .that is for category"),
    ({"type": "float", "bounds": [0, 1], "rate": 0.5}, "takes no rate .that is for bool"),
    ({"type": "date", "bounds": ["2010-01-01", "2020-01-01"]}, "needs origin: an ISO date"),
    ({"type": "date", "origin": "2000-13-01", "bounds": [0, 1]}, "needs origin"),
    ({"type": "date", "origin": "2000-01-01"}, r"needs bounds \[lower, upper\] \(ISO dates"),
    ({"type": "date", "origin": "2000-01-01", "bounds": ["2020-01-01", "2010-01-01"]},
     "lower < upper"),
    ({"type": "date", "origin": "2000-01-01", "bounds": ["2010-01-01", "soon"]},
     "ISO dates such as 2010-01-01, or days since the origin"),
    ({"type": "date", "origin": "2000-01-01", "bounds": [0, 10], "format": "%d/%m/%y"},
     "two-digit years"),
    ({"type": "date", "origin": "2000-01-01", "bounds": [0, 10], "format": "%m/%Y"},
     "does not name a day, a month and a year"),
    ({"type": "date", "origin": "2000-01-01", "bounds": [0, 10], "unit": "years"},
     "unit is 'days since 2000-01-01'"),
    ({"type": "drop", "bounds": [0, 1]}, r"write \{type: drop\}"),
])
def test_rate_date_and_drop_declarations_are_validated(column, message):
    base = {"kind": "table", "records": 10, "label": {"column": "y", "classes": [0, 1]}}
    with pytest.raises(SchemaError, match=message):
        shared_schema.normalise({**base, "columns": {"x": column, "z": {"type": "bool"}}})


def test_label_rates_and_the_last_column_are_validated():
    base = {"kind": "table", "records": 10, "columns": {"x": {"type": "bool"}}}
    with pytest.raises(SchemaError, match="schema label rates: the shares must sum to 1"):
        shared_schema.normalise({**base, "label": {"column": "y", "classes": [0, 1],
                                                   "rates": [0.5, 0.4]}})
    with pytest.raises(SchemaError, match="one share per class"):
        shared_schema.normalise({**base, "label": {"column": "y", "classes": [0, 1, 2],
                                                   "rates": [0.5, 0.5]}})
    with pytest.raises(SchemaError, match="every column is dropped"):
        shared_schema.normalise({**base, "label": {"column": "y", "classes": [0, 1]},
                                 "columns": {"x": {"type": "drop"}}})


def test_rate_and_date_declarations_normalise_idempotently():
    """Rates follow their categories and classes into code order; date bounds become days;
    YAML's own dates (unquoted 2000-01-01) read like quoted ones."""
    import datetime as dt

    import yaml

    n = shared_schema.normalise(RATED)
    assert shared_schema.normalise(n) == n
    assert n["label"]["rates"] == [0.7, 0.3]
    ints = shared_schema.normalise({**RATED, "columns": {
        "stage": {"type": "category", "categories": [3, 1, 2], "rates": [0.6, 0.3, 0.1]}}})
    assert ints["columns"]["stage"]["categories"] == [1, 2, 3]
    assert ints["columns"]["stage"]["rates"] == [0.3, 0.1, 0.6]
    assert n["columns"]["admitted"] == {"type": "date", "unit": "days since 2000-01-01",
                                        "origin": "2000-01-01", "bounds": [3653, 10958]}
    loaded = yaml.safe_load("{type: date, origin: 2000-01-01, bounds: [2010-01-01, 10958]}")
    assert loaded["origin"] == dt.date(2000, 1, 1)
    got = shared_schema.normalise({**RATED, "columns": {"admitted": loaded}})
    assert got["columns"]["admitted"] == n["columns"]["admitted"]
    meta = shared_schema.meta_from_schema(RATED, "c")
    assert "mrn" not in meta.columns and meta.label_rates == [0.7, 0.3]


def test_published_metadata_from_a_newer_site_still_reads():
    """A key this version does not know (a newer site's field) is ignored, not an error."""
    import json

    from shared.data import DatasetMeta

    meta = DatasetMeta(name="bc", kind="table", n_records=10, label="y", labels=[0, 1])
    text = json.dumps({**json.loads(meta.to_json()), "a_future_field": [1, 2]})
    assert DatasetMeta.from_json(text) == meta
