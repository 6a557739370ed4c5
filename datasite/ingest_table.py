"""Importing a table of numeric features and one integer label column, as hospitals export it.

Formats, by the file's suffix: delimited text ``.csv``, ``.tsv``, ``.txt`` (separator, decimal
comma and encoding sniffed or given, see :mod:`datasite.ingest_csv`) and the same gzip-compressed
(``.csv.gz``, inflated with a hard limit); ``.parquet`` (sized from its footer, text read as
dictionaries: :mod:`datasite.parquet_table`); Excel ``.xlsx`` (one sheet, see
:mod:`datasite.ingest_excel`). Other compressions and workbook formats are refused with advice.
A file parsed into the same DataFrame as the equivalent plain CSV is imported identically.

The payload is a pandas DataFrame in the file's column order with a fresh ``RangeIndex``; every
column other than the label must be numeric (int, float or bool) without missing or infinite
values; the label must hold integer class ids (floats such as ``1.0`` are converted). With
``raw=True`` (an upload with a schema, a draft) the columns come as read, text and missing
values included, and :mod:`datasite.typed_columns` normalises them from the declared schema.
A patient-id column (``--id-column``) is split off first and returned apart
(:func:`load_table_with_ids`, :mod:`datasite.ingest_ids`).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data import TABLE, DatasetMeta

from .ingest_checks import (MAX_CLASSES, MIN_RECORDS, IngestError, check_classes, check_count,
                            dataset_name, existing_file, integer_labels, listing)
from .ingest_csv import COMMA_NUMBER, read_text_table
from .ingest_excel import REFUSED_WORKBOOKS, read_xlsx, refuse_workbook
from .ingest_ids import check_id_column, split_ids
from .ingest_limits import max_import_bytes, refuse_compressed
from .parquet_table import read_parquet

TEXT_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
# compressions read without a bound on what they inflate (or not worth one): refused with advice
_OTHER_COMPRESSIONS = {".zip": "zip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd", ".7z": "7-Zip"}
_FORMATS = (".csv, .tsv, .tab or .txt (optionally gzip-compressed: .csv.gz), .parquet or "
            "Excel .xlsx")


def table_format(p: Path) -> str:
    """The reader for table file ``p`` by its suffix: ``text``, ``gzip-text``, ``parquet`` or
    ``xlsx``; an IngestError with advice for formats not read (cheap: nothing is opened)."""
    suffix, inner = p.suffix.lower(), Path(p.stem).suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix == ".gz" and inner in TEXT_SUFFIXES:
        return "gzip-text"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix == ".xlsx":
        return "xlsx"
    if suffix in REFUSED_WORKBOOKS:
        refuse_workbook(p)
    if suffix in _OTHER_COMPRESSIONS or suffix == ".gz":
        kind = _OTHER_COMPRESSIONS.get(suffix, "gzip")
        raise IngestError(f"{p.name}: {kind}-compressed files are not read (only gzip can be "
                          "inflated here with a size limit, and only for CSV/TSV text): "
                          "decompress it first, or compress the CSV with gzip (.csv.gz).")
    raise IngestError(f"Unsupported table file {p.name!r}: use {_FORMATS}.")


def _read_table(p: Path, max_bytes: int, sep=None, decimal=None, encoding=None,
                sheet=None, text_columns: tuple = ()) -> tuple[pd.DataFrame, str]:
    """The file's table and a note of how it was read (format options used); a text file's
    ``text_columns`` are read as text."""
    kind = table_format(p)
    if kind not in ("text", "gzip-text") and (sep or decimal or encoding):
        raise IngestError(f"{p.name}: --sep, --decimal and --encoding apply to CSV/TSV text "
                          "files only; drop them.")
    if kind != "xlsx" and sheet is not None:
        raise IngestError(f"{p.name}: --sheet applies to Excel .xlsx files only; drop it.")
    if kind == "text":
        with open(p, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        if gzipped:
            raise IngestError(f"{p.name}: the table is gzip-compressed but not named .gz: name "
                              f"it {p.name}.gz (read with a size limit) or decompress it first.")
        refuse_compressed(p, "table")
    if kind in ("text", "gzip-text"):
        return read_text_table(p, compressed=kind == "gzip-text", max_bytes=max_bytes, sep=sep,
                               decimal=decimal, encoding=encoding, text_columns=text_columns)
    if kind == "xlsx":
        return read_xlsx(p, sheet, max_bytes)
    try:
        return read_parquet(p, max_bytes), "Parquet"  # sized from its footer first
    except IngestError:
        raise
    except Exception as e:  # corrupt parquet, permissions
        raise IngestError(f"{p.name}: cannot read the file as Parquet ({type(e).__name__}: "
                          f"{str(e)[:200]}); check that it is a valid Parquet file.") from None


def load_table(path, label: str, name: str | None = None, *, sep: str | None = None,
               decimal: str | None = None, encoding: str | None = None,
               sheet: str | None = None, min_records: int = MIN_RECORDS,
               max_classes: int = MAX_CLASSES, max_bytes: int | None = None,
               raw: bool = False) -> tuple[pd.DataFrame, DatasetMeta]:
    """Read and validate a table (CSV/TSV, .csv.gz, Parquet or .xlsx) with numeric features and
    a categorical label.

    Returns the table (label converted to int64, other columns unchanged, file column order) and
    its metadata; ``meta.features`` maps each feature column to its dtype. Raises
    :class:`IngestError` on any problem, before anything is written.

    ``sep``, ``decimal`` (``.`` or ``,``), ``encoding``: how a text file is written; each one not
    given is sniffed. ``sheet``: the sheet of an .xlsx (default: the first). ``max_bytes``: see
    :func:`max_import_bytes`. ``raw``: return the columns and the label as read (text,
    missing values), for checking and normalising against a declared schema
    (:func:`datasite.schema.apply_table`); ``meta.labels`` is then empty.
    """
    df, meta, _ = load_table_with_ids(path, label, None, name, sep=sep, decimal=decimal,
                                      encoding=encoding, sheet=sheet, min_records=min_records,
                                      max_classes=max_classes, max_bytes=max_bytes, raw=raw)
    return df, meta


def load_table_with_ids(path, label: str, id_column: str | None, name: str | None = None, *,
                        sep: str | None = None, decimal: str | None = None,
                        encoding: str | None = None, sheet: str | None = None,
                        min_records: int = MIN_RECORDS, max_classes: int = MAX_CLASSES,
                        max_bytes: int | None = None,
                        raw: bool = False) -> tuple[pd.DataFrame, DatasetMeta, list | None]:
    """:func:`load_table` of a table with a patient-id column: ``id_column`` is split off right
    after the file is read (:func:`datasite.ingest_ids.split_ids`, a CSV's read as text), so
    it is neither a feature nor in the metadata; returns (table, metadata, the ids as text in
    row order). ``id_column`` None: no id column, and the ids are None."""
    check_id_column(id_column, label)
    p = existing_file(path, "Table file")
    name = dataset_name(name, p)
    df, how = _read_table(p, max_import_bytes(max_bytes), sep=sep, decimal=decimal,
                          encoding=encoding, sheet=sheet,
                          text_columns=(id_column,) if id_column else ())
    where = p.name
    df.columns = [str(c) for c in df.columns]
    df = df.reset_index(drop=True)
    if len(df) == 0:
        raise IngestError(f"{where}: the dataset is empty (0 records); columns: "
                          f"{listing(df.columns, 50)}.")
    if label not in df.columns:
        hint = (" (one column only: is the separator right? give it with --sep)"
                if len(df.columns) == 1 else "")
        raise IngestError(f"{where}: no label column {label!r}; available columns: "
                          f"{listing(df.columns, 50)}{hint}.")
    dupes = sorted(c for c, k in Counter(df.columns).items() if k > 1)
    if dupes:
        raise IngestError(f"{where}: duplicate column names {listing(dupes)}; rename them.")
    ids = None
    if id_column:  # before anything else looks at the columns
        df, ids = split_ids(df, id_column, where)
    features = [c for c in df.columns if c != label]
    if raw:
        if not features:
            raise IngestError(f"{where}: there are no feature columns besides the label.")
        return df, DatasetMeta(name=name, kind=TABLE, n_records=int(len(df)), label=label,
                               labels=[], features={c: str(df[c].dtype) for c in features},
                               description=f"Table imported from {p.name} ({how})."), ids
    problems = _column_problems(df, features)
    if problems:
        raise IngestError(f"{where}: " + "; ".join(problems) + ".")

    labels = integer_labels(df[label].to_numpy(), f"{where}, label column {label!r}")
    classes = check_classes(labels, f"{where}, label column {label!r}", max_classes)
    check_count(len(df), where, min_records)
    df[label] = labels

    meta = DatasetMeta(name=name, kind=TABLE, n_records=int(len(df)), label=label, labels=classes,
                       features={c: str(df[c].dtype) for c in features},
                       description=f"Table imported from {p.name} ({how}).")
    return df, meta, ids


def _column_problems(df: pd.DataFrame, features: list[str]) -> list[str]:
    """Every problem with the columns' values at once, so the owner fixes them in one pass."""
    problems = []
    if not features:
        problems.append("there are no feature columns besides the label")
    types = pd.api.types
    non_numeric = [c for c in features
                   if not types.is_numeric_dtype(df[c]) or types.is_complex_dtype(df[c])]
    if non_numeric:
        shown = listing([f"{c!r} ({df[c].dtype})" for c in non_numeric], 10)
        problems.append(f"non-numeric feature columns {shown}: encode them as numbers first "
                        "(one-hot columns for categories, numeric codes, dates as numbers), or "
                        "drop them")
        comma = [c for c in non_numeric
                 if df[c].dropna().astype(str).str.fullmatch(COMMA_NUMBER).any()]
        if comma:
            problems.append(f"columns {listing(map(repr, comma), 10)} hold numbers with a decimal "
                            "comma (such as 12,5): give --decimal , (and --sep ; for a "
                            "semicolon-separated file)")
    bad_values = []
    for c in df.columns:
        col = df[c]
        n_bad = int(col.isna().sum())
        if pd.api.types.is_float_dtype(col):
            n_bad += int(np.isinf(col.to_numpy(dtype=float, na_value=np.nan)).sum())
        if n_bad:
            bad_values.append(f"{c!r} ({n_bad})")
    if bad_values:
        problems.append(f"missing (NaN) or infinite values in columns {listing(bad_values, 10)}: "
                        "impute or drop those records first")
    return problems

