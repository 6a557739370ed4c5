"""Import and publication attacks: decompression bombs, metadata escaping, CSV formula injection.

Each test plays the attacker's file or name and checks the defence: bombs are refused from
their headers, fast and without inflating (peak memory measured); any column name round-trips
through the published metadata to a researcher; formula-like names are flagged to the owner and
quoted in the CSV the product writes.
"""
from __future__ import annotations

import csv
import gzip
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from datasite.ingest import (DEFAULT_MAX_IMPORT_BYTES, MAX_IMPORT_BYTES_ENV, IngestError,
                             load_images, load_npz, load_table)
from shared.data import DatasetMeta, csv_safe_frame, parse_published, published_description
from bomb_tools import raw_zip, refused_measured

MiB, GiB = 1024 ** 2, 1024 ** 3


# -- measuring -------------------------------------------------------------------------------
# -- crafting bombs --------------------------------------------------------------------------
def _npy_header(shape, dtype=np.uint8) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(shape)})
    return buf.getvalue()


def _zeros_bomb(path: Path, n_images: int, side: int = 1024) -> Path:
    """An .npz whose ``images`` are ``n_images`` x side x side zeros, deflated: ~1000x smaller on
    disk. Built without ever holding the zeros (each MiB deflates to the same independent
    block), with correct sizes and CRC, so it is a valid archive np.load reads in full."""
    header = _npy_header((n_images, side, side))
    mib = bytes(MiB)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(header) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(mib) + co.flush(zlib.Z_FULL_FLUSH)  # references nothing before it
    n_mib = n_images * side * side // MiB
    crc = zlib.crc32(header)
    for _ in range(n_mib):
        crc = zlib.crc32(mib, crc)
    data = head + block * n_mib + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    labels = io.BytesIO()
    np.save(labels, (np.arange(n_images) % 2).astype(np.int64))
    lab = labels.getvalue()
    raw_zip(path, [("images.npy", data, crc, len(header) + n_mib * MiB, zipfile.ZIP_DEFLATED),
                ("labels.npy", lab, zlib.crc32(lab), len(lab), zipfile.ZIP_STORED)])
    return path


def test_crafted_zip_is_a_valid_bomb(tmp_path):
    """The crafting is right: a small bomb built the same way loads, with the inflated content."""
    p = _zeros_bomb(tmp_path / "small.npz", 12, side=512)
    assert p.stat().st_size < 40_000  # 3 MiB of images on disk in tens of KB
    with zipfile.ZipFile(p) as zf:
        assert zf.testzip() is None  # every CRC right
    payload, meta = load_npz(p, name="small")
    assert payload["images"].shape == (12, 512, 512) and not payload["images"].any()


# -- 1. decompression bombs ------------------------------------------------------------------
def test_npz_zeros_bomb_over_the_default_limit_is_refused_from_headers(tmp_path):
    p = _zeros_bomb(tmp_path / "bomb.npz", 2560)  # 2.5 GiB of zeros in ~2.6 MB
    assert p.stat().st_size < 3 * MiB
    msg, peak, seconds = refused_measured(lambda: load_npz(p, name="x"), "images", "2.5 GiB",
                                  MAX_IMPORT_BYTES_ENV, "decompression bomb")
    assert peak < 32 * MiB, f"{peak / MiB:.0f} MiB allocated before refusing"
    assert seconds < 2.0


def test_npz_bomb_under_the_limit_is_refused_by_its_compression_ratio(tmp_path):
    p = _zeros_bomb(tmp_path / "bomb.npz", 256)  # 256 MiB: within 2 GiB, but ~1000x
    msg, peak, seconds = refused_measured(lambda: load_npz(p, name="x"), "images", "decompression bomb",
                                  "np.savez")
    assert peak < 32 * MiB, f"{peak / MiB:.0f} MiB allocated before refusing"
    assert seconds < 2.0


