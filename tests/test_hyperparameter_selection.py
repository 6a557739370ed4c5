"""Private hyperparameter selection for DP-SGD on a table (Papernot & Steinke 2022).

Claims, each with the attack or the defence switched off beside it:
* the price of a tuned job is the RDP epsilon of ``RepeatAndSelectDpEvent`` (more than one
  run's), stored as an (epsilon, delta) event the PLD ledger, JSON and pricing worker carry;
* the noise is calibrated so the whole selection meets the request;
* a researcher who prices a tuned job as one run would overspend: the ledger refuses the result;
* a candidate cannot change the privacy event;
* K comes from the site's secret randomness, never from the spec's seed;
* the selection picks the good learning rate and releases neither K nor the other scores.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from dp_accounting.dp_event import RepeatAndSelectDpEvent

from shared.data import DatasetMeta, n_train_records
from shared.jobs import SpecError, spec_from_dict
from shared.privacy.accounting import (AccountingError, ApproxDpEvent, epsilon, epsilon_rdp,
                                       event_from_json, event_to_json)
from shared.privacy.private_metrics import metrics_sigma
from shared.privacy.reporting import privacy_report
from shared.privacy.tuning import draw_trials, tnb_gamma, trial_event, tuned_epsilon
from shared.protocol import ResultPayload
from shared.randomness import pinned_randomness
from shared.targets import noise_multiplier, tuned_noise_multiplier
from shared.training import selection
from shared.training.engine import poisson_schedule

N, DELTA = 400, 1e-5
FEATURES = {f"f{i}": "float64" for i in range(4)}
META = DatasetMeta(name="toy", kind="table", n_records=N, label="y", labels=[0, 1],
                   features=FEATURES)
GOOD, BAD = 2.0, 1e-4
TUNED = dict(kind="dpsgd_table", dataset="toy", label="y", epsilon=4.0, delta=DELTA, epochs=2,
             metrics_epsilon=0.5, test_fraction=0.5,
             candidates=[{"learning_rate": BAD}, {"learning_rate": GOOD}], tuning_trials=3.0)


def _table(seed: int = 0) -> pd.DataFrame:
    """A linearly separable table: y = [f0 + 0.5 f1 > 0]."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (N, len(FEATURES)))
    df = pd.DataFrame(X, columns=list(FEATURES))
    df["y"] = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return df


def _job(**change):
    return spec_from_dict({**TUNED, **change}).validate(META)


def _schedule(job):
    q, steps = poisson_schedule(n_train_records(N, job.test_fraction), job.batch_for(META),
                                job.epochs)
    return q, steps, metrics_sigma(job)


# -- pricing -----------------------------------------------------------------------------------
def test_price_is_the_rdp_epsilon_of_repeat_and_select_and_exceeds_one_run():
    job = _job()
    q, steps, m_sigma = _schedule(job)
    sigma = tuned_noise_multiplier(job, q, steps, m_sigma)
    one_trial = trial_event(q, sigma, steps, m_sigma)
    exact = epsilon_rdp(RepeatAndSelectDpEvent(one_trial, 3.0, 1.0), DELTA)

    planned = job.planned_event(META)
    assert planned == ApproxDpEvent(exact, DELTA)
    # the ledger's PLD reads the pair back, rounding up to its grid (never below)
    assert exact <= epsilon(planned, DELTA) <= exact + 2e-3
    # the selection costs more than one trial at the same noise, by either accountant
    assert exact > epsilon_rdp(one_trial, DELTA) > epsilon(one_trial, DELTA)
    assert event_from_json(event_to_json(planned)) == planned


def test_the_owner_prices_a_tuned_job_through_the_bounded_worker_unchanged():
    from datasite.pricing_worker import price_bounded

    event_json, record_events = price_bounded(dict(TUNED), META.to_json(), 120, 2048)
    assert event_json == event_to_json(_job().planned_event(META))
    assert record_events is None


