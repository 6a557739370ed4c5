"""Typed raw columns normalised at ingest, driven by the owner's declared schema.

Hospital exports hold string categories (sex F/M, grade I/II/III), booleans written as yes/no,
missing lab values and string labels (alive/dead). Each is mapped here, per record, to what the
stored table and every job consume: integer category codes in the declared order, 0/1 booleans,
NaN for a missing value where the schema allows it (``missing: true``), integer class codes.
Nothing here publishes anything: the mappings come from the schema (public by declaration), and
every count returned is for the owner's notes only.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from shared.schema import dtype_of

TRUE_WORDS = {"true", "yes", "y", "1", "t"}
FALSE_WORDS = {"false", "no", "n", "0", "f"}
DRAFT_MAX_CATEGORIES = 30  # a text column with more distinct values is not drafted as a category
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
        return x.to_numpy(dtype=float), []
    if pd.api.types.is_numeric_dtype(x):
        return x.to_numpy(dtype=float, na_value=np.nan), []
    num = pd.to_numeric(x, errors="coerce")
    bad = x[num.isna() & x.notna()]
    return num.to_numpy(dtype=float, na_value=np.nan), [_text(v) for v in bad.tolist()]


def coerce_column(x: pd.Series, spec: dict, c: str) -> tuple[pd.Series | None, list, list]:
    """(the column as stored, problems refusing the upload, owner-only notes) of raw column
    ``x`` declared as ``spec``."""
    t = spec["type"]
    if t == "bool":
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
    return _finish(values, spec, c)


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
                     "jobs fill them with the declared midpoint")
    return pd.Series(values).astype(dtype_of(spec)), [], notes


def has_label(v) -> bool:
    """Whether a raw label cell holds a label (not missing, not blank text)."""
    return not (pd.isna(v) or (isinstance(v, str) and not v.strip()))


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


def draft_text_column(col: pd.Series) -> dict | None:
    """A draft declaration of a non-numeric column: bool for yes/no words, a category listing
    the values found when they are few; None when it is free text (the caller warns)."""
    present = col.dropna()
    out = {"type": "bool"} if present.map(lambda v: _bool_value(v) is not None).all() else None
    if out is None:
        values = sorted({_text(v) for v in present.tolist()})
        if not 2 <= len(values) <= DRAFT_MAX_CATEGORIES:
            return None
        out = {"type": "category", "categories": values}
    if len(present) < len(col):
        out["missing"] = True
    return out
