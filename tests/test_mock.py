"""Synthetic mocks: the published structure, drawn from the declared schema alone."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datasite.demo_data import breast_cancer_schema, cxr_schema
from datasite.mock import MockError, default_mock_size, synthetic_mock
from shared.data import IMAGES, DatasetMeta
from shared.schema import meta_from_schema


def test_table_mock_breast_cancer():
    schema = breast_cancer_schema()
    meta = meta_from_schema(schema, "bc")
    mock = synthetic_mock(meta)
    assert list(mock.columns) == [*schema["columns"], "diagnosis"]
    assert len(mock) == default_mock_size(569, 2) == 56
    assert set(mock["diagnosis"]) == {0, 1} and mock["diagnosis"].dtype == np.int64
    assert not mock.isna().any().any() and isinstance(mock.index, pd.RangeIndex)
    for c, spec in schema["columns"].items():  # every value within the declared bounds
        lo, hi = spec["bounds"]
        assert mock[c].dtype == np.float64 and mock[c].between(lo, hi).all()
    # deterministic in the seed
    pd.testing.assert_frame_equal(mock, synthetic_mock(meta))
    assert not synthetic_mock(meta, seed=1).equals(mock)


def test_table_mock_types_and_size():
    schema = {"kind": "table", "records": 300,
              "label": {"column": "grade", "classes": [1, 3, 5, 7]},
              "columns": {"age": {"type": "int", "unit": "years", "bounds": [18, 95]},
                          "temp": {"type": "float", "unit": "C", "bounds": [-5, -1]},
                          "flag": {"type": "bool"},
                          "stage": {"type": "category", "categories": [2, 4, 8]}}}
    meta = meta_from_schema(schema, "t")
    mock = synthetic_mock(meta, n=200, seed=3)
    assert mock.dtypes.astype(str).to_dict() == {"age": "int64", "temp": "float64",
                                                 "flag": "bool", "stage": "int64",
                                                 "grade": "int64"}
    assert mock["age"].between(18, 95).all() and mock["temp"].between(-5, -1).all()
    assert set(mock["stage"]) == {2, 4, 8} and set(mock["grade"]) == {1, 3, 5, 7}
    mock = synthetic_mock(meta, n=2)  # raised to one record per label
    assert len(mock) == 4 and sorted(mock["grade"]) == [1, 3, 5, 7]
    assert len(synthetic_mock(meta)) == 50


def test_images_mock_from_declared_shape():
    meta = meta_from_schema(cxr_schema(900, size=20, n_classes=3), "cxr")
    mock = synthetic_mock(meta, n=130)
    assert mock["images"].shape == (130, 20, 20) and mock["images"].dtype == np.uint8
    assert sorted(set(mock["labels"].tolist())) == [0, 1, 2]
    assert mock["images"].std() > 10  # not a blank image set
    rgb = meta_from_schema({"kind": "images", "records": 50, "label": {"classes": [0, 1]},
                            "image": {"height": 9, "width": 7, "channels": 3}}, "rgb")
    assert synthetic_mock(rgb, n=5)["images"].shape == (5, 9, 7, 3)


def test_mock_needs_declared_classes_and_columns():
    with pytest.raises(MockError, match="classes"):
        synthetic_mock(DatasetMeta(name="x", kind=IMAGES, n_records=5, label="label", labels=[],
                                   image_shape=[4, 4]))
    with pytest.raises(MockError, match="--schema"):
        synthetic_mock(DatasetMeta(name="x", kind="table", n_records=5, label="y", labels=[0, 1]))


# -- declared rates -----------------------------------------------------------------------------
TYPED = {"kind": "table", "records": 300,
         "label": {"column": "grade", "classes": [1, 3, 5, 7]},
         "columns": {"age": {"type": "int", "unit": "years", "bounds": [18, 95]},
                     "temp": {"type": "float", "unit": "C", "bounds": [-5, -1]},
                     "flag": {"type": "bool"},
                     "stage": {"type": "category", "categories": [2, 4, 8]},
                     "crp": {"type": "float", "bounds": [0, 300], "missing": True}}}
# sha256 of synthetic_mock(TYPED, n=500, seed=3).to_csv(index=False), computed with the mock as
# it was before declared rates existed (commit b0ec6a6): undeclared schemas draw the same mock
BEFORE_RATES_SHA256 = "9152ad93d219ae769b3afad081e506503f9fd40dee8a0d90b81520e51f582d02"


def test_undeclared_rates_draw_the_mock_as_before():
    import hashlib

    from datasite.mock import MOCK_MISSING_SHARE

    mock = synthetic_mock(meta_from_schema(TYPED, "t"), n=500, seed=3)
    assert hashlib.sha256(mock.to_csv(index=False).encode()).hexdigest() == BEFORE_RATES_SHA256
    big = synthetic_mock(meta_from_schema(TYPED, "t"), n=5000, seed=0)
    assert abs(big["crp"].isna().mean() - MOCK_MISSING_SHARE) < 0.02
    assert abs(big["flag"].mean() - 0.5) < 0.03
    for share in big["grade"].value_counts(normalize=True):
        assert abs(share - 0.25) < 0.03


def test_declared_rates_are_followed_within_sampling_error():
    """5,000 mock records: each declared share within 0.03 (over 4 standard errors)."""
    schema = {**TYPED, "label": {"column": "grade", "classes": [7, 1, 5, 3],
                                 "rates": [0.05, 0.6, 0.35, 0.0]},  # declared order: 7, 1, 5, 3
              "columns": {**TYPED["columns"],
                          "flag": {"type": "bool", "rate": 0.2},
                          "stage": {"type": "category", "categories": [8, 2, 4],
                                    "rates": [0.7, 0.1, 0.2]},
                          "sex": {"type": "category", "categories": ["F", "M"],
                                  "rates": [0.35, 0.65]},
                          "crp": {"type": "float", "bounds": [0, 300], "missing": True,
                                  "missing_rate": 0.17}}}
    meta = meta_from_schema(schema, "t")
    assert meta.label_rates == [0.6, 0.0, 0.35, 0.05]  # in code order 1, 3, 5, 7
    mock = synthetic_mock(meta, n=5000, seed=0)

    def close(x, want):
        assert abs(x - want) < 0.03, (x, want)

    close(mock["flag"].mean(), 0.2)
    close(mock["crp"].isna().mean(), 0.17)
    stage = mock["stage"].value_counts(normalize=True)
    close(stage[8], 0.7), close(stage[2], 0.1), close(stage[4], 0.2)
    close((mock["sex"] == 1).mean(), 0.65)  # M is code 1
    grade = mock["grade"].value_counts(normalize=True)
    close(grade[1], 0.6), close(grade[5], 0.35), close(grade[7], 0.05)
    assert (mock["grade"] == 3).sum() == 1  # a class declared at share 0 still appears once
    assert mock["age"].between(18, 95).all()  # undeclared columns as before
    pd.testing.assert_frame_equal(mock, synthetic_mock(meta, n=5000, seed=0))


def test_declared_label_rates_shape_image_mocks_too():
    schema = {**cxr_schema(900, size=12, n_classes=2), "label": {"classes": [0, 1],
                                                                "rates": [0.9, 0.1]}}
    labels = synthetic_mock(meta_from_schema(schema, "cxr"), n=2000)["labels"]
    assert abs(labels.mean() - 0.1) < 0.03