def test_calibration_meets_the_request_for_the_whole_selection():
    job = _job()
    q, steps, m_sigma = _schedule(job)
    sigma = tuned_noise_multiplier(job, q, steps, m_sigma)

    def cost(s):
        return tuned_epsilon(trial_event(q, s, steps, m_sigma), 3.0, 1.0, DELTA)

    assert cost(sigma) <= job.epsilon < cost(sigma / 1.001)  # the smallest feasible sigma
    assert sigma > noise_multiplier(job, q, steps)  # more noise than one run at this epsilon
    # risk targets hold for the whole selection, as the privacy report reads them
    for target, check in [({"mu": 2.0}, lambda r: r["mu"] <= 2.0),
                          ({"tpr": 0.2, "fpr": 0.01}, lambda r: r["tpr_bound"]["0.01"] <= 0.2)]:
        report = privacy_report(_job(epsilon=0.0, target=target).planned_event(META), DELTA)
        assert check(report), (target, report)


def test_a_request_below_the_metric_releases_own_cost_is_refused_naming_it():
    with pytest.raises(AccountingError, match="metric releases alone.*metrics_epsilon"):
        _job(epsilon=1.0, metrics_epsilon=2.0, tuning_trials=10.0).planned_event(META)


def test_the_slowest_tuned_spec_the_bounds_allow_prices_in_seconds():
    """The step cap at the 1% sample-rate floor, 20 candidates, the most trials and the
    costliest shape, a mu target (calibrated on the (eps, delta) curve): measured 4.4 s."""
    import time

    from shared.jobs import bounds
    from shared.privacy.pricing import planned_event

    meta = replace(META, n_records=569, features={f"f{i}": "float64" for i in range(30)})
    spec = {**TUNED, "test_fraction": 69 / 569, "batch_size": 5, "delta": 1e-6,
            "epochs": bounds.STEPS_MAX // 100, "epsilon": 0.0, "target": {"mu": 0.6},
            "metrics_epsilon": 0.01, "candidates": [{"learning_rate": 0.1 * (i + 1)}
                                                    for i in range(20)],
            "tuning_trials": 20.0, "tuning_shape": 10.0}
    t0 = time.perf_counter()
    planned_event(spec, meta)
    assert time.perf_counter() - t0 < 30.0


def test_attack_pricing_a_tuned_job_as_one_run_would_overspend(tmp_path, monkeypatch):
    """The researcher's claim: "it is one DP-SGD run at epsilon". With the defence (the tuned
    price, the selection-aware noise) the ledger reserves and commits exactly what ran; with it
    off (one run's price and noise, K trials anyway) what ran costs more than the reservation,
    and the ledger refuses to release it."""
    from datasite.config import init_site
    from datasite.ledger import Ledger, LedgerError
    from datasite.state import State, engine_for

    site = init_site("l", home=tmp_path / f"l-{uuid.uuid4().hex[:6]}")
    ledger = Ledger(State(engine_for(site)), site)
    ledger.set_budget("toy", 50.0, DELTA)
    # a tuned job is stored as (eps, its delta): keep its delta below the budget's (documented)
    job = _job(tuning_trials=2.0, epochs=1, delta=1e-6)
    one_run = replace(job, candidates=[], tuning_trials=0.0)
    q, steps, m_sigma = _schedule(job)
    assert job.planned_event(META) != one_run.planned_event(META)

    # defence on: reserved == realised
    ledger.reserve("on", "toy", "alice@x", event_to_json(job.planned_event(META)))
    ledger.start("on")
    with pinned_randomness(1):
        realised = job.run(_table(), META)["privacy"]["event"]
    ledger.commit("on", realised)
    assert event_from_json(realised) == job.planned_event(META)

    # defence off: one run's price reserved, K trials run at one run's noise
    sigma_one = noise_multiplier(one_run, q, steps)
    monkeypatch.setattr(selection, "tuned_noise_multiplier", lambda *a: sigma_one)
    reserved = event_to_json(one_run.planned_event(META))
    ledger.reserve("off", "toy", "alice@x", reserved)
    ledger.start("off")
    with pinned_randomness(1):
        realised = job.run(_table(), META)["privacy"]["event"]
    ran = tuned_epsilon(trial_event(q, sigma_one, steps, m_sigma), 2.0, 1.0, 1e-6)
    assert event_from_json(realised) == ApproxDpEvent(ran, 1e-6)
    assert ran > 1.3 * epsilon(event_from_json(reserved), 1e-6)  # the understatement
    with pytest.raises(LedgerError, match="more than the reserved"):
        ledger.commit("off", realised)


