"""Every job kind through a real datasite: priced by the owner, run once, released, committed."""
from __future__ import annotations

import json

import pytest

import researcher
from conftest import RESEARCHER, make_site
from researcher import jobs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory, demo_files):
    s = make_site(tmp_path_factory.mktemp("kinds"), "hosp-kinds")
    try:
        s.upload("bc", table=str(demo_files / "breast_cancer.csv"), label="diagnosis",
                 schema=demo_files / "breast_cancer.schema.yaml",
                 budget_epsilon=40.0, delta=1e-5)
        s.upload("cxr", npz=str(demo_files / "cxr.npz"), schema=demo_files / "cxr.schema.yaml",
                 budget_epsilon=20.0, delta=1e-5)
        s.add_user(*RESEARCHER, name="Alice")
        yield s
    finally:
        s.down()


def _through(site, job):
    """Submit as the researcher, then review, run and release as the owner."""
    client = researcher.connect(site.url, *RESEARCHER)
    req = client.submit(job)
    (info,) = [r for r in site.review() if r["request_id"] == req.id]
    assert info["validation"] == "ok" and info["kind"] == job.spec.KIND
    planned = info["cost"]["epsilon"]
    site.run(req.id, progress=False)
    site.release(req.id)
    result = req.wait(timeout=120, progress=False)
    entry = site.ledger.entry(req.id)
    assert entry["state"] == "released" and entry["epsilon"] <= planned * (1 + 1e-6)
    assert site.executions(req.id) == 1
    return client, result


def test_image_head_job(site):
    job = jobs.DPSGDImages("cxr", epsilon=3.0, delta=1e-5, model="head", backbone="pixels",
                           epochs=5, batch_size=64)
    client, result = _through(site, job)
    assert result.privacy["training_epsilon"] <= 3.0 < result.privacy["epsilon"] <= 3.5
    assert result.metrics["mechanism"] == "noisy_class_x_correct_histogram"
    assert result.model is not None  # backbone + head rebuilt from the config


def test_active_learning_job_with_plan(site, tmp_path):
    job = jobs.DPActiveLearning("bc", epsilon=3.0, delta=1e-5, label="diagnosis",
                                eps_selection=0.6, start_size=60, query_sizes=[40, 40],
                                batch_size=32, epochs_per_round=3, learning_rate=2.0)
    client = researcher.connect(site.url, *RESEARCHER)
    plan = job.plan(client)  # before submitting: what the datasite will price
    assert len(plan.steps) == 3 and max(plan.group_epsilon) <= 3.0
    _, result = _through(site, job)
    assert [r["labelled"] for r in result.rounds] == [60, 100, 140]
    assert [r.get("selected") for r in result.rounds][:2] == [40, 40]
    assert all("epsilon_per_group" in r for r in result.rounds)
    # no record ids of real patients in what comes back
    assert set(result.raw) == {"metrics", "privacy", "rounds", "plan", "model_state",
                               "model_config", "spec", "kind", "audit_head"}  # signed head
    # the owner charged each record its own group's event (per-record ledger)
    charges = site.ledger.record_histogram("bc", 569)
    assert charges["classes"] >= 3 and sum(b["records"] for b in charges["bins"]) == 569
    assert isinstance(result.metrics["labelled"], int)
    assert result.privacy["training_epsilon"] <= 3.0  # + three DP evaluations, composed
    assert result.privacy["metrics"]["releases"] == 3
    groups = result.privacy["groups"]
    assert [g["size"] for g in groups] == [60, 40, 40]
    assert all(g["epsilon"] <= 3.0 and g["tpr_bound"]["0.01"] < 1 for g in groups)
    # the owner's review of the run draws the released accuracy per round against the
    # labelled-set size (the job has no owner-only loss curve yet: DP-SGD table jobs do)
    (own,) = [site.state.request(r["request_id"]) for r in site.review(include_done=True)
              if r["kind"] == job.spec.KIND]
    curves = {c["title"]: c for c in json.loads(own["summary_json"])["curves"]}
    per_round = curves["Test accuracy after each round (with DP noise)"]
    assert per_round["x"] == [60, 100, 140]
    assert per_round["y"] == [r["accuracy"] for r in result.rounds]
    # the plots a researcher wants, straight from the result
    from pathlib import Path

    curve = result.plot_learning_curve(str(tmp_path / "curve.png"), baselines={"same": result})
    eps = result.plot_group_epsilon(str(tmp_path / "eps.png"))
    assert Path(curve).stat().st_size > 1000 and Path(eps).stat().st_size > 1000


def test_statistics_job(site):
    job = (jobs.Statistics("bc").count(epsilon=0.5)
           .mean("mean_radius", bounds=(0, 40), epsilon=0.5)
           .histogram("diagnosis", epsilon=0.5, categories=[0, 1]))
    client = researcher.connect(site.url, *RESEARCHER)
    mock_answers = job.run_on_mock(client).answers
    assert len(mock_answers) == 3
    _, result = _through(site, job)
    count, mean, hist = result.answers
    assert abs(count["value"] - 569) < 40 and count["interval_95"] is not None
    assert abs(mean["value"] - 14.13) < 3.0
    assert abs(sum(hist["value"]) - 569) < 60


def test_bad_statistics_rejected_before_submission(site):
    from shared.stats import StatsError

    with pytest.raises(StatsError, match="lower < upper"):
        jobs.Statistics("bc").sum("mean_radius", bounds=(10, 1), epsilon=1.0)
    job = jobs.Statistics("bc").sum("no such column", bounds=(0, 1), epsilon=1.0)
    client = researcher.connect(site.url, *RESEARCHER)
    with pytest.raises(ValueError, match="no such column"):
        client.submit(job)
