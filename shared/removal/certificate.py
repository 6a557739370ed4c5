"""What a removal certifies, and what may go to someone who holds an earlier release.

What a certificate covers: the weights, for the removed records, with the features taken as
given. Features from a fixed public map (public column scales, a frozen data-independent
backbone) do not depend on other records, so the removal is complete; a feature extractor
trained with DP on the records keeps the removed record's influence bounded only by its own DP
guarantee (``feature_source``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..randomness import secret_seed
from .model import RemovableModel
from .objective import GRAD_TOL, check_xy, combine_residuals, fit_weights, training_epsilon


def certificate(model: RemovableModel, n_removed: int, retrained: bool,
                residual_bound: float) -> dict:
    """The JSON-able removal certificate for ``model`` after a removal of ``n_removed`` records."""
    fs = dict(model.feature_source)
    if fs.get("kind") == "dp_extractor":
        covers = (f"the classifier weights, (eps={model.eps:g}, delta={model.delta:g})-certified; "
                  f"the feature extractor was trained with DP (eps={fs.get('epsilon')}, "
                  f"delta={fs.get('delta')}) and still holds the removed records' influence, "
                  "bounded only by that guarantee")
    else:
        covers = (f"the whole model: features are a fixed public map of each record alone, and "
                  f"the weights are (eps={model.eps:g}, delta={model.delta:g})-indistinguishable "
                  "from a model retrained without the removed records")
    out = {
        "residual_bound": float(residual_bound),
        "residual_used": float(model.residual_used),
        "budget": float(model.budget),
        "budget_left": float(model.budget - model.residual_used),
        "retrained": bool(retrained),
        "n_removed": int(n_removed),
        "n_removed_total": int(model.n_removed),
        "n_retrains": int(model.n_retrains),
        "n_train": int(model.n_train),
        "eps": float(model.eps),
        "delta": float(model.delta),
        "feature_source": fs,
        "covers": covers,
    }
    if retrained:
        out["retrain_note"] = ("the removal would have exceeded the residual budget, so the "
                               "model was retrained on the remaining records with a fresh "
                               "perturbation: a new objective-perturbation release")
        out["training_epsilon"] = training_epsilon(model.lam, model.s, model.reg_count,
                                                   model.train_delta, model.n_models)
    return out


RELEASE_STREAM = 0x52454C  # names the private random stream of fresh releases ("REL")


def fresh_release(model: RemovableModel, X, y, stream: Sequence[int] = (),
                  n_reg: int | None = None) -> RemovableModel:
    """What may go to someone who holds an earlier version of ``model``: a new
    objective-perturbation training on (X, y) (the remaining records) with a fresh b, minimised
    exactly from the same start (0) as any training.

    Never a Newton update of a released model: its difference from the earlier release is a
    noiseless function of the removed records (Chen et al., CCS 2021). Given the data this
    release is the same function A(X, y, b) as a first training and independent of every
    earlier release, so it is (training_epsilon(n = n_reg), train_delta)-DP on its own, with
    ``n_reg`` the public planned count of the remaining records (default ``len(X)``).
    b comes from the OS (:func:`shared.randomness.secret_seed`; tests pin it); ``stream``
    names the release (model, version). Residual state: public constants only."""
    X, y = check_xy(X, y, len(model.classes))
    n_reg = len(X) if n_reg is None else int(n_reg)
    W = fit_weights(X, y, model.n_models, model.lam, model.s, secret_seed(RELEASE_STREAM, *stream), 0,
             n_reg)
    taylor = np.full(model.n_models, GRAD_TOL)
    known = np.zeros_like(W)
    return RemovableModel(
        weights=W, classes=list(model.classes), lam=model.lam, s=model.s, eps=model.eps,
        delta=model.delta, train_delta=model.train_delta, n_train=len(X), budget=model.budget,
        residual_used=combine_residuals(known, taylor), known_residual=known, taylor_residual=taylor,
        n_removed=model.n_removed, n_retrains=0,  # the owner copy's retrains are not public
        feature_pipeline=dict(model.feature_pipeline),
        feature_source=dict(model.feature_source), noise_seed=None, n_reg=n_reg)