# -- the spec ----------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("epochs", 5), ("batch_size", 32), ("epsilon", 8.0),
                                         ("metrics_epsilon", 2.0), ("test_fraction", 0.1),
                                         ("delta", 1e-6), ("target", {"mu": 1.0})])
def test_a_candidate_that_changes_the_privacy_event_is_refused(field, value):
    with pytest.raises(SpecError, match=rf"candidates\[1\] sets {field}, which changes the "
                                        "privacy event"):
        spec_from_dict({**TUNED, "candidates": [{"learning_rate": 1.0}, {field: value}]})


def test_the_researchers_builder_refuses_it_before_anything_is_sent():
    from researcher import jobs

    with pytest.raises(SpecError, match="epochs, which changes the privacy event"):
        jobs.DPSGD("toy", "y", epsilon=4.0, delta=DELTA, candidates=[{"epochs": 5}],
                   tuning_trials=5.0)
    spec = jobs.DPSGD("toy", "y", epsilon=4.0, delta=DELTA, candidates=[{"model": "mlp"}],
                      tuning_trials=5.0).spec
    assert spec.tuning_trials == 5.0 and spec.trial(0).model == "mlp"


@pytest.mark.parametrize("change,words", [
    (dict(candidates=[{"seed": 3}]), "not a hyperparameter"),
    (dict(candidates=[{"learning_rate": -1.0}]), r"candidates\[0\]: learning_rate"),
    (dict(candidates=[{"model": "resnet"}]), r"candidates\[0\]: unknown model"),
    (dict(candidates=[{}]), "non-empty dict"),
    (dict(candidates=[{"learning_rate": 1.0}] * 21), "at most 20"),
    (dict(candidates=[]), "tuning_trials needs candidates"),
    (dict(tuning_trials=0.0), "candidates are tried only in a tuned job"),
    (dict(tuning_trials=1.5), "tuning_trials=1.5 is out of range"),
    (dict(tuning_trials=50.0), "tuning_trials=50"),
    (dict(tuning_shape=-1.0), "tuning_shape"),
    (dict(metrics_epsilon=0.0), "best noisy test accuracy.*metrics_epsilon > 0"),
])
def test_malformed_tuning_is_refused_with_the_reason(change, words):
    with pytest.raises(SpecError, match=words):
        spec_from_dict({**TUNED, **change})


def test_a_candidate_model_too_large_for_the_metadata_is_refused():
    wide = replace(META, features={f"f{i}": "float64" for i in range(3000)})
    with pytest.raises(SpecError, match="parameters"):
        spec_from_dict({**TUNED, "dataset": "toy", "candidates": [
            {"learning_rate": 1.0}, {"model": "mlp", "hidden": 4096}]}).validate(wide)


def test_a_federated_schedule_cannot_tune():
    with pytest.raises(SpecError, match="cannot tune"):
        spec_from_dict({**TUNED, "kind": "fed_dpsgd_table", "rounds": 2})


# -- K -----------------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def _k_of_one_job(monkeypatch, spec) -> int:
    """The K a tuned job draws (stopped before any training)."""
    seen = []

    def spy(mean, shape, rng):
        seen.append(draw_trials(mean, shape, rng))
        raise _Stop

    monkeypatch.setattr(selection, "draw_trials", spy)
    with pytest.raises(_Stop):
        selection.train_tuned_table(_table(), spec)
    return seen[0]


