"""A table's patient-id column (``--id-column``), taken out of the table at ingest.

Hospitals export tables with a patient id. It names the record the owner must find again when a
patient asks to be forgotten, and it must never be a feature: a model could memorise records by
it, and its name and values would reach the published schema, mock and upload warnings. So it
is split off right after the file is read, before anything else sees the table, checked (every
record has one, no two share one) and handed back as text, in storage order, to be kept
privately beside the records (:func:`datasite.storage.write_private`).

Ids are compared as text with surrounding whitespace stripped: ``00123`` stays ``'00123'`` when
the file holds it as text (a CSV's id column is read as text for this), and a number stored as
a number (Excel, Parquet) is written without a trailing ``.0``.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from .ingest_checks import IngestError, listing

if TYPE_CHECKING:  # pandas is imported where a table is read: the option checks stay fast
    import pandas as pd

_SHOW = 5  # ids or rows quoted in an error message (the owner's own file, the owner's terminal)


def id_text(value) -> str | None:
    """The id ``value`` names, as text; None when it is missing (empty, blank, NaN)."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value == int(value) else repr(float(value))
    import pandas as pd

    if value is None or pd.isna(value):  # None, pd.NA, NaT
        return None
    return str(value).strip() or None


def check_id_column(id_column: str | None, label: str | None) -> None:
    """The options alone: an id column that is also the label cannot be split off."""
    if id_column is not None and not str(id_column).strip():
        raise IngestError("--id-column is empty: give the name of the table's patient-id column.")
    if id_column is not None and id_column == label:
        raise IngestError(f"--id-column {id_column!r} is also the label column: the id column "
                          "names patients and is never trained on; give the label with --label.")


def split_ids(df: pd.DataFrame, id_column: str, where: str) -> tuple[pd.DataFrame, list[str]]:
    """(the table without ``id_column``, its ids as text in row order). An IngestError names
    what is wrong: the column missing (with the columns found), ids missing (how many, in which
    rows) or shared by several records (how many, a few of them)."""
    if id_column not in df.columns:
        raise IngestError(f"{where}: no id column {id_column!r}; available columns: "
                          f"{listing(df.columns, 50)}.")
    ids = [id_text(v) for v in df[id_column].tolist()]
    missing = [i for i, v in enumerate(ids) if v is None]
    if missing:
        # rows as a spreadsheet numbers them: the header is row 1, the first record row 2
        rows = listing([i + 2 for i in missing], _SHOW)
        raise IngestError(f"{where}: {len(missing)} record(s) have no id in column "
                          f"{id_column!r} (rows {rows}, the header being row 1): every record "
                          "needs its patient id; fill them in or drop those records.")
    shared = {v: k for v, k in Counter(ids).items() if k > 1}
    if shared:
        shown = listing([f"{v!r} ({k} times)" for v, k in shared.items()], _SHOW)
        raise IngestError(f"{where}: {len(shared)} id(s) in column {id_column!r} name more than "
                          f"one record ({shown}): each record needs its own patient id; merge "
                          "or fix the duplicated records.")
    return df.drop(columns=[id_column]), ids
