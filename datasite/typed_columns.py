"""Typed raw columns normalised at ingest, driven by the owner's declared schema.

Hospital exports hold string categories (sex F/M, grade I/II/III), booleans written as yes/no,
missing lab values, dates and string labels (alive/dead). Each is mapped here, per record, to what
the stored table and every job consume: integer category codes in the declared order, 0/1
booleans, NaN for a missing value where the schema allows it (``missing: true``), float days
since the declared origin for a date, integer class codes. Columns read from Parquet or Excel
(categorical, string, Arrow-backed, nullable dtypes) are first made plain (:func:`plain_columns`)
so they are read exactly like the same CSV text.
Nothing here publishes anything: the mappings come from the schema (public by declaration), and
every count returned is for the owner's notes only.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from shared import dates
from shared.schema import dtype_of

TRUE_WORDS = {"true", "yes", "y", "1", "t"}
FALSE_WORDS = {"false", "no", "n", "0", "f"}
DRAFT_MAX_CATEGORIES = 30  # a text column with more distinct values is not drafted as a category
DRAFT_DATE_ORIGIN = "2000-01-01"  # a public constant: drafted date columns count days from it
# text date layouts the draft tries after ISO 8601, day-first before month-first (when every day
# is 12 or less both read: the owner checks, see datasite.schema.draft_notes)
DRAFT_DATE_FORMATS = ("%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%d-%m-%Y", "%m-%d-%Y", "%Y/%m/%d",
                      "%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M", "%d.%m.%Y %H:%M")
_SHOW = 5


def _listing(values) -> str:
    values = [repr(v) if isinstance(v, str) else str(v) for v in values]
    more = f" and {len(values) - _SHOW} more" if len(values) > _SHOW else ""
    return ", ".join(values[:_SHOW]) + more


def _text(v) -> str:
    """A raw cell as the text it names: integral numbers without a trailing .0."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)) and math.isfinite(v) and v == int(v):
        return str(int(v))
    return str(v).strip()


def _blank(v) -> bool:
    """Whether a raw cell is missing: NA/NaN/NaT or blank text."""
    return pd.isna(v) or (isinstance(v, str) and not v.strip())


def _rows(x: pd.Series, positions: list) -> str:
    """The spreadsheet rows of ``positions`` in ``x`` (its index counts the file's records from
    0, so the header is row 1), a few shown."""
    index = x.index
    rows = [int(index[i]) + 2 if pd.api.types.is_integer_dtype(index) else i + 2
            for i in positions]
    return f"spreadsheet row{'s' if len(rows) > 1 else ''} {_listing(rows)}, the header being row 1"


