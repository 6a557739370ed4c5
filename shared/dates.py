"""Dates as the schema declares them and as exports write them, turned into days since an origin.

A ``date`` column is stored (and used by every job) as float days since the owner's declared
origin. Text is read as ISO 8601 (``2021-03-04``, optionally with a time) unless the column
declares a strptime ``format`` such as ``%d/%m/%Y``; datetime values (Excel, Parquet) are read as
they are. Nothing here looks at more than one value at a time. Imports nothing from syft,
``datasite`` or ``researcher``.
"""
from __future__ import annotations

import datetime as dt
import re

import numpy as np

_ISO = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?")
_CHECK_DAY = dt.datetime(2003, 11, 25)  # day > 12: a format missing the day or month fails
DAY_SECONDS = 86400.0


def parse_iso(text: str) -> dt.datetime | None:
    """``text`` as an ISO 8601 date or date-time (no time zone), else None."""
    if not isinstance(text, str) or not _ISO.fullmatch(text.strip()):
        return None
    try:
        return dt.datetime.fromisoformat(text.strip())
    except ValueError:  # 2021-02-30, 2021-13-01
        return None


def parse_text(text: str, fmt: str | None) -> dt.datetime | None:
    """``text`` read with strptime ``fmt`` (ISO 8601 when None), else None."""
    if fmt is None:
        return parse_iso(text)
    try:
        return dt.datetime.strptime(text.strip(), fmt)
    except ValueError:
        return None


def as_datetime(v) -> dt.datetime | None:
    """A date or datetime value (``datetime.date``, pandas Timestamp, numpy datetime64) as a naive
    datetime (an aware one keeps its wall-clock time), else None. Text is not read here."""
    if isinstance(v, np.datetime64):
        import pandas as pd

        v = pd.Timestamp(v)
    if isinstance(v, dt.datetime):  # pandas Timestamps are datetimes
        return v.replace(tzinfo=None) if v.tzinfo else v
    if isinstance(v, dt.date):
        return dt.datetime(v.year, v.month, v.day)
    return None


def days_since(when: dt.datetime, origin: dt.datetime) -> float:
    """Float days from ``origin`` to ``when`` (negative before it); times give fractions."""
    return (when - origin).total_seconds() / DAY_SECONDS


def check_format(fmt) -> str | None:
    """Why ``fmt`` cannot be a date column's format (None if it can): it must be a strptime
    string naming day, month and a four-digit year."""
    if not isinstance(fmt, str) or "%" not in fmt:
        return f"expected a strptime format such as '%d/%m/%Y' (quoted in YAML), got {fmt!r}"
    if "%y" in fmt:
        return ("two-digit years (%y) are ambiguous (52 is read as 2052): export four-digit "
                "years and declare %Y")
    try:
        back = dt.datetime.strptime(_CHECK_DAY.strftime(fmt), fmt)
    except ValueError:
        back = None
    if back is None or back.date() != _CHECK_DAY.date():
        return f"{fmt!r} does not name a day, a month and a year (e.g. '%d/%m/%Y')"
    return None
