"""Importing tables, image folders and .npz files: happy paths and every error message."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from datasite.demo_data import write_breast_cancer_csv, write_images_folder
from datasite.ingest import IngestError, load_images, load_npz, load_table


def _table(n=30, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(20, 90, n),
        "bmi": rng.normal(25, 4, n),
        "smoker": rng.integers(0, 2, n).astype(bool),
        "outcome": np.arange(n) % 3,
    })


def _csv(tmp_path, df, name="t.csv"):
    p = tmp_path / name
    df.to_csv(p, index=False)
    return p


def _raises(fn, *words):
    with pytest.raises(IngestError) as e:
        fn()
    msg = str(e.value).lower()
    for w in words:
        assert w.lower() in msg, f"{w!r} not in {msg!r}"
    return msg


# -- tables ----------------------------------------------------------------------------------
def test_table_csv_happy_path(tmp_path):
    df = _table()
    payload, meta = load_table(_csv(tmp_path, df), "outcome", name="stroke")
    assert list(payload.columns) == list(df.columns)
    assert payload["outcome"].dtype == np.int64
    assert meta.name == "stroke" and meta.kind == "table" and meta.n_records == 30
    assert meta.label == "outcome" and meta.labels == [0, 1, 2]
    assert meta.features == {"age": "int64", "bmi": "float64", "smoker": "bool"}
    assert json.loads(meta.to_json())["labels"] == [0, 1, 2]
    assert all(type(x) is int for x in meta.labels)


def test_table_parquet_and_float_labels(tmp_path):
    df = _table()
    df["outcome"] = df["outcome"].astype(float)  # 0.0/1.0/2.0 are accepted as classes
    p = tmp_path / "t.parquet"
    df.to_parquet(p, index=False)
    payload, meta = load_table(p, "outcome", name="t")
    assert payload["outcome"].dtype == np.int64 and meta.labels == [0, 1, 2]
    assert meta.features["bmi"] == "float64"


def test_breast_cancer_demo_table(tmp_path):
    payload, meta = load_table(write_breast_cancer_csv(tmp_path / "bc.csv"), "diagnosis",
                               name="breast_cancer")
    assert meta.n_records == 569 and meta.labels == [0, 1] and len(meta.features) == 30


def test_table_default_name_is_file_stem(tmp_path):
    _, meta = load_table(_csv(tmp_path, _table(), "my table.csv"), "outcome")
    assert meta.name == "my_table"


def test_table_bad_name(tmp_path):
    _raises(lambda: load_table(_csv(tmp_path, _table()), "outcome", name="../evil"), "name")


def test_table_missing_file(tmp_path):
    _raises(lambda: load_table(tmp_path / "nope.csv", "y", name="t"), "does not exist")


def test_table_directory(tmp_path):
    (tmp_path / "d.csv").mkdir()
    _raises(lambda: load_table(tmp_path / "d.csv", "y", name="t"), "not a file")


def test_table_bad_extension(tmp_path):
    p = tmp_path / "t.xlsx"
    p.write_text("a,b\n1,2\n")
    _raises(lambda: load_table(p, "b", name="t"), ".csv", ".parquet")


def test_table_unreadable(tmp_path):
    p = tmp_path / "t.parquet"
    p.write_bytes(b"this is not parquet at all")
    _raises(lambda: load_table(p, "y", name="t"), "cannot read", "parquet")
    q = tmp_path / "bad.csv"
    q.write_bytes(b"a,b\n1,2\n\xff\xfe\x00\x81,3\n")
    _raises(lambda: load_table(q, "b", name="t"), "cannot read", "csv")


def test_table_empty_file_and_no_rows(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("")
    _raises(lambda: load_table(p, "y", name="t"), "empty")
    q = tmp_path / "header.csv"
    q.write_text("a,b,y\n")
    _raises(lambda: load_table(q, "y", name="t"), "empty", "0 records")


def test_table_label_missing_lists_columns(tmp_path):
    _raises(lambda: load_table(_csv(tmp_path, _table()), "diagnosis", name="t"),
            "no label column", "'diagnosis'", "age", "bmi", "smoker", "outcome")


def test_table_label_continuous(tmp_path):
    df = _table()
    df["outcome"] = df["bmi"] * 1.5  # non-integer floats
    _raises(lambda: load_table(_csv(tmp_path, df), "outcome", name="t"), "looks continuous")
    df["outcome"] = np.arange(30)  # 30 distinct integers
    _raises(lambda: load_table(_csv(tmp_path, df, "u.csv"), "outcome", name="t"),
            "looks continuous", "30 distinct")


def test_table_text_labels(tmp_path):
    df = _table()
    df["outcome"] = np.where(df["outcome"] == 0, "benign", "malignant")
    _raises(lambda: load_table(_csv(tmp_path, df), "outcome", name="t"),
            "integer", "benign", "malignant")


def test_table_nan_and_inf_name_columns_and_counts(tmp_path):
    df = _table().astype({"age": float})
    df.loc[[1, 2, 3], "age"] = np.nan
    df.loc[5, "bmi"] = np.inf
    msg = _raises(lambda: load_table(_csv(tmp_path, df), "outcome", name="t"),
                  "missing", "infinite", "'age' (3)", "'bmi' (1)")
    assert "smoker" not in msg
    p = tmp_path / "t.parquet"  # inf survives in parquet exactly
    df.to_parquet(p)
    _raises(lambda: load_table(p, "outcome", name="t"), "'bmi' (1)")


def test_table_nan_label(tmp_path):
    df = _table().astype({"outcome": float})
    df.loc[0, "outcome"] = np.nan
    _raises(lambda: load_table(_csv(tmp_path, df), "outcome", name="t"), "'outcome' (1)")


def test_table_non_numeric_features(tmp_path):
    df = _table()
    df["sex"] = np.where(df["age"] > 50, "F", "M")
    df["ward"] = "A"
    _raises(lambda: load_table(_csv(tmp_path, df), "outcome", name="t"),
            "non-numeric", "'sex'", "'ward'", "encode")


def test_table_single_class(tmp_path):
    df = _table()
    df["outcome"] = 1
    _raises(lambda: load_table(_csv(tmp_path, df), "outcome", name="t"),
            "same label", "two classes")


def test_table_too_few_records(tmp_path):
    _raises(lambda: load_table(_csv(tmp_path, _table(n=6)), "outcome", name="t"),
            "only 6 records", "at least 10")


def test_table_only_label_column(tmp_path):
    df = _table()[["outcome"]]
    _raises(lambda: load_table(_csv(tmp_path, df), "outcome", name="t"), "no feature columns")


# -- image folders ---------------------------------------------------------------------------
def _images(n=12, shape=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    return {"images": rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
            "labels": (np.arange(n) % 2).astype(np.int64)}


def test_images_happy_path_grayscale(tmp_path):
    data = _images()
    labels_csv = write_images_folder(tmp_path / "imgs", data)
    payload, meta = load_images(tmp_path / "imgs", labels_csv, name="cxr")
    assert payload["images"].dtype == np.uint8 and payload["images"].shape == (12, 16, 16)
    assert payload["labels"].dtype == np.int64
    np.testing.assert_array_equal(payload["images"], data["images"])
    np.testing.assert_array_equal(payload["labels"], data["labels"])
    assert meta.kind == "images" and meta.n_records == 12 and meta.labels == [0, 1]
    assert meta.image_shape == [16, 16] and meta.label == "label" and meta.name == "cxr"
    json.loads(meta.to_json())


def test_images_rgb_jpeg_subfolders_and_relative_labels(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "imgs"
    (d / "a").mkdir(parents=True)
    rows = []
    for i in range(10):
        f = f"a/x{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).save(d / f)
        rows.append((f, i % 3))
    pd.DataFrame(rows, columns=["filename", "label"]).to_csv(d / "labels.csv", index=False)
    payload, meta = load_images(d, "labels.csv", name="rgb")  # found inside the folder
    assert payload["images"].shape == (10, 8, 10, 3) and meta.image_shape == [8, 10, 3]
    assert meta.labels == [0, 1, 2]
    payload2, _ = load_images(d, name="rgb")  # default labels file
    np.testing.assert_array_equal(payload["images"], payload2["images"])


def test_images_missing_folder_and_labels(tmp_path):
    _raises(lambda: load_images(tmp_path / "nope", "labels.csv", name="x"), "does not exist")
    (tmp_path / "imgs").mkdir()
    _raises(lambda: load_images(tmp_path / "imgs", "labels.csv", name="x"),
            "labels file", "does not exist")
    f = tmp_path / "file.npz"
    f.write_bytes(b"x")
    _raises(lambda: load_images(f, "labels.csv", name="x"), "not a folder")


def test_images_labels_file_columns(tmp_path):
    labels_csv = write_images_folder(tmp_path / "imgs", _images())
    pd.read_csv(labels_csv).rename(columns={"filename": "file"}).to_csv(labels_csv, index=False)
    _raises(lambda: load_images(tmp_path / "imgs", labels_csv, name="x"),
            "'filename'", "'label'", "file")
    labels_csv.write_text("")
    _raises(lambda: load_images(tmp_path / "imgs", labels_csv, name="x"), "empty")
    labels_csv.write_text("filename,label\n")
    _raises(lambda: load_images(tmp_path / "imgs", labels_csv, name="x"), "empty")


def test_images_unmatched_files_and_labels(tmp_path):
    labels_csv = write_images_folder(tmp_path / "imgs", _images(n=20))
    for i in range(7):  # 7 labels without files
        (tmp_path / "imgs" / f"img_{i:05d}.png").unlink()
    msg = _raises(lambda: load_images(tmp_path / "imgs", labels_csv, name="x"),
                  "7 labelled images have no file", "img_00000.png", "and 2 more")
    assert "img_00005.png" not in msg  # lists at most 5
    labels_csv = write_images_folder(tmp_path / "imgs2", _images(n=12))
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "imgs2" / "extra.png")
    _raises(lambda: load_images(tmp_path / "imgs2", labels_csv, name="x"),
            "1 image files have no label", "extra.png")


def test_images_duplicate_rows(tmp_path):
    labels_csv = write_images_folder(tmp_path / "imgs", _images())
    t = pd.read_csv(labels_csv)
    pd.concat([t, t.iloc[:1]]).to_csv(labels_csv, index=False)
    _raises(lambda: load_images(tmp_path / "imgs", labels_csv, name="x"),
            "more than once", "img_00000.png")


def test_images_unreadable_file(tmp_path):
    labels_csv = write_images_folder(tmp_path / "imgs", _images())
    (tmp_path / "imgs" / "img_00003.png").write_bytes(b"not a png")
    _raises(lambda: load_images(tmp_path / "imgs", labels_csv, name="x"),
            "cannot read image", "img_00003.png")


def test_images_size_and_mode_mismatch(tmp_path):
    labels_csv = write_images_folder(tmp_path / "imgs", _images())
    Image.fromarray(np.zeros((20, 18), np.uint8)).save(tmp_path / "imgs" / "img_00004.png")
    _raises(lambda: load_images(tmp_path / "imgs", labels_csv, name="x"),
            "same size", "img_00004.png", "18x20", "16x16", "img_00000.png")
    # several offending files: the count and the others are listed
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "imgs" / "img_00007.png")
    _raises(lambda: load_images(tmp_path / "imgs", labels_csv, name="x"),
            "2 differ", "others: img_00007.png")
    labels_csv = write_images_folder(tmp_path / "imgs2", _images())
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "imgs2" / "img_00002.png")
    _raises(lambda: load_images(tmp_path / "imgs2", labels_csv, name="x"),
            "mode", "img_00002.png", "rgb", "l)")


def test_images_unsupported_mode(tmp_path):
    labels_csv = write_images_folder(tmp_path / "imgs", _images())
    Image.fromarray(np.zeros((16, 16), np.uint16)).save(tmp_path / "imgs" / "img_00001.png")
    _raises(lambda: load_images(tmp_path / "imgs", labels_csv, name="x"),
            "img_00001.png", "mode", "8-bit")


def test_images_labels_must_be_integers(tmp_path):
    labels_csv = write_images_folder(tmp_path / "imgs", _images())
    t = pd.read_csv(labels_csv)
    t["label"] = np.where(t["label"] == 0, "normal", "pneumonia")
    t.to_csv(labels_csv, index=False)
    _raises(lambda: load_images(tmp_path / "imgs", labels_csv, name="x"),
            "integer", "normal", "pneumonia")


def test_images_single_class_and_too_few(tmp_path):
    data = _images()
    data["labels"][:] = 1
    labels_csv = write_images_folder(tmp_path / "imgs", data)
    _raises(lambda: load_images(tmp_path / "imgs", labels_csv, name="x"), "same label")
    labels_csv = write_images_folder(tmp_path / "imgs2", _images(n=4))
    _raises(lambda: load_images(tmp_path / "imgs2", labels_csv, name="x"), "only 4 records")


# -- npz -------------------------------------------------------------------------------------
def _medmnist(tmp_path, name="m.npz", **over):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 20), ("val", 5), ("test", 8)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 12, 12), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).astype(np.uint8)[:, None]
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    p = tmp_path / name
    np.savez(p, **arrays)
    return p, arrays


def test_npz_medmnist_concatenates_splits(tmp_path):
    p, arrays = _medmnist(tmp_path)
    payload, meta = load_npz(p, name="derma")
    assert payload["images"].shape == (33, 12, 12) and payload["images"].dtype == np.uint8
    assert payload["labels"].shape == (33,) and payload["labels"].dtype == np.int64
    np.testing.assert_array_equal(payload["images"][20:25], arrays["val_images"])
    assert meta.n_records == 33 and meta.labels == [0, 1, 2] and meta.image_shape == [12, 12]
    assert "train (20), val (5), test (8)" in meta.description
    assert meta.name == "derma" and meta.kind == "images"


def test_npz_partial_splits_and_plain_keys(tmp_path):
    p, _ = _medmnist(tmp_path, val_images=None, val_labels=None)
    payload, meta = load_npz(p, name="x")
    assert meta.n_records == 28 and "train (20), test (8)" in meta.description
    rng = np.random.default_rng(0)
    q = tmp_path / "plain.npz"
    np.savez(q, images=rng.integers(0, 256, (15, 8, 8, 3), dtype=np.uint8),
             labels=np.arange(15) % 2)
    payload, meta = load_npz(q, name="y")
    assert payload["images"].shape == (15, 8, 8, 3) and meta.image_shape == [8, 8, 3]


def test_npz_missing_and_unreadable(tmp_path):
    _raises(lambda: load_npz(tmp_path / "nope.npz", name="x"), "does not exist")
    p = tmp_path / "bad.npz"
    p.write_bytes(b"garbage" * 10)
    _raises(lambda: load_npz(p, name="x"), "not an .npz archive")
    p.write_bytes(b"PK\x03\x04" + b"garbage" * 10)  # truncated zip
    _raises(lambda: load_npz(p, name="x"), "cannot read")
    q = tmp_path / "single.npz"
    with open(q, "wb") as f:
        np.save(f, np.zeros((3, 3), np.uint8))
    _raises(lambda: load_npz(q, name="x"), "single .npy")
    r = tmp_path / "obj.npz"
    np.savez(r, images=np.array([{"a": 1}], dtype=object), labels=np.array([0]))
    _raises(lambda: load_npz(r, name="x"), "cannot read")


def test_npz_wrong_keys(tmp_path):
    p = tmp_path / "k.npz"
    np.savez(p, x=np.zeros((12, 4, 4), np.uint8), y=np.zeros(12))
    _raises(lambda: load_npz(p, name="x"), "no image arrays", "train_images", "x, y")
    q, _ = _medmnist(tmp_path, "q.npz", val_labels=None)
    _raises(lambda: load_npz(q, name="x"), "'val_images'", "no 'val_labels'")


def test_npz_float_images(tmp_path):
    p, _ = _medmnist(tmp_path, train_images=np.random.default_rng(0).random((20, 12, 12)))
    _raises(lambda: load_npz(p, name="x"), "train_images", "float64", "uint8", "255")


def test_npz_shape_problems(tmp_path):
    p, _ = _medmnist(tmp_path, test_images=np.zeros((8, 10, 10), np.uint8))
    _raises(lambda: load_npz(p, name="x"), "different image shapes", "(12, 12)", "(10, 10)")
    p, _ = _medmnist(tmp_path, "b.npz", val_images=np.zeros((5, 144), np.uint8))
    _raises(lambda: load_npz(p, name="x"), "val_images", "shape")
    p, _ = _medmnist(tmp_path, "c.npz", train_labels=np.zeros((20, 3), np.uint8))
    _raises(lambda: load_npz(p, name="x"), "train_labels", "multi-label")


def test_npz_count_mismatch(tmp_path):
    p, _ = _medmnist(tmp_path, train_labels=np.zeros((19, 1), np.uint8))
    _raises(lambda: load_npz(p, name="x"), "20 images", "19 labels")


def test_npz_non_integer_labels(tmp_path):
    p, _ = _medmnist(tmp_path, train_labels=np.linspace(0, 1, 20)[:, None])
    _raises(lambda: load_npz(p, name="x"), "train_labels", "integer")


def test_npz_empty_and_single_class(tmp_path):
    q = tmp_path / "e.npz"
    np.savez(q, images=np.zeros((0, 8, 8), np.uint8), labels=np.zeros(0, np.int64))
    _raises(lambda: load_npz(q, name="x"), "empty")
    q = tmp_path / "s.npz"
    np.savez(q, images=np.zeros((12, 8, 8), np.uint8), labels=np.zeros(12, np.int64))
    _raises(lambda: load_npz(q, name="x"), "same label")


def test_nothing_written_on_failure(tmp_path):
    p, _ = _medmnist(tmp_path, train_labels=np.zeros((19, 1), np.uint8))
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(IngestError):
        load_npz(p, name="x")
    with pytest.raises(IngestError):
        load_table(tmp_path / "m.npz", "y", name="x")
    assert sorted(tmp_path.rglob("*")) == before
