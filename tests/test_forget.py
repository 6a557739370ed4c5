"""A patient asks to be forgotten: the record leaves the data, removal-enabled models are updated
with a certificate, researchers get the update, DP models are listed with their guarantee."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import researcher
from conftest import RESEARCHER, make_site

pytestmark = pytest.mark.slow

REMOVABLE = dict(label="diagnosis", lam=1e-3, perturbation=10.0, removal_epsilon=1.0,
                 removal_delta=1e-9)


@pytest.fixture(scope="module")
def site_with_models(tmp_path_factory, demo_files):
    site = make_site(tmp_path_factory.mktemp("forget"), "hosp-forget")
    try:
        site.upload("breast_cancer", table=str(demo_files / "breast_cancer.csv"),
                    label="diagnosis", budget_epsilon=60.0, delta=1e-4)
        small = pd.read_csv(demo_files / "breast_cancer.csv").iloc[:120]
        path = tmp_path_factory.mktemp("small") / "small.csv"
        small.to_csv(path, index=False)
        site.upload("cohort2", table=str(path), label="diagnosis", budget_epsilon=10.0, delta=1e-4)
        site.add_user(*RESEARCHER, name="Alice")
        client = researcher.connect(site.url, *RESEARCHER)
        removable = client.submit(researcher.jobs.RemovableLogReg("breast_cancer", delta=1e-6,
                                                                  **REMOVABLE))
        dp = client.submit(researcher.jobs.DPSGD("breast_cancer", "diagnosis", 2.0, 1e-5))
        for req in (removable, dp):
            site.run(req.id, progress=False)
            site.release(req.id)
        yield site, client, removable, dp
    finally:
        site.down()


def test_released_result_holds_no_record_positions(site_with_models):
    _, _, removable, _ = site_with_models
    raw = removable.wait(timeout=60, progress=False).raw
    assert not [k for k in raw if k.startswith("_owner")]
    assert "residual_used" not in raw["removable_model"]
    assert raw["privacy"]["epsilon"] > 0 and raw["privacy"]["mechanism"] == "objective_perturbation"


def test_forget_updates_the_model_and_reaches_the_researcher(site_with_models, demo_files):
    from datasite.storage import read_private, record_ids
    from shared.accounting import event_from_json

    site, client, removable, dp = site_with_models
    original = removable.wait(timeout=60, progress=False)
    path = site.state.dataset("breast_cancer")["path"]
    real = pd.read_csv(demo_files / "breast_cancer.csv")
    target = 7
    trained_on = json.loads(site.state.models_for("breast_cancer")[0]["record_ids_json"])
    if target not in trained_on:  # the held-out split: pick a training record instead
        target = trained_on[3]

    report = site.forget("breast_cancer", target)
    data, meta = read_private(path)
    assert meta.n_records == len(data) == len(real) - 1
    assert target not in record_ids(path).tolist()
    assert not (data.to_numpy() == real.iloc[target].to_numpy()).all(axis=1).any()  # gone
    assert json.loads(site.state.dataset("breast_cancer")["meta_json"])["n_records"] == 568

    (m,) = report["models"]
    cert = m["certificate"]
    assert m["status"] == "updated" and m["request"] == removable.id and m["version"] == 1
    assert 0 < cert["residual_used"] <= cert["budget"] and cert["retrained"] is False
    assert cert["n_removed_total"] == 1 and "whole model" in cert["covers"]
    # the update is a release too: priced in the ledger, and the certificate is in the audit log
    entry = site.ledger.entry(f"{removable.id}:v1")
    assert entry["state"] == "released"
    assert event_from_json(entry["event_json"]).epsilon == pytest.approx(
        cert["training_epsilon"] + 2 * 1.0)
    assert site.ledger.verify()[0]
    # the plain DP model cannot be updated: it is listed with its guarantee
    assert [d["request"] for d in report["dp_models"]] == [dp.id]
    assert "DP" in report["dp_models"][0]["guarantee"]

    (update,) = removable.updates()
    assert update.version == 1 and update.status == "updated"
    assert update.certificate["residual_used"] == pytest.approx(cert["residual_used"])
    new = update.result
    from shared.results import predict_proba

    p_old = predict_proba(original.model, original.raw["model_config"], real)
    p_new = predict_proba(new.model, new.raw["model_config"], real)
    assert np.abs(p_old - p_new).max() > 0  # the model changed ...
    assert np.mean(p_old.argmax(1) == p_new.argmax(1)) > 0.98  # ... by one record's worth


def test_forget_bad_input_changes_nothing(site_with_models):
    from datasite.config import SiteError
    from datasite.storage import read_private

    site, _, _, _ = site_with_models
    path = site.state.dataset("breast_cancer")["path"]
    before = len(read_private(path)[0])
    audit_before = len(site.ledger.history("breast_cancer"))
    for record, match in ((10_000, "no record 10000"), (-1, "no record -1")):
        with pytest.raises(SiteError, match=match):
            site.forget("breast_cancer", record)
    with pytest.raises(SiteError, match="No dataset 'nope'"):
        site.forget("nope", 1)
    with pytest.raises(SiteError, match="no released removal-enabled model.*--data-only"):
        site.forget("cohort2", 3)
    assert len(read_private(site.state.dataset("cohort2")["path"])[0]) == 120
    assert len(read_private(path)[0]) == before
    assert len(site.ledger.history("breast_cancer")) == audit_before
    # --data-only removes it from the data; a second request for it says so
    site.forget("cohort2", 3, data_only=True)
    assert len(read_private(site.state.dataset("cohort2")["path"])[0]) == 119
    with pytest.raises(SiteError, match="already removed"):
        site.forget("cohort2", 3, data_only=True)


def test_forget_cli(site_with_models, capsys):
    from datasite.cli import main

    site, _, _, _ = site_with_models
    trained_on = json.loads(site.state.models_for("breast_cancer")[0]["record_ids_json"])
    rc = main(["forget", site.name, "breast_cancer", "--record", str(trained_on[10]),
               "--home", str(site.home.root)])
    out = capsys.readouterr().out
    assert rc == 0 and "removed from breast_cancer for good" in out and "certified update v" in out
    assert "DP model" in out
    rc = main(["forget", site.name, "breast_cancer", "--record", str(trained_on[10]),
               "--home", str(site.home.root)])
    assert rc == 2 and "already removed" in capsys.readouterr().err


def test_removal_model_on_a_dp_extractor(site_with_models):
    """Features from a released DP-SGD model: the certificate says the extractor part is
    covered by that model's DP guarantee only."""
    from datasite.config import SiteError

    site, client, _, _ = site_with_models
    mlp = client.submit(researcher.jobs.DPSGD("breast_cancer", "diagnosis", 2.0, 1e-5,
                                              model="mlp", hidden=16))
    bogus = client.submit(researcher.jobs.RemovableLogReg(
        "breast_cancer", delta=1e-6, features="dp_extractor", extractor=mlp.id, **REMOVABLE))
    with pytest.raises(SiteError, match="not a released job"):  # the extractor is not out yet
        site.run(bogus.id, progress=False)
    site.run(mlp.id, progress=False)
    site.release(mlp.id)
    job = client.submit(researcher.jobs.RemovableLogReg(
        "breast_cancer", delta=1e-6, features="dp_extractor", extractor=mlp.id, seed=1,
        **REMOVABLE))
    site.run(job.id, progress=False)
    site.release(job.id)
    result = job.wait(timeout=60, progress=False)
    assert result.raw["removable_model"]["feature_source"]["kind"] == "dp_extractor"
    model_row = [m for m in site.state.models_for("breast_cancer") if m["request_id"] == job.id][0]
    target = json.loads(model_row["record_ids_json"])[0]
    report = site.forget("breast_cancer", target)
    (m,) = [x for x in report["models"] if x["request"] == job.id]
    assert m["status"] == "updated"
    assert "feature extractor was trained with DP" in m["certificate"]["covers"]
    assert m["certificate"]["feature_source"]["epsilon"] == pytest.approx(2.0, rel=0.01)
