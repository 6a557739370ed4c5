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
    image: {height: 28, width: 28, channels: 1}                        # images only

Bounds are domain knowledge; jobs clip values outside them (:func:`clip_table`) and never widen
them. String categories and string label classes are normalised to integer codes in the
declared order plus their names (``names``), so the stored table and every job stay numeric and
the names are published with the schema. ``missing: true`` lets a column hold missing values:
they are stored as NaN (the column as float64) and table jobs fill them with the declared
midpoint (``shared.training.preprocess.bounds_scale``); statistics queries drop them. This module imports nothing from syft, ``datasite`` or ``researcher``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .data import IMAGES, TABLE, DatasetMeta

TYPES = ("float", "int", "bool", "category")
DTYPES = {"float": "float64", "int": "int64", "bool": "bool", "category": "int64"}
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


def _categories(spec: dict, where: str) -> dict:
    """{categories: codes[, names]}: integer codes sorted as today, string categories as
    codes 0..k-1 in the declared order with their names."""
    cats, names = spec.get("categories"), spec.get("names")
    if not isinstance(cats, list) or len(cats) < 2:
        raise SchemaError(f"{where}: a category column needs categories: a list of at least "
                          "two integer codes or names (e.g. [I, II, III]).")
    if names is None and any(not isinstance(c, int) or isinstance(c, bool) for c in cats):
        names = _names(cats, f"{where} categories")
        return {"categories": list(range(len(names))), "names": names}
    cats = [_int(c, f"{where} categories") for c in cats]
    if len(set(cats)) != len(cats):
        raise SchemaError(f"{where}: categories are listed twice.")
    if names is None:
        return {"categories": sorted(cats)}
    if not isinstance(names, list) or cats != list(range(len(cats))) or len(names) != len(cats):
        raise SchemaError(f"{where}: names need categories [0, 1, ..., k-1] and one name each "
                          "(or list the names as the categories).")
    return {"categories": cats, "names": _names(names, f"{where} names")}


def _column(name: str, spec: Any) -> dict:
    where = f"schema column {name!r}"
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise SchemaError(f"{where}: give a mapping with type one of {', '.join(TYPES)}, e.g. "
                          "{type: float, unit: mm, bounds: [0, 50]}.")
    t = spec["type"]
    out = {"type": t, "unit": str(spec.get("unit") or "")}
    unknown = set(spec) - {"type", "unit", "bounds", "categories", "names", "missing"}
    if unknown:
        raise SchemaError(f"{where}: unknown keys {sorted(unknown)}.")
    if t in ("float", "int"):
        b = spec.get("bounds")
        if not isinstance(b, (list, tuple)) or len(b) != 2:
            raise SchemaError(f"{where}: a {t} column needs bounds [lower, upper] from domain "
                              "knowledge (values outside are clipped inside jobs).")
        lo, hi = (_number(x, f"{where} bounds") for x in b)
        if t == "int":
            lo, hi = (_int(x, f"{where} bounds (an int column)") for x in (lo, hi))
        if not lo < hi:
            raise SchemaError(f"{where}: bounds need lower < upper, got [{lo}, {hi}].")
        out["bounds"] = [lo, hi]
    elif t == "category":
        out.update(_categories(spec, where))
    elif "bounds" in spec or "categories" in spec:
        raise SchemaError(f"{where}: a bool column takes no bounds or categories.")
    if "names" in spec and t != "category":
        raise SchemaError(f"{where}: only a category column takes names.")
    missing = spec.get("missing", False)
    if not isinstance(missing, bool):
        raise SchemaError(f"{where}: missing is true or false, got {missing!r}.")
    if missing:  # omitted when false: existing declarations keep their canonical form
        out["missing"] = True
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
    codes = sorted(_int(c, "schema label classes") for c in classes)
    if len(set(codes)) != len(codes):
        raise SchemaError("schema label classes: a class is listed twice.")
    column = spec.get("column", "label" if kind == IMAGES else None)
    if kind == TABLE and not isinstance(column, str):
        raise SchemaError("schema label: name the label column, e.g. {column: diagnosis, ...}.")
    if kind == IMAGES and column != "label":
        raise SchemaError("schema label: image datasets have no label column name; omit column.")
    return {"column": column, "classes": codes, "names": names}


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
                       class_names=dict(lab["names"]))
    if s["kind"] == TABLE:
        meta.features = {c: dtype_of(v) for c, v in s["columns"].items()}
        meta.feature_scales = {c: scale_of(v) for c, v in s["columns"].items()}
        meta.columns = {c: dict(v) for c, v in s["columns"].items()}
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