def test_k_is_drawn_from_secret_randomness_not_the_spec_seed(monkeypatch):
    job = replace(_job(tuning_trials=5.0), batch_size=_job().batch_for(META))
    # the same spec, seed and all, draws different K on the site (P(all equal) ~ 1e-20)
    assert len({_k_of_one_job(monkeypatch, job) for _ in range(30)}) > 1
    # secret_seed is what drives K: fixed, K is fixed whatever the spec's seed ...
    monkeypatch.setattr(selection, "secret_seed", lambda *stream: 12345)
    assert len({_k_of_one_job(monkeypatch, replace(job, seed=s)) for s in range(10)}) == 1
    # ... and different secrets give different K
    ks = set()
    for secret in range(30):
        monkeypatch.setattr(selection, "secret_seed", lambda *stream, s=secret: s)
        ks.add(_k_of_one_job(monkeypatch, job))
    assert len(ks) > 1
    # defence off (K from the researcher's seed): the first check above would fail
    monkeypatch.setattr(selection, "secret_seed", lambda *stream: stream[0])
    assert len({_k_of_one_job(monkeypatch, job) for _ in range(30)}) == 1


@pytest.mark.parametrize("shape", [0.0, 0.5, 1.0, 3.0])
def test_k_follows_the_priced_distribution(shape):
    """Draws of K match the truncated negative binomial the RDP bound is computed for, with a
    gamma at least dp_accounting's (its bound grows as gamma falls: what runs is covered)."""
    from dp_accounting.rdp import rdp_privacy_accountant as rdp  # the pricer's own gamma

    gamma = tnb_gamma(5.0, shape)
    priced = rdp._gamma_truncated_negative_binomial(shape, 5.0)  # pylint: disable=protected-access
    assert priced <= gamma <= priced * (1 + 1e-6)
    rng = np.random.default_rng(7)
    ks = np.array([draw_trials(5.0, shape, rng) for _ in range(20_000)])
    assert ks.min() >= 1
    assert ks.mean() == pytest.approx(5.0, rel=0.05)
    p1 = ((1 - gamma) / math.log(1 / gamma) if shape == 0
          else shape * (1 - gamma) / (gamma ** -shape - 1))  # P(K = 1) of the TNB
    assert np.mean(ks == 1) == pytest.approx(p1, abs=0.01)


# -- the selection -----------------------------------------------------------------------------
def test_the_tuned_job_picks_the_good_learning_rate_and_releases_only_the_winner(monkeypatch):
    real = selection.train_dpsgd_table
    trials: list[list[tuple[float, float]]] = []

    def spy(df, spec, **kw):
        result = real(df, spec, **kw)
        trials[-1].append((spec.learning_rate, result["metrics"]["test_accuracy"]))
        return result

    monkeypatch.setattr(selection, "train_dpsgd_table", spy)
    job, df, chosen = _job(), _table(), []
    for run in range(7):
        trials.append([])
        with pinned_randomness(100 + run):
            result = job.run(df, META)
        lr, score = max(trials[-1], key=lambda t: t[1])
        # the released model is the trial with the best noisy test accuracy
        assert result["selected"]["learning_rate"] == lr
        assert result["metrics"]["test_accuracy"] == score
        chosen.append(lr)
        # nothing in the release tells K or another trial's score
        public = repr(ResultPayload.from_dict({**result, "kind": "dpsgd_table",
                                               "spec": job.to_dict()}).public_view())
        for _, other in trials[-1]:
            if other != score:
                assert repr(other) not in public
        assert not {"trials", "k", "scores"} & (set(result) | set(result["privacy"]))
    assert chosen.count(GOOD) > len(chosen) / 2, (chosen, trials)
    good = [s for run in trials for lr, s in run if lr == GOOD]
    bad = [s for run in trials for lr, s in run if lr == BAD]
    assert min(good) > max(bad) - 0.1, (good, bad)  # the table is learnable, lr 1e-4 is not
