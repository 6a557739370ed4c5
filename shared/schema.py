"""The owner-declared public schema: the only source of what is published about a dataset.

Everything a researcher sees before a job runs (metadata, the mock) is a function of this schema
and public constants, never of the records. The schema is a plain dict (the owner writes it as
YAML, see ``datasite.schema``)::

    kind: table                      # or images
    records: 569                     # public by declaration: the owner publishes the count
    description: Wisconsin diagnostic breast cancer
    label: {column: diagnosis, classes: {0: malignant, 1: benign}}   # or classes: [0, 1]
                                     # or string classes: [alive, dead] (codes 0, 1 in order)
    columns:                         # tables: every feature column, in this order
      mean_radius: {type: float, unit: um, bounds: [0, 50]}
      age: {type: int, unit: years, bounds: [0, 120]}
      smoker: {type: bool}
      stage: {type: category, categories: [1, 2, 3, 4]}
      grade: {type: category, categories: [I, II, III]}   # stored as codes 0, 1, 2 (in order)
      crp: {type: float, bounds: [0, 300], missing: true}   # missing values kept (NaN)
      admitted: {type: date, origin: 2000-01-01, bounds: [2010-01-01, 2025-01-01]}
      dob: {type: date, origin: 2000-01-01, bounds: [1900-01-01, 2025-01-01], format: '%d/%m/%Y'}
      visit_id: {type: drop}                                 # in the export, never stored
    image: {height: 28, width: 28, channels: 1}                        # images only

A ``date`` column is stored as float64 days since its declared ``origin`` (its unit reads "days
since 2000-01-01"; normalised bounds are in days, so jobs treat it as a float column). Its
bounds may be ISO dates or days; text cells are ISO 8601 unless ``format`` (a strptime string,
quoted in YAML) says how the export writes them (``%d/%m/%Y`` day-first, ``%m/%d/%Y``
month-first); datetime cells (Excel, Parquet) are read as they are (:mod:`shared.dates`). A
column declared ``type: drop`` is in the export but dropped at upload: never stored, never
published (e.g. a date the owner does not want used).

Optional declared rates shape the mock only (:mod:`datasite.mock`); they are published as
declared, so the owner declares them only when they may be public (the draft never fills them
in from the data)::

      crp: {type: float, bounds: [0, 300], missing: true, missing_rate: 0.17}
      grade: {type: category, categories: [I, II, III], rates: [0.5, 0.3, 0.2]}
      smoker: {type: bool, rate: 0.3}           # share true
    label: {column: outcome, classes: [alive, dead], rates: [0.8, 0.2]}

``missing_rate`` (0 <= rate < 1) needs ``missing: true``; ``rates`` give one share per category
or class in the declared order and sum to 1.

Bounds are domain knowledge; jobs clip values outside them (:func:`clip_table`) and never widen
them. String categories and string label classes are normalised to integer codes in the
declared order plus their names (``names``), so the stored table and every job stay numeric and
the names are published with the schema. ``missing: true`` lets a column hold missing values:
they are stored as NaN (the column as float64); table jobs fill them with the declared midpoint
and add a missing-indicator input (``shared.training.preprocess``, which also one-hot encodes
categories over the declared codes); statistics queries drop them. No syft, ``datasite``
or ``researcher`` import here.
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pandas as pd

from . import dates
from .data import IMAGES, TABLE, DatasetMeta

TYPES = ("float", "int", "bool", "category", "date", "drop")
DTYPES = {"float": "float64", "int": "int64", "bool": "bool", "category": "int64",
          "date": "float64"}
# keys each type takes besides type, unit, missing and missing_rate
_KEYS = {"float": {"bounds"}, "int": {"bounds"}, "bool": {"rate"},
         "category": {"categories", "names", "rates"}, "date": {"origin", "bounds", "format"},
         "drop": set()}
RATE_SUM_TOLERANCE = 1e-6
MAX_CLASSES = 1000
DRAFT_KEY = "drafted_from_data"


class SchemaError(ValueError):
    """The schema is incomplete or inconsistent; the message says what to fix."""


def _number(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SchemaError(f"{where}: expected a finite number, got {v!r}.")
    return v


def _int(v, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SchemaError(f"{where}: expected an integer, got {v!r}.")
    return v


def _names(values: list, where: str) -> list[str]:
    """Declared string names (categories or classes), refusing YAML's unquoted booleans."""
    out = []
    for v in values:
        if isinstance(v, bool):
            raise SchemaError(f"{where}: {v!r} is a YAML boolean: quote yes/no/true/false/on/off "
                              "(e.g. 'yes') to declare them as names.")
        if not isinstance(v, (str, int)) or not str(v).strip():
            raise SchemaError(f"{where}: names must be non-empty strings or integers, got {v!r}.")
        out.append(str(v).strip())
    if len(set(out)) != len(out):
        raise SchemaError(f"{where}: a name is listed twice.")
    return out


