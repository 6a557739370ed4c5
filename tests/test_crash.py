"""Crash safety: kills between reserve and release lose nothing and double-spend nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

import researcher
from datasite import lifecycle
from datasite.config import SiteError
from researcher import jobs

from conftest import RESEARCHER

# recovery is ledger logic on either database (test_ledger runs both); PostgreSQL is the
# multi-host deployment's, where a crash matters most
pytestmark = [pytest.mark.slow, pytest.mark.backends("postgres")]


def _job(**kw):
    args = dict(dataset="breast_cancer", label="diagnosis", epsilon=1.0, delta=1e-5, epochs=2,
                batch_size=64)
    args.update(kw)
    return jobs.DPSGD(**args)


def test_server_killed_between_run_and_release(live_site):
    site = researcher.connect(live_site.url, *RESEARCHER)
    req = site.submit(_job())
    live_site.run(req.id, progress=False)
    before = live_site.ledger.spent("breast_cancer")
    assert live_site.ledger.entry(req.id)["state"] == "running"  # reserved, held
    os.killpg(lifecycle.running_pid(live_site.home), signal.SIGKILL)
    time.sleep(1)
    live_site.up()
    live_site._client = None
    assert live_site.ledger.entry(req.id)["state"] == "running"
    assert live_site.ledger.spent("breast_cancer")["jobs"] == before["jobs"]
    live_site.release(req.id)
    after = live_site.ledger.spent("breast_cancer")
    assert after["jobs"] == before["jobs"]  # committed once, not twice
    assert after["epsilon"] == pytest.approx(before["epsilon"], rel=1e-3)
    assert researcher.connect(live_site.url, *RESEARCHER).request(req.id).wait(
        timeout=30, progress=False).kind == "dpsgd_table"


def test_killed_job_refunds_its_reservation(live_site):
    site = researcher.connect(live_site.url, *RESEARCHER)
    req = site.submit(_job(epochs=2000))  # long enough to be killed mid-run
    spent_before = live_site.ledger.spent("breast_cancer")
    errors = []

    def run():
        try:
            live_site.run(req.id, progress=False)
        except SiteError as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        own = live_site.state.request(req.id)
        if own and own["runner_pid"]:
            break
        time.sleep(0.2)
    os.kill(own["runner_pid"], signal.SIGKILL)
    t.join(60)
    assert errors and "failed" in str(errors[0])
    assert live_site.ledger.entry(req.id)["state"] == "refunded"
    assert live_site.ledger.spent("breast_cancer")["jobs"] == spent_before["jobs"]


def test_owner_process_died_mid_job(live_site):
    """The owner's CLI died while its job ran: the next `run` refunds, visibly, then runs."""
    site = researcher.connect(live_site.url, *RESEARCHER)
    req = site.submit(_job(epsilon=0.9))
    spec = live_site.describe_request(req.id)["spec"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    live_site.state.claim_for_run(req.id, dataset="breast_cancer", researcher=RESEARCHER[0])
    live_site.state.set_state(req.id, "running", runner_pid=dead.pid)
    live_site.ledger.reserve(req.id, "breast_cancer", RESEARCHER[0], live_site.price(spec))
    live_site.ledger.start(req.id)
    jobs_before = live_site.ledger.spent("breast_cancer")["jobs"]
    live_site.run(req.id, progress=False)
    assert live_site.ledger.spent("breast_cancer")["jobs"] == jobs_before  # one reservation
    actions = [h["state"] for h in live_site.ledger.history("breast_cancer")
               if h["request_id"] == req.id]
    assert actions == ["running"]
    ok, _ = live_site.ledger.verify()
    assert ok
