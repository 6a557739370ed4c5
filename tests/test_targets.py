"""Privacy targets (shared.targets, researcher.jobs.Target): a job asks for epsilon, mu or an
attack TPR at an FPR; the owner's pricing calibrates sigma to it on the real metadata, and the
job runs exactly that sigma."""
from __future__ import annotations

import math

import pytest

from researcher import jobs
from researcher.jobs import Target
from shared import targets
from shared.privacy.accounting import calibrate_noise, dpsgd_event, event_from_json
from shared.data import DatasetMeta
from shared.privacy.pricing import planned_event
from shared.privacy.reporting import fit_mu, privacy_report, tpr_bound, tradeoff_curve
from shared.jobs.federated import FedScheduleSpec
from shared.jobs.dpsgd_images import DPSGDImageSpec
from shared.jobs import DPSGDTableSpec, SpecError

DELTA = 1e-5
# breast-cancer sized: 455 training records, batch 64 -> q = 1/8, 5 epochs -> 40 steps
META = DatasetMeta(name="bc", kind="table", n_records=569, label="diagnosis", labels=[0, 1])
OPTS = dict(epochs=5, batch_size=64, metrics_epsilon=0.0)  # no metrics: the event is training


def table_job(**privacy) -> jobs.DPSGD:
    return jobs.DPSGD("bc", "diagnosis", delta=DELTA, **privacy, **OPTS)


def clt_calibrate(q, steps, epsilon, delta, target):
    """The tempting shortcut ALGORITHMS.md warns about: solve the CLT formula
    mu = q sqrt(T (e^(1/sigma^2) - 1)) for sigma. Not a bound: used as the 'defence off'."""
    mu = dict(target)["mu"]
    return 1 / math.sqrt(math.log1p(mu ** 2 / (q ** 2 * steps)))


# -- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, words", [
    ({}, "exactly one"),
    ({"epsilon": 1.0, "mu": 0.5}, "exactly one"),
    ({"mu": 0.0}, "mu must be > 0"),
    ({"mu": float("inf")}, "finite"),
    ({"tpr": 0.05}, "needs the false-positive rate"),
    ({"fpr": 0.01, "mu": 1.0}, "fpr= goes with tpr="),
    ({"tpr": 0.01, "fpr": 0.05}, "tpr must lie in (fpr, 1)"),
    ({"tpr": 0.5, "fpr": 1.0}, "fpr must lie in (0, 1)"),
    ({"tpr": 1.0, "fpr": 0.1}, "tpr must lie in (fpr, 1)"),
    ({"epsilon": -1.0}, "epsilon must be"),
])
def test_bad_targets_say_what_to_change(kwargs, words):
    with pytest.raises(SpecError) as e:
        Target(**kwargs)
    assert words in str(e.value)


def test_builder_and_spec_take_exactly_one_privacy_target():
    with pytest.raises(SpecError, match="exactly one of epsilon"):
        jobs.DPSGD("bc", "diagnosis", epsilon=1.0, delta=DELTA, privacy=Target(mu=0.5))
    with pytest.raises(SpecError, match="exactly one of epsilon"):
        jobs.DPSGD("bc", "diagnosis", delta=DELTA)
    with pytest.raises(SpecError, match="delta is required"):
        jobs.DPSGD("bc", "diagnosis", privacy=Target(mu=0.5))
    base = dict(dataset="bc", label="diagnosis", delta=DELTA)
    with pytest.raises(SpecError, match="not both"):  # a spec sent by hand is checked too
        DPSGDTableSpec(**base, epsilon=2.0, target={"mu": 0.5}).validate()
    with pytest.raises(SpecError, match="target must be"):
        DPSGDTableSpec(**base, epsilon=0.0, target={"sigma": 0.1}).validate()
    with pytest.raises(SpecError, match="target must be"):
        DPSGDTableSpec(**base, epsilon=0.0, target={"epsilon": 2.0}).validate()
    with pytest.raises(SpecError, match="tpr must lie"):
        DPSGDTableSpec(**base, epsilon=0.0, target={"tpr": 0.001, "fpr": 0.01}).validate()
    with pytest.raises(SpecError, match="unknown spec field"):  # a researcher cannot send sigma
        DPSGDTableSpec.from_dict({**base, "epsilon": 1.0, "noise_multiplier": 0.1})