def _rates(v, k: int, what: str, where: str) -> list[float]:
    """``k`` declared shares in [0, 1] that sum to 1, one per ``what`` (category, class)."""
    if not isinstance(v, list) or len(v) != k:
        raise SchemaError(f"{where}: give one share per {what} in the declared order ({k} "
                          f"numbers that sum to 1), got {v!r}.")
    out = [float(_number(x, where)) for x in v]
    if any(not 0 <= x <= 1 for x in out):
        raise SchemaError(f"{where}: every share lies in [0, 1], got {v!r}.")
    if abs(sum(out) - 1) > RATE_SUM_TOLERANCE:
        raise SchemaError(f"{where}: the shares must sum to 1, they sum to {sum(out):.6g}.")
    return out


def _sorted_rates(codes: list, rates: list | None) -> dict:
    """{rates: ...} reordered with ``codes`` into sorted code order ({} when not declared)."""
    return {} if rates is None else {"rates": [r for _, r in sorted(zip(codes, rates))]}


def _categories(spec: dict, where: str) -> dict:
    """{categories: codes[, names][, rates]}: integer codes sorted as today, string categories
    as codes 0..k-1 in the declared order with their names; rates follow their categories."""
    cats, names = spec.get("categories"), spec.get("names")
    if not isinstance(cats, list) or len(cats) < 2:
        raise SchemaError(f"{where}: a category column needs categories: a list of at least "
                          "two integer codes or names (e.g. [I, II, III]).")
    rates = (_rates(spec["rates"], len(cats), "category", f"{where} rates") if "rates" in spec
             else None)
    if names is None and any(not isinstance(c, int) or isinstance(c, bool) for c in cats):
        names = _names(cats, f"{where} categories")
        return {"categories": list(range(len(names))), "names": names,
                **_sorted_rates(list(range(len(names))), rates)}
    cats = [_int(c, f"{where} categories") for c in cats]
    if len(set(cats)) != len(cats):
        raise SchemaError(f"{where}: categories are listed twice.")
    if names is None:
        return {"categories": sorted(cats), **_sorted_rates(cats, rates)}
    if not isinstance(names, list) or cats != list(range(len(cats))) or len(names) != len(cats):
        raise SchemaError(f"{where}: names need categories [0, 1, ..., k-1] and one name each "
                          "(or list the names as the categories).")
    return {"categories": cats, "names": _names(names, f"{where} names"),
            **_sorted_rates(cats, rates)}


def _bounds(spec: dict, t: str, where: str, to_number=None) -> list:
    b = spec.get("bounds")
    if not isinstance(b, (list, tuple)) or len(b) != 2:
        example = " (ISO dates or days, e.g. [2010-01-01, 2025-01-01])" if t == "date" else ""
        raise SchemaError(f"{where}: a {t} column needs bounds [lower, upper]{example} from "
                          "domain knowledge (values outside are clipped inside jobs).")
    lo, hi = ((to_number or _number)(x, f"{where} bounds") for x in b)
    if t == "int":
        lo, hi = (_int(x, f"{where} bounds (an int column)") for x in (lo, hi))
    if not lo < hi:
        raise SchemaError(f"{where}: bounds need lower < upper, got {list(b)}.")
    return [lo, hi]


def _date(spec: dict, where: str) -> dict:
    """{unit, origin, bounds (days since origin)[, format]} of a date column."""
    origin = dates.as_datetime(spec.get("origin")) or dates.parse_iso(spec.get("origin"))
    if origin is None or origin.time() != dt.time():
        raise SchemaError(f"{where}: a date column needs origin: an ISO date such as 2000-01-01 "
                          f"(the day its values count from), got {spec.get('origin')!r}.")
    iso = origin.date().isoformat()
    unit = f"days since {iso}"
    if spec.get("unit") not in (None, "", unit):
        raise SchemaError(f"{where}: a date column's unit is {unit!r} (from its origin); omit "
                          "unit.")

    def days(v, at: str) -> float:
        when = dates.as_datetime(v) or dates.parse_iso(v)
        if when is None:
            return _number(v, f"{at} (ISO dates such as 2010-01-01, or days since the origin)")
        d = dates.days_since(when, origin)
        return int(d) if d == int(d) else d

    out = {"unit": unit, "origin": iso, "bounds": _bounds(spec, "date", where, days)}
    if "format" in spec:
        why = dates.check_format(spec["format"])
        if why:
            raise SchemaError(f"{where} format: {why}.")
        out["format"] = spec["format"]
    return out


