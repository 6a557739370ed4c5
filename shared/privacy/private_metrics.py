"""Evaluation metrics on private records, released only through a priced Gaussian mechanism.

What leaves the site: the histogram of (true class, prediction correct?) over the held-out split,
each of its 2K cells plus Gaussian noise of std ``sigma``. Adding or removing one record changes
exactly one cell by 1, so the L2 sensitivity is 1 and one release is ``GaussianDpEvent(sigma)``;
R releases (DP-AL rounds, federated rounds) are that event composed R times. Kinds whose training
is only known to be (eps, delta)-DP (objective perturbation) use Laplace noise of scale
b = 1 / metrics_epsilon instead (L1 sensitivity 1: pure DP, ``LaplaceDpEvent(b)``): a Gaussian
needs delta of its own, and the training event already uses all of the job's delta. Accuracy,
per-class accuracy (= per-class recall: correct among the test records of that true class), the
same under the explicit name ``per_class_recall``, and the balanced accuracy (their mean, the
macro recall) are all post-processing of the one noisy histogram: no privacy cost beyond the
histogram's own price, whatever is derived from it. Rates use the noisy cells
only (accuracy = noisy correct / noisy total; the planned size should the noisy total fall
below 1): each record's train/test side is drawn on its own
(:func:`shared.training.split.split_indices`), so the realised test-split size is a count of private
records, not public, and nothing is projected onto it. The ``n_train``/``n_test`` reported are the
planned, public counts (``shared.data.n_train_records``), not the realised ones.

AUC on private records only when asked (``metrics_auc``): the exact AUC's sensitivity is
about 1/min(class size), data-dependent, so it is computed from a second noisy histogram, of
(true class x score bin) (:mod:`shared.privacy.private_auc`), at the same sigma: one more
Gaussian event per release (``histograms=2`` below), so the job costs more than without it.
Not released on private records: train accuracy (a second release from the training records,
on top of DP-SGD, for a number the test accuracy already answers). Train accuracy and AUC are
computed exactly on the mock (``run_on_mock``), labelled as such; with more than two classes
the AUC is the macro average of one-vs-rest AUCs (``test_auc_average``).

Noise comes from :func:`shared.randomness.secret_seed` (the OS; pinned only in tests/mock runs).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Sequence

import numpy as np

from ..randomness import secret_seed
from .private_auc import release_auc

MECHANISM = "noisy_class_x_correct_histogram"
GAUSSIAN, LAPLACE = "gaussian", "laplace"
NOISE_STREAM = 3  # secret_seed stream id (0, 1: DP-SGD sampling and noise; 2: DP-AL selection)

# Test-only switch: True restores exact metrics on private records (attack tests show what the
# noise defends against). Nothing outside tests sets it.
_EXACT_FOR_TESTS = False
_MOCK: ContextVar[bool] = ContextVar("dpds_mock_metrics", default=False)


@contextmanager
def mock_evaluation():
    """Inside: metrics are exact and labelled as mock (the data is the public mock)."""
    token = _MOCK.set(True)
    try:
        yield
    finally:
        _MOCK.reset(token)


def is_mock() -> bool:
    return _MOCK.get()


# -- pricing -----------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def noise_multiplier(metrics_epsilon: float, delta: float, releases: int = 1) -> float:
    """Noise std sigma per histogram cell so that ``releases`` Gaussian releases together are
    (metrics_epsilon, delta)-DP by the PLD accountant (the ledger's own measure)."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    from .accounting import epsilon

    if not (metrics_epsilon > 0 and math.isfinite(metrics_epsilon)) or releases < 1:
        raise ValueError(f"need metrics_epsilon > 0 and releases >= 1, got {metrics_epsilon}, "
                         f"{releases}")

    def excess(mu):  # exact delta(eps) of mu-GDP (Balle & Wang 2018) minus the target
        e = metrics_epsilon
        return norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta

    mu = brentq(excess, 1e-6, 50.0, xtol=1e-12)
    sigma = math.sqrt(releases) / mu
    # PLD discretisation is pessimistic: nudge sigma up until the ledger's number fits
    while epsilon(event(sigma, releases), delta) > metrics_epsilon:
        sigma *= 1.002
    return sigma


def event(sigma: float, releases: int = 1, mechanism: str = GAUSSIAN):
    """The DpEvent of ``releases`` histogram releases at noise scale ``sigma`` (None if none).
    Each is one Gaussian at noise multiplier ``sigma``: its cells' noise std is sigma times the
    histogram's L2 sensitivity."""
    import dp_accounting

    if releases < 1 or not sigma:
        return None
    g = (dp_accounting.LaplaceDpEvent(float(sigma)) if mechanism == LAPLACE
         else dp_accounting.GaussianDpEvent(float(sigma)))
    return g if releases == 1 else dp_accounting.SelfComposedDpEvent(g, int(releases))


def metrics_sigma(spec, releases: int = 1, mechanism: str = GAUSSIAN) -> float | None:
    """A spec's metric noise scale (None: ``metrics_epsilon`` is 0, no private metrics)."""
    if not spec.metrics_epsilon or spec.test_fraction <= 0:
        return None
    if mechanism == LAPLACE:
        if releases != 1:
            raise ValueError("Laplace metrics are priced for one release only")
        return 1.0 / float(spec.metrics_epsilon)
    return noise_multiplier(float(spec.metrics_epsilon), float(spec.delta), int(releases))


def with_metrics(training_event, sigma: float | None, releases: int = 1,
                 mechanism: str = GAUSSIAN, histograms: int = 1):
    """The job's event: training composed with its metric releases (sequential composition,
    an upper bound whichever side of the split a record is on). ``histograms``: histograms per
    release (2 with ``metrics_auc``: accuracy and score histograms, each a Gaussian at
    ``sigma``), so ``releases * histograms`` Gaussian events in all."""
    import dp_accounting

    m = _metrics_event(sigma, releases, mechanism, histograms)
    return training_event if m is None else dp_accounting.ComposedDpEvent([training_event, m])


def histograms_per_release(spec) -> int:
    """How many noisy histograms one metrics release of ``spec`` makes (2 with AUC)."""
    return 2 if getattr(spec, "metrics_auc", False) else 1


def _metrics_event(sigma, releases: int, mechanism: str, histograms: int):
    if histograms < 1 or (histograms > 1 and mechanism != GAUSSIAN):
        raise ValueError("the AUC histogram is priced for Gaussian metrics only")
    return event(sigma, releases * histograms, mechanism) if sigma else None


def privacy_report(training_event, sigma: float | None, releases: int, delta: float,
                   done: int | None = None, mechanism: str = GAUSSIAN,
                   histograms: int = 1) -> dict:
    """The job's privacy report over training + metrics, with each part's share beside it.
    ``done``: metric releases actually made (default ``releases``); ``histograms``: per
    release (:func:`with_metrics`)."""
    from .accounting import epsilon, event_to_json
    from .reporting import privacy_report as report

    done = releases if done is None else done
    out = report(with_metrics(training_event, sigma, done, mechanism, histograms), delta)
    m = _metrics_event(sigma, done, mechanism, histograms)
    out["training_epsilon"] = epsilon(training_event, delta) if m is not None else out["epsilon"]
    out["training_event"] = event_to_json(training_event)
    out["metrics"] = ({"mechanism": None, "releases": 0} if m is None else
                      {"mechanism": MECHANISM, "noise": mechanism, "noise_scale": float(sigma),
                       "releases": int(done), "histograms_per_release": int(histograms),
                       "epsilon": epsilon(m, delta),
                       "event": event_to_json(m)})
    return out


# -- release -----------------------------------------------------------------------------------
def release(y_true: np.ndarray, pred: np.ndarray, classes: Sequence, sigma: float | None, *,
            stream: Sequence[int], n_train: int | None = None, n_test: int | None = None,
            mock_extras=None, mechanism: str = GAUSSIAN, probs: np.ndarray | None = None) -> dict:
    """Metrics of predictions ``pred`` against labels ``y_true`` (class indices) of the held-out
    split: DP at noise scale ``sigma`` (stream ``stream`` of secret_seed), none if ``sigma`` is
    None, exact under :func:`mock_evaluation` (then ``mock_extras()`` adds train accuracy, AUC).
    ``probs``: the predicted probabilities (N x K), given to release the DP AUC too
    (:func:`shared.privacy.private_auc.release_auc`, priced as a second histogram).
    ``n_train``, ``n_test``: the planned (public) split sizes, reported as such; the realised
    sizes are never released (``n_test`` defaults to the realised size only on the mock)."""
    y_true, pred = np.asarray(y_true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    k, n = len(classes), int(len(y_true))
    out: dict = {"n_test": int(n_test) if n_test is not None else (n if is_mock() else None)}
    if n_train is not None:
        out["n_train"] = int(n_train)
    counts = np.zeros((k, 2))
    np.add.at(counts, (y_true, (pred == y_true).astype(np.int64)), 1.0)
    if is_mock():
        out.update(_rates(counts, n, classes), evaluated_on="mock (exact; public mock data)")
        out.update(mock_extras() if mock_extras else {})
        if out.get("test_auc") is not None:
            out["test_auc_average"] = "binary" if k == 2 else "macro one-vs-rest"
        return out
    # decided on public quantities only: the planned test size (when given) and sigma
    if sigma is None or (n_test == 0 if n_test is not None else n == 0):
        out.update(evaluated_on="nothing: no private metrics released (evaluate on the mock)",
                   test_accuracy=None, per_class_accuracy={}, per_class_recall={},
                   balanced_accuracy=None)
        return out
    if _EXACT_FOR_TESTS:
        noisy = counts
    else:
        rng = np.random.default_rng(secret_seed(*[int(s) for s in stream]))
        noisy = counts + (rng.laplace(0.0, float(sigma), counts.shape) if mechanism == LAPLACE
                          else rng.normal(0.0, float(sigma), counts.shape))
    # No projection onto the realised n: it is a private count (module docstring).
    # accuracy = noisy correct / noisy total (post-processing); if the noise leaves the total
    # below 1 (tiny test splits), divide by the planned, public test size instead
    size = float(noisy.sum())
    if size < 1 and n_test:
        size = float(n_test)
    rates = _rates(noisy, size, classes)
    a = rates["test_accuracy"] if rates["test_accuracy"] is not None else 0.5
    size = max(size, 1.0)
    out.update(rates, evaluated_on="private test split, with DP noise",
               mechanism=MECHANISM, noise=mechanism, noise_scale=float(sigma),
               # std of test_accuracy's noise (delta method for correct / total, k cells each)
               test_accuracy_std=float(sigma) * math.sqrt(k * ((1 - a) ** 2 + a ** 2)) / size
               * (math.sqrt(2) if mechanism == LAPLACE else 1.0),
               noisy_counts={str(c): {"correct": float(noisy[i, 1]), "wrong": float(noisy[i, 0])}
                             for i, c in enumerate(classes)})
    if probs is not None:
        if mechanism != GAUSSIAN:
            raise ValueError("the DP AUC is released with Gaussian noise only")
        out.update(release_auc(y_true, probs, classes, sigma, stream=stream))
    return out


def _rates(h: np.ndarray, total: float, classes) -> dict:
    """Accuracy (correct / ``total``), per-class recall and balanced accuracy (mean recall over
    the classes with a rate; None if any class has none) from a (class x [wrong, correct])
    histogram, in [0, 1]. Post-processing of ``h``: on a DP histogram it costs nothing more."""
    per = {}
    for i, c in enumerate(classes):
        size = h[i].sum()
        per[str(c)] = float(np.clip(h[i, 1] / size, 0, 1)) if size >= 1 else None
    acc = float(np.clip(h[:, 1].sum() / total, 0, 1)) if total >= 1 else None
    balanced = (float(np.mean(list(per.values())))
                if per and all(v is not None for v in per.values()) else None)
    return {"test_accuracy": acc, "per_class_accuracy": per, "per_class_recall": dict(per),
            "balanced_accuracy": balanced}
