"""Running a site's warm workers, recovering from their deaths, and showing the queue.

``datasite workers NAME --gpus 0,1`` runs :func:`supervise`: one worker process per GPU (or
``--cpus N`` CPU workers), restarted when one dies, and :func:`recover_dead_runs` every
second. ``datasite run`` queues a job when :func:`alive` finds a worker and waits for it with
:func:`wait_for_run`; ``datasite queue`` prints :func:`queue_report`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

from .config import SiteError, SiteHome
from .execution import record_failed
from .state import now
from .states import Request

STALE_AFTER_S = 5.0  # a worker whose heartbeat is older than this is taken for dead
RECOVER_EVERY_S = 1.0


def alive(state) -> list[dict]:
    """Workers whose heartbeat is fresh."""
    cutoff = now() - timedelta(seconds=STALE_AFTER_S)
    return [w for w in state.workers() if _aware(w["heartbeat_at"]) >= cutoff]


def _aware(t):
    from datetime import timezone

    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)  # SQLite drops the zone


def save_queued(state, request_id: str, spec: dict, dataset_dir: str, result_path,
                context: dict | None = None, backbones: dict | None = None) -> None:
    """Record a claimed, reserved run as queued, with what its worker needs (the owner resolved
    every path: the queue's message is only the request id)."""
    from .job_process import job_payload

    payload = job_payload(spec, dataset_dir, result_path, context, backbones)
    state.update_request(request_id, queued_at=now(), queue_payload=json.dumps(payload))


def recover_dead_runs(state, ledger, only: str | None = None) -> list[str]:
    """Fail and refund (once, visibly) every run a worker started and no one runs any more.

    A worker holds the request's run lock for the whole job; PostgreSQL (advisory lock) and the
    OS (flock) free it when the worker dies. So a started, still-running request whose lock can
    be taken has no worker: its job process died with it (it is killed with its fork server),
    and no result was recorded. ``only``: look at this request alone. Returns the ids
    refunded."""
    done = []
    rows = [state.request(only)] if only else state.queue_rows()
    for row in rows:
        if row is None or row["state"] != Request.RUNNING or row["started_at"] is None:
            continue
        rid = row["request_id"]
        with state.run_lock(rid) as locked:
            if not locked:
                continue  # its worker is alive and running it
            own = state.request(rid)  # re-read under the lock: it may have just finished
            if own["state"] != Request.RUNNING or own["started_at"] is None:
                continue
            record_failed(state, ledger, rid, f"worker {own['worker']} died while running the "
                                              "job; its reservation was refunded")
            done.append(rid)
    return done


def requeue_orphans(home: SiteHome, state, older_than_s: float = 5.0) -> list[str]:
    """Put back on the queue every queued run the queue does not hold (its owner process died
    between saving the run and enqueuing it). A run taken twice still runs once
    (``State.start_queued``)."""
    from .job_queue import enqueue, pending_ids

    cutoff = now() - timedelta(seconds=older_than_s)
    orphans = [r["request_id"] for r in state.queue_rows()
               if r["state"] == Request.RUNNING and r["queued_at"] is not None
               and r["started_at"] is None and _aware(r["queued_at"]) < cutoff]
    if not orphans:
        return []
    held = pending_ids(home)
    out = [rid for rid in orphans if rid not in held]
    for rid in out:
        enqueue(home, rid)
    return out


def queue_report(state) -> dict:
    """Queued (with position), running (with progress and worker) and ran-but-unreleased
    jobs, and the live workers."""
    queued, running, ran = [], [], []
    for row in state.queue_rows():
        item = {"request": row["request_id"], "researcher": row["researcher"],
                "dataset": row["dataset"], "kind": (json.loads(row["spec_json"] or "{}")
                                                     .get("kind"))}
        if row["state"] == Request.RAN:
            ran.append(item)
        elif row["queued_at"] is None:
            continue  # a foreground run or a schedule, not a queued job
        elif row["started_at"] is None:
            queued.append(dict(item, position=len(queued) + 1))
        else:
            running.append(dict(item, worker=row["worker"],
                                progress=json.loads(row["progress_json"] or "null")))
    return {"queued": queued, "running": running, "waiting_for_release": ran,
            "workers": [{k: w[k] for k in ("worker_id", "host", "pid", "gpu", "request_id")}
                        for w in alive(state)]}


def render_queue(rep: dict) -> str:
    lines = [f"workers: {len(rep['workers'])} alive"]
    for w in rep["workers"]:
        lines.append(f"  {w['worker_id']} on {w['host']} (pid {w['pid']}, gpu "
                     f"{w['gpu'] or 'none'}): {(w['request_id'] or 'idle')[:8]}")
    lines.append(f"queued: {len(rep['queued'])}")
    for q in rep["queued"]:
        lines.append(f"  #{q['position']} {q['request'][:8]} {q['kind']} on {q['dataset']} "
                     f"for {q['researcher']}")
    lines.append(f"running: {len(rep['running'])}")
    for r in rep["running"]:
        p = r["progress"]
        step = f"step {p['done']}/{p['total']}" if p else "starting"
        lines.append(f"  {r['request'][:8]} {r['kind']} on {r['worker']}: {step}")
    lines.append(f"waiting for release: {len(rep['waiting_for_release'])}")
    for r in rep["waiting_for_release"]:
        lines.append(f"  {r['request'][:8]} {r['kind']} for {r['researcher']}")
    return "\n".join(lines)


def wait_for_run(state, ledger, request_id: str, progress: bool = True,
                 poll_s: float = 0.1) -> dict:
    """Wait until a queued job has run; its summary, or SiteError with why it failed."""
    from tqdm import tqdm

    bar, checked = None, 0.0
    try:
        while True:
            own = state.request(request_id)
            if own["state"] == Request.RAN:
                return json.loads(own["summary_json"])
            if own["state"] == Request.FAILED:
                raise SiteError(f"The job failed: {own['reason']}")
            if own["state"] != Request.RUNNING:
                raise SiteError(f"Request {request_id[:8]} is {own['state']}.")
            p = json.loads(own["progress_json"] or "null")
            if progress and p:
                if bar is None:
                    bar = tqdm(total=p["total"], desc=f"job {request_id[:8]}", unit="step")
                bar.update(p["done"] - bar.n)
            if own["started_at"] is not None and time.monotonic() - checked >= RECOVER_EVERY_S:
                checked = time.monotonic()
                recover_dead_runs(state, ledger, only=request_id)  # its worker may have died
            time.sleep(poll_s)
    finally:
        if bar is not None:
            bar.close()


def worker_command(home: SiteHome, worker_id: str, gpu: str,
                   data_parallel: int = 1) -> list[str]:
    """``gpu``: the CUDA_VISIBLE_DEVICES of the worker ("" for CPU, "0,1" for a data-parallel
    worker of ``data_parallel`` ranks)."""
    return [sys.executable, "-m", "datasite.worker", str(home.root), "--worker-id", worker_id,
            "--gpu", gpu, "--data-parallel", str(data_parallel)]


def spawn_worker(home: SiteHome, worker_id: str, gpu: str = "", data_parallel: int = 1,
                 log_path=None, threads: int | None = None) -> subprocess.Popen:
    """Start one worker process (its own session, output appended to ``log_path``, default
    ``HOME/worker-ID.log``); ``threads``: its jobs' intra-op threads (torch, BLAS), unless the
    environment already sets OMP_NUM_THREADS."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads and "OMP_NUM_THREADS" not in env:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log_path or os.path.join(home.root, f"worker-{worker_id}.log"), "ab") as log:
        return subprocess.Popen(worker_command(home, worker_id, gpu, data_parallel), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)


def threads_per_worker(n_cpu_workers: int) -> int:
    """The cores each of ``n_cpu_workers`` CPU workers' jobs may use: a thread pool per process
    over all cores makes concurrent jobs spin waiting on each other (a step several times
    slower), so the cores are divided between them."""
    return max(1, (os.cpu_count() or 1) // max(1, n_cpu_workers))


def wait_ready(state, procs: list[subprocess.Popen], n: int = 1, timeout_s: float = 300) -> float:
    """Wait until ``n`` workers beat (they import torch first); seconds waited. RuntimeError if
    one of ``procs`` exits or the time runs out."""
    t = time.monotonic()
    while len(alive(state)) < n:
        if any(p.poll() is not None for p in procs) or time.monotonic() - t > timeout_s:
            raise RuntimeError(f"{n} worker(s) did not start; see their worker-*.log files")
        time.sleep(0.2)
    return time.monotonic() - t


def supervise(home: SiteHome, gpus: list[str], log_dir=None, stop_after_s: float | None = None,
              out=print, data_parallel: int = 1) -> None:
    """Run one worker per entry of ``gpus`` ('' = a CPU worker; "0,1" = one worker on two GPUs,
    with ``data_parallel`` 2) until SIGINT/SIGTERM: restart any that dies, after refunding the
    job it was running."""
    from .ledger import Ledger
    from .state import open_state

    state = open_state(home)
    ledger = Ledger(state)
    log_dir = log_dir or home.root
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    host = os.uname().nodename
    wids = [f"{host}-w{i}" + (f"-gpu{gpu.replace(',', '+')}" if gpu else "-cpu")
            for i, gpu in enumerate(gpus)]
    procs: dict[str, subprocess.Popen] = {}
    cpu_threads = threads_per_worker(sum(1 for g in gpus if not g))

    def start(i: int) -> None:
        procs[wids[i]] = spawn_worker(home, wids[i], gpus[i], data_parallel,
                                      os.path.join(log_dir, f"worker-{i}.log"),
                                      threads=None if gpus[i] else cpu_threads)
        out(f"worker {wids[i]} started (pid {procs[wids[i]].pid}, gpu {gpus[i] or 'none'})")

    for i in range(len(gpus)):
        start(i)
    t0 = time.monotonic()
    try:
        while not stopping and (stop_after_s is None or time.monotonic() - t0 < stop_after_s):
            time.sleep(RECOVER_EVERY_S)
            for rid in recover_dead_runs(state, ledger):
                out(f"request {rid[:8]}: its worker died; refunded")
            for rid in requeue_orphans(home, state):
                out(f"request {rid[:8]}: queued but not in the queue; queued again")
            for i, wid in enumerate(wids):
                if procs[wid].poll() is not None:
                    out(f"worker {wid} exited ({procs[wid].returncode}); restarting it")
                    state.remove_worker(wid)
                    start(i)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # huey: finish the job in hand, then stop
        for wid, p in procs.items():
            try:
                p.wait(timeout=600)
            except subprocess.TimeoutExpired:
                p.kill()
            state.remove_worker(wid)
