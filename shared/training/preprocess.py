"""Public, per-record maps from a table to model inputs: they cost no privacy.

Each map uses only the record itself and public metadata (never statistics of other records),
so the model's inputs leak nothing beyond what DP-SGD accounts for.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

ROW_L2 = "row_l2_normalise"
PUBLIC_SCALE = "public_scale"


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


def preprocess(X: np.ndarray, config: dict) -> np.ndarray:
    """Apply the preprocessing recorded in a model config (training and prediction alike)."""
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