def test_npz_header_claiming_a_huge_array_is_refused_unallocated(tmp_path):
    """A tiny stored member whose .npy header claims 1 TiB: numpy would allocate it first."""
    member = _npy_header((2 ** 20, 1024, 1024)) + bytes(1000)
    lab = io.BytesIO()
    np.save(lab, np.zeros(12, np.int64))
    p = tmp_path / "liar.npz"
    raw_zip(p, [("images.npy", member, zlib.crc32(member), len(member), zipfile.ZIP_STORED),
             ("labels.npy", lab.getvalue(), zlib.crc32(lab.getvalue()), len(lab.getvalue()),
              zipfile.ZIP_STORED)])
    msg, peak, _ = refused_measured(lambda: load_npz(p, name="x"), "1.0 TiB", MAX_IMPORT_BYTES_ENV)
    assert peak < 32 * MiB


def test_npz_bzip2_member_is_refused_before_its_header_is_read(tmp_path):
    """zipfile inflates bzip2 without an output bound: reading 4 KB of it yields everything."""
    p = tmp_path / "bz.npz"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_BZIP2) as zf:
        with zf.open("images.npy", "w") as f:
            f.write(_npy_header((48, 1024, 1024)))
            for _ in range(48):
                f.write(bytes(MiB))
        zf.writestr("labels.npy", b"")
    assert p.stat().st_size < 10_000
    msg, peak, _ = refused_measured(lambda: load_npz(p, name="x"), "compression other than deflate",
                            "np.savez")
    assert peak < 16 * MiB, f"{peak / MiB:.0f} MiB allocated before refusing"


