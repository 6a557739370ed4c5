"""Typed columns from Parquet and Excel (issue 13): pandas category, string, nullable boolean,
datetime, date and nullable Int64 columns with missing values are normalised exactly like the
same table exported as CSV text; and Parquet text is read without decoding it once per row
(a dictionary bomb stays a few MB; text too large for the limit is refused from the footer)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bomb_tools import refused_measured, vm_bytes
from datasite.ingest import load_table
from datasite.ingest_limits import MAX_IMPORT_BYTES_ENV
from datasite.schema import draft, prepare

MiB = 1024 ** 2
N = 400
SCHEMA = {"kind": "table", "records": N - 2,
          "label": {"column": "outcome", "classes": ["alive", "dead"]},
          "columns": {"grade": {"type": "category", "categories": ["I", "II", "III"]},
                      "sex": {"type": "category", "categories": ["F", "M"], "missing": True},
                      "smoker": {"type": "bool", "missing": True},
                      "admitted": {"type": "date", "origin": "2000-01-01", "missing": True,
                                   "bounds": ["2010-01-01", "2030-01-01"]},
                      "born": {"type": "date", "origin": "2000-01-01",
                               "bounds": ["1900-01-01", "2030-01-01"]},
                      "stage": {"type": "int", "bounds": [1, 4], "missing": True},
                      "crp": {"type": "float", "bounds": [0, 300]}}}


def typed_frame(n: int = N, seed: int = 0) -> pd.DataFrame:
    """A cohort in pandas' typed dtypes, each with missing values where the schema allows."""
    rng = np.random.default_rng(seed)
    admitted = pd.Series(pd.Timestamp("2015-01-01")
                         + pd.to_timedelta(rng.integers(0, 3000, n), unit="D"))
    admitted[rng.random(n) < 0.1] = pd.NaT
    df = pd.DataFrame({
        "grade": pd.Categorical(np.array(["I", "II", "III"])[rng.integers(0, 3, n)],
                                categories=["I", "II", "III"]),
        "sex": pd.array(np.array(["F", "M"])[rng.integers(0, 2, n)], dtype="string"),
        "smoker": pd.array(rng.random(n) < 0.3, dtype="boolean"),
        "admitted": admitted,
        "born": [dt.date(1930, 1, 1) + dt.timedelta(days=int(d))
                 for d in rng.integers(0, 20000, n)],
        "stage": pd.array(rng.integers(1, 5, n), dtype="Int64"),
        "crp": np.round(rng.gamma(2, 20, n), 1),
        "outcome": pd.array(np.array(["alive", "dead"])[rng.integers(0, 2, n)], dtype="string"),
    })
    for c in ("smoker", "stage", "sex"):
        df.loc[rng.random(n) < 0.1, c] = pd.NA
    df.loc[[3, 7], "outcome"] = pd.NA
    return df


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("typed")
    df = typed_frame()
    df.to_csv(d / "t.csv", index=False)
    df.to_parquet(d / "t.parquet", index=False)
    df.set_index(pd.RangeIndex(10, 10 + N)).to_parquet(d / "indexed.parquet")  # an index column
    df.to_excel(d / "t.xlsx", index=False)
    return df, d


def test_parquet_holds_the_typed_dtypes(files):
    import pyarrow.parquet as pq

    _, d = files
    types = {f.name: str(f.type) for f in pq.read_schema(d / "t.parquet")}
    assert types["grade"].startswith("dictionary<values=string") and types["sex"] == "string"
    assert types["smoker"] == "bool" and types["admitted"] == "timestamp[ns]"
    assert types["born"] == "date32[day]" and types["stage"] == "int64"


@pytest.mark.parametrize("name", ["t.parquet", "indexed.parquet", "t.xlsx"])
def test_parquet_and_excel_upload_exactly_like_csv(files, name):
    df, d = files
    want, want_meta, want_mock, want_notes = prepare("t", SCHEMA, table=str(d / "t.csv"))
    payload, meta, mock, notes = prepare("t", SCHEMA, table=str(d / name))
    pd.testing.assert_frame_equal(payload, want)
    assert meta == want_meta and notes == want_notes
    pd.testing.assert_frame_equal(mock, want_mock)
    kept = df[df["outcome"].notna()].reset_index(drop=True)
    assert (payload["grade"] == kept["grade"].cat.codes).all()
    assert payload["smoker"].isna().sum() == kept["smoker"].isna().sum() > 0
    assert (payload["stage"].isna() == kept["stage"].isna()).all()
    days = (kept["admitted"] - pd.Timestamp("2000-01-01")) / pd.Timedelta(days=1)
    np.testing.assert_array_equal(payload["admitted"].to_numpy(), days.to_numpy())
    assert payload["born"][0] == (kept["born"][0] - dt.date(2000, 1, 1)).days


