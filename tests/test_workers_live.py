"""``datasite run`` through warm workers on a live datasite (SQLite and PostgreSQL queues):
the researcher's job is queued, run by the worker, released and received as before."""
from __future__ import annotations

import os
import signal
import time

import pytest

import researcher
from datasite import workers as W
from researcher import jobs

from conftest import RESEARCHER

pytestmark = pytest.mark.slow


@pytest.fixture
def worker(live_site):
    p = W.spawn_worker(live_site.home, "w-live")
    try:
        W.wait_ready(live_site.state, [p], timeout_s=120)
    except RuntimeError as e:
        raise AssertionError((live_site.home.root / "worker-w-live.log").read_text()[-3000:]) \
            from e
    yield p
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    live_site.state.remove_worker("w-live")


def _progress_notes(site, rid: str, until: str, timeout: float = 60) -> list[dict]:
    """The researcher's progress notes about ``rid``, oldest first, once ``until`` arrived.
    A worker logs into the site at its first note (a cold syft import and login, in its notes
    thread), so on a loaded host the first job's notes can trail the job by many seconds."""
    from shared.protocol import decode_progress_note

    t = time.monotonic()
    while True:
        notes = sorted(site.client.api.services.notifications.get_all(),
                       key=lambda n: n.created_at)
        mine = [p for p in (decode_progress_note(n.subject) for n in notes)
                if p and p["request"] == rid]
        if any(p["phase"] == until for p in mine) or time.monotonic() - t > timeout:
            return mine
        time.sleep(0.5)


def test_owner_run_is_queued_to_the_warm_worker_and_released(live_site, worker):
    site = researcher.connect(live_site.url, *RESEARCHER)
    job = jobs.DPSGD(dataset="breast_cancer", label="diagnosis", epsilon=1.0, delta=1e-5,
                     epochs=2, batch_size=64)
    req = site.submit(job)
    summary = live_site.run(req.id, progress=False)
    own = live_site.state.request(req.id)
    assert own["worker"] == "w-live" and own["queued_at"] is not None
    assert own["runner_pid"] != worker.pid and live_site.executions(req.id) == 1
    assert summary["kind"] == "dpsgd_table"
    live_site.release(req.id)
    res = site.request(req.id).wait(timeout=60, progress=False)
    assert res.kind == "dpsgd_table"
    notes = _progress_notes(site, req.id, until="ran")
    assert notes[0] == {"request": req.id, "phase": "queued", "position": 1}
    assert {"running", "ran"} <= {n["phase"] for n in notes}
    steps = [n for n in notes if n.get("total")]
    assert all(set(n) == {"request", "phase", "done", "total"} for n in steps)
    assert site.request(req.id).progress()["phase"] == "ran"

    later = site.submit(job)  # --no-wait: queued, then followed with `datasite queue`
    assert live_site.run(later.id, progress=False, wait=False) == {"queued": later.id}
    summary = W.wait_for_run(live_site.state, live_site.ledger, later.id, progress=False)
    assert summary["kind"] == "dpsgd_table"
    assert later.id in [r["request"] for r in
                        W.queue_report(live_site.state)["waiting_for_release"]]

    here = site.submit(job)  # --foreground: the owner's own subprocess, no worker
    live_site.run(here.id, progress=False, foreground=True)
    assert live_site.state.request(here.id)["worker"] is None
