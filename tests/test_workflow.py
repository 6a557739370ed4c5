"""The whole owner/researcher journey against a real HTTP datasite (SQLite and PostgreSQL)."""
from __future__ import annotations

import pandas as pd
import pytest

import researcher
from datasite.config import SiteError
from researcher import jobs
from researcher.errors import JobDenied, ResearcherError

from conftest import RESEARCHER

pytestmark = pytest.mark.slow


def _job(**kw):
    args = dict(dataset="breast_cancer", label="diagnosis", epsilon=3.0, delta=1e-5, epochs=20,
                batch_size=64, clip_norm=1.0, learning_rate=1.0)
    args.update(kw)
    return jobs.DPSGD(**args)


def test_submit_run_release_and_restart(live_site, demo_files):
    site = researcher.connect(live_site.url, *RESEARCHER)
    ds = site.datasets["breast_cancer"]
    assert ds.meta.n_records == 569 and ds.meta.labels == [0, 1]
    real = pd.read_csv(demo_files / "breast_cancer.csv")
    mock = ds.mock
    assert list(mock.columns) == list(real.columns)
    assert set(mock["diagnosis"]) == {0, 1}
    # no real record appears in the mock
    merged = mock.merge(real, how="inner", on=list(real.columns))
    assert len(merged) == 0

    mock_result = _job().run_on_mock(site)
    assert 0.0 <= mock_result.metrics["test_accuracy"] <= 1.0
    assert mock_result.metrics["evaluated_on"].startswith("mock")  # exact, on public data

    req = site.submit(_job())
    assert req.status() == "pending"
    pending = {r["request_id"]: r for r in live_site.review()}
    info = pending[req.id]
    assert info["template"] is True and info["kind"] == "dpsgd_table"
    assert info["researcher"] == RESEARCHER[0] and info["validation"] == "ok"

    summary = live_site.run(req.id, progress=False)
    m = summary["metrics"]  # a DP estimate (Gaussian histogram, priced in the ledger)
    assert m["mechanism"] == "noisy_class_x_correct_histogram" and "test_auc" not in m
    assert m["test_accuracy"] > 0.8 - 4 * m["test_accuracy_std"]
    assert req.status() == "pending"  # ran, but not released: nothing visible yet
    with pytest.raises(ResearcherError):
        _ = req.result

    live_site.release(req.id)
    result = req.wait(timeout=60, progress=False)
    assert result.metrics["test_accuracy"] == summary["metrics"]["test_accuracy"]
    assert 0 < result.privacy["training_epsilon"] <= 3.0 + 1e-6
    assert result.privacy["epsilon"] <= 3.0 + 0.5  # + the metrics' release (composed)
    model = result.model  # loadable without syft, predicts on the real table
    from shared.training.results import predict

    real = pd.read_csv(demo_files / "breast_cancer.csv")
    acc = (pd.Series(predict(model, result.raw["model_config"], real)) == real["diagnosis"]).mean()
    assert acc > 0.8

    # the researcher learns whether the dataset can still pay, not what the others spent ...
    left = site.datasets["breast_cancer"].budget
    spent = live_site.ledger.spent("breast_cancer")["epsilon"]
    assert "dataset_left" not in left and left["dataset_can_pay"] is True
    # ... unless the owner opts in to disclose the remaining budget, as the ledger computes it
    live_site.disclose_dataset_left(True)
    try:
        assert site.datasets["breast_cancer"].budget["dataset_left"] == pytest.approx(50.0 - spent)
    finally:
        live_site.disclose_dataset_left(False)
    assert result.privacy["epsilon"] <= spent + 1e-9
    # ... and the ledger's signed audit head, checked against the one sent with the result
    from shared.audit_chain import check_head

    head = site.audit_head()
    key = str(site.client.metadata.verify_key)
    assert check_head(result.raw["audit_head"], [], key) == []
    assert head["seq"] >= result.raw["audit_head"]["seq"] and live_site.ledger.verify()[0]

    # restart: datasets, users, requests and results survive
    live_site.down()
    live_site.up()
    site2 = researcher.connect(live_site.url, *RESEARCHER)
    assert "breast_cancer" in site2.datasets
    again = site2.request(req.id[:8])
    assert again.wait(timeout=30, progress=False).metrics == result.metrics
    assert live_site.executions(req.id) == 1


def test_deny_reaches_researcher(live_site):
    site = researcher.connect(live_site.url, *RESEARCHER)
    req = site.submit(_job(epsilon=1.5))
    assert {r["request_id"] for r in live_site.review()} >= {req.id}
    assert live_site.ledger.entry(req.id)["state"] == "estimated"
    spent = live_site.ledger.spent("breast_cancer")["epsilon"]
    live_site.deny(req.id, reason="epsilon too large for this cohort")
    assert live_site.ledger.entry(req.id)["state"] == "denied"
    assert live_site.ledger.spent("breast_cancer")["epsilon"] == spent
    with pytest.raises(JobDenied, match="epsilon too large"):
        req.wait(timeout=30, progress=False)
    with pytest.raises(SiteError, match="denied"):
        live_site.run(req.id, progress=False)
    assert live_site.executions(req.id) == 0


def test_spec_checked_on_submission(live_site):
    from shared.jobs import SpecError

    site = researcher.connect(live_site.url, *RESEARCHER)
    for bad, words in [(dict(epsilon=0.0), "epsilon"), (dict(delta=0.01), "delta"),
                       (dict(batch_size=10_000), "batch"), (dict(label="age"), "label")]:
        with pytest.raises(SpecError, match=words):
            site.submit(_job(**bad))
    with pytest.raises(ResearcherError, match="No dataset"):
        site.submit(_job(dataset="nope"))


def test_clear_errors(live_site, tmp_path):
    from researcher.errors import ConnectError

    with pytest.raises(ConnectError, match="wrong email or password"):
        researcher.connect(live_site.url, RESEARCHER[0], "not-the-password")
    with pytest.raises(ConnectError, match="No datasite answers"):
        researcher.connect("http://127.0.0.1:9", *RESEARCHER)
    with pytest.raises(SiteError, match="No request"):
        live_site.run("deadbeef", progress=False)
    site = researcher.connect(live_site.url, *RESEARCHER)
    with pytest.raises(ResearcherError, match="No request"):
        site.request("deadbeef")
    with pytest.raises(SiteError, match="already exists"):
        live_site.upload("breast_cancer", table="x.csv", label="diagnosis")


def test_cannot_spend_budget_not_given(live_site):
    """A researcher's share is enforced by the owner's run, whatever the researcher submits."""
    # eps=0.1 left (a budget cannot go below what earlier tests here already spent). Tight
    # composition charges less than the job's own epsilon on top of a long history, so the
    # margin is small and the job large: composing it must cross the line.
    spent = live_site.ledger.spent("breast_cancer", RESEARCHER[0])["epsilon"]
    live_site.set_budget("breast_cancer", spent + 0.1, researcher=RESEARCHER[0])
    try:
        site = researcher.connect(live_site.url, *RESEARCHER)
        assert site.datasets["breast_cancer"].budget["researcher_left"] <= 0.1 + 1e-9
        req = site.submit(_job(epsilon=4.0))
        info = {r["request_id"]: r for r in live_site.review()}[req.id]
        assert info["cost"]["budget"]["fits"] is False
        with pytest.raises(SiteError, match="would reach"):
            live_site.run(req.id, progress=False)
        assert live_site.executions(req.id) == 0
        assert req.status() == "pending"
    finally:
        live_site.set_budget("breast_cancer", 100.0, researcher=RESEARCHER[0])
