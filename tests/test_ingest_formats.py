"""Real table exports in: CSV dialects (separator, decimal comma, BOM, Latin-1/cp1252, UTF-16), TSV,
``.csv.gz`` and Excel ``.xlsx``, each built here from the demo breast-cancer table and checked
to load to exactly the DataFrame of the plain CSV (and so to upload identically); the owner's
``--sep/--decimal/--encoding/--sheet`` overrides; and the bombs a compressed format opens the
door to (a gzip bomb, an .xlsx zip bomb, an XML entity bomb), refused fast without inflating.
"""
from __future__ import annotations

import gzip
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datasite import cli
from datasite.demo_data import schema_path, write_breast_cancer_csv
from datasite.ingest import IngestError, load_table
from datasite.publishing import DatasetsMixin
from datasite.schema import prepare, read_schema
from bomb_tools import raw_zip, refused_measured

MiB = 1024 ** 2
LABEL = "diagnosis"


@pytest.fixture(scope="module")
def bc(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The demo table as the plain CSV, and what load_table reads from it."""
    p = write_breast_cancer_csv(tmp_path_factory.mktemp("bc") / "bc.csv")
    return p, load_table(p, LABEL, name="bc")[0]


def _same(path, ref: pd.DataFrame, **options) -> pd.DataFrame:
    got, meta = load_table(path, LABEL, name="bc", **options)
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    assert meta.n_records == len(ref) and meta.label == LABEL
    return got


def _refused(fn, *words) -> str:
    with pytest.raises(IngestError) as e:
        fn()
    msg = str(e.value)
    for w in words:
        assert w.lower() in msg.lower(), f"{w!r} not in {msg!r}"
    return msg


# -- formats that load to the same DataFrame as the plain CSV ----------------------------------
WRITERS = {  # how hospitals hand tables over, written with pandas from the same frame
    "semicolon-decimal-comma-bom.csv": dict(sep=";", decimal=",", encoding="utf-8-sig"),
    "excel-french-cp1252.csv": dict(sep=";", decimal=",", encoding="cp1252"),
    "tabs.tsv": dict(sep="\t"),
    "pipes.txt": dict(sep="|"),
    "excel-unicode-text.txt": dict(sep="\t", encoding="utf-16"),  # Excel "Unicode Text"
    "compressed.csv.gz": dict(compression="gzip"),
    "compressed-semicolon.csv.gz": dict(sep=";", decimal=",", compression="gzip"),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_text_export_loads_like_the_plain_csv(tmp_path, bc, name):
    src, ref = bc
    p = tmp_path / name
    pd.read_csv(src).to_csv(p, index=False, **WRITERS[name])
    _same(p, ref)


def test_xlsx_loads_like_the_plain_csv(tmp_path, bc):
    src, ref = bc
    p = tmp_path / "export.xlsx"
    pd.read_csv(src).to_excel(p, index=False, engine="openpyxl")
    _same(p, ref)


def test_latin1_export_with_accented_column_names(tmp_path, bc):
    """Accented names (Latin-1) and a Euro sign (only in cp1252) survive, not as mojibake."""
    names = {"mean_radius": "rayon_moyen_µm", "mean_texture": "texture_é", "mean_area": "coût_€"}
    df = pd.read_csv(bc[0]).rename(columns=names)
    ref_path = tmp_path / "utf8.csv"
    df.to_csv(ref_path, index=False)
    ref = load_table(ref_path, LABEL, name="bc")[0]
    latin1 = tmp_path / "latin1.csv"
    df.drop(columns="coût_€").to_csv(latin1, index=False, encoding="latin-1")
    got = _same(latin1, ref.drop(columns="coût_€"))
    assert "rayon_moyen_µm" in got.columns and "texture_é" in got.columns
    french = tmp_path / "french.csv"
    df.to_csv(french, index=False, sep=";", decimal=",", encoding="cp1252")
    assert "coût_€" in _same(french, ref).columns


def test_other_formats_upload_identically(tmp_path, bc):
    """Same DataFrame, same upload: payload, published metadata and mock are equal."""
    src, _ = bc
    schema = read_schema(schema_path(src))
    df = pd.read_csv(src)
    want_payload, want_meta, want_mock, want_notes = prepare("bc", schema, table=str(src))
    semi, xlsx = tmp_path / "bc.csv", tmp_path / "bc.xlsx"
    df.to_csv(semi, index=False, sep=";", decimal=",", encoding="utf-8-sig")
    df.to_excel(xlsx, index=False, engine="openpyxl")
    for p, options in ((semi, {}), (semi, dict(sep=";", decimal=",", encoding="utf-8")),
                       (xlsx, dict(sheet="Sheet1"))):
        payload, meta, mock, notes = prepare("bc", schema, table=str(p), **options)
        pd.testing.assert_frame_equal(payload, want_payload, check_exact=True)
        assert meta.to_json() == want_meta.to_json()
        pd.testing.assert_frame_equal(mock, want_mock, check_exact=True)
        assert notes == want_notes


# -- sniffing and the owner's overrides -------------------------------------------------------
def _late_decimal_comma(p: Path) -> pd.DataFrame:
    """A ';' file whose first 300 rows hold whole numbers, decimal commas coming later: the
    sniffer cannot see them. Returns the frame the file means."""
    rng = np.random.default_rng(0)
    n = 400
    age = rng.integers(20, 90, n)
    crp = np.where(np.arange(n) < 300, rng.integers(0, 50, n), rng.integers(0, 500, n) / 10)
    y = (age > 60).astype(np.int64)
    crp_text = [f"{v:g}".replace(".", ",") for v in crp]
    p.write_text("age;crp;y\n" + "".join(f"{a};{c};{b}\n" for a, c, b in zip(age, crp_text, y)))
    return pd.DataFrame({"age": age.astype(np.int64), "crp": crp.astype(float), "y": y})


def test_decimal_override_and_hint(tmp_path):
    p = tmp_path / "late.csv"
    want = _late_decimal_comma(p)
    _refused(lambda: load_table(p, "y", name="t"), "'crp'", "decimal comma", "--decimal ,")
    got, meta = load_table(p, "y", name="t", decimal=",")
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert "decimal ','" in meta.description


def test_encoding_override(tmp_path):
    """A byte Windows-1252 leaves unassigned (0x81) is neither UTF-8 nor cp1252: the error says
    to give --encoding, and with it the file loads."""
    p = tmp_path / "odd.csv"
    p.write_bytes(b"code\x81,y\n" + b"1,0\n2,1\n" * 10)
    _refused(lambda: load_table(p, "y", name="t"), "cannot read", "csv", "--encoding")
    got, _ = load_table(p, "y", name="t", encoding="latin-1")
    assert list(got.columns) == ["code\x81", "y"]


def test_separator_override(tmp_path, bc):
    src, ref = bc
    p = tmp_path / "tabs.txt"
    pd.read_csv(src).to_csv(p, index=False, sep="\t")
    _same(p, ref, sep="tab")
    _same(p, ref, sep="\\t")
    _refused(lambda: load_table(p, LABEL, name="t", sep=";"), "no label column",
             "one column only", "--sep")


@pytest.mark.parametrize("options, words", [
    (dict(decimal="x"), ("--decimal",)),
    (dict(sep=",", decimal=","), ("both ','",)),
    (dict(decimal=","), ("separator sniffed is ','", "--sep")),
    (dict(sep="ab"), ("--sep", "one character")),
    (dict(encoding="klingon-8"), ("--encoding", "utf-8")),
])
def test_bad_text_options_are_refused(bc, options, words):
    _refused(lambda: load_table(bc[0], LABEL, name="t", **options), *words)


def test_options_of_another_format_are_refused(tmp_path, bc):
    src, _ = bc
    pq = tmp_path / "t.parquet"
    pd.read_csv(src).to_parquet(pq)
    _refused(lambda: load_table(pq, LABEL, name="t", sep=";"), "CSV/TSV text files only")
    _refused(lambda: load_table(src, LABEL, name="t", sheet="Data"), ".xlsx files only")


def test_sheet_choice(tmp_path, bc):
    src, ref = bc
    p = tmp_path / "two.xlsx"
    with pd.ExcelWriter(p, engine="openpyxl") as w:
        pd.DataFrame({"note": ["exported 2024-05-01"]}).to_excel(w, sheet_name="About",
                                                                 index=False)
        pd.read_csv(src).to_excel(w, sheet_name="Data", index=False)
    _refused(lambda: load_table(p, LABEL, name="t"), "no label column")  # the first sheet
    got = _same(p, ref, sheet="Data")
    assert len(got) == len(ref)
    _refused(lambda: load_table(p, LABEL, name="t", sheet="Daten"), "no sheet named 'Daten'",
             "'About', 'Data'", "--sheet")


# -- refused formats --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["old.xls", "macros.xlsm", "binary.xlsb", "calc.ods"])
def test_other_workbooks_are_refused_with_advice(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))
    _refused(lambda: load_table(p, "y", name="t"), "not read", "save it as an Excel Workbook "
             "(.xlsx)", ".csv")


@pytest.mark.parametrize("name", ["t.csv.bz2", "t.csv.xz", "t.csv.zip", "t.parquet.gz"])
def test_other_compressions_are_refused_with_advice(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"whatever")
    _refused(lambda: load_table(p, "y", name="t"), "decompress it first", ".csv.gz")


def test_gz_that_is_not_gzip_is_refused(tmp_path):
    p = tmp_path / "t.csv.gz"
    p.write_text("a,y\n1,0\n")
    _refused(lambda: load_table(p, "y", name="t"), "not a valid gzip file")


# -- bombs ------------------------------------------------------------------------------------
def _refused_cheaply(fn, *words, max_seconds: float = 5.0, max_peak: int = 64 * MiB) -> str:
    """``fn`` raises IngestError naming ``words``, within ``max_seconds`` and allocating at most
    ``max_peak`` bytes (tracemalloc's peak or the growth of peak RSS, whichever is larger)."""
    msg, peak, seconds = refused_measured(fn, *words)
    assert seconds < max_seconds, f"took {seconds:.1f} s to refuse"
    assert peak < max_peak, f"{peak / MiB:.0f} MiB allocated before refusing"
    return msg


def _deflate_repeated(head: bytes, block: bytes, n: int, tail: bytes) -> bytes:
    """Raw deflate of head + block * n + tail without ever holding the inflated data: each
    part is compressed with no history (full flush), so the compressed block repeats."""
    part = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = part.compress(head) + part.flush(zlib.Z_FULL_FLUSH)
    rep = zlib.compressobj(9, zlib.DEFLATED, -15)
    middle = rep.compress(block) + rep.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    return first + middle * n + last.compress(tail) + last.flush()


def _crc(head: bytes, block: bytes, n: int, tail: bytes) -> int:
    crc = zlib.crc32(head)
    for _ in range(n):
        crc = zlib.crc32(block, crc)
    return zlib.crc32(tail, crc)


def _gzip_bomb(p: Path, n_mib: int, with_crc: bool = True) -> Path:
    """A .csv.gz of a header and ``n_mib`` MiB of rows "0,1" and "0,0": ~1000x smaller on disk.
    The CRC of a big one is left out (it is refused long before its trailer)."""
    head, block = b"a,y\n", b"0,1\n0,0\n" * (MiB // 8)
    crc = _crc(head, block, n_mib, b"") if with_crc else 0
    size = len(head) + n_mib * MiB
    p.write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
                  + _deflate_repeated(head, block, n_mib, b"")
                  + struct.pack("<2L", crc, size % 2 ** 32))
    return p


def test_crafted_gzip_is_a_valid_bomb(tmp_path):
    p = _gzip_bomb(tmp_path / "small.csv.gz", 4)
    assert p.stat().st_size < 16_000
    assert len(gzip.decompress(p.read_bytes())) == 4 + 4 * MiB
    df, _ = load_table(p, "y", name="small")  # 4 MiB: below the ratio check's floor
    assert len(df) == MiB and set(df["y"]) == {0, 1} and not df["a"].any()


def test_gzip_bomb_is_refused_without_inflating(tmp_path):
    """4 GiB of CSV in 4 MiB: stopped by the ratio check within its first MiBs."""
    p = _gzip_bomb(tmp_path / "bomb.csv.gz", 4096, with_crc=False)
    assert p.stat().st_size < 8 * MiB
    _refused_cheaply(lambda: load_table(p, "y", name="x"), "decompression bomb",
                     "more than 100x", max_seconds=2.0)


def test_gzip_beyond_the_import_limit_is_refused(tmp_path, monkeypatch):
    """The hard cap, for data that compresses like real data (the ratio check passes)."""
    rng = np.random.default_rng(1)
    p = tmp_path / "big.csv.gz"
    pd.DataFrame({"x": rng.normal(size=200_000), "y": rng.integers(0, 2, 200_000)}).to_csv(
        p, index=False, compression="gzip")
    _refused_cheaply(lambda: load_table(p, "y", name="x", max_bytes=1 * MiB), "import limit",
                     "DATASITE_MAX_IMPORT_BYTES")
    monkeypatch.setenv("DATASITE_MAX_IMPORT_BYTES", "1M")
    _refused(lambda: load_table(p, "y", name="x"), "import limit")
    monkeypatch.setenv("DATASITE_MAX_IMPORT_BYTES", "64M")
    assert len(load_table(p, "y", name="x")[0]) == 200_000


SHEET = "xl/worksheets/sheet1.xml"


def _workbook_with(p: Path, small: Path, sheet_parts: tuple[bytes, bytes, int, bytes],
                   with_crc: bool = True) -> Path:
    """The workbook ``small`` with its first sheet's XML replaced by head + block * n + tail."""
    head, block, n, tail = sheet_parts
    members = []
    with zipfile.ZipFile(small) as zf:
        for info in zf.infolist():
            if info.filename == SHEET:
                data = _deflate_repeated(head, block, n, tail)
                crc = _crc(head, block, n, tail) if with_crc else 0
                members.append((SHEET, data, crc, len(head) + n * len(block) + len(tail),
                                zipfile.ZIP_DEFLATED))
            else:
                raw = zf.read(info)
                co = zlib.compressobj(9, zlib.DEFLATED, -15)
                members.append((info.filename, co.compress(raw) + co.flush(), zlib.crc32(raw),
                                len(raw), zipfile.ZIP_DEFLATED))
    raw_zip(p, members)
    return p


def _padded_sheet(small: Path, n_mib: int) -> tuple[bytes, bytes, int, bytes]:
    """The first sheet's XML with ``n_mib`` MiB of spaces before its closing tag (valid XML)."""
    with zipfile.ZipFile(small) as zf:
        xml = zf.read(SHEET)
    cut = xml.rindex(b"</worksheet>")
    return xml[:cut], b" " * MiB, n_mib, xml[cut:]


@pytest.fixture
def small_xlsx(tmp_path, bc) -> Path:
    p = tmp_path / "small.xlsx"
    pd.read_csv(bc[0]).to_excel(p, index=False, engine="openpyxl")
    return p


def test_crafted_xlsx_is_a_valid_bomb(tmp_path, bc, small_xlsx):
    """The crafting is right: 4 MiB of padding (below the ratio floor) loads like the CSV."""
    p = _workbook_with(tmp_path / "padded.xlsx", small_xlsx, _padded_sheet(small_xlsx, 4))
    with zipfile.ZipFile(p) as zf:
        assert zf.testzip() is None
    _same(p, bc[1])


def test_xlsx_zip_bomb_is_refused_from_the_central_directory(tmp_path, small_xlsx):
    """3 GiB of sheet XML in 3 MiB: refused from the declared sizes, nothing inflated."""
    p = _workbook_with(tmp_path / "bomb.xlsx", small_xlsx, _padded_sheet(small_xlsx, 3072),
                       with_crc=False)
    assert p.stat().st_size < 8 * MiB
    _refused_cheaply(lambda: load_table(p, "diagnosis", name="x"), "import limit",
                     "decompression bomb", max_seconds=1.0, max_peak=16 * MiB)
    ratio = _workbook_with(tmp_path / "ratio.xlsx", small_xlsx, _padded_sheet(small_xlsx, 200))
    _refused_cheaply(lambda: load_table(ratio, "diagnosis", name="x"), "more than 100x",
                     max_seconds=1.0, max_peak=16 * MiB)


def test_xlsx_with_an_xml_entity_bomb_is_refused(tmp_path, small_xlsx):
    """Billion laughs: entities defined in a DTD, which no real workbook has."""
    with zipfile.ZipFile(small_xlsx) as zf:
        xml = zf.read(SHEET)
    body = xml[xml.index(b"?>") + 2:] if xml.startswith(b"<?xml") else xml  # no declaration
    dtd = (b'<?xml version="1.0"?>\n<!DOCTYPE worksheet [<!ENTITY a "aaaaaaaaaa">'
           + b"".join(b'<!ENTITY %s "%s">' % (chr(98 + i).encode(),
                                                (b"&%s;" % chr(97 + i).encode()) * 10)
                      for i in range(8)) + b"]>")
    p = _workbook_with(tmp_path / "laughs.xlsx", small_xlsx, (dtd + body, b"", 0, b""))
    _refused_cheaply(lambda: load_table(p, "diagnosis", name="x"), "DTD", max_seconds=1.0)


def test_xlsx_with_unbounded_zip_compression_is_refused(tmp_path, small_xlsx):
    """zipfile inflates bzip2/LZMA members without an output bound: refused by their method."""
    members = []
    with zipfile.ZipFile(small_xlsx) as zf:
        for info in zf.infolist():
            raw = zf.read(info)
            members.append((info.filename, raw, zlib.crc32(raw), len(raw),
                            12 if info.filename == SHEET else zipfile.ZIP_STORED))
    p = tmp_path / "bz.xlsx"
    raw_zip(p, members)
    _refused(lambda: load_table(p, "diagnosis", name="x"), "zip method 12", "not deflate")


def test_a_text_file_named_xlsx_is_refused_with_advice(tmp_path):
    p = tmp_path / "t.xlsx"
    p.write_text("a,b\n1,2\n")
    _refused(lambda: load_table(p, "b", name="t"), "not a valid .xlsx", ".csv")


# -- the options reach the reader from the command line and OwnerSite.upload ---------------------
def test_cli_schema_draft_passes_the_format_options(tmp_path, bc, capsys):
    p = tmp_path / "late.csv"
    _late_decimal_comma(p)
    assert cli.main(["schema", "draft", str(p), "--label", "y"]) == 2
    assert "--decimal ," in capsys.readouterr().err
    assert cli.main(["schema", "draft", str(p), "--label", "y", "--sep", ";", "--decimal", ",",
                     "--encoding", "utf-8"]) == 0
    out = capsys.readouterr().out
    assert "crp:" in out and "type: float" in out


def test_cli_upload_passes_the_format_options(tmp_path, bc, monkeypatch, capsys):
    seen = {}

    class FakeSite:
        def upload(self, dataset, **kw):
            seen.update(kw)
            return load_table(kw["table"], LABEL, name=dataset, sep=kw["sep"],
                              decimal=kw["decimal"], encoding=kw["encoding"],
                              sheet=kw["sheet"])[1]

    monkeypatch.setattr(cli, "_site", lambda args: FakeSite())
    p = tmp_path / "bc.csv"
    pd.read_csv(bc[0]).to_csv(p, index=False, sep="|", decimal=",", encoding="cp1252")
    assert cli.main(["upload", "site", "bc", "--table", str(p), "--sep", "|", "--decimal", ",",
                     "--encoding", "cp1252"]) == 0
    assert (seen["sep"], seen["decimal"], seen["encoding"], seen["sheet"]) == ("|", ",",
                                                                               "cp1252", None)
    assert "Uploaded bc: table, 569 records" in capsys.readouterr().out


def test_owner_site_upload_passes_the_format_options():
    seen = {}

    class Site(DatasetsMixin):
        def _import(self, dataset, replace, **kw):
            seen.update(kw)
            return {"meta": "meta"}

    assert Site().upload("bc", table="t.csv", sep=";", decimal=",", encoding="cp1252",
                         sheet=None) == "meta"
    assert (seen["sep"], seen["decimal"], seen["encoding"], seen["sheet"]) == (";", ",",
                                                                               "cp1252", None)