def plain_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with categorical, string and Arrow-backed columns (Parquet, Excel) as plain
    object or numpy columns, so every cell is read as the same CSV text would be; nullable
    numbers and booleans are kept (their readers take pd.NA)."""
    out = df.copy(deep=False)
    for c in df.columns:
        if isinstance(df[c].dtype, (pd.CategoricalDtype, pd.StringDtype, pd.ArrowDtype)):
            out[c] = df[c].astype(object).infer_objects()
    return out


def _bool_value(v):
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    word = _text(v).lower()
    return 1.0 if word in TRUE_WORDS else 0.0 if word in FALSE_WORDS else None


def _by_name(x: pd.Series, names: list) -> tuple[np.ndarray, list]:
    """Codes (float, NaN where missing) of the named values; the undeclared values found."""
    index = {n: float(i) for i, n in enumerate(names)}
    out = np.full(len(x), np.nan)
    bad = []
    for i, v in enumerate(x.tolist()):
        if pd.isna(v):
            continue
        code = index.get(_text(v))
        if code is None:
            bad.append(_text(v))
        else:
            out[i] = code
    return out, bad


def _numbers(x: pd.Series) -> tuple[np.ndarray, list]:
    """Float values (NaN where missing) and the text values that are not numbers."""
    if pd.api.types.is_bool_dtype(x):
        return x.to_numpy(dtype=float, na_value=np.nan), []
    if pd.api.types.is_numeric_dtype(x):
        return x.to_numpy(dtype=float, na_value=np.nan), []
    num = pd.to_numeric(x, errors="coerce")
    bad = x[num.isna() & x.notna()]
    return num.to_numpy(dtype=float, na_value=np.nan), [_text(v) for v in bad.tolist()]


def _day_values(x: pd.Series, spec: dict) -> tuple[np.ndarray, list]:
    """Days since the declared origin (NaN where missing) and the positions of the cells that
    are not dates: datetime cells as they are, text as ISO 8601 or the declared ``format``
    (numbers too, with a format such as %Y%m%d)."""
    origin = dates.parse_iso(spec["origin"])
    if pd.api.types.is_datetime64_any_dtype(x):
        if getattr(x.dt, "tz", None) is not None:  # keep the wall-clock date
            x = x.dt.tz_localize(None)
        days = (x - pd.Timestamp(origin)) / pd.Timedelta(days=1)
        return days.to_numpy(dtype=float, na_value=np.nan), []
    fmt = spec.get("format")
    out, bad, read = np.full(len(x), np.nan), [], {}
    for i, v in enumerate(x.tolist()):
        if _blank(v):
            continue
        when = dates.as_datetime(v)
        if when is None and (isinstance(v, str) or (fmt and not isinstance(v, (bool, np.bool_)))):
            text = _text(v)
            if text not in read:  # exports repeat dates: each distinct text is parsed once
                read[text] = dates.parse_text(text, fmt)
            when = read[text]
        if when is None:
            bad.append(i)
        else:
            out[i] = dates.days_since(when, origin)
    return out, bad


def _date_column(x: pd.Series, spec: dict, c: str) -> tuple[np.ndarray | None, list, list]:
    """(days, problems, notes) of a date column: cells that are not dates refuse the upload,
    or are kept as missing when the column is declared ``missing: true``."""
    values, bad = _day_values(x, spec)
    if not bad:
        return values, [], []
    how = f"as {spec['format']!r}" if "format" in spec else "in ISO form (YYYY-MM-DD)"
    found = f"{_listing(sorted({_text(v) for v in x.iloc[bad].tolist()}))} ({_rows(x, bad)})"
    if not spec.get("missing"):
        return None, [f"column {c!r} is declared date but {len(bad)} values are not dates "
                      f"written {how}: {found}; fix them, declare how the export writes dates "
                      "(e.g. format: '%d/%m/%Y'), or declare missing: true to keep them as "
                      "missing"], []
    return values, [], [f"column {c!r}: {len(bad)} values that are not dates written {how} are "
                        f"kept as missing: {found}"]


def coerce_column(x: pd.Series, spec: dict, c: str) -> tuple[pd.Series | None, list, list]:
    """(the column as stored, problems refusing the upload, owner-only notes) of raw column
    ``x`` declared as ``spec`` (any type but ``drop``)."""
    t, notes = spec["type"], []
    if t != "date" and pd.api.types.is_datetime64_any_dtype(x):
        return None, [f"column {c!r} holds dates but is declared {t}; declare it as a date "
                      "({type: date, origin: 2000-01-01, bounds: [FIRST, LAST]}) or drop it "
                      "({type: drop})"], []
    if t == "date":
        values, problems, notes = _date_column(x, spec, c)
        if problems:
            return None, problems, []
    elif t == "bool":
        read = [(v, None if pd.isna(v) else _bool_value(v)) for v in x.tolist()]
        bad = [_text(v) for v, b in read if b is None and not pd.isna(v)]
        values = np.array([np.nan if b is None else b for _, b in read])
        if bad:
            return None, [f"column {c!r} is declared bool but {len(bad)} values are not "
                          f"true/false, yes/no, y/n, t/f or 1/0 ({_listing(sorted(set(bad)))}); "
                          "declare it as a category or fix them"], []
    elif t == "category" and "names" in spec:
        values, bad = _by_name(x, spec["names"])
        if bad:
            return None, [f"column {c!r}: {len(bad)} values are not declared categories "
                          f"({_listing(sorted(set(bad)))}; declared: {spec['names']}); fix them "
                          "or declare the category"], []
    else:
        values, bad = _numbers(x)
        if bad:
            return None, [f"column {c!r} is declared {t} but {len(bad)} values are text "
                          f"({_listing(sorted(set(bad)))}); declare it as a category with "
                          "those names, or fix them (a decimal comma: give --decimal ,)"], []
        if np.isinf(values).any():
            return None, [f"column {c!r}: {int(np.isinf(values).sum())} infinite values; fix "
                          "them (or leave them empty and declare missing: true)"], []
    col, problems, found = _finish(values, spec, c)
    return col, problems, notes + found


def _finish(values: np.ndarray, spec: dict, c: str) -> tuple[pd.Series | None, list, list]:
    t, nan = spec["type"], np.isnan(values)
    present = values[~nan]
    if nan.any() and not spec.get("missing"):
        return None, [f"column {c!r}: {int(nan.sum())} missing values; declare missing: true for "
                      "it in the schema (they are kept as missing and jobs fill them with the "
                      "declared midpoint) or fix those records"], []
    if t in ("int", "category") and not np.all(present == np.round(present)):
        return None, [f"column {c!r} is declared {t} but holds non-integer values; declare it "
                      "as float"], []
    notes = []
    if t == "category" and "names" not in spec:
        bad = ~np.isin(present, spec["categories"])
        if bad.any():
            return None, [f"column {c!r}: {int(bad.sum())} values are not declared categories "
                          f"({_listing(sorted(set(present[bad].tolist())))}); fix them or "
                          "declare the category"], []
    if "bounds" in spec:
        lo, hi = spec["bounds"]
        outside = int(((present < lo) | (present > hi)).sum())
        if outside:
            notes.append(f"column {c!r}: {outside} values outside the declared bounds "
                         f"[{lo}, {hi}] are kept but clipped to them inside every job")
    if nan.any():
        notes.append(f"column {c!r}: {int(nan.sum())} missing values kept as missing (NaN); "
                     "jobs fill them with the declared midpoint and add a missing indicator")
    return pd.Series(values).astype(dtype_of(spec)), [], notes


def has_label(v) -> bool:
    """Whether a raw label cell holds a label (not missing, not blank text)."""
    return not _blank(v)


def label_codes(x: pd.Series, label: dict) -> tuple[np.ndarray, list]:
    """Class codes (float, NaN where the label is missing) of raw label column ``x``: numbers
    are codes as today, text is mapped through the declared class names; and the values that
    are not declared classes."""
    names = label.get("names") or {}
    by_name = {v: int(k) for k, v in names.items()}
    out = np.full(len(x), np.nan)
    bad = []
    for i, v in enumerate(x.tolist()):
        if not has_label(v):
            continue
        if isinstance(v, str) and v.strip() in by_name:
            out[i] = by_name[v.strip()]
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        if f in label["classes"]:
            out[i] = f
        else:
            bad.append(_text(v))
    return out, bad


# -- drafting ------------------------------------------------------------------------------------
def refuse_comma_numbers(df: pd.DataFrame, where: str) -> None:
    """An IngestError with the --decimal advice when text columns hold decimal-comma numbers
    (drafting them as categories would be wrong)."""
    from .ingest_checks import IngestError, listing
    from .ingest_csv import COMMA_NUMBER

    comma = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])
             and df[c].dropna().astype(str).str.fullmatch(COMMA_NUMBER).any()]
    if comma:
        raise IngestError(f"{where}: columns {listing(map(repr, comma), 10)} hold numbers with a "
                          "decimal comma (such as 12,5): give --decimal , (and --sep ; for a "
                          "semicolon-separated file)")


def _draft_dates(cells: list) -> tuple[str | None, list] | None:
    """(text layout, datetimes) when every cell is a date: the layout None for ISO 8601 (or no
    text at all), else the first of :data:`DRAFT_DATE_FORMATS` that reads every text; None
    when some cell is not a date."""
    if any(dates.as_datetime(v) is None and not isinstance(v, str) for v in cells):
        return None
    texts = {v.strip() for v in cells if isinstance(v, str)}
    for fmt in (None, *DRAFT_DATE_FORMATS):
        read = {}
        for t in texts:  # each distinct text once; stop at the first that does not read
            read[t] = dates.parse_text(t, fmt)
            if read[t] is None:
                break
        else:
            return fmt, [dates.as_datetime(v) or read[v.strip()] for v in cells]
    return None


def draft_date_column(col: pd.Series) -> dict | None:
    """A draft ``date`` declaration of a datetime column, or of a column whose every value reads
    as a date (ISO 8601, else one common layout, then given as ``format``): the public
    :data:`DRAFT_DATE_ORIGIN`, bounds the data's years rounded outwards (to review); None when
    the column is not all dates."""
    present = [v for v in col.tolist() if not _blank(v)]
    found = _draft_dates(present) if present else None
    if found is None:
        return None
    fmt, whens = found
    years = [w.year for w in whens]
    out = {"type": "date", "origin": DRAFT_DATE_ORIGIN,
           "bounds": [f"{min(years):04d}-01-01", f"{max(years) + 1:04d}-01-01"]}
    if fmt:
        out["format"] = fmt
    if len(present) < len(col):
        out["missing"] = True
    return out


def draft_text_column(col: pd.Series) -> dict | None:
    """A draft declaration of a non-numeric column: bool for yes/no words, a date when every
    value reads as one, a category listing the values found when they are few; None when it
    is free text (the caller warns)."""
    present = col.dropna()
    if present.map(lambda v: _bool_value(v) is not None).all():
        out = {"type": "bool"}
    else:
        dated = draft_date_column(col)
        if dated is not None:
            return dated
        values = sorted({_text(v) for v in present.tolist()})
        if not 2 <= len(values) <= DRAFT_MAX_CATEGORIES:
            return None
        out = {"type": "category", "categories": values}
    if len(present) < len(col):
        out["missing"] = True
    return out
