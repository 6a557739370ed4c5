"""Public, per-record maps from a table to model inputs: they cost no privacy.

Each map uses only the record itself and public metadata (never statistics of other records),
so the model's inputs leak nothing beyond what DP-SGD accounts for. A map is named by a JSON
config saved with the model (``preprocessing``); :func:`preprocess` applies it identically at
training, evaluation and prediction:

* ``schema_columns`` (the owner's declared schema, :func:`schema_transformer`): one-hot
  categories, numbers and bools from their bounds to [-1, 1], a missing indicator per column
  declared ``missing: true``;
* ``declared_bounds``, ``public_scale``, ``row_l2_normalise``: one feature per column, for
  metadata without full declarations and for models released before (they still predict).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

ROW_L2 = "row_l2_normalise"
PUBLIC_SCALE = "public_scale"  # models released before declared-bounds scaling still use it
DECLARED_BOUNDS = "declared_bounds"  # models released before schema columns still use it
SCHEMA_COLUMNS = "schema_columns"
MISSING_SUFFIX = "_missing"


def row_l2_normalise(X: np.ndarray) -> np.ndarray:
    """x -> x / max(1, ||x||_2), row by row; NaN -> 0.

    Why: standardising with column means/stds of the private table would release those
    statistics through the model without any noise. A fixed per-row map uses no statistics of
    other records, so it costs no privacy, and bounded rows keep the logits on a sane scale.
    (The price: columns of very different scales are not equalised.)
    """
    X = np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.maximum(norms, 1.0)).astype(np.float32)


def public_scale(X: np.ndarray, scales) -> np.ndarray:
    """x_j -> clip(x_j / s_j, -1, 1) with the owner's declared per-column scales s_j.

    The scales are public metadata (powers of ten), not statistics of the training records,
    so this costs no privacy and -- unlike row normalisation -- keeps each record's magnitude,
    which is often the signal (e.g. tumour area).
    """
    X = np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(X / np.asarray(scales, dtype=np.float64), -1.0, 1.0).astype(np.float32)


def bounds_scale(X: np.ndarray, bounds) -> np.ndarray:
    """x_j -> (clip(x_j, lo_j, hi_j) - m_j) / h_j in [-1, 1], m_j = (lo_j + hi_j) / 2,
    h_j = (hi_j - lo_j) / 2, with the owner's declared bounds [lo_j, hi_j]; missing -> 0 (m_j).

    Why: the bounds are public (the schema), so this costs no privacy, and unlike dividing by
    the largest |value| it centres each column: a column declared [18, 90] spans [-1, 1], not
    [0.2, 1], so DP-SGD's few noisy steps are not spent learning offsets.
    """
    from .. import schema  # its test-only CLIP_TO_BOUNDS switch turns the clipping off here too

    b = np.asarray(bounds, dtype=np.float64).reshape(-1, 2)
    lo, hi = b[:, 0], b[:, 1]
    mid, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1e-12)
    X = np.asarray(X, dtype=np.float64)
    X = np.where(np.isnan(X), mid, X)  # a public fill value: the declared midpoint
    if schema.CLIP_TO_BOUNDS:
        X = np.clip(X, lo, hi)
    return ((X - mid) / half).astype(np.float32)


def declared_bounds(meta) -> dict[str, list[float]]:
    """{column: [lo, hi]} from the owner's public declarations (``meta.columns``): numeric
    bounds, [0, 1] for bool, [smallest, largest] code for category; columns without a numeric
    declaration are left out (then :func:`table_preprocessing` falls back)."""
    out = {}
    for c, decl in (getattr(meta, "columns", None) or {}).items():
        vals = ([0, 1] if decl.get("type") == "bool"
                else decl.get("bounds") or decl.get("categories") or [])
        try:
            lo, hi = float(min(vals)), float(max(vals))
        except (TypeError, ValueError):  # no bounds, or non-numeric categories
            continue
        if lo < hi and np.isfinite([lo, hi]).all():
            out[str(c)] = [lo, hi]
    return out


def table_preprocessing(cols: Sequence[str], feature_bounds: dict | None = None,
                        feature_scales: dict | None = None, columns: dict | None = None) -> dict:
    """The public preprocessing config of table columns ``cols``: the schema's declarations
    (``columns``, i.e. ``meta.columns``) when they cover every column, else declared bounds to
    [-1, 1], else the older per-column scales, else row normalisation."""
    schema = schema_preprocessing(cols, columns)
    if schema is not None:
        return schema
    if feature_bounds and all(c in feature_bounds for c in cols):
        return {"preprocessing": DECLARED_BOUNDS,
                "feature_bounds": [[float(v) for v in feature_bounds[c]] for c in cols]}
    if feature_scales and all(c in feature_scales for c in cols):
        return {"preprocessing": PUBLIC_SCALE,
                "feature_scales": [float(feature_scales[c]) for c in cols]}
    return {"preprocessing": ROW_L2}


def preprocess(X: np.ndarray, config: dict) -> np.ndarray:
    """Apply the preprocessing recorded in a model config (training and prediction alike)."""
    if config["preprocessing"] == SCHEMA_COLUMNS:
        return schema_transformer(config["schema_columns"]).transform(
            _numeric(X, config["schema_columns"])).astype(np.float32)
    if config["preprocessing"] == DECLARED_BOUNDS:
        return bounds_scale(X, config["feature_bounds"])
    if config["preprocessing"] == PUBLIC_SCALE:
        return public_scale(X, config["feature_scales"])
    if config["preprocessing"] == ROW_L2:
        return row_l2_normalise(X)
    raise ValueError(f"unknown preprocessing {config['preprocessing']!r}")


def config_feature_names(config: dict, cols: Sequence[str]) -> list[str]:
    """The names of the model inputs a config makes of columns ``cols`` (one per column for
    the older maps)."""
    return list(config.get("feature_names") or [str(c) for c in cols])


# -- the schema's columns ----------------------------------------------------------------------
def declared_order(cols: Sequence[str], columns: dict | None) -> list[str]:
    """``cols`` in the schema's declared order when the schema declares them all (the stored
    table keeps the file's order; the mock and :func:`feature_names` use the declared one)."""
    if columns and all(c in columns for c in cols):
        wanted = set(cols)
        return [str(c) for c in columns if c in wanted]
    return [str(c) for c in cols]