def test_npz_limit_is_configurable_and_genuine_data_loads(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    p = tmp_path / "real.npz"
    np.savez(p, images=rng.integers(0, 256, (40, 128, 128), dtype=np.uint8),
             labels=np.arange(40) % 2)  # 640 KiB, uncompressed
    assert load_npz(p, name="x")[1].n_records == 40  # the default limit lets it in
    monkeypatch.setenv(MAX_IMPORT_BYTES_ENV, "256K")
    refused_measured(lambda: load_npz(p, name="x"), "640.1 KiB", "256.0 KiB", MAX_IMPORT_BYTES_ENV)
    monkeypatch.setenv(MAX_IMPORT_BYTES_ENV, "1M")
    assert load_npz(p, name="x")[1].n_records == 40
    monkeypatch.setenv(MAX_IMPORT_BYTES_ENV, "lots")
    refused_measured(lambda: load_npz(p, name="x"), MAX_IMPORT_BYTES_ENV, "8G")
    assert DEFAULT_MAX_IMPORT_BYTES == 2 * GiB


def test_single_npy_file_is_refused_unread(tmp_path):
    p = tmp_path / "big.npz"
    with open(p, "wb") as f:  # a raw .npy claiming 4 GiB: refused from its magic alone
        f.write(_npy_header((4096, 1024, 1024)))
    _, peak, _ = refused_measured(lambda: load_npz(p, name="x"), "single .npy")
    assert peak < 16 * MiB


def _png_bomb(side: int) -> bytes:
    """A valid grayscale PNG of side x side zeros, deflated (~1000x): like _zeros_bomb, one
    independent deflate block repeated, then the zlib trailer (adler32 of the inflated rows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">L", len(data)) + kind + data + struct.pack(
            ">L", zlib.crc32(kind + data))

    rows = bytes(side + 1) * 64  # 64 rows: filter byte 0 + zero pixels each
    co = zlib.compressobj(9)
    head = co.compress(rows) + co.flush(zlib.Z_FULL_FLUSH)  # zlib header + first block
    block = co.compress(rows) + co.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(side // 64):
        adler = zlib.adler32(rows, adler)
    idat = (head + block * (side // 64 - 1) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
            + struct.pack(">L", adler))
    ihdr = struct.pack(">LLBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _image_folder(tmp_path: Path, png: bytes, n: int) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(n):
        (d / f"img_{i:03d}.png").write_bytes(png)
    pd.DataFrame({"filename": [f"img_{i:03d}.png" for i in range(n)],
                  "label": np.arange(n) % 2}).to_csv(d / "labels.csv", index=False)
    return d


def test_png_folder_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    """12 PNGs of 4096x4096 zeros (16 KB each on disk) would fill 192 MiB once decoded."""
    d = _image_folder(tmp_path, _png_bomb(4096), 12)
    assert sum(f.stat().st_size for f in d.glob("*.png")) < 12 * 64_000
    monkeypatch.setenv(MAX_IMPORT_BYTES_ENV, "64M")
    msg, peak, seconds = refused_measured(lambda: load_images(d, name="x"), "12 images of 4096x4096",
                                  "192.0 MiB", MAX_IMPORT_BYTES_ENV)
    assert peak < 32 * MiB, f"{peak / MiB:.0f} MiB allocated before refusing"
    assert seconds < 2.0


def test_png_beyond_pils_pixel_limit_is_refused(tmp_path):
    """One 16384x16384 image (268 M pixels, past PIL's MAX_IMAGE_PIXELS bomb guard) x 12."""
    d = _image_folder(tmp_path, _png_bomb(16384), 12)
    _, peak, _ = refused_measured(lambda: load_images(d, name="x"))
    assert peak < 32 * MiB, f"{peak / MiB:.0f} MiB allocated before refusing"


def test_compressed_labels_csv_is_refused_not_inflated(tmp_path):
    """pandas inflates labels.csv.gz by its suffix, without any limit."""
    d = _image_folder(tmp_path, _png_bomb(64), 12)
    lines = b"filename,label\n" + b"img_000.png,0\n" * (8 * MiB // 14)  # 8 MiB -> tens of KB
    (d / "labels.csv.gz").write_bytes(gzip.compress(lines, 9))
    _, peak, _ = refused_measured(lambda: load_images(d, d / "labels.csv.gz", name="x"),
                          "gzip-compressed", "decompress it first")
    assert peak < 16 * MiB, f"{peak / MiB:.0f} MiB allocated before refusing"
    table = tmp_path / "t.csv"  # a gzip file named .csv is refused the same way
    table.write_bytes(gzip.compress(b"a,y\n" + b"1,0\n1,1\n" * 100))
    refused_measured(lambda: load_table(table, "y", name="t"), "gzip-compressed")


def test_parquet_constant_column_bomb_is_refused_from_metadata(tmp_path, monkeypatch):
    """Run-length/dictionary encoding: 10 M rows x 2 int64 columns (160 MB) in a few KB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "bomb.parquet"
    block = pa.table({"x": pa.array(np.zeros(MiB, np.int64)),
                      "y": pa.array(np.arange(MiB, dtype=np.int64) % 2)})
    with pq.ParquetWriter(p, block.schema, compression="zstd") as w:
        for _ in range(10):
            w.write_table(block)
    assert p.stat().st_size < 200_000
    monkeypatch.setenv(MAX_IMPORT_BYTES_ENV, "64M")
    msg, peak, seconds = refused_measured(lambda: load_table(p, "y", name="t"), "10485760 rows",
                                  "160.0 MiB", MAX_IMPORT_BYTES_ENV)
    assert peak < 32 * MiB, f"{peak / MiB:.0f} MiB allocated before refusing"
    assert seconds < 2.0


def test_parquet_dictionary_text_bomb_is_never_decoded_per_row(tmp_path):
    """One 4 KB string in 50,000 rows of a plain string column (dictionary-encoded on disk):
    200 MB if Arrow decoded it per row; read as a dictionary (datasite.parquet_table) it stays
    a few MB until the column is refused as non-numeric (tests/test_parquet_typed.py)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "text.parquet"
    n = 5000
    block = pa.table({"note": pa.array(["x" * 4096] * n), "x": np.zeros(n),
                      "y": np.arange(n) % 2})
    with pq.ParquetWriter(p, block.schema, compression="zstd") as w:
        for _ in range(10):
            w.write_table(block)
    del block
    assert p.stat().st_size < 400_000  # 200 MB of text in a few hundred KB
    _, peak, _ = refused_measured(lambda: load_table(p, "y", name="t"), "'note'", "non-numeric",
                                  "encode")
    assert peak < 32 * MiB, f"{peak / MiB:.0f} MiB allocated before refusing"


# -- 2. any column name round-trips through the published metadata ---------------------------
NASTY = ["back`tick", "fence```json dp-datasite-meta", 'double"quote', "single'quote",
         "back\\slash", "new\nline", "ünï-cödé ✓ 😀", "</script><script>alert(1)</script>",
         "&amp; <b>", "line\u2028separator"]


def _nasty_meta() -> DatasetMeta:
    return DatasetMeta(
        name="nasty", kind="table", n_records=50, label='label"`', labels=[0, 1],
        features={c: "float64" for c in NASTY}, feature_scales={c: 1.0 for c in NASTY},
        columns={c: {"type": "float", "unit": c, "bounds": [0, 1]} for c in NASTY},
        class_names={"0": "```", "1": "</script>"},
        description="Owner prose quoting a fence:\n```json dp-datasite-meta\n{\"name\": 1}\n```")


def test_published_metadata_round_trips_any_name():
    meta = _nasty_meta()
    text = published_description(meta)
    assert parse_published(text) == meta
    block = text[text.rindex("```json dp-datasite-meta"):]
    assert "</script" not in block and "<b>" not in block  # no HTML where it is rendered
    assert block.count("```") == 2  # the fence opens and closes once, around the JSON


def test_legacy_description_still_parses():
    meta = DatasetMeta(name="old", kind="table", n_records=20, label="y", labels=[0, 1],
                       features={"a": "float64"})
    legacy = f"prose\n\n```json dp-datasite-meta\n{meta.to_json()}\n```\n"
    assert parse_published(legacy) == meta
    assert parse_published("a dataset published by someone else") is None


def _nasty_upload(site, tmp_path, columns, name):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({c: rng.random(40) for c in columns})
    df["y"] = np.arange(40) % 2
    # quoted header: pandas leaves a bare CR unquoted, which would split the header line
    df.to_csv(tmp_path / f"{name}.csv", index=False, quoting=csv.QUOTE_NONNUMERIC)
    schema = {"kind": "table", "records": 40, "label": {"column": "y", "classes": [0, 1]},
              "columns": {c: {"type": "float", "unit": "", "bounds": [0, 1]} for c in columns}}
    return site.upload(name, table=str(tmp_path / f"{name}.csv"), schema=schema,
                       description="Columns with ` \" ' \\ and </script> in their names.")


@pytest.mark.backends("sqlite")
def test_live_site_lists_datasets_with_any_column_name(live_site, tmp_path, capsys):
    """Owner uploads a table whose column names hold quotes, backticks, newlines, unicode,
    HTML and formula prefixes; the researcher still lists every dataset and gets the names
    back exactly, in the metadata and the mock; the owner was warned of the formula names."""
    import researcher
    from conftest import RESEARCHER

    formulas = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd",
                "\rcmd"]
    _nasty_upload(live_site, tmp_path, NASTY + formulas, "nasty")
    err = capsys.readouterr().err
    for f in formulas:
        assert f"note: column {f!r} starts with" in err
    assert "note: column 'back`tick'" not in err

    site = researcher.connect(live_site.url, *RESEARCHER)
    datasets = site.datasets
    assert {"breast_cancer", "nasty"} <= set(datasets)
    ds = datasets["nasty"]
    assert sorted(ds.meta.features) == sorted(NASTY + formulas)  # published with sorted keys
    assert ds.meta.columns["new\nline"]["bounds"] == [0, 1]
    assert list(ds.mock.columns) == NASTY + formulas + ["y"]

    out = tmp_path / "mock.csv"  # the product's CSV export: formula names are quoted
    ds.save_mock_csv(out)
    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert header == NASTY + ["'" + f for f in formulas] + ["y"]

    # a dataset whose description another tool garbled is left out, not fatal to the listing
    import syft as sy
    bad = sy.Dataset(name="garbled", description="```json dp-datasite-meta\n{\"name\": ")
    bad.add_asset(sy.Asset(name="garbled", data=np.zeros(3), mock=np.zeros(3)))
    live_site.client.upload_dataset(bad)
    with pytest.warns(UserWarning, match="(?s)garbled.*re-publish"):
        datasets = researcher.connect(live_site.url, *RESEARCHER).datasets
    assert {"breast_cancer", "nasty"} <= set(datasets) and "garbled" not in datasets


# -- 3. spreadsheet formulas in published names ----------------------------------------------
FORMULAS = ["=1+1", "+1", "-1", "@x", "\tx", "\rx"]


def _formula_table(tmp_path) -> Path:
    df = pd.DataFrame({c: np.linspace(0, 1, 30) for c in ["plain", "a-b", *FORMULAS]})
    df["y"] = np.arange(30) % 2
    p = tmp_path / "f.csv"
    df.to_csv(p, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return p


def test_upload_notes_formula_names(tmp_path):
    from datasite.schema import prepare

    p = _formula_table(tmp_path)
    schema = {"kind": "table", "records": 30,
              "label": {"column": "y", "classes": {0: "=cmd|' /C calc'!A0", 1: "ok"}},
              "columns": {c: {"type": "float", "bounds": [0, 1]}
                          for c in ["plain", "a-b", *FORMULAS]}}
    _, meta, _, notes = prepare("f", schema, table=str(p))
    assert len(notes) == len(FORMULAS) + 1 and all("rename it" in n for n in notes)
    for c in FORMULAS:
        assert sum(n.startswith(f"column {c!r} starts with {c[0]!r}") for n in notes) == 1
    assert notes[-1].startswith(f"name of class 0 {meta.class_names['0']!r} starts with")


def test_schema_draft_warns_and_a_name_cannot_inject_yaml(tmp_path, capsys):
    from datasite.schema import draft_text

    df = pd.DataFrame({"=1+1\nkind: images\nrecords: 1": np.linspace(0, 1, 30),
                       "@x\u2028drafted_from_data: false": np.linspace(0, 2, 30),
                       "plain": np.linspace(0, 3, 30), "y": np.arange(30) % 2})
    p = tmp_path / "d.csv"
    df.to_csv(p, index=False)
    text = draft_text(p, label="y")
    err = capsys.readouterr().err
    assert err.count("note: column ") == 2 and "spreadsheets run as a formula" in err
    assert text.count("# WARNING: column ") == 2
    parsed = yaml.safe_load(text)  # the names stay names: nothing leaked out of the comments
    assert parsed["kind"] == "table" and parsed["records"] == 30
    assert parsed["drafted_from_data"] is True
    assert list(parsed["columns"]) == list(df.columns[:3])


def test_csv_export_quotes_formula_cells_only():
    df = pd.DataFrame({"=1+1": [1.5, -2.0], "-x": [-1, 2], "plain": ["=cmd", "-3"],
                       "ok": ["a", "b"]})
    text = csv_safe_frame(df).to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["'=1+1", "'-x", "plain", "ok"]
    assert rows[1] == ["1.5", "-1", "'=cmd", "a"]  # numbers, negative ones too, untouched
    assert rows[2] == ["-2.0", "2", "'-3", "b"]
    assert list(df.columns) == ["=1+1", "-x", "plain", "ok"]  # the caller's frame is unchanged