# -- calibration on the owner's side -------------------------------------------------------------
def test_epsilon_target_is_the_old_epsilon_path():
    old, new = table_job(epsilon=2.0), table_job(privacy=Target(epsilon=2.0))
    assert old.spec.to_dict() == new.spec.to_dict() and new.spec.target == {}
    q, steps = 1 / 8, 40
    assert planned_event(new.spec.to_dict(), META) == dpsgd_event(
        q, calibrate_noise(q, steps, 2.0, DELTA), steps)


def test_mu_target_is_met_by_the_priced_event(monkeypatch):
    spec = table_job(privacy=Target(mu=0.5)).spec.to_dict()
    assert spec["target"] == {"mu": 0.5} and spec["epsilon"] == 0.0  # data in the spec
    mu = privacy_report(planned_event(spec, META), DELTA)["mu"]
    assert 0.5 * (1 - 5e-3) <= mu <= 0.5  # calibrated within rtol, on the feasible side
    # Defence off: the CLT shortcut for mu (not a bound) under-delivers on this schedule.
    monkeypatch.setattr(targets, "_calibrate", clt_calibrate)
    leaky = fit_mu(tradeoff_curve(planned_event(spec, META)))[0]
    assert leaky > 0.55, leaky


def test_tpr_target_is_met_by_the_priced_event():
    spec = table_job(privacy=Target(tpr=0.05, fpr=0.01)).spec.to_dict()
    assert tpr_bound(planned_event(spec, META), 0.01) == pytest.approx(0.05, abs=1e-3)
    assert tpr_bound(planned_event(spec, META), 0.01) <= 0.05


def test_target_is_calibrated_on_the_metadata_it_is_priced_with():
    """The researcher's spec carries the target, not a sigma: a dataset of another size (the
    owner's real one vs the mock's) gets its own sigma, and both meet the target."""
    spec = table_job(privacy=Target(mu=0.5)).spec
    small = DatasetMeta(**{**META.__dict__, "n_records": 100})  # q = 1/2 there
    ev_real, ev_small = planned_event(spec.to_dict(), META), planned_event(spec.to_dict(), small)
    assert ev_real != ev_small
    for ev in (ev_real, ev_small):
        assert 0.49 <= fit_mu(tradeoff_curve(ev))[0] <= 0.5


def test_images_and_federated_schedules_take_targets():
    img = jobs.DPSGDImages("cxr", delta=DELTA, privacy=Target(mu=0.5), epochs=5, batch_size=64,
                           metrics_epsilon=0.0).spec
    meta = DatasetMeta(name="cxr", kind="images", n_records=569, label="label", labels=[0, 1],
                       image_shape=[28, 28])
    q, steps, sigma = img.schedule(meta)
    assert (q, steps) == (1 / 8, 40)  # same schedule as the table: same calibrated sigma
    assert sigma == targets.noise_multiplier(table_job(privacy=Target(mu=0.5)).spec, q, steps)
    # federated: all rounds together meet the target (the schedule is priced as a whole)
    base = {k: v for k, v in table_job(privacy=Target(mu=0.5)).spec.to_dict().items()
            if k != "kind"}
    fed = FedScheduleSpec.from_dict({**base, "rounds": 2}).validate(META)
    assert fed.target == {"mu": 0.5}
    mu_all = fit_mu(tradeoff_curve(fed.planned_event(META)))[0]
    mu_one = fit_mu(tradeoff_curve(fed.rounds_event(META, 1)))[0]
    assert 0.49 <= mu_all <= 0.5 and mu_one < mu_all


def test_job_runs_the_priced_sigma():
    """What the job reports (and the ledger checks against the reservation) is the priced plan."""
    from sklearn.datasets import load_breast_cancer

    from shared.runner import run_job

    df = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "diagnosis"})
    spec = table_job(privacy=Target(mu=0.5)).spec.to_dict()
    result = run_job(spec, df, META, pin_randomness=0)
    assert event_from_json(result["privacy"]["event"]) == planned_event(spec, META)
    assert result["privacy"]["mu"] <= 0.5


def test_active_learning_takes_epsilon_targets_only():
    opts = dict(label="diagnosis", start=60, queries=[40, 40])
    old = jobs.DPActiveLearning("bc", epsilon=3.0, delta=DELTA, **opts)
    new = jobs.DPActiveLearning("bc", delta=DELTA, privacy=Target(epsilon=3.0), **opts)
    assert old.spec.to_dict() == new.spec.to_dict()
    with pytest.raises(SpecError, match="Target\\(epsilon=...\\) only"):
        jobs.DPActiveLearning("bc", delta=DELTA, privacy=Target(mu=0.5), **opts)
