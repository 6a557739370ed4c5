"""Owner-only warnings at upload (issue 13): label leakage, id-like and constant columns,
extreme class imbalance, on realistic hospital-like exports built here; none on the clean
breast-cancer demo table; and nothing of them in what is published."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from datasite import upload_warnings
from datasite.demo_data import (breast_cancer_frame, breast_cancer_schema, write_breast_cancer_csv,
                                write_schema)
from datasite.schema import prepare
from datasite.upload_warnings import table_warnings
from shared.data import published_description
from shared.schema import meta_from_schema, normalise

N = 5000


def _export(n: int = N, seed: int = 0) -> pd.DataFrame:
    """A cohort as a hospital exports it: shuffled patient ids, a few clinical measurements with
    a moderate signal, a discharge status recorded after the outcome (code 3 = died in hospital),
    a site code that is 1 for all but a handful of records, and deaths as a 3% minority."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 95, n)
    creatinine = np.round(rng.lognormal(0.0, 0.4, n), 2)
    bmi = np.round(rng.normal(27, 5, n), 1)
    grade = rng.integers(1, 4, n)
    risk = 0.04 * (age - 60) + 1.2 * (creatinine - 1) + 0.3 * (grade - 2) - 3.9
    died = (rng.random(n) < 1 / (1 + np.exp(-risk))).astype(np.int64)
    status = np.where(died == 1, 3, rng.integers(0, 3, n))
    site = np.ones(n, dtype=np.int64)
    site[rng.choice(n, 10, replace=False)] = 2
    return pd.DataFrame({
        "patient_id": rng.permutation(np.arange(100_000, 100_000 + n)),
        "age": age, "sex": rng.random(n) < 0.5, "bmi": bmi, "creatinine": creatinine,
        "grade": grade, "discharge_status": status, "site": site, "died": died})


def _schema(df: pd.DataFrame, label: str = "died", classes=None) -> dict:
    cols = {"patient_id": {"type": "int", "bounds": [0, 10_000_000]},
            "age": {"type": "int", "unit": "years", "bounds": [0, 120]},
            "sex": {"type": "bool"},
            "bmi": {"type": "float", "unit": "kg/m2", "bounds": [10, 80]},
            "creatinine": {"type": "float", "unit": "mg/dL", "bounds": [0, 20]},
            "grade": {"type": "category", "categories": [1, 2, 3]},
            "discharge_status": {"type": "category", "categories": [0, 1, 2, 3]},
            "site": {"type": "int", "bounds": [0, 10]}}
    return normalise({"kind": "table", "records": len(df), "description": "test cohort",
                      "label": {"column": label, "classes": classes or {0: "alive", 1: "dead"}},
                      "columns": {c: v for c, v in cols.items() if c in df.columns}})


def _about(notes: list[str], column: str) -> list[str]:
    return [n for n in notes if n.startswith(f"column {column!r}")]


@pytest.fixture(scope="module")
def export():
    df = _export()
    return df, table_warnings(df, "died", _schema(df))


def test_leaking_column_is_flagged_with_score_why_and_what_to_do(export):
    _, notes = export
    leak = _about(notes, "discharge_status")
    assert len(leak) == 1, notes
    assert "predicts the label almost perfectly" in leak[0] and "AUC 1.000" in leak[0]
    assert "will not work on new patients" in leak[0] and "Drop it" in leak[0]


def test_id_constant_and_imbalance_are_flagged(export):
    df, notes = export
    ids = _about(notes, "patient_id")
    assert any("looks like an identifier" in n and "--id-column patient_id" in n for n in ids), notes
    assert any(f"in {N - 10} of {N} rows" in n for n in _about(notes, "site")), notes
    deaths = int(df["died"].sum())
    imbalance = [n for n in notes if n.startswith("extreme class imbalance")]
    assert len(imbalance) == 1, notes
    assert f"class 1 ('dead'): {deaths} " in imbalance[0]
    assert f"class 0 ('alive'): {N - deaths} " in imbalance[0]


def test_clinical_columns_with_real_signal_are_not_flagged(export):
    _, notes = export
    for c in ("age", "sex", "bmi", "creatinine", "grade"):
        assert not _about(notes, c), (c, notes)
    assert len(notes) == 4, notes  # leak, id, constant, imbalance: nothing else


def test_leak_threshold_is_what_flags_it(export, monkeypatch):
    df, _ = export
    monkeypatch.setattr(upload_warnings, "LEAK_AUC", 1.01)
    assert not any("leak" in n for n in table_warnings(df, "died", _schema(df)))