def test_parquet_draft_matches_the_csv_draft(files):
    _, d = files
    want = draft(d / "t.csv", label="outcome")
    got = draft(d / "t.parquet", label="outcome")
    assert got == want
    assert got["columns"]["admitted"]["type"] == "date" and got["columns"]["born"]["type"] == "date"
    assert got["columns"]["smoker"] == {"type": "bool", "missing": True}
    assert got["columns"]["stage"]["type"] == "int" and got["columns"]["stage"]["missing"]
    assert got["columns"]["grade"] == {"type": "category", "categories": ["I", "II", "III"]}


# -- text without a bomb ---------------------------------------------------------------------------
def _text_bomb(path, n: int = 5000, groups: int = 10, **options) -> None:
    """One 4 KB string in every one of ``n * groups`` rows: 200 MB decoded, a few hundred KB on
    disk (dictionary-encoded, zstd)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    block = pa.table({"note": pa.array(["x" * 4096] * n), "x": np.zeros(n),
                      "y": np.arange(n) % 2})
    with pq.ParquetWriter(path, block.schema, compression="zstd", **options) as w:
        for _ in range(groups):
            w.write_table(block)


def test_dictionary_text_is_read_once_not_once_per_row(tmp_path):
    """The attack: 200 MB of text in 400 KB. Read as a dictionary it costs a few MB; decoded per
    row (a plain pyarrow or pandas read: the defence switched off) it costs the 200 MB."""
    import pyarrow.parquet as pq

    from datasite.parquet_table import read_parquet

    p = tmp_path / "text.parquet"
    _text_bomb(p)
    assert p.stat().st_size < 400_000
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM)
    before = vm_bytes("VmRSS")
    df = read_parquet(p, max_bytes=64 * MiB)
    grown = vm_bytes("VmHWM") - before
    assert len(df) == 50_000 and df["note"].dtype == object and df["note"].nunique() == 1
    assert grown < 32 * MiB, f"{grown / MiB:.0f} MiB"
    assert len({id(v) for v in df["note"]}) == 1  # every cell points to the one string
    # without a schema the column is refused as non-numeric, still never decoded per row
    _, peak, _ = refused_measured(lambda: load_table(p, "y", name="t"), "'note'", "non-numeric")
    assert peak < 32 * MiB, f"{peak / MiB:.0f} MiB allocated before refusing"
    # defence off: a plain read decodes the string once per row
    assert pq.read_table(p).column("note").nbytes > 200 * 10 ** 6


def test_text_too_large_for_the_limit_is_refused_from_the_footer(tmp_path, monkeypatch):
    """Distinct strings cannot share a dictionary entry: the column's uncompressed size in the
    footer bounds them, and a table over the limit is refused before any column is read."""
    p = tmp_path / "notes.parquet"
    _text_bomb(p, n=2000, groups=5, use_dictionary=False)  # 40 MB of text, plain-encoded
    monkeypatch.setenv(MAX_IMPORT_BYTES_ENV, "64M")
    _, peak, seconds = refused_measured(lambda: load_table(p, "y", name="t"), "10000 rows",
                                        MAX_IMPORT_BYTES_ENV)
    assert peak < 16 * MiB and seconds < 2.0
    monkeypatch.setenv(MAX_IMPORT_BYTES_ENV, "2G")  # within a larger limit it is read
    with pytest.raises(Exception, match="non-numeric feature columns 'note'"):
        load_table(p, "y", name="t")


def test_nested_text_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"tags": pa.array([["a", "b"], ["c"]] * 10), "y": [0, 1] * 10}), p)
    refused_measured(lambda: load_table(p, "y", name="t"), "'tags'", "nested", "flatten")
