"""Demo data: the breast-cancer CSV and the deterministic synthetic chest X-rays."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from datasite.demo_data import (
    make_synthetic_cxr,
    write_breast_cancer_csv,
    write_images_folder,
    write_synthetic_cxr_npz,
)
from datasite.ingest import load_images, load_npz


def test_breast_cancer_csv(tmp_path):
    from sklearn.datasets import load_breast_cancer

    path = write_breast_cancer_csv(tmp_path / "sub" / "bc.csv")
    df = pd.read_csv(path)
    assert df.shape == (569, 31) and df.columns[-1] == "diagnosis"
    assert all(re.fullmatch(r"[a-z0-9_]+", c) for c in df.columns)
    assert "mean_radius" in df.columns and "worst_concave_points" in df.columns
    sk = load_breast_cancer()
    np.testing.assert_array_equal(df["diagnosis"], sk.target)  # 0 = malignant, as in sklearn
    assert list(sk.target_names) == ["malignant", "benign"]
    assert (df["diagnosis"] == 0).sum() == 212
    np.testing.assert_allclose(df.drop(columns="diagnosis").to_numpy(), sk.data)


def test_cxr_shapes_labels_and_determinism():
    a = make_synthetic_cxr(90, size=28, seed=0, n_classes=3)
    b = make_synthetic_cxr(90, size=28, seed=0, n_classes=3)
    assert a["images"].shape == (90, 28, 28) and a["images"].dtype == np.uint8
    assert a["labels"].shape == (90,) and a["labels"].dtype == np.int64
    assert np.bincount(a["labels"]).tolist() == [30, 30, 30]
    assert a["images"].tobytes() == b["images"].tobytes()
    assert a["labels"].tobytes() == b["labels"].tobytes()
    c = make_synthetic_cxr(90, size=28, seed=1, n_classes=3)
    assert not np.array_equal(a["images"], c["images"])
    # all different, not blank, using the intensity range
    assert len({im.tobytes() for im in a["images"]}) == 90
    assert a["images"].min() < 40 and a["images"].max() > 200
    big = make_synthetic_cxr(4, size=64, seed=0)
    assert big["images"].shape == (4, 64, 64) and set(big["labels"]) == {0, 1}
    with pytest.raises(ValueError):
        make_synthetic_cxr(10, n_classes=4)


def _accuracy(n_classes: int) -> float:
    from sklearn.linear_model import LogisticRegression

    d = make_synthetic_cxr(900, size=28, seed=0, n_classes=n_classes)
    x = d["images"].reshape(len(d["images"]), -1) / 255.0
    y = d["labels"]
    clf = LogisticRegression(max_iter=1000).fit(x[:600], y[:600])
    return clf.score(x[600:], y[600:])


@pytest.mark.parametrize("n_classes, chance", [(2, 0.5), (3, 1 / 3)])
def test_cxr_is_learnable(n_classes, chance):
    assert _accuracy(n_classes) > chance + 0.2


def test_cxr_npz_medmnist_layout(tmp_path):
    p = write_synthetic_cxr_npz(tmp_path / "cxr.npz", n_train=60, n_val=10, n_test=20, size=28,
                                seed=0)
    assert p == tmp_path / "cxr.npz"
    with np.load(p) as z:
        assert sorted(z.files) == sorted(f"{s}_{k}" for s in ("train", "val", "test")
                                         for k in ("images", "labels"))
        assert z["train_images"].shape == (60, 28, 28) and z["train_images"].dtype == np.uint8
        assert z["val_labels"].shape == (10, 1) and z["test_labels"].shape == (20, 1)
        whole = make_synthetic_cxr(90, size=28, seed=0)
        np.testing.assert_array_equal(z["test_images"], whole["images"][70:])
        np.testing.assert_array_equal(z["val_labels"][:, 0], whole["labels"][60:70])
    payload, meta = load_npz(p, name="cxr")
    assert meta.n_records == 90 and meta.labels == [0, 1] and meta.image_shape == [28, 28]
    np.testing.assert_array_equal(payload["images"], whole["images"])
    q = write_synthetic_cxr_npz(tmp_path / "again.npz", 60, 10, 20, size=28, seed=0)
    with np.load(p) as z1, np.load(q) as z2:
        for k in z1.files:
            assert z1[k].tobytes() == z2[k].tobytes()


def test_images_folder_round_trip(tmp_path):
    data = make_synthetic_cxr(20, size=28, seed=2)
    labels_csv = write_images_folder(tmp_path / "cxr", data)
    assert labels_csv == tmp_path / "cxr" / "labels.csv"
    t = pd.read_csv(labels_csv)
    assert list(t.columns) == ["filename", "label"] and len(t) == 20
    payload, meta = load_images(tmp_path / "cxr", labels_csv, name="cxr")
    np.testing.assert_array_equal(payload["images"], data["images"])
    np.testing.assert_array_equal(payload["labels"], data["labels"])
    jpg_csv = write_images_folder(tmp_path / "jpg", data, fmt="jpg")
    payload, _ = load_images(tmp_path / "jpg", jpg_csv, name="cxrjpg")
    assert payload["images"].shape == (20, 28, 28)
    assert np.abs(payload["images"].astype(int) - data["images"]).mean() < 8  # lossy
