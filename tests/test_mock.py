"""Synthetic mocks: same structure as the real data, no real record."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from datasite.demo_data import breast_cancer_frame, make_synthetic_cxr
from datasite.mock import MockError, _redraw_real_images, default_mock_size, synthetic_mock
from shared.data import IMAGES, TABLE, DatasetMeta


def _table_meta(df: pd.DataFrame, label: str) -> DatasetMeta:
    return DatasetMeta(name="t", kind=TABLE, n_records=len(df), label=label,
                       labels=sorted(int(x) for x in df[label].unique()),
                       features={c: str(df[c].dtype) for c in df.columns if c != label})


def _images_meta(payload: dict) -> DatasetMeta:
    return DatasetMeta(name="i", kind=IMAGES, n_records=len(payload["labels"]), label="label",
                       labels=sorted(int(x) for x in np.unique(payload["labels"])),
                       image_shape=list(payload["images"].shape[1:]))


def _shared_rows(a: pd.DataFrame, b: pd.DataFrame) -> int:
    return len(a.merge(b, how="inner", on=list(a.columns)))


def _assert_same_schema(mock: pd.DataFrame, real: pd.DataFrame, label: str) -> None:
    assert list(mock.columns) == list(real.columns)
    assert mock.dtypes.to_dict() == real.dtypes.to_dict()
    assert set(mock[label]) == set(real[label])
    assert not mock.isna().any().any()
    assert isinstance(mock.index, pd.RangeIndex)


def test_table_mock_breast_cancer():
    real = breast_cancer_frame()
    meta = _table_meta(real, "diagnosis")
    mock = synthetic_mock(real, meta)
    _assert_same_schema(mock, real, "diagnosis")
    assert len(mock) == default_mock_size(569, 2) == 56
    assert _shared_rows(mock, real) == 0
    # no real value is copied: not even a single real cell appears in the mock
    for c in meta.features:
        assert not set(mock[c]) & set(real[c])
    # features are on the column's coarse scale (power of ten of the median), all non-negative
    assert (mock.drop(columns="diagnosis") >= 0).all().all()
    ratio = mock["mean_area"].median() / real["mean_area"].median()
    assert 0.1 < ratio < 10
    # deterministic in the seed
    pd.testing.assert_frame_equal(mock, synthetic_mock(real, meta))
    assert not synthetic_mock(real, meta, seed=1).equals(mock)


def test_table_mock_dtypes_and_size():
    rng = np.random.default_rng(0)
    n = 300
    real = pd.DataFrame({
        "age": rng.integers(18, 95, n).astype(np.int16),
        "count": pd.array(rng.integers(0, 5, n), dtype="Int64"),
        "temp": rng.normal(-3, 1, n).astype(np.float32),
        "flag": rng.integers(0, 2, n).astype(bool),
        "grade": (rng.integers(0, 4, n) * 2 + 1).astype(np.int64),  # labels 1, 3, 5, 7
        "dose": rng.uniform(1000, 5000, n),
    })
    meta = _table_meta(real, "grade")
    mock = synthetic_mock(real, meta, n=7, seed=3)
    assert len(mock) == 7
    _assert_same_schema(mock, real, "grade")
    assert (mock["temp"] < 0).any()  # negative column -> symmetric distribution
    mock = synthetic_mock(real, meta, n=2)  # raised to one record per label
    assert len(mock) == 4 and sorted(mock["grade"]) == [1, 3, 5, 7]
    mock = synthetic_mock(real, meta)
    assert len(mock) == 50 and _shared_rows(mock, real) == 0
    assert 0.3 < mock["age"].max() / 100 <= 1  # ints uniform over [0, 100]


def test_table_mock_avoids_real_rows_in_a_small_space():
    # 3 binary features and a binary label: 16 possible rows; the real data holds 15 of them,
    # so a naive mock would copy real rows almost every time
    rows = list(itertools.product([0, 1], repeat=4))[:15]
    real = pd.DataFrame(rows * 4, columns=["a", "b", "c", "y"]).astype(np.int64)
    mock = synthetic_mock(real, _table_meta(real, "y"), n=200)
    _assert_same_schema(mock, real, "y")
    assert _shared_rows(mock, real) == 0


def test_table_mock_impossible_raises():
    real = pd.DataFrame(list(itertools.product([False, True], [False, True], [0, 1])),
                        columns=["a", "b", "y"])
    real["y"] = real["y"].astype(np.int64)
    with pytest.raises(MockError, match="every possible row"):
        synthetic_mock(real, _table_meta(real, "y"))


def test_images_mock_grayscale():
    real = make_synthetic_cxr(300, size=28, seed=0, n_classes=3)
    meta = _images_meta(real)
    mock = synthetic_mock(real, meta)
    assert mock["images"].shape == (50, 28, 28) and mock["images"].dtype == np.uint8
    assert mock["labels"].dtype == real["labels"].dtype and mock["labels"].shape == (50,)
    assert sorted(set(mock["labels"].tolist())) == [0, 1, 2]
    real_bytes = {im.tobytes() for im in real["images"]}
    assert not any(im.tobytes() in real_bytes for im in mock["images"])
    assert len({im.tobytes() for im in mock["images"]}) == 50  # not one repeated image
    assert mock["images"].std() > 10  # not blank
    again = synthetic_mock(real, meta)
    np.testing.assert_array_equal(again["images"], mock["images"])
    np.testing.assert_array_equal(again["labels"], mock["labels"])


def test_images_mock_rgb_and_odd_labels():
    rng = np.random.default_rng(0)
    real = {"images": rng.integers(0, 256, (40, 9, 13, 3), dtype=np.uint8),
            "labels": np.array([2, 7] * 20, dtype=np.int64)}
    mock = synthetic_mock(real, _images_meta(real), n=130)
    assert mock["images"].shape == (130, 9, 13, 3) and mock["images"].dtype == np.uint8
    assert set(mock["labels"].tolist()) == {2, 7}


def test_redraw_replaces_copies_of_real_images():
    real = make_synthetic_cxr(20, size=16, seed=0)["images"]
    out = real[:5].copy()
    _redraw_real_images(out, real, np.random.default_rng(0))
    real_bytes = {im.tobytes() for im in real}
    assert not any(im.tobytes() in real_bytes for im in out)
