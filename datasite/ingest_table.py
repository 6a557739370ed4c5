"""Importing a table: a CSV or Parquet file of numeric features and one integer label column.

The payload is a pandas DataFrame in the file's column order with a fresh ``RangeIndex``; every
column other than the label must be numeric (int, float or bool) without missing or infinite
values; the label must hold integer class ids (floats such as ``1.0`` are converted).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data import TABLE, DatasetMeta

from .ingest_checks import (MAX_CLASSES, MIN_RECORDS, IngestError, check_classes, check_count,
                            dataset_name, existing_file, integer_labels, listing)
from .ingest_limits import check_inflated, max_import_bytes, refuse_compressed


def _parquet_size(p: Path, max_bytes: int) -> None:
    """Size a Parquet file from its metadata (no column read): dictionary and run-length
    encoding let a few KB stand for billions of values."""
    import pyarrow.parquet as pq

    md = pq.ParquetFile(p).metadata
    schema = md.schema
    text = [schema.column(j).name for j in range(md.num_columns)
            if schema.column(j).physical_type == "BYTE_ARRAY"]
    if text:  # variable-length values: no header bounds their decoded size
        raise IngestError(f"{p.name}: columns {listing(map(repr, text), 10)} hold text or "
                          "bytes; every column must be numeric: encode features as numbers "
                          "(one-hot columns for categories, numeric codes) and map label classes "
                          "to integers (e.g. 0 = normal, 1 = pneumonia) first.")
    width = [max(8, schema.column(j).length or 0) for j in range(md.num_columns)]
    values = sum(max(md.row_group(g).column(j).num_values, md.row_group(g).num_rows) * width[j]
                 for g in range(md.num_row_groups) for j in range(md.num_columns))
    check_inflated(values, f"the table ({md.num_rows} rows, {md.num_columns} columns)", p.name,
                   max_bytes)


def _read_table(p: Path, max_bytes: int) -> pd.DataFrame:
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise IngestError(f"Unsupported table file {p.name!r}: use a .csv or .parquet file.")
    try:
        if suffix == ".csv":
            refuse_compressed(p, "table")
            return pd.read_csv(p, compression=None)
        _parquet_size(p, max_bytes)
        return pd.read_parquet(p)
    except IngestError:
        raise
    except pd.errors.EmptyDataError:
        raise IngestError(f"{p.name}: the file is empty (no header, no records).") from None
    except Exception as e:  # parser errors, decoding errors, corrupt parquet, permissions
        kind = "CSV" if suffix == ".csv" else "Parquet"
        raise IngestError(f"{p.name}: cannot read the file as {kind} ({type(e).__name__}: "
                          f"{str(e)[:200]}); check that it is a valid {kind} file.") from None


def load_table(path, label: str, name: str | None = None, *, min_records: int = MIN_RECORDS,
               max_classes: int = MAX_CLASSES,
               max_bytes: int | None = None) -> tuple[pd.DataFrame, DatasetMeta]:
    """Read and validate a CSV/Parquet table with numeric features and a categorical label.

    Returns the table (label converted to int64, other columns unchanged, file column order) and
    its metadata; ``meta.features`` maps each feature column to its dtype. Raises
    :class:`IngestError` on any problem, before anything is written. ``max_bytes``: see
    :func:`max_import_bytes`.
    """
    p = existing_file(path, "Table file")
    name = dataset_name(name, p)
    df = _read_table(p, max_import_bytes(max_bytes))
    where = p.name
    df.columns = [str(c) for c in df.columns]
    df = df.reset_index(drop=True)
    if len(df) == 0:
        raise IngestError(f"{where}: the dataset is empty (0 records); columns: "
                          f"{listing(df.columns, 50)}.")
    if label not in df.columns:
        raise IngestError(f"{where}: no label column {label!r}; available columns: "
                          f"{listing(df.columns, 50)}.")
    dupes = sorted(c for c, k in Counter(df.columns).items() if k > 1)
    if dupes:
        raise IngestError(f"{where}: duplicate column names {listing(dupes)}; rename them.")
    features = [c for c in df.columns if c != label]
    problems = _column_problems(df, features)
    if problems:
        raise IngestError(f"{where}: " + "; ".join(problems) + ".")

    labels = integer_labels(df[label].to_numpy(), f"{where}, label column {label!r}")
    classes = check_classes(labels, f"{where}, label column {label!r}", max_classes)
    check_count(len(df), where, min_records)
    df[label] = labels

    meta = DatasetMeta(name=name, kind=TABLE, n_records=int(len(df)), label=label, labels=classes,
                       features={c: str(df[c].dtype) for c in features},
                       description=f"Table imported from {p.name}.")
    return df, meta


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

