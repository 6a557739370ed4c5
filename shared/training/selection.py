"""Private hyperparameter selection for the table DP-SGD job (Papernot & Steinke 2022).

Draw K from the tuned job's distribution with secret randomness, run K trials of
:func:`shared.training.table.train_dpsgd_table` (each with a candidate drawn uniformly at random,
fresh sampling and noise streams, and the noise calibrated for the whole selection), keep the
trial whose DP test accuracy is highest, and release that trial alone: its model, its metrics,
its candidate, and the privacy report of the whole selection. K and the other trials' scores are
never released: Papernot and Steinke's bound covers the best output only (with K known it
becomes best-of-K, up to K times one trial's epsilon), and each score is a DP release the price
counts only through the winner. Pricing: :mod:`shared.privacy.tuning`.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..data import n_train_records
from ..privacy.accounting import epsilon as pld_epsilon
from ..privacy.private_metrics import metrics_sigma
from ..privacy.reporting import privacy_report
from ..privacy.tuning import draw_trials, priced_event, trial_event, tuned_epsilon
from ..randomness import secret_seed
from ..targets import tuned_noise_multiplier
from .engine import poisson_schedule
from .table import Progress, train_dpsgd_table

# secret_seed stream of K, each trial's candidate and each trial's sampling seed ("TUN")
TUNING_STREAM = 0x54554E


def train_tuned_table(df: pd.DataFrame, spec, progress: Progress | None = None,
                      **table_options) -> dict:
    """Run the tuned job ``spec`` (validated, batch size resolved, ``tuning_trials`` > 0) on
    ``df``; return the best trial's result with the selection's privacy report.

    ``table_options``: passed to every trial (``classes``, ``feature_scales``,
    ``feature_bounds``, ``device``); ``spec.trial(i)`` is the untuned spec of candidate i.
    ``progress`` follows each trial's steps in turn (one bar, refilled once per trial).
    """
    n_train = n_train_records(len(df), spec.test_fraction)
    q, steps = poisson_schedule(n_train, spec.batch_size, spec.epochs)
    m_sigma = metrics_sigma(spec)
    sigma = tuned_noise_multiplier(spec, q, steps, m_sigma)
    # K, the candidates and the trials' seeds come from the site's secret stream: the spec's
    # seed names the stream, it never fixes it (shared.randomness)
    rng = np.random.default_rng(secret_seed(int(spec.seed), TUNING_STREAM))
    best, best_score, best_index = None, -math.inf, -1
    for trial in range(draw_trials(spec.tuning_trials, spec.tuning_shape, rng)):
        index = int(rng.integers(len(spec.candidates)))
        result = train_dpsgd_table(df, spec.trial(index), progress=progress,
                                   noise_multiplier=sigma, sampling_seed=int(rng.integers(2**63)),
                                   metrics_index=trial, **table_options)
        score = result["metrics"].get("test_accuracy")
        if best is None or (score is not None and score > best_score):
            best, best_index = result, index
            best_score = -math.inf if score is None else score
    # every trial ran the planned steps (the engine runs them all or raises), so the realised
    # event is the planned one: nothing in the report depends on K
    best["privacy"] = _report(spec, best["privacy"], q, sigma, steps, m_sigma)
    best["selected"] = {"candidate": best_index, **spec.candidates[best_index]}
    return best


def _report(spec, trial: dict, q: float, sigma: float, steps: int, m_sigma: float) -> dict:
    """The selection's privacy report: its event (what the ledger commits) beside one trial's
    own epsilon and the chosen trial's mechanism details."""
    base = trial_event(q, sigma, steps, m_sigma)
    mean, shape, delta = spec.tuning_trials, spec.tuning_shape, spec.delta
    report = privacy_report(priced_event(base, mean, shape, delta), delta)
    report.update(
        epsilon_rdp=tuned_epsilon(base, mean, shape, delta),
        accountant="rdp (repeat and select), stored as (epsilon, delta) for the PLD ledger",
        metrics=trial["metrics"],
        tuning={"method": "repeat and select (Papernot & Steinke 2022)",
                "distribution": "truncated negative binomial", "tuning_trials": float(mean),
                "tuning_shape": float(shape), "candidates": len(spec.candidates),
                "selection_score": "test_accuracy (DP)",
                "trial_epsilon": pld_epsilon(base, delta)},
        **{k: trial[k] for k in ("noise_multiplier", "sample_rate", "steps", "clip_norm",
                                 "expected_batch_size")})
    return report
