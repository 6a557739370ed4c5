"""The features a removal model trains on: rows of norm <= 1, each a map of its own record."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .model import RemovableModel
from .objective import RemovalError


def table_pipeline(feature_columns: Sequence[str], feature_scales: Sequence[float] | None,
                   feature_bounds: Sequence[Sequence[float]] | None = None,
                   schema: dict | None = None) -> dict:
    """Feature map of a table: the schema's declarations (``schema``: a ``schema_columns``
    config of :mod:`shared.training.preprocess`: one-hot categories, missing indicators, bounds
    to [-1, 1]) when it covers every column, else declared bounds to [-1, 1] (``bounds_scale``)
    when every column has them, else public column scales (clip(x / s_j, -1, 1)) when every
    column has one, else row-wise L2 normalisation; then an intercept feature, all times
    1/sqrt(d+1) (d model inputs, each in [-1, 1]) or 1/sqrt(2) (row normalised) so every row
    has norm <= 1."""
    d = len(feature_columns)
    if schema is not None:
        return {"input": "table", "preprocessing": schema["preprocessing"],
                "schema_columns": schema["schema_columns"],
                "feature_columns": list(feature_columns), "intercept": True,
                "row_scale": 1 / math.sqrt(len(schema["feature_names"]) + 1)}
    if feature_bounds is not None:
        return {"input": "table", "preprocessing": "declared_bounds",
                "feature_bounds": [[float(v) for v in b] for b in feature_bounds],
                "feature_columns": list(feature_columns), "intercept": True,
                "row_scale": 1 / math.sqrt(d + 1)}
    if feature_scales is not None:
        return {"input": "table", "preprocessing": "public_scale",
                "feature_scales": [float(v) for v in feature_scales],
                "feature_columns": list(feature_columns), "intercept": True,
                "row_scale": 1 / math.sqrt(d + 1)}
    return {"input": "table", "preprocessing": "row_l2_normalise",
            "feature_columns": list(feature_columns), "intercept": True,
            "row_scale": 1 / math.sqrt(2)}


def unit_pipeline(source: str) -> dict:
    """Feature map of precomputed rows of norm <= 1 (e.g. a frozen backbone's): append an
    intercept feature, times 1/sqrt(2)."""
    return {"input": source, "preprocessing": "none", "intercept": True,
            "row_scale": 1 / math.sqrt(2)}


def make_features(X, pipeline: dict) -> np.ndarray:
    """float64 rows of norm <= 1 from raw table columns or unit-norm features (per ``pipeline``).
    Each row depends on its own record only."""
    from ..training.preprocess import (SCHEMA_COLUMNS, bounds_scale, preprocess, public_scale,
                                       row_l2_normalise)

    prep = pipeline["preprocessing"]
    if prep == SCHEMA_COLUMNS:  # one-hot widens the rows: map before the shape checks
        X = preprocess(np.asarray(X), pipeline)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise RemovalError(f"features must be a 2-D array, got shape {X.shape}")
    if prep == SCHEMA_COLUMNS:
        F = X
    elif prep == "declared_bounds":
        F = bounds_scale(X, pipeline["feature_bounds"]).astype(np.float64)
    elif prep == "public_scale":
        F = public_scale(X, pipeline["feature_scales"]).astype(np.float64)
    elif prep == "row_l2_normalise":
        F = row_l2_normalise(X).astype(np.float64)
    elif prep == "none":
        F = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)
        norms = np.linalg.norm(F, axis=1, keepdims=True)
        F = F / np.maximum(norms, 1.0)  # a backbone row of norm 1 + rounding: no-op
    else:
        raise RemovalError(f"unknown preprocessing {prep!r}")
    if pipeline.get("intercept", True):
        F = np.hstack([F, np.ones((len(F), 1))])
    F *= pipeline["row_scale"]
    norms = np.linalg.norm(F, axis=1, keepdims=True)
    return F / np.maximum(norms, 1.0)  # guards |x| <= 1 against rounding in the scale


def job_features(spec, data, meta, extractor: dict | None = None,
                 pipeline: dict | None = None
                 ) -> tuple[np.ndarray, np.ndarray, dict, list | None]:
    """(X of norm <= 1, y as class indices, feature pipeline, table feature columns or None):
    the features a removal job trains on, computed the same way at training and at removal.
    ``extractor``: the released result of a DP-SGD job, for ``features="dp_extractor"``;
    ``pipeline``: a trained model's own table pipeline (a removal reuses it, so a model
    trained under an older preprocessing keeps its features; an image model's is refused when
    its backbone's values changed since, :func:`stale_features`)."""
    from ..data import TABLE
    from ..training.preprocess import (declared_bounds, declared_order, encode_labels,
                                       feature_columns, schema_preprocessing)

    if meta.kind == TABLE:
        from ..schema import clip_table

        data = clip_table(data, meta)  # as in run_job: forget sees the features training saw
    labels = np.asarray(data[meta.label] if meta.kind == TABLE else data["labels"])
    y = encode_labels(labels, list(meta.labels))
    cols = None
    if spec.features == "dp_extractor":
        if extractor is None:
            raise RemovalError("features='dp_extractor' needs the extractor job's result")
        pipeline = unit_pipeline("dp_extractor")
        X = make_features(dp_extractor_features(extractor, data, meta), pipeline)
    elif meta.kind == TABLE:
        cols = declared_order(feature_columns(data, meta.label), meta.columns)
        if pipeline and pipeline.get("input") == "table":
            cols = list(pipeline["feature_columns"])
            return make_features(data[cols].to_numpy(), pipeline), y, dict(pipeline), cols
        scales, bounds = meta.feature_scales or {}, declared_bounds(meta)
        pipeline = table_pipeline(cols, [scales[c] for c in cols]
                                  if all(c in scales for c in cols) else None,
                                  [bounds[c] for c in cols]
                                  if all(c in bounds for c in cols) else None,
                                  schema_preprocessing(cols, meta.columns))
        X = make_features(data[cols].to_numpy(), pipeline)
    else:
        from ..training.backbones import extract_features, feature_version

        why = stale_features(pipeline)
        if why:  # datasite forget checks first; this guards any other caller
            raise RemovalError(f"cannot recompute the features this model was trained on: {why}. "
                               "Retrain the model (submit its job again) to update it.")
        pipeline = unit_pipeline(spec.features)
        pipeline["backbone"] = spec.features
        pipeline["backbone_version"] = feature_version(spec.features)
        X = make_features(extract_features(data["images"], spec.features), pipeline)
    return X, y, pipeline, cols


def stale_features(pipeline: dict | None) -> str | None:
    """Why the features a stored model (its ``feature_pipeline``) was trained on differ from
    what its backbone computes today, or None when they do not. A model that recorded no
    ``backbone_version`` was trained by the backbone's unrecorded version (pre-kymatio FFT
    features for "scatter"). Table pipelines are stored whole and reused; dp_extractor features
    come from the released extractor model (a cnn, resnet9 or table model, never a versioned
    backbone): None for both."""
    from ..training.backbones import BACKBONES, FEATURE_VERSIONS, UNRECORDED_VERSIONS

    pipeline = pipeline or {}
    name = pipeline.get("backbone", pipeline.get("input") if pipeline.get("input") in BACKBONES
                        else None)
    if name is None:
        return None
    if name not in FEATURE_VERSIONS:
        return f"its backbone {name!r} no longer exists"
    recorded = pipeline.get("backbone_version")
    trained = UNRECORDED_VERSIONS[name] if recorded is None else recorded
    if trained == FEATURE_VERSIONS[name]:
        return None
    return (f"its {name!r} features are version {trained!r}"
            f"{' (it recorded none)' if recorded is None else ''}, today's are version "
            f"{FEATURE_VERSIONS[name]!r}")


def dp_extractor_features(extractor: dict, data, meta) -> np.ndarray:
    """Penultimate-layer activations of a released DP model, rows scaled to norm <= 1 (a
    fixed per-record map once the model is fixed)."""
    import torch

    from ..data import TABLE
    from ..training.results import load_model
    from ..training.preprocess import preprocess

    model = load_model(extractor)
    if hasattr(model, "features"):  # cnn, resnet9: features then classifier
        body = model.features
    elif isinstance(model, torch.nn.Sequential):  # table logreg / mlp
        body = model[:-1]
    else:
        raise RemovalError(f"cannot take features from a {type(model).__name__}")
    config = extractor["model_config"]
    if meta.kind == TABLE:
        x = torch.from_numpy(preprocess(data[config["feature_columns"]].to_numpy(), config))
    else:
        from ..training.backbones import images_to_tensor

        x = images_to_tensor(data["images"])
    with torch.no_grad():
        f = torch.cat([body(x[i:i + 512]).flatten(1) for i in range(0, len(x), 512)])
    f = f.double().numpy()
    return f / np.maximum(1.0, np.linalg.norm(f, axis=1, keepdims=True))


def extractor_source(extractor: dict) -> dict:
    """The certificate's statement about a DP-trained feature extractor."""
    p = extractor.get("privacy") or {}
    # the features depend on the records through training only (the metrics are another release)
    return {"kind": "dp_extractor", "epsilon": p.get("training_epsilon", p.get("epsilon")),
            "delta": p.get("delta"),
            "job": extractor.get("kind")}


def table_model_state(model: RemovableModel, cols: list, pipeline: dict) -> tuple[bytes, dict]:
    """The model as a torch Linear (``model_state``, ``model_config``) that
    :func:`shared.training.results.load_model` rebuilds and predicts with on the table's columns."""
    import torch

    from ..training.models import build_model, model_config
    from ..training.serialise import model_bytes

    classes = list(model.classes)
    d = model.weights.shape[0] - 1  # model inputs (one-hot widens the columns), no intercept
    rs = pipeline["row_scale"]
    W = model.weights
    logits_w = np.zeros((len(classes), d + 1))
    if W.shape[1] == 1:
        logits_w[1] = W[:, 0]  # softmax([0, z]) = sigmoid(z)
    else:
        logits_w = W.T
    lin = build_model("logreg", d, len(classes))
    with torch.no_grad():
        lin[0].weight.copy_(torch.from_numpy(logits_w[:, :d] * rs))
        lin[0].bias.copy_(torch.from_numpy(logits_w[:, d] * rs))
    config = model_config("logreg", d, len(classes))
    config.update(classes=classes, feature_columns=list(cols),
                  **{k: v for k, v in pipeline.items() if k in ("preprocessing", "feature_scales",
                                                           "feature_bounds", "schema_columns")})
    return model_bytes(lin), config
