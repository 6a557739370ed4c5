"""Public, per-record maps from a table to model inputs: they cost no privacy.

Each map uses only the record itself and public metadata (never statistics of other records),
so the model's inputs leak nothing beyond what DP-SGD accounts for.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

ROW_L2 = "row_l2_normalise"
PUBLIC_SCALE = "public_scale"  # models released before declared-bounds scaling still use it
DECLARED_BOUNDS = "declared_bounds"


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
                        feature_scales: dict | None = None) -> dict:
    """The public preprocessing config of table columns ``cols``: declared bounds to [-1, 1]
    when every column has them, else the older per-column scales, else row normalisation."""
    if feature_bounds and all(c in feature_bounds for c in cols):
        return {"preprocessing": DECLARED_BOUNDS,
                "feature_bounds": [[float(v) for v in feature_bounds[c]] for c in cols]}
    if feature_scales and all(c in feature_scales for c in cols):
        return {"preprocessing": PUBLIC_SCALE,
                "feature_scales": [float(feature_scales[c]) for c in cols]}
    return {"preprocessing": ROW_L2}


def preprocess(X: np.ndarray, config: dict) -> np.ndarray:
    """Apply the preprocessing recorded in a model config (training and prediction alike)."""
    if config["preprocessing"] == DECLARED_BOUNDS:
        return bounds_scale(X, config["feature_bounds"])
    if config["preprocessing"] == PUBLIC_SCALE:
        return public_scale(X, config["feature_scales"])
    if config["preprocessing"] == ROW_L2:
        return row_l2_normalise(X)
    raise ValueError(f"unknown preprocessing {config['preprocessing']!r}")


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
