"""The removal job kind's run: features, training, DP test metrics, the released result."""
from __future__ import annotations

import numpy as np

from .features import extractor_source, job_features, table_model_state
from .model import predict, train_removable
from .objective import training_epsilon


def run_removal_job(spec, data, meta, progress=None, extractor: dict | None = None) -> dict:
    """Run a validated :class:`shared.jobs.removal.RemovalSpec` on a table (DataFrame) or an
    image payload; see that module for the result's keys."""
    from ..data import TABLE, n_train_records
    from ..privacy.accounting import approx_dp_event
    from ..privacy.private_metrics import LAPLACE, metrics_sigma
    from ..privacy.private_metrics import privacy_report as metrics_report
    from ..training.split import split_indices

    classes = list(meta.labels)
    n_models = 1 if len(classes) == 2 else len(classes)
    X, y, pipeline, cols = job_features(spec, data, meta, extractor)
    tr, te = split_indices(X, y, spec.test_fraction, spec.seed)
    # the regulariser and the price use the planned count, public; the realised one is not
    n_plan = n_train_records(meta.n_records, spec.test_fraction)
    if progress is not None:
        progress(0, 1)
    # b from OS entropy: the spec's seed is the researcher's, and knowing b undoes the privacy
    model = train_removable(X[tr], y[tr], classes, spec.lam, spec.perturbation,
                            spec.removal_epsilon, spec.removal_delta, seed=None,
                            train_delta=spec.delta, feature_pipeline=pipeline,
                            feature_source=extractor_source(extractor) if extractor else
                            {"kind": "public", "features": spec.features}, n_reg=n_plan)
    if progress is not None:
        progress(1, 1)
    eps_train = training_epsilon(spec.lam, spec.perturbation, n_plan, spec.delta, n_models)
    m_scale = metrics_sigma(spec, 1, LAPLACE)  # pure DP: training uses all of delta
    privacy = metrics_report(approx_dp_event(eps_train, spec.delta), m_scale, 1, spec.delta,
                             mechanism=LAPLACE)
    privacy.update(mechanism="objective_perturbation", lam=spec.lam,
                   regulariser=spec.lam * n_plan, perturbation=spec.perturbation,
                   n_models=n_models, n_train=int(n_plan),
                   neighbouring="add/remove one record; the regulariser lam * n uses the public "
                                "record count",
                   removal_budget=model.budget, removal_epsilon=spec.removal_epsilon,
                   removal_delta=spec.removal_delta)
    result = {
        # DP (priced above), or exact only on the public mock (shared.privacy.private_metrics)
        "metrics": _metrics(model, X, y, tr, te, classes, m_scale, spec.seed, n_plan,
                            meta.n_records - n_plan),
        "privacy": privacy,
        # fresh from training its residual state holds only public constants (0, GRAD_TOL)
        "removable_model": model.to_dict(),
        "_owner_training_rows": [int(i) for i in tr],
    }
    if meta.kind == TABLE and cols is not None:
        state, config = table_model_state(model, cols, pipeline)
        result.update(model_state=state, model_config=config)
    return result


def _metrics(model, X, y, tr, te, classes, sigma, seed, n_train, n_test) -> dict:
    """Test metrics through :mod:`shared.privacy.private_metrics` (Laplace of scale ``sigma``; exact on
    the mock)."""
    from ..privacy.private_metrics import LAPLACE, NOISE_STREAM, release

    pred = predict(model, X[te]) if len(te) else np.zeros(0, dtype=np.int64)
    return release(y[te], pred, classes, sigma, stream=(seed, NOISE_STREAM, 0), n_train=n_train,
                   n_test=n_test,
                   mock_extras=lambda: {"train_accuracy": _acc(model, X[tr], y[tr])},
                   mechanism=LAPLACE)


def _acc(model, X, y) -> float | None:
    return float((predict(model, X) == y).mean()) if len(y) else None