def _column(name: str, spec: Any) -> dict:
    where = f"schema column {name!r}"
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise SchemaError(f"{where}: give a mapping with type one of {', '.join(TYPES)}, e.g. "
                          "{type: float, unit: mm, bounds: [0, 50]}.")
    t = spec["type"]
    if t == "drop":
        if set(spec) != {"type"}:
            raise SchemaError(f"{where}: a dropped column takes no other keys; write "
                              "{type: drop}.")
        return {"type": t}
    unknown = set(spec) - {"type", "unit", "missing", "missing_rate"} - _KEYS[t]
    if unknown:
        takes = sorted({ty for ty, keys in _KEYS.items() if unknown & keys})
        hint = f" (that is for {', '.join(takes)} columns)" if takes else ""
        raise SchemaError(f"{where}: a {t} column takes no {', '.join(sorted(unknown))}{hint}.")
    out = {"type": t, "unit": str(spec.get("unit") or "")}
    if t in ("float", "int"):
        out["bounds"] = _bounds(spec, t, where)
    elif t == "category":
        out.update(_categories(spec, where))
    elif t == "date":
        out.update(_date(spec, where))
    elif "rate" in spec:  # a bool column (the only type that takes rate)
        rate = float(_number(spec["rate"], f"{where} rate"))
        if not 0 <= rate <= 1:
            raise SchemaError(f"{where}: rate is the share of true values, in [0, 1], got "
                              f"{spec['rate']!r}.")
        out["rate"] = rate
    missing = spec.get("missing", False)
    if not isinstance(missing, bool):
        raise SchemaError(f"{where}: missing is true or false, got {missing!r}.")
    if missing:  # omitted when false: existing declarations keep their canonical form
        out["missing"] = True
    if "missing_rate" in spec:
        rate = _number(spec["missing_rate"], f"{where} missing_rate")
        if not missing:
            raise SchemaError(f"{where}: missing_rate needs missing: true (the mock has missing "
                              "values only where the data may have them).")
        if not 0 <= rate < 1:
            raise SchemaError(f"{where}: missing_rate is the mock's share of missing values, "
                              f"0 <= rate < 1, got {rate!r}.")
        out["missing_rate"] = float(rate)
    return out


def dtype_of(col: dict) -> str:
    """The stored dtype of a declared column: float64 (NaN for missing) when it may be missing."""
    return "float64" if col.get("missing") else DTYPES[col["type"]]


def _label(spec: Any, kind: str) -> dict:
    if not isinstance(spec, dict) or "classes" not in spec:
        raise SchemaError("schema label: give {column: NAME, classes: [0, 1]} (tables) or "
                          "{classes: [0, 1]} (images); classes may map codes to names, "
                          "e.g. {0: normal, 1: pneumonia}.")
    classes = spec["classes"]
    names = {str(k): str(v) for k, v in (spec.get("names") or {}).items()}  # normalised form
    if isinstance(classes, dict):
        names = {str(_int(k, "schema label classes")): str(v) for k, v in classes.items()}
        classes = list(classes)
    elif isinstance(classes, list) and any(not isinstance(c, int) or isinstance(c, bool)
                                           for c in classes):
        if spec.get("names"):
            raise SchemaError("schema label: give either string classes or names, not both.")
        found = _names(classes, "schema label classes")  # codes 0..k-1 in the declared order
        names, classes = {str(i): v for i, v in enumerate(found)}, list(range(len(found)))
    if not isinstance(classes, list) or not 2 <= len(classes) <= MAX_CLASSES:
        raise SchemaError(f"schema label classes: give 2 to {MAX_CLASSES} integer class codes.")
    declared = [_int(c, "schema label classes") for c in classes]
    codes = sorted(declared)
    if len(set(codes)) != len(codes):
        raise SchemaError("schema label classes: a class is listed twice.")
    rates = (_rates(spec["rates"], len(codes), "class", "schema label rates")
             if "rates" in spec else None)
    column = spec.get("column", "label" if kind == IMAGES else None)
    if kind == TABLE and not isinstance(column, str):
        raise SchemaError("schema label: name the label column, e.g. {column: diagnosis, ...}.")
    if kind == IMAGES and column != "label":
        raise SchemaError("schema label: image datasets have no label column name; omit column.")
    return {"column": column, "classes": codes, "names": names,
            **_sorted_rates(declared, rates)}


