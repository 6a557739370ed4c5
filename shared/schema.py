"""The owner-declared public schema: the only source of what is published about a dataset.

Everything a researcher sees before a job runs (metadata, the mock) is a function of this schema
and public constants, never of the records. The schema is a plain dict (the owner writes it as
YAML, see ``datasite.schema``)::

    kind: table                      # or images
    records: 569                     # public by declaration: the owner publishes the count
    description: Wisconsin diagnostic breast cancer
    label: {column: diagnosis, classes: {0: malignant, 1: benign}}   # or classes: [0, 1]
    columns:                         # tables: every feature column, in this order
      mean_radius: {type: float, unit: um, bounds: [0, 50]}
      age: {type: int, unit: years, bounds: [0, 120]}
      smoker: {type: bool}
      stage: {type: category, categories: [1, 2, 3, 4]}
    image: {height: 28, width: 28, channels: 1}                        # images only

Bounds are domain knowledge; jobs clip values outside them (:func:`clip_table`) and never widen
them. This module imports nothing from syft, ``datasite`` or ``researcher``.
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


def _column(name: str, spec: Any) -> dict:
    where = f"schema column {name!r}"
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise SchemaError(f"{where}: give a mapping with type one of {', '.join(TYPES)}, e.g. "
                          "{type: float, unit: mm, bounds: [0, 50]}.")
    t = spec["type"]
    out = {"type": t, "unit": str(spec.get("unit") or "")}
    unknown = set(spec) - {"type", "unit", "bounds", "categories"}
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
        cats = spec.get("categories")
        if not isinstance(cats, list) or len(cats) < 2:
            raise SchemaError(f"{where}: a category column needs categories: a list of at least "
                              "two integer codes.")
        cats = [_int(c, f"{where} categories") for c in cats]
        if len(set(cats)) != len(cats):
            raise SchemaError(f"{where}: categories are listed twice.")
        out["categories"] = sorted(cats)
    elif "bounds" in spec or "categories" in spec:
        raise SchemaError(f"{where}: a bool column takes no bounds or categories.")
    return out


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
        meta.features = {c: DTYPES[v["type"]] for c, v in s["columns"].items()}
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
    map, so it costs no privacy; idempotent, so training and removal see the same features)."""
    bounded = {c: v["bounds"] for c, v in (meta.columns or {}).items()
               if "bounds" in v and c in df.columns}
    if not CLIP_TO_BOUNDS or not bounded:
        return df
    out = df.copy()
    for c, (lo, hi) in bounded.items():
        out[c] = np.clip(out[c].to_numpy(), lo, hi).astype(out[c].dtype)
    return out