def test_more_kinds_of_identifier():
    rng = np.random.default_rng(1)
    n = 300
    df = pd.DataFrame({
        "MRN": [f"H{v:07d}" for v in rng.permutation(n)],          # strings named like an id
        "admitted_at": np.cumsum(rng.random(n)) + 19000.0,         # increasing in file order
        "visitNo": rng.permutation(n) + 0.0,                        # distinct integers as floats
        "weight": np.round(rng.normal(70, 10, n), 3),               # distinct floats: fine
        "y": rng.integers(0, 2, n)})
    notes = table_warnings(df, "y")
    for c in ("MRN", "admitted_at", "visitNo"):
        assert any("looks like an identifier" in x for x in _about(notes, c)), (c, notes)
    assert not _about(notes, "weight"), notes


def test_three_class_label_leak_of_one_class_and_exactly_constant_column():
    rng = np.random.default_rng(2)
    n = 3000
    outcome = rng.choice([0, 1, 2], n, p=[0.5, 0.3, 0.2])
    df = pd.DataFrame({"age": rng.integers(20, 90, n),
                       "death_certificate": (outcome == 2) & (rng.random(n) < 0.995),
                       "hospital": np.zeros(n, dtype=np.int64), "outcome": outcome})
    schema = {"label": {"column": "outcome", "classes": [0, 1, 2],
                        "names": {0: "home", 1: "transferred", 2: "died"}},
              "columns": {"age": {}, "death_certificate": {}, "hospital": {}}}
    notes = table_warnings(df, "outcome", schema)
    leak = _about(notes, "death_certificate")
    assert len(leak) == 1 and "separates class 2 ('died')" in leak[0], notes
    assert any("same value in every row" in x for x in _about(notes, "hospital")), notes
    assert not _about(notes, "age") and not any("imbalance" in x for x in notes), notes


def test_one_hot_group_that_leaks_only_together():
    """A cause-of-death one-hot without a reference column: each column alone is weak, the
    group is the label (the issue's AUC 1.000 leak)."""
    rng = np.random.default_rng(3)
    n = 4000
    died = rng.random(n) < 0.3
    cause = np.where(died, rng.integers(0, 3, n), -1)
    df = pd.DataFrame({f"cause_{c}": (cause == i).astype(np.int64)
                       for i, c in enumerate(("cancer", "cardiac", "other"))})
    df["age"], df["died"] = rng.integers(20, 90, n), died.astype(np.int64)
    notes = table_warnings(df, "died")
    group = [x for x in notes if x.startswith("columns ")]
    assert len(group) == 1 and "one-hot group 'cause'" in group[0], notes
    assert not any(x.startswith("column 'cause_") for x in notes), notes


def test_none_on_the_clean_breast_cancer_table(tmp_path):
    df = breast_cancer_frame()
    assert table_warnings(df, "diagnosis", normalise(breast_cancer_schema())) == []
    _, _, _, notes = prepare("bc", tmp_path / "bc.schema.yaml",
                             table=write_breast_cancer_csv(tmp_path / "bc.csv"))
    assert notes == []


def test_upload_returns_them_as_owner_notes_and_never_publishes_them(tmp_path):
    df = _export()
    csv = tmp_path / "cohort.csv"
    df.to_csv(csv, index=False)
    write_schema(tmp_path / "cohort.schema.yaml", _schema(df))
    _, meta, mock, notes = prepare("cohort", tmp_path / "cohort.schema.yaml", table=csv)
    assert notes == table_warnings(df, "died", _schema(df)) and len(notes) == 4
    # the published metadata is the schema's alone, and none of the warnings is in it or the mock
    assert meta.to_json() == meta_from_schema(_schema(df), "cohort").to_json()
    text = (published_description(meta) + meta.to_json()).lower()
    for word in ("leak", "auc", "identifier", "imbalance", str(int(df.died.sum()))):
        assert word not in text, word
    mock_text = mock.to_csv(index=False)
    assert not any(note in text or note in mock_text for note in notes)


def test_fast_on_ten_thousand_rows_by_forty_columns():
    rng = np.random.default_rng(4)
    n = 10_000
    df = pd.DataFrame(rng.normal(size=(n, 40)), columns=[f"x{i}" for i in range(40)])
    df["y"] = rng.integers(0, 3, n)
    table_warnings(df, "y")  # warm caches and imports
    start = time.perf_counter()
    notes = table_warnings(df, "y")
    assert time.perf_counter() - start < 1.0
    assert notes == []


def test_many_balanced_classes_are_not_imbalance_but_a_rare_one_is():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 30, 6000)  # 30 classes of about 3.3% each: balanced
    df = pd.DataFrame({"x": rng.normal(size=6000), "y": y})
    assert table_warnings(df, "y") == []
    df.loc[df.y == 7, "y"] = 8  # class 7 declared but without records
    notes = table_warnings(df, "y", {"label": {"column": "y", "classes": list(range(30))},
                                     "columns": {"x": {}}})
    assert len(notes) == 1 and "class 7: 0 (0.0%)" in notes[0], notes
