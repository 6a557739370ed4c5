"""Warm workers and the job queue (datasite/workers.py, worker.py, job_queue.py): each queued
job runs once, in its own forked process; a worker killed mid-job has its job refunded once; jobs
queued while no worker runs survive and run later; concurrent load neither overspends nor loses
nor repeats a job. No PySyft server: the owner's claim-and-reserve is done as ``datasite run``
does it, through the same functions."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from datasite.config import init_site
from datasite.launch import process_alive
from datasite.job_queue import enqueue
from datasite.ledger import Ledger, LedgerError
from datasite.state import open_state
from datasite.states import Request
from datasite import workers as W

DATASET = "bc"


class _Site:
    """An owner's site without its server: one real table, a budget, a queue."""

    def __init__(self, root, name="wk"):
        from datasite.demo_data import breast_cancer_frame
        from datasite.ingest_table import load_table
        from datasite.storage import write_private

        self.home = init_site(name, home=root / "site")
        self.state = open_state(self.home)
        self.ledger = Ledger(self.state)
        csv = root / "bc.csv"
        breast_cancer_frame().to_csv(csv, index=False)
        df, meta = load_table(csv, "diagnosis", DATASET)
        self.meta = meta
        (root / "private").mkdir()
        path = write_private(root / "private", meta, df)
        self.state.add_dataset(DATASET, meta.kind, meta.to_json(), str(path))
        self.ledger.set_budget(DATASET, 20.0, 1e-5)
        self.procs: list[subprocess.Popen] = []

    def queue(self, spec: dict, researcher: str = "r@uni.edu") -> str:
        """Claim, price, reserve and queue a job exactly as ``OwnerSite.run`` does."""
        from shared.privacy.accounting import event_to_json
        from shared.privacy.pricing import planned_event

        rid = uuid.uuid4().hex
        spec = dict(spec, dataset=DATASET)
        assert self.state.claim_for_run(rid, dataset=DATASET, researcher=researcher,
                                        func_name="job", spec_json=json.dumps(spec))
        try:
            self.ledger.reserve(rid, DATASET, researcher,
                                event_to_json(planned_event(spec, self.meta)))
        except LedgerError:
            self.state.set_state(rid, Request.FAILED, reason="over budget")
            raise
        self.ledger.start(rid)
        W.save_queued(self.state, rid, spec, self.state.dataset(DATASET)["path"],
                      self.home.results / f"{rid}.pkl")
        enqueue(self.home, rid)
        return rid

    def supervise(self) -> tuple[subprocess.Popen, list[str]]:
        """`datasite workers wk --cpus 1` in its own session, and the lines it prints."""
        p = subprocess.Popen([sys.executable, "-m", "datasite.cli", "workers", "wk", "--cpus",
                              "1", "--home", str(self.home.root)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.procs.append(p)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True).start()
        return p, lines

    def start_worker(self, wid: str) -> subprocess.Popen:
        p = W.spawn_worker(self.home, wid, log_path=self.home.root / f"{wid}.log")
        self.procs.append(p)
        return p

    def wait_workers(self, n: int, timeout: float = 120) -> None:
        try:
            W.wait_ready(self.state, self.procs, n, timeout)
        except RuntimeError as e:
            raise AssertionError(self.logs()) from e

    def wait_states(self, rids, states=(Request.RAN, Request.FAILED), timeout=180) -> None:
        t = time.monotonic()
        while any(self.state.request(r)["state"] not in states for r in rids):
            assert time.monotonic() - t < timeout, self.logs()
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in self.home.root.glob("*.log"))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        # and the workers a killed supervisor started (a failed test must leave none running)
        for w in self.state.workers():
            try:
                with open(f"/proc/{w['pid']}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if b"datasite.worker" in cmd and str(self.home.root).encode() in cmd:
                os.killpg(w["pid"], signal.SIGKILL)


@pytest.fixture
def site(tmp_path):
    s = _Site(tmp_path)
    yield s
    s.stop()


STATS = dict(kind="dp_stats", delta=1e-6,
             queries=[{"type": "count", "epsilon": 0.1}])


def _dpsgd(epochs: int) -> dict:
    return dict(kind="dpsgd_table", label="diagnosis", epsilon=0.5, delta=1e-6, epochs=epochs,
                batch_size=64)


def test_queued_jobs_run_once_each_in_a_fresh_process(site):
    a, b = site.queue(STATS), site.queue(_dpsgd(2))
    enqueue(site.home, a)  # a duplicate delivery of the same run
    worker = site.start_worker("w-a")
    site.wait_states([a, b])
    for rid in (a, b):
        own = site.state.request(rid)
        assert own["state"] == Request.RAN, own["reason"]
        assert site.state.execution_count(rid) == 1
        assert own["worker"] == "w-a" and own["runner_pid"] not in (None, worker.pid)
        assert json.loads(own["summary_json"])["kind"] == json.loads(own["spec_json"])["kind"]
    assert site.state.request(a)["runner_pid"] != site.state.request(b)["runner_pid"]
    assert W.queue_report(site.state)["waiting_for_release"]


def test_jobs_queued_with_no_worker_run_when_one_starts(site):
    rids = [site.queue(STATS) for _ in range(3)]
    time.sleep(1)
    rep = W.queue_report(site.state)
    assert [q["position"] for q in rep["queued"]] == [1, 2, 3]
    assert all(site.state.request(r)["started_at"] is None for r in rids)
    site.start_worker("w-late")
    site.wait_states(rids)
    assert all(site.state.request(r)["state"] == Request.RAN for r in rids)


def test_recovery_never_refunds_a_job_whose_worker_is_alive(site, monkeypatch):
    """The run lock is the liveness signal; without it (defence off) recovery would refund a
    live job, which could then still produce a result for a refunded reservation."""
    rid = site.queue(_dpsgd(2000))
    site.start_worker("w-live")
    t = time.monotonic()
    while not site.state.request(rid)["progress_json"]:
        assert time.monotonic() - t < 120, site.logs()
        time.sleep(0.1)
    assert W.recover_dead_runs(site.state, site.ledger) == []
    import datasite.state as S

    monkeypatch.setattr(S, "RUN_LOCK", False)  # defence off
    assert W.recover_dead_runs(site.state, site.ledger) == [rid]  # the live job is refunded


def test_orphaned_queue_entries_are_queued_again(site):
    rid = site.queue(STATS)
    from datasite.job_queue import queue_for

    queue_for(site.home).flush()  # the queue lost it (its owner died before enqueue)
    time.sleep(0.2)
    assert W.requeue_orphans(site.home, site.state, older_than_s=0.1) == [rid]
    assert W.requeue_orphans(site.home, site.state, older_than_s=0.1) == []  # queued now
    site.start_worker("w-orphan")
    site.wait_states([rid])
    assert site.state.request(rid)["state"] == Request.RAN


def test_concurrent_load_overspends_nothing_and_runs_each_job_once(site):
    """50 submissions from 5 researchers at once against 2 workers; the budget admits ~half."""
    site.ledger.set_budget(DATASET, 3.0, 1e-5)
    site.start_worker("w-1"), site.start_worker("w-2")
    site.wait_workers(2)
    accepted, refused, lock = [], [], threading.Lock()
    submitted_at = {}

    def submit(i):
        spec = dict(STATS, queries=[{"type": "count", "epsilon": 0.1 + 0.001 * i}])
        try:
            t = time.monotonic()
            rid = site.queue(spec, researcher=f"r{i % 5}@uni.edu")
            with lock:
                accepted.append(rid)
                submitted_at[rid] = t
        except LedgerError:
            with lock:
                refused.append(i)

    t0 = time.monotonic()
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(50)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    ran_at = {}
    while len(ran_at) < len(accepted):
        for r in accepted:
            if r not in ran_at and site.state.request(r)["state"] in (Request.RAN,
                                                                      Request.FAILED):
                ran_at[r] = time.monotonic()
        assert time.monotonic() - t0 < 300, site.logs()
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    assert accepted and refused and len(accepted) + len(refused) == 50
    failed = {r[:8]: site.state.request(r)["reason"] for r in accepted
              if site.state.request(r)["state"] != Request.RAN}
    assert not failed, failed
    assert all(site.state.execution_count(r) == 1 for r in accepted)
    spent = site.ledger.spent(DATASET)
    assert spent["jobs"] == len(accepted) and spent["epsilon"] <= 3.0
    assert site.ledger.verify()[0]
    lat = sorted(ran_at[r] - submitted_at[r] for r in accepted)
    print(f"\n{len(accepted)} jobs ({len(refused)} refused) in {elapsed:.1f} s: "
          f"{60 * len(accepted) / elapsed:.0f} jobs/min with 2 workers; submit -> ran p50 "
          f"{lat[len(lat) // 2]:.2f} s, p95 {lat[int(0.95 * (len(lat) - 1))]:.2f} s")


def test_a_data_parallel_worker_trains_on_two_ranks_with_the_one_process_accounting(site):
    """``datasite workers --gpus 0,1 --data-parallel`` on CPU (gloo): the job trains on two
    ranks, and its released privacy report is the one a single process reports."""
    single = site.queue(_dpsgd(2))
    site.start_worker("w-one")
    site.wait_states([single])
    site.stop()
    site.procs.append(W.spawn_worker(site.home, "w-ddp", data_parallel=2,
                                     log_path=site.home.root / "w-ddp.log"))
    parallel = site.queue(_dpsgd(2))
    site.wait_states([parallel], timeout=300)
    from datasite.execution import load_result

    one, two = (site.state.request(r) for r in (single, parallel))
    assert two["state"] == Request.RAN, two["reason"]
    a, b = (load_result(r["result_path"]) for r in (one, two))
    assert b.privacy["event"] == a.privacy["event"]
    assert b.privacy["epsilon"] == a.privacy["epsilon"]
    assert (a.owner["_owner_ranks"], b.owner["_owner_ranks"]) == (1, 2)


def test_a_worker_killed_mid_job_is_refunded_once_and_replaced(site):
    """`datasite workers NAME --cpus 1`, then kill -9 its worker mid-job: the job process dies
    with it (no result is written), the supervisor refunds the job once and starts a new
    worker, which takes the next job; SIGTERM stops it all."""
    sup, lines = site.supervise()

    def worker_pid(not_pid=None, timeout=120) -> int:
        t = time.monotonic()
        while True:
            alive = [w["pid"] for w in W.alive(site.state) if w["pid"] != not_pid]
            if alive:
                return alive[0]
            assert time.monotonic() - t < timeout and sup.poll() is None, "".join(lines)
            time.sleep(0.1)

    first = worker_pid()
    rid = site.queue(_dpsgd(2000))
    t = time.monotonic()
    while not site.state.request(rid)["progress_json"]:
        assert time.monotonic() - t < 120, "".join(lines) + site.logs()
        time.sleep(0.1)
    job_pid = site.state.request(rid)["runner_pid"]
    assert W.queue_report(site.state)["running"][0]["progress"]["done"] >= 1
    os.kill(first, signal.SIGKILL)
    t = time.monotonic()
    while process_alive(job_pid):  # the job dies with its worker's fork server
        assert time.monotonic() - t < 10, "the job outlived its worker"
        time.sleep(0.05)
    second = worker_pid(not_pid=first)  # a new worker, from the supervisor
    site.wait_states([rid], states=(Request.FAILED,))
    assert "died" in site.state.request(rid)["reason"]
    assert site.ledger.entry(rid)["state"] == "refunded"
    assert site.ledger.spent(DATASET)["jobs"] == 0
    assert not (site.home.results / f"{rid}.pkl").exists()
    assert site.ledger.verify()[0]
    nxt = site.queue(STATS)
    site.wait_states([nxt])
    own = site.state.request(nxt)
    assert own["state"] == Request.RAN, own["reason"]
    assert site.state.execution_count(nxt) == 1 and second != first
    out = "".join(lines)
    assert f"request {rid[:8]}: its worker died; refunded" in out and "restarting it" in out
    assert out.count("refunded") == 1
    os.killpg(sup.pid, signal.SIGTERM)
    assert sup.wait(timeout=60) == 0
    assert W.alive(site.state) == []  # the workers are gone, with their heartbeat rows


def test_a_site_killed_with_jobs_queued_and_running_picks_up_after_restart(site):
    """The host goes down (kill -9 of the supervisor, its worker and the job in hand) with jobs
    still queued; `datasite workers` started again refunds the job that was running, once,
    visibly, and runs every queued job once."""
    sup, _ = site.supervise()
    site.wait_workers(1)
    running = site.queue(_dpsgd(2000))
    t = time.monotonic()
    while not site.state.request(running)["progress_json"]:
        assert time.monotonic() - t < 120, site.logs()
        time.sleep(0.1)
    queued = [site.queue(STATS) for _ in range(3)]
    job_pid = site.state.request(running)["runner_pid"]
    workers = [w["pid"] for w in W.alive(site.state)]
    for pid in [sup.pid, *workers]:  # every process of the site at once, no clean-up
        os.killpg(pid, signal.SIGKILL)
    t = time.monotonic()
    while process_alive(job_pid):
        assert time.monotonic() - t < 10, "the job outlived its worker"
        time.sleep(0.05)
    assert site.state.request(running)["state"] == Request.RUNNING  # nobody has noticed yet
    assert all(site.state.request(r)["started_at"] is None for r in queued)

    sup, lines = site.supervise()  # the site comes back
    site.wait_states([running, *queued])
    assert "died" in site.state.request(running)["reason"]
    assert site.ledger.entry(running)["state"] == "refunded"
    for rid in queued:
        own = site.state.request(rid)
        assert own["state"] == Request.RAN, own["reason"]
        assert site.state.execution_count(rid) == 1
    assert site.ledger.spent(DATASET)["jobs"] == len(queued) and site.ledger.verify()[0]
    os.killpg(sup.pid, signal.SIGTERM)
    assert sup.wait(timeout=60) == 0
    out = "".join(lines)
    assert out.count("refunded") == 1 and f"request {running[:8]}" in out, out


def test_cpu_workers_divide_the_cores_between_their_jobs(tmp_path, monkeypatch):
    """N CPU workers' jobs get cores // N intra-op threads each (not a pool over every core per
    job, which makes concurrent jobs spin on each other); an owner's OMP_NUM_THREADS wins."""
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert [W.threads_per_worker(n) for n in (1, 2, 3, 32)] == [16, 8, 5, 1]
    seen = []
    monkeypatch.setattr(W.subprocess, "Popen", lambda cmd, **kw: seen.append(kw["env"]))
    home = init_site("thr", home=tmp_path / "site")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    W.spawn_worker(home, "w0", threads=8)
    W.spawn_worker(home, "w1", gpu="0")  # a GPU worker: torch's own default
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    W.spawn_worker(home, "w2", threads=8)
    assert [e.get("OMP_NUM_THREADS") for e in seen] == ["8", None, "3"]
