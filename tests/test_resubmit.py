"""Submitting the same job twice on a live site: two requests (each rendering has its own nonce),
each reviewed, priced, run, released and charged on its own in the ledger."""
from __future__ import annotations

import pytest

import researcher
from conftest import RESEARCHER, make_site
from researcher import jobs

pytestmark = pytest.mark.slow


def test_the_same_job_twice_is_two_requests_each_charged(tmp_path, demo_files, capsys):
    site = make_site(tmp_path, "hosp-resubmit")
    try:
        site.upload("bc", table=str(demo_files / "breast_cancer.csv"), label="diagnosis",
                    schema=demo_files / "breast_cancer.schema.yaml",
                    budget_epsilon=10.0, delta=1e-5)
        site.add_user(*RESEARCHER, name="Alice")
        client = researcher.connect(site.url, *RESEARCHER)
        job = jobs.Statistics("bc").count(epsilon=0.5)
        capsys.readouterr()
        first, second = client.submit(job), client.submit(job)  # PySyft refused this before
        # PySyft's "please create a project" advice is wrong for this workflow: not shown
        assert "create a project" not in "".join(capsys.readouterr())
        assert first.id != second.id and first.func_name != second.func_name

        infos = {r["request_id"]: r for r in site.review()}
        for req in (first, second):
            info = infos[req.id]
            assert info["template"] is True and info["validation"] == "ok"
            assert info["spec"] == job.spec.to_dict()  # the nonce is not part of the spec
        assert infos[first.id]["cost"]["epsilon"] == pytest.approx(
            infos[second.id]["cost"]["epsilon"])
        planned = infos[first.id]["cost"]["epsilon"]

        for req in (first, second):
            site.run(req.id, progress=False)
            site.release(req.id)
            assert req.wait(timeout=120, progress=False).answers[0]["type"] == "count"

        charged = [site.ledger.entry(r.id) for r in (first, second)]
        assert all(e["state"] == "released" for e in charged)
        assert all(0 < e["epsilon"] <= planned * (1 + 1e-6) for e in charged)
        assert sorted(e["request_id"] for e in site.ledger.history("bc")) == sorted(
            [first.id, second.id])
        spent = site.ledger.spent("bc")
        assert spent["jobs"] == 2
        assert spent["naive_epsilon"] == pytest.approx(sum(e["epsilon"] for e in charged))
        assert site.executions(first.id) == site.executions(second.id) == 1
    finally:
        site.down()