def column_declaration(name: str, decl: dict) -> dict | None:
    """The public preprocessing declaration of one schema column (``meta.columns[name]``):
    ``{name, type, missing, bounds | categories [+ names]}``; None if it is not usable."""
    t = decl.get("type")
    out = {"name": str(name), "type": t, "missing": bool(decl.get("missing", False))}
    if t == "category":
        cats = decl.get("categories") or []
        if len(cats) < 2 or any(isinstance(c, bool) or not isinstance(c, int) for c in cats):
            return None
        out["categories"] = [int(c) for c in cats]
        if decl.get("names"):
            out["names"] = [str(v) for v in decl["names"]]
        return out
    # a date is stored as float days since its origin, its bounds in days (shared.dates)
    bounds = ([0.0, 1.0] if t == "bool"
              else decl.get("bounds") if t in ("float", "int", "date") else None)
    try:
        lo, hi = float(bounds[0]), float(bounds[1])
    except (TypeError, ValueError, IndexError):
        return None
    if not (lo < hi and np.isfinite([lo, hi]).all()):
        return None
    out["bounds"] = [lo, hi]
    return out


def schema_preprocessing(cols: Sequence[str], columns: dict | None) -> dict | None:
    """The ``schema_columns`` config of ``cols`` from their declarations, or None when a column
    is not declared (or declared in a form this map does not read)."""
    if not columns or not cols or any(c not in columns for c in cols):
        return None
    decls = [column_declaration(c, columns[c]) for c in cols]
    if any(d is None for d in decls):
        return None
    return {"preprocessing": SCHEMA_COLUMNS, "schema_columns": decls,
            "feature_names": schema_feature_names(decls)}


def schema_feature_names(decls: Sequence[dict]) -> list[str]:
    """``grade=II`` per declared category (the code if the schema gives no names), the column's
    name for a number or bool, ``crp_missing`` after a column declared ``missing: true``."""
    out = []
    for d in decls:
        if d["type"] == "category":
            labels = d.get("names") or [str(c) for c in d["categories"]]
            out += [f"{d['name']}={v}" for v in labels]
        else:
            out.append(d["name"])
        if d["missing"]:
            out.append(d["name"] + MISSING_SUFFIX)
    return out


