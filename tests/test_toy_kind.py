"""A job kind is one module: a toy kind written to a temporary file, named in
``DP_DATASITE_JOB_MODULES``, goes through review, pricing, run and release on a live site
without any change to ``shared/``, ``datasite/`` or ``researcher/``."""
from __future__ import annotations

import os
import sys
import textwrap

import pandas as pd
import pytest

import researcher
from conftest import RESEARCHER, make_site
from researcher import jobs
from shared.jobs import JOB_MODULES_ENV, SPEC_KINDS, load_job_modules

pytestmark = pytest.mark.slow

TOY_MODULE = '''
"""A toy job kind: a noisy record count (Gaussian mechanism, sensitivity 1)."""
from dataclasses import dataclass
from typing import ClassVar

from shared.jobs.base import JobSpec, register


@register
@dataclass
class ToyCountSpec(JobSpec):
    KIND: ClassVar[str] = "toy_count"

    dataset: str
    noise: float = 20.0
    delta: float = 1e-5

    def _check_spec(self) -> None:
        self._check_types()
        self._require_positive("noise")
        self._require_delta()

    def planned_event(self, meta):
        import dp_accounting

        return dp_accounting.GaussianDpEvent(self.noise)

    def run(self, data, meta, progress=None) -> dict:
        import numpy as np

        from shared.privacy.reporting import privacy_report

        noisy = len(data) + float(np.random.default_rng().normal(0.0, self.noise))
        return {"answers": [{"query": "count", "value": noisy}], "metrics": {},
                "privacy": privacy_report(self.planned_event(meta), self.delta),
                "_owner_exact_count": len(data)}
'''


@pytest.fixture
def toy_kind(tmp_path, monkeypatch):
    from datasite import job_process, pricing_worker

    plug = tmp_path / "plugins"
    plug.mkdir()
    (plug / "toy_count_kind.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(plug))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(plug), os.environ.get("PYTHONPATH", "")) if p))
    monkeypatch.setenv(JOB_MODULES_ENV, "toy_count_kind")
    assert load_job_modules() == ["toy_count_kind"]
    # pricing and job servers started earlier were started without it
    pricing_worker.shutdown()
    job_process.shutdown()
    yield SPEC_KINDS["toy_count"]
    pricing_worker.shutdown()
    job_process.shutdown()
    SPEC_KINDS.pop("toy_count", None)
    sys.modules.pop("toy_count_kind", None)


def test_a_new_kind_is_one_module(tmp_path, demo_files, toy_kind):
    from shared.privacy.accounting import epsilon

    site = make_site(tmp_path, "hosp-toy")
    try:
        site.upload("bc", table=str(demo_files / "breast_cancer.csv"), label="diagnosis",
                    schema=demo_files / "breast_cancer.schema.yaml", budget_epsilon=5.0,
                    delta=1e-5)
        site.add_user(*RESEARCHER, name="Alice")
        client = researcher.connect(site.url, *RESEARCHER)
        req = client.submit(jobs.Job(toy_kind(dataset="bc", noise=20.0)))

        (info,) = [r for r in site.review() if r["request_id"] == req.id]
        assert info["template"] and info["kind"] == "toy_count" and info["validation"] == "ok"
        import dp_accounting

        priced = epsilon(dp_accounting.GaussianDpEvent(20.0), 1e-5)
        assert info["cost"]["epsilon"] == pytest.approx(priced, rel=1e-6)
        assert info["cost"]["budget"]["fits"]

        summary = site.run(req.id, progress=False)
        assert summary["kind"] == "toy_count" and "event" not in summary["privacy"]
        site.release(req.id)
        result = req.wait(timeout=120, progress=False)
        n = len(pd.read_csv(demo_files / "breast_cancer.csv"))
        assert abs(result.answers[0]["value"] - n) < 200  # 10 sigma
        # the release gate: owner-only keys and the realised event stay on the site
        assert "_owner_exact_count" not in result.raw and "event" not in result.privacy
        entry = site.ledger.entry(req.id)
        assert entry["state"] == "released"
        assert entry["epsilon"] == pytest.approx(priced, rel=1e-6)
        assert site.executions(req.id) == 1
    finally:
        site.down()
