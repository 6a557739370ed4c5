"""The removal-enabled model: its state, its training and its predictions."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from scipy import special

from .objective import (GRAD_TOL, RemovalError, check_xy, class_signs, combine_residuals,
                        fit_weights, residual_budget)


@dataclass
class RemovableModel:
    """Weights plus everything needed to update them and to certify the updates.

    ``weights``: (d, K) float64, K = 1 for two classes (scores of ``classes[1]``), else one
    column per class. Public (the released model): weights, classes, the hyper-parameters,
    ``feature_pipeline``, ``feature_source``. Owner-only after a removal (data-dependent, not
    DP): ``known_residual``, ``taylor_residual``, ``residual_used``. b is never kept.
    """

    weights: np.ndarray
    classes: list
    lam: float
    s: float
    eps: float  # removal certificate epsilon
    delta: float  # removal certificate delta
    train_delta: float  # delta of the training guarantee
    n_train: int  # records the weights are currently fitted on
    budget: float
    residual_used: float
    known_residual: np.ndarray  # (d, K): exactly known part of the gradient residual
    taylor_residual: np.ndarray  # (K,): bound on the rest (GRAD_TOL + Taylor remainders)
    n_removed: int = 0
    n_retrains: int = 0
    feature_pipeline: dict = field(default_factory=dict)
    feature_source: dict = field(default_factory=lambda: {"kind": "public"})
    noise_seed: int | None = None  # tests/benchmarks only: None = b from OS entropy
    # the public count in the regulariser, Lambda = lam * n_reg: a job's planned training-record
    # count (shared.data.n_train_records), never the realised split size; None: n_train
    n_reg: int | None = None

    @property
    def reg_count(self) -> int:
        """The record count in the regulariser lam * n (public; see ``n_reg``)."""
        return int(self.n_train if self.n_reg is None else self.n_reg)

    @property
    def n_models(self) -> int:
        """K: one model for two classes, one per class (one-vs-rest) for more."""
        return self.weights.shape[1]

    def to_dict(self) -> dict:
        """JSON-able state (numpy arrays as nested lists)."""
        d = asdict(self)
        for k in ("weights", "known_residual", "taylor_residual"):
            d[k] = np.asarray(d[k]).tolist()
        return d

    def to_json(self) -> str:
        """The owner's full state as text (residuals included: never released as is)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RemovableModel":
        """Inverse of :meth:`to_dict` (arrays back to float64)."""
        d = dict(d)
        for k in ("weights", "known_residual", "taylor_residual"):
            d[k] = np.asarray(d[k], dtype=np.float64)
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "RemovableModel":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def public_dict(self) -> dict:
        """What may be released with the model: no residual state."""
        d = self.to_dict()
        for k in ("known_residual", "taylor_residual", "residual_used", "noise_seed"):
            d.pop(k)
        # the realised training count is a count of private records: release the public one
        d["n_train"] = self.reg_count
        return d


def train_removable(X, y, classes: Sequence, lam: float, s: float, eps: float, delta: float,
                    seed: int | None = None, train_delta: float | None = None,
                    feature_pipeline: dict | None = None,
                    feature_source: dict | None = None,
                    n_reg: int | None = None) -> RemovableModel:
    """Train a removal-enabled model on features ``X`` (rows of norm <= 1) and labels ``y``
    (integer positions in ``classes``).

    ``eps``, ``delta``: what each removal certificate guarantees (they set the residual budget
    s * eps / c). ``seed``: seeds b for reproducible tests and benchmarks only; None (the
    default, and what jobs use) draws b from OS entropy. ``train_delta``: delta of the training
    guarantee (recorded; default ``delta``). ``n_reg``: the public record count of the
    regulariser lam * n_reg (a job's planned count; default ``len(X)``).
    """
    classes = list(classes)
    if len(classes) < 2:
        raise RemovalError(f"need at least two classes, got {classes}")
    n_models = 1 if len(classes) == 2 else len(classes)
    X, y = check_xy(X, y, len(classes))
    if not (lam > 0 and math.isfinite(lam)):
        raise RemovalError(f"lam must be a finite number > 0, got {lam}")
    budget = residual_budget(s, eps, delta)
    n_reg = len(X) if n_reg is None else int(n_reg)
    W = fit_weights(X, y, n_models, lam, s, seed, 0, n_reg)
    taylor = np.full(n_models, GRAD_TOL)
    known = np.zeros_like(W)
    return RemovableModel(
        weights=W, classes=classes, lam=float(lam), s=float(s), eps=float(eps),
        delta=float(delta), train_delta=float(train_delta if train_delta is not None else delta),
        n_train=len(X), budget=budget, residual_used=combine_residuals(known, taylor),
        known_residual=known, taylor_residual=taylor,
        feature_pipeline=dict(feature_pipeline or {}),
        feature_source=dict(feature_source or {"kind": "public"}), noise_seed=seed,
        n_reg=n_reg)


def decision_function(model: RemovableModel, X) -> np.ndarray:
    """(n, K) scores w_k.x on features from :func:`make_features`."""
    return np.asarray(X, dtype=np.float64) @ model.weights


def predict_proba(model: RemovableModel, X) -> np.ndarray:
    """(n, n_classes) probabilities: sigmoid for two classes; one-vs-rest sigmoids normalised
    to sum to 1 for more."""
    z = decision_function(model, X)
    if model.n_models == 1:
        p1 = special.expit(z[:, 0])
        return np.column_stack([1 - p1, p1])
    p = special.expit(z)
    return p / p.sum(axis=1, keepdims=True)


def predict(model: RemovableModel, X) -> np.ndarray:
    """Predicted class positions (indices into ``model.classes``)."""
    z = decision_function(model, X)
    return (z[:, 0] > 0).astype(np.int64) if model.n_models == 1 else z.argmax(1)


def objective_gradient(model: RemovableModel, X, y, b: np.ndarray) -> np.ndarray:
    """(d, K) gradient of the perturbed objective at the weights: regulariser lam * (len(X) +
    the model's public offset reg_count - n_train), i.e. lam * reg_count on its own records."""
    X = np.asarray(X, dtype=np.float64)
    ys = class_signs(np.asarray(y), model.n_models)
    Z = X @ model.weights
    P = special.expit(-ys * Z)
    n_reg = len(X) + model.reg_count - model.n_train
    return X.T @ (-ys * P) + model.lam * n_reg * model.weights + b
