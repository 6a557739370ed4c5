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
