"""Certified data removal (Guo, Goldstein, Hannun, van der Maaten, ICML 2020) for L2-regularised
logistic regression, binary or one-vs-rest, on features of norm <= 1.

Training minimises, per class k (one model for two classes),

    L_k(w) = sum_i log(1 + exp(-y_ik w.x_i)) + (lam n / 2) |w|^2 + b_k.w,   b_k ~ N(0, s^2 I),

exactly (Newton's method until |grad| <= GRAD_TOL). Removing records takes one Newton step on
the remaining data; the model's *gradient residual* (|grad L(w)| on the remaining data, b
included) is bounded after every removal, and while that bound stays <= s * eps / c,
c = sqrt(2 ln(1.5 / delta)), the removal is (eps, delta)-certified: the released weights are
(eps, delta)-indistinguishable from a model retrained without the records (the paper's Thm 3).
Past the budget, the model is retrained on the remaining data with a fresh b.

The modules, each importing only those before it:

  * ``objective``: the perturbed objective, its exact minimiser, the privacy arithmetic
    (:func:`training_epsilon`, :func:`residual_budget`);
  * ``model``: :class:`RemovableModel`, :func:`train_removable`, predictions;
  * ``certificate``: the removal certificate and :func:`fresh_release`;
  * ``session``: :class:`RemovalSession` (how the residual is bounded) and :func:`remove`;
  * ``features``: the feature maps (rows of norm <= 1, each from its own record);
  * ``job``: :func:`run_removal_job`, the removal job kind's run.
"""
from .certificate import RELEASE_STREAM, certificate, fresh_release
from .features import (dp_extractor_features, extractor_source, job_features, make_features,
                       stale_features, table_model_state, table_pipeline, unit_pipeline)
from .job import run_removal_job
from .model import (RemovableModel, decision_function, objective_gradient, predict,
                    predict_proba, train_removable)
from .objective import (GAMMA, GRAD_TOL, RemovalError, check_xy, class_signs, combine_residuals,
                        draw_b, fit_weights, kst_epsilon, minimise, residual_budget,
                        training_epsilon)
from .session import RemovalSession, remove, spectral_norm_bound

__all__ = [
    "GAMMA", "GRAD_TOL", "RELEASE_STREAM", "RemovableModel", "RemovalError", "RemovalSession",
    "certificate", "check_xy", "class_signs", "combine_residuals", "decision_function",
    "dp_extractor_features", "draw_b", "extractor_source", "fit_weights", "fresh_release",
    "job_features", "kst_epsilon", "make_features", "minimise", "objective_gradient", "predict",
    "predict_proba", "remove", "residual_budget", "run_removal_job", "spectral_norm_bound",
    "stale_features", "table_model_state", "table_pipeline", "train_removable", "training_epsilon",
    "unit_pipeline",
]
