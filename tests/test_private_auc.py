"""metrics_auc: the test AUC on private records, released only through a priced Gaussian
histogram of (true class x score bin) (shared.privacy.private_auc).

The attack: differencing. A researcher who gets the exact score histogram of two test splits
that differ in one patient reads that patient's label and score bin off the difference; with
the noise, a likelihood-ratio distinguisher does no better than the epsilon allows.
"""
from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from shared.jobs import DPSGDTableSpec, SpecError
from shared.jobs.federated import FedScheduleSpec
from shared.privacy import private_auc as PA
from shared.privacy import private_metrics as PM
from shared.privacy.accounting import dpsgd_event, epsilon
from shared.randomness import pinned_randomness
from shared.runner import run_job
from shared.schema import meta_from_schema
from shared.targets import noise_multiplier
from shared.training.engine import poisson_schedule
from shared.data import n_train_records

DELTA = 1e-5


def _meta(n: int = 2000, k: int = 2):
    return meta_from_schema({"kind": "table", "records": n,
                             "label": {"column": "y", "classes": list(range(k))},
                             "columns": {"a": {"type": "float", "bounds": [-4, 4]},
                                         "b": {"type": "float", "bounds": [-4, 4]}}}, "t")


def _table(n: int = 2000, k: int = 2, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return pd.DataFrame({"a": np.clip(rng.normal(y, 1.0), -4, 4),
                         "b": np.clip(rng.normal(-0.5 * y, 1.0), -4, 4), "y": y})


def _scores(n: int, k: int, seed: int):
    """Labels and softmax scores of a decent classifier (spread over [0, 1])."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1.0, (n, k)) + 1.2 * np.eye(k)[y]
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


# -- post-processing ---------------------------------------------------------------------------
def test_binned_auc_is_the_exact_auc_of_the_binned_scores():
    for k in (2, 3):
        y, p = _scores(500, k, 1)
        centres = (np.clip(np.floor(p * PA.BINS), 0, PA.BINS - 1) + 0.5) / PA.BINS
        h = PA.score_histogram(y, p, k)
        exact = (roc_auc_score(y, centres[:, 1]) if k == 2 else
                 np.mean([roc_auc_score(y == j, centres[:, j]) for j in range(k)]))
        assert PA.auc_from_histogram(h) == pytest.approx(exact, abs=1e-12)
    assert PA.binned_auc(np.array([-3.0, 0.0]), np.array([5.0, 1.0])) is None  # no positives


# -- pricing -----------------------------------------------------------------------------------
def test_auc_costs_one_more_gaussian_at_the_metrics_sigma():
    meta = _meta(5000)
    plain = DPSGDTableSpec("t", "y", 1.0, DELTA).validate(meta)
    auc = DPSGDTableSpec("t", "y", 1.0, DELTA, metrics_auc=True).validate(meta)
    q, steps = poisson_schedule(n_train_records(meta.n_records, auc.test_fraction),
                                auc.batch_for(meta), auc.epochs)
    sigma = PM.metrics_sigma(auc)
    claimed = dp_accounting.ComposedDpEvent([
        dpsgd_event(q, noise_multiplier(auc, q, steps), steps),
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), 2)])
    e_plain, e_auc = epsilon(plain.planned_event(meta), DELTA), epsilon(auc.planned_event(meta),
                                                                        DELTA)
    assert e_auc > e_plain + 0.05
    assert e_auc == pytest.approx(epsilon(claimed, DELTA), rel=1e-9)
    # a federated schedule: R rounds, two histograms each
    fed = FedScheduleSpec("t", "y", 1.0, DELTA, rounds=3, metrics_auc=True).validate(meta)
    fed_plain = FedScheduleSpec("t", "y", 1.0, DELTA, rounds=3).validate(meta)
    fs = PM.metrics_sigma(fed, 3)
    q, steps, train_sigma = fed._schedule(meta)
    claimed = dp_accounting.ComposedDpEvent([
        dpsgd_event(q, train_sigma, 3 * steps),
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(fs), 6)])
    assert epsilon(fed.planned_event(meta), DELTA) == pytest.approx(epsilon(claimed, DELTA),
                                                                    rel=1e-9)
    assert epsilon(fed.planned_event(meta), DELTA) > epsilon(fed_plain.planned_event(meta), DELTA)


def test_auc_needs_private_metrics_and_no_tuning():
    meta = _meta()
    with pytest.raises(SpecError, match="metrics_epsilon > 0"):
        DPSGDTableSpec("t", "y", 1.0, DELTA, metrics_auc=True, metrics_epsilon=0.0).validate(meta)
    with pytest.raises(SpecError, match="tuning"):
        DPSGDTableSpec("t", "y", 1.0, DELTA, metrics_auc=True, tuning_trials=3.0,
                       candidates=[{"learning_rate": 1.0}]).validate(meta)


# -- the job -----------------------------------------------------------------------------------
@pytest.mark.parametrize("k, average", [(2, "binary"), (3, "macro one-vs-rest")])
def test_the_job_releases_a_dp_auc_and_reports_its_price(k, average):
    meta, df = _meta(600, k), _table(600, k)
    spec = dict(kind="dpsgd_table", dataset="t", label="y", epsilon=2.0, delta=DELTA, epochs=3,
                metrics_auc=True, metrics_epsilon=1.0)
    r = run_job(spec, df, meta, pin_randomness=0)
    m, priv = r["metrics"], r["privacy"]
    assert m["evaluated_on"].startswith("private") and m["test_auc_average"] == average
    assert m["auc_bins"] == PA.BINS and 0 <= m["test_auc"] <= 1
    assert np.shape(m["auc_noisy_counts"]) == ((2, PA.BINS) if k == 2 else (k, k, PA.BINS))
    assert m["auc_noise_std"] == pytest.approx(m["noise_scale"] * PA.sensitivity(k))
    assert priv["metrics"]["histograms_per_release"] == 2
    planned = DPSGDTableSpec.from_dict(spec).validate(meta).planned_event(meta)
    assert priv["epsilon"] == pytest.approx(epsilon(planned, DELTA), rel=1e-9)
    # without metrics_auc nothing about the AUC is released on private records
    spec["metrics_auc"] = False
    assert "test_auc" not in run_job(spec, df, meta, pin_randomness=0)["metrics"]


@pytest.mark.parametrize("k", [2, 3])
def test_dp_auc_is_close_to_the_exact_auc_on_a_large_split(k):
    sigma = PM.noise_multiplier(1.0, DELTA)  # metrics_epsilon 1
    for seed in range(10):
        y, p = _scores(2000, k, seed)
        exact = (roc_auc_score(y, p[:, 1]) if k == 2
                 else roc_auc_score(y, p, multi_class="ovr", average="macro"))
        with pinned_randomness(seed):
            got = PA.release_auc(y, p, list(range(k)), sigma, stream=(0, 3, 0))["test_auc"]
        assert abs(got - exact) < 0.05, (seed, got, exact)


# -- the attack --------------------------------------------------------------------------------
def _neighbours():
    """A 500-record test split D, and D' = D plus one patient of class 1 with score 0.73."""
    y, p = _scores(500, 2, 7)
    return (y, p), (np.append(y, 1), np.vstack([p, [[0.27, 0.73]]]))


def _counts(data, sigma):
    y, p = data
    return np.array(PA.release_auc(y, p, [0, 1], sigma, stream=(0, 3, 0))["auc_noisy_counts"])


def test_differencing_reveals_the_patient_without_noise_and_not_with_it(monkeypatch):
    d, d2 = _neighbours()
    sigma = PM.noise_multiplier(1.0, DELTA)
    monkeypatch.setattr(PA, "_EXACT_FOR_TESTS", True)  # the defence off: exact histogram
    diff = _counts(d2, sigma) - _counts(d, sigma)
    assert np.argwhere(diff != 0).tolist() == [[1, 7]]  # label 1, score bin 7: revealed
    exact_d = _counts(d, sigma)
    monkeypatch.setattr(PA, "_EXACT_FOR_TESTS", False)  # what is released

    # Likelihood-ratio test (optimal: the neighbours differ in cell [1, 7] by 1): was the
    # patient in the split? Knows D exactly; sees one release, of D or of D' at random.
    rng = np.random.default_rng(0)
    draws, right = 1000, 0
    for _ in range(draws):
        member = bool(rng.integers(2))
        seen = _counts(d2 if member else d, sigma)
        right += ((seen[1, 7] - exact_d[1, 7]) > 0.5) == member
    acc = right / draws
    optimal = norm.cdf(1 / (2 * sigma))  # the Gaussian's own bound at this sigma
    dp_bound = (math.exp(1.0) + DELTA) / (1 + math.exp(1.0))  # (1, 1e-5)-DP
    se = math.sqrt(0.25 / draws)
    assert abs(acc - optimal) < 4 * se and acc < dp_bound
    assert acc < 0.6  # near a coin flip; exact, the same test is right every time:
    monkeypatch.setattr(PA, "_EXACT_FOR_TESTS", True)
    assert (_counts(d2, sigma)[1, 7] - exact_d[1, 7] > 0.5) and not (
        _counts(d, sigma)[1, 7] - exact_d[1, 7] > 0.5)

    # Which score bin? Differencing two noisy releases (the attacker pays for both): the
    # largest difference among class 1's bins is near chance (1 / 10), not the exact answer.
    monkeypatch.setattr(PA, "_EXACT_FOR_TESTS", False)
    hits = sum(int(np.argmax(_counts(d2, sigma)[1] - _counts(d, sigma)[1]) == 7)
               for _ in range(300))
    assert hits / 300 < 0.25
