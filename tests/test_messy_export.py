"""Issue 13 end to end: a hospital's messy 3-class export (semicolons, decimal commas, a BOM,
patient ids with leading zeros, string categories, yes/no flags, 17% missing lab values,
day-first dates, unlabelled records, a column that leaks the outcome) goes from the schema draft
through review and upload to a released DP model with a DP macro AUC, on a real site."""
from __future__ import annotations

import pandas as pd
import pytest

import researcher
from conftest import RESEARCHER, make_site
from datasite.demo_data import OUTCOMES, write_messy_export
from datasite.schema import draft
from shared.schema import DRAFT_KEY

pytestmark = pytest.mark.slow

N = 4000


def test_a_messy_three_class_export_from_draft_to_a_released_model(tmp_path, capfd):
    export = tmp_path / "export.csv"
    raw = write_messy_export(export, N, classes=3, leak=True, unlabelled=0.02)
    labelled = raw["outcome"].dropna()

    schema = draft(export, label="outcome", id_column="patient_id")
    cols = schema["columns"]
    assert "patient_id" not in cols and set(schema["label"]["classes"]) == set(OUTCOMES)
    assert schema["records"] == len(labelled)  # unlabelled records dropped, never imputed
    assert cols["admitted"]["type"] == "date" and cols["admitted"]["format"] == "%d/%m/%Y"
    assert cols["grade"] == {"type": "category", "categories": ["I", "II", "III"]}
    assert cols["smoker"]["type"] == "bool" and cols["crp"]["missing"] is True
    # the owner's review: domain bounds, the label's order, then the sign-off
    schema.pop(DRAFT_KEY)
    schema["label"]["classes"] = list(OUTCOMES)
    cols["age"]["bounds"], cols["crp"]["bounds"] = [0, 120], [0, 300]

    site = make_site(tmp_path, "hosp-messy")
    try:
        capfd.readouterr()
        site.upload("cohort", table=str(export), schema=schema, id_column="patient_id",
                    budget_epsilon=10.0, delta=1e-5)
        notes = [n for n in capfd.readouterr().err.splitlines() if "cause_of_death" in n]
        assert any("label" in n for n in notes), notes  # the owner is warned of the leak
        # ... and drops the column in a new version (the ledger carries over)
        cols["cause_of_death"] = {"type": "drop"}
        site.replace_dataset("cohort", table=str(export), schema=schema,
                             id_column="patient_id")
        meta = site.datasets()["cohort"]
        assert "cause_of_death" not in meta.features and meta.n_records == len(labelled)

        site.add_user(*RESEARCHER, name="Alice")
        client = researcher.connect(site.url, *RESEARCHER)
        job = researcher.jobs.DPSGD("cohort", "outcome", epsilon=4.0, delta=1e-5,
                                    metrics_auc=True)
        names = job.feature_names(client)
        assert {"grade=II", "crp_missing", "admitted"} <= set(names)
        assert not any("patient" in n or "cause_of_death" in n for n in names)
        req = client.submit(job)
        site.run(req.id, progress=False)
        site.release(req.id)
        m = req.wait(timeout=120, progress=False).metrics
    finally:
        site.down()
    majority = float(pd.Series(labelled).value_counts(normalize=True).max())  # ~0.55
    assert m["evaluated_on"].startswith("private test split")  # DP metrics, not the mock's
    assert m["test_auc_average"] == "macro one-vs-rest" and m["test_auc"] > 0.7  # seen 0.77
    assert m["test_accuracy"] > majority + 0.04  # seen 0.65
