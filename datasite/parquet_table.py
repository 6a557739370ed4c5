"""Reading a Parquet table within the import limit, text columns included.

Parquet's dictionary and run-length encodings let a few KB stand for billions of values, so the
table is sized from the file's footer before any column is read (:func:`check_parquet_size`).
Text is the dangerous case: one long string repeated in every row is stored once (in the
column's dictionary) but decoded once per row. Top-level text columns are therefore read as
dictionaries (``read_dictionary``): each distinct string is held once, plus one code per row,
and then become object columns whose cells all point to those strings (as ``pd.read_csv`` gives
text: :mod:`datasite.typed_columns` reads them exactly like CSV text, and no string is copied
per row; a categorical would be, by pandas' ``astype(str)``). Their size is bounded from the
footer by the column's uncompressed bytes (the distinct strings and the codes, whatever the
encoding) and the row count. Text inside nested columns (lists, structs) is refused: it cannot
be read as a dictionary. As for numeric columns, the sizes are the footer's own figures; a
hand-made file whose pages contradict its footer is not detected here.

pandas' own metadata in the file is ignored when converting (it would turn a dictionary column
declared ``string`` back into one string per row); the index columns it names are dropped, as a
fresh index replaces them anyway.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .ingest_checks import IngestError, listing
from .ingest_limits import check_inflated

# Bytes held per uncompressed text byte once read: a Python str per distinct value (about
# 50 bytes of overhead over the 4-byte length Parquet stores) plus Arrow's copy.
TEXT_BYTES_PER_STORED_BYTE = 16
BYTES_PER_ROW = 8  # per cell: an 8-byte number, or a dictionary code and a pointer


def _text_fields(schema) -> tuple[list[str], list[str]]:
    """(top-level text or binary columns, nested columns holding text) of an Arrow schema."""
    import pyarrow as pa

    def texty(t) -> bool:
        if pa.types.is_dictionary(t):
            t = t.value_type
        return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_large_binary(t))

    def holds_text(t) -> bool:
        if texty(t):
            return True
        return any(holds_text(t.field(i).type) for i in range(t.num_fields))

    top = [f.name for f in schema if texty(f.type)]
    nested = [f.name for f in schema if not texty(f.type) and holds_text(f.type)]
    return top, nested


def check_parquet_size(pf, where: str, max_bytes: int) -> list[str]:
    """Refuse, from the footer alone (no column read), a table that would take more than
    ``max_bytes`` once read; return its top-level text columns (to read as dictionaries)."""
    md = pf.metadata
    text, nested = _text_fields(pf.schema_arrow)
    if nested:
        raise IngestError(f"{where}: columns {listing(map(repr, nested), 10)} hold text inside "
                          "nested values (lists or structs), which are not read from Parquet: "
                          "flatten them into plain columns, or export the table as CSV.")
    schema = md.schema
    total = 0
    for j in range(md.num_columns):
        col = schema.column(j)
        for g in range(md.num_row_groups):
            chunk, rows = md.row_group(g).column(j), md.row_group(g).num_rows
            cells = max(chunk.num_values, rows) * BYTES_PER_ROW
            if col.physical_type == "BYTE_ARRAY":  # variable length: its stored bytes bound it
                total += cells + TEXT_BYTES_PER_STORED_BYTE * chunk.total_uncompressed_size
            else:
                total += max(chunk.num_values, rows) * max(BYTES_PER_ROW, col.length or 0)
    check_inflated(total, f"the table ({md.num_rows} rows, {md.num_columns} columns)", where,
                   max_bytes)
    return text


def read_parquet(p: Path, max_bytes: int) -> pd.DataFrame:
    """The table in Parquet file ``p``, sized first (:func:`check_parquet_size`); text and
    categorical columns come as object columns, as CSV text does."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(p)
    text = check_parquet_size(pf, p.name, max_bytes)
    table = pq.read_table(p, read_dictionary=text)
    index = [c for c in (table.schema.pandas_metadata or {}).get("index_columns", [])
             if isinstance(c, str) and c in table.column_names]  # a RangeIndex is a dict
    df = table.drop_columns(index).to_pandas(ignore_metadata=True)
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype):  # pointers to the distinct values
            df[c] = df[c].astype(object).infer_objects()
    return df