def normalise(schema: Any) -> dict:
    """``schema`` validated and in canonical form (the same declaration gives the same dict)."""
    if not isinstance(schema, dict):
        raise SchemaError("The schema must be a mapping (kind, records, label, columns/image).")
    if schema.get(DRAFT_KEY):
        raise SchemaError(f"The schema is still marked {DRAFT_KEY}: true. Review every bound, "
                          "category and class against domain knowledge (not the data), then "
                          f"delete the {DRAFT_KEY} line.")
    kind = schema.get("kind")
    if kind not in (TABLE, IMAGES):
        raise SchemaError(f"schema kind: {TABLE!r} or {IMAGES!r}, got {kind!r}.")
    known = {"kind", "records", "description", "label", "columns", "image", DRAFT_KEY}
    if set(schema) - known:
        raise SchemaError(f"schema: unknown keys {sorted(set(schema) - known)}.")
    records = _int(schema.get("records"), "schema records (the public record count)")
    if records < 1:
        raise SchemaError("schema records: must be at least 1.")
    out = {"kind": kind, "records": records, "description": str(schema.get("description") or ""),
           "label": _label(schema.get("label"), kind)}
    if kind == TABLE:
        cols = schema.get("columns")
        if not isinstance(cols, dict) or not cols:
            raise SchemaError("schema columns: declare every feature column (name: {type, unit, "
                              "bounds | categories}).")
        if out["label"]["column"] in cols:
            raise SchemaError(f"schema columns: the label {out['label']['column']!r} is declared "
                              "under label, not under columns.")
        out["columns"] = {str(c): _column(str(c), s) for c, s in cols.items()}
        if all(v["type"] == "drop" for v in out["columns"].values()):
            raise SchemaError("schema columns: every column is dropped; keep at least one "
                              "feature column.")
    else:
        img = schema.get("image")
        if not isinstance(img, dict):
            raise SchemaError("schema image: give {height: H, width: W, channels: 1 or 3}.")
        h, w = (_int(img.get(k), f"schema image {k}") for k in ("height", "width"))
        c = _int(img.get("channels", 1), "schema image channels")
        if h < 1 or w < 1 or c not in (1, 3):
            raise SchemaError("schema image: positive height and width, channels 1 or 3.")
        out["image"] = {"height": h, "width": w, "channels": c}
    return out


def feature_columns(schema: dict) -> dict:
    """The declared columns of a normalised table schema that are stored (not ``drop``)."""
    return {c: v for c, v in schema["columns"].items() if v["type"] != "drop"}


def scale_of(col: dict) -> float:
    """Public per-column scale: the largest |value| the declaration allows (1 if that is 0)."""
    if col["type"] == "bool":
        return 1.0
    vals = col["bounds"] if "bounds" in col else col["categories"]
    return float(max(abs(v) for v in vals)) or 1.0


def meta_from_schema(schema: dict, name: str, description: str = "") -> DatasetMeta:
    """The published metadata: a function of the (normalised) schema and ``name`` only."""
    s = normalise(schema)
    lab = s["label"]
    meta = DatasetMeta(name=name, kind=s["kind"], n_records=s["records"], label=lab["column"],
                       labels=list(lab["classes"]), description=description or s["description"],
                       class_names=dict(lab["names"]), label_rates=list(lab.get("rates", [])))
    if s["kind"] == TABLE:
        kept = feature_columns(s)
        meta.features = {c: dtype_of(v) for c, v in kept.items()}
        meta.feature_scales = {c: scale_of(v) for c, v in kept.items()}
        meta.columns = {c: dict(v) for c, v in kept.items()}
    else:
        im = s["image"]
        meta.image_shape = ([im["height"], im["width"]] if im["channels"] == 1
                            else [im["height"], im["width"], im["channels"]])
    return meta


# Test-only switch: False makes jobs use the records as stored (no clipping to declared bounds).
CLIP_TO_BOUNDS = True


def clip_table(df: pd.DataFrame, meta: DatasetMeta) -> pd.DataFrame:
    """``df`` with every declared numeric column clipped to its declared bounds (a per-record
    map, so it costs no privacy; idempotent, so training and removal see the same features).
    Missing values (NaN, in columns declared ``missing: true``) stay NaN."""
    bounded = {c: v["bounds"] for c, v in (meta.columns or {}).items()
               if "bounds" in v and c in df.columns}
    if not CLIP_TO_BOUNDS or not bounded:
        return df
    out = df.copy()
    for c, (lo, hi) in bounded.items():
        out[c] = np.clip(out[c].to_numpy(), lo, hi).astype(out[c].dtype)
    return out