def schema_transformer(decls: Sequence[dict]):
    """A scikit-learn ColumnTransformer built from the declarations alone (public: it reads no
    record, so it costs no privacy):

    * category -> one-hot over the declared codes (``OneHotEncoder(categories=...)``); a code
      not declared, or a missing one, -> all zeros;
    * float / int / date (days) / bool -> clipped to the declared bounds, scaled to [-1, 1]
      (:func:`bounds_scale`; a bool is 0/1 with bounds [0, 1], so -1 / 1); a missing value ->
      the declared midpoint (0);
    * ``missing: true`` -> also an indicator (1 = missing, else 0) right after the column.

    It is fitted on one placeholder row made of the declarations (each column's first category
    or midpoint), never on records: a transformer fitted on the table would learn statistics of
    it (``StandardScaler``'s means, ``MissingIndicator``'s default choice of which columns ever
    miss a value) and release them through the model without noise.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import MissingIndicator
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    parts = []
    for j, d in enumerate(decls):
        if d["type"] == "category":
            step = OneHotEncoder(categories=[np.asarray(d["categories"], dtype=np.float64)],
                                 handle_unknown="ignore", sparse_output=False)
        else:
            step = FunctionTransformer(bounds_scale, kw_args={"bounds": [d["bounds"]]})
        parts.append((f"c{j}", step, [j]))
        if d["missing"]:  # features="all": the indicator never depends on which rows miss
            parts.append((f"c{j}_missing", MissingIndicator(features="all"), [j]))
    placeholder = np.array([[d["categories"][0] if d["type"] == "category"
                             else sum(d["bounds"]) / 2 for d in decls]], dtype=np.float64)
    return ColumnTransformer(parts, sparse_threshold=0.0).fit(placeholder)


def _numeric(X, decls: Sequence[dict]) -> np.ndarray:
    """``X`` as float64, declared category names (e.g. a researcher's ``"II"``) as their codes;
    a name not declared, or an infinite code, becomes a code no category has (one-hot all
    zeros, not missing); an infinite number becomes its bound."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != len(decls):
        raise ValueError(f"expected rows of the {len(decls)} columns "
                         f"{[d['name'] for d in decls]}, got shape {X.shape}")
    out = X.astype(np.float64) if X.dtype != object else np.empty(X.shape, dtype=np.float64)
    for j, d in enumerate(decls):
        unknown = min(d["categories"]) - 1 if d["type"] == "category" else np.nan
        if X.dtype == object:
            codes = dict(zip(d["names"], d["categories"])) if "names" in d else {}
            values = [np.nan if v is None or v is pd.NA
                      else codes.get(v, unknown) if codes and isinstance(v, str) else v
                      for v in X[:, j]]
            try:
                out[:, j] = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError):
                found = [v for v in values if isinstance(v, str)][:3] or "values not numbers"
                raise ValueError(f"column {d['name']!r} must hold numbers"
                                 + (f" or the declared names {d['names']}" if codes else "")
                                 + f"; found {found}") from None
        # sklearn refuses infinities: a category's is a code none has, a number's its bound
        lo, hi = (unknown, unknown) if d["type"] == "category" else d["bounds"]
        out[:, j] = np.where(out[:, j] == np.inf, hi, np.where(out[:, j] == -np.inf, lo,
                                                               out[:, j]))
    return out


def feature_names(meta) -> list[str]:
    """The model inputs a table job builds on dataset ``meta``, by name (public: a function of
    the metadata), e.g. ``["age", "grade=I", "grade=II", "grade=III", "crp", "crp_missing"]``."""
    cols = declared_order([c for c in meta.features if c != meta.label], meta.columns)
    return config_feature_names(table_preprocessing(cols, declared_bounds(meta),
                                                    meta.feature_scales, meta.columns), cols)


def model_inputs(df: pd.DataFrame, meta) -> pd.DataFrame:
    """The model inputs of a table job on ``df`` (e.g. the mock), one named column per feature:
    what the model sees, clipped and mapped exactly as the job maps its records."""
    from ..schema import clip_table

    cols = declared_order(feature_columns(df, meta.label), meta.columns)
    prep = table_preprocessing(cols, declared_bounds(meta), meta.feature_scales, meta.columns)
    X = preprocess(clip_table(df, meta)[cols].to_numpy(), prep)
    return pd.DataFrame(X, columns=config_feature_names(prep, cols), index=df.index)


def feature_columns(df: pd.DataFrame, label: str) -> list[str]:
    """All columns but the label, in table order; they must be numeric."""
    if label not in df.columns:
        raise ValueError(f"label column {label!r} is not in the table")
    cols = [c for c in df.columns if c != label]
    bad = [c for c in cols if not pd.api.types.is_numeric_dtype(df[c])]
    if bad or not cols:
        raise ValueError(f"feature columns must be numeric; not numeric: {bad}" if bad
                         else "the table has no feature columns")
    return [str(c) for c in cols]


def encode_labels(values, classes: Sequence) -> np.ndarray:
    """Class index of each label value (a Series or an array), in ``classes`` order."""
    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([index[v] for v in values.tolist()], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"label value {e.args[0]!r} is not in the label set {list(classes)}") \
            from None
