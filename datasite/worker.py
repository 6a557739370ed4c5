"""A warm job worker: takes queued jobs and runs each in a fresh forked process.

    python -m datasite.worker HOME [--worker-id ID] [--gpu 0] [--gpu 0,1 --data-parallel 2]

Started by ``datasite workers`` (one per GPU, see :mod:`datasite.workers`). It imports the job
code once (the fork server of :mod:`datasite.job_process`), then consumes the site's queue
(:mod:`datasite.job_queue`) one job at a time. Each job is run under its request's run lock,
recorded as one execution, and finished exactly as the owner's foreground run finishes it
(result kept for review, or failed and refunded). A heartbeat row says the worker is alive and
what it runs; ``datasite run`` queues jobs only while some worker's heartbeat is fresh.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .config import SiteHome
from .execution import PROGRESS_EVERY_S, execute_once, load_result, record_failed, record_ran

HEARTBEAT_S = 1.0
POLL_S = 0.05  # the consumer's longest wait between looks at an idle queue

log = logging.getLogger("datasite.worker")


class Worker:
    """The site's state and ledger as one worker sees them, and the job it runs."""

    def __init__(self, home: SiteHome, worker_id: str, gpu: str = ""):
        from .ledger import Ledger
        from .state import open_state

        self.home, self.worker_id, self.gpu = home, worker_id, gpu
        self.state = open_state(home)
        self.ledger = Ledger(self.state)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.request_id: str | None = None
        self._stop = threading.Event()
        self._owner = None
        # progress notes go out from one background thread: a slow server never slows a job
        self._notes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notes")

    def note(self, request_id: str, phase: str, **fields) -> None:
        """Tell the researcher (a PySyft notification, sent in the background)."""
        from . import progress_notes
        from .owner import OwnerSite

        if self._owner is None:
            self._owner = OwnerSite(self.home)
        self._notes.submit(progress_notes.send, self._owner, request_id, phase, **fields)

    def beat(self) -> None:
        self.state.heartbeat(self.worker_id, self.host, self.pid, self.gpu, self.request_id)

    def heartbeat_forever(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.beat()
            except Exception:  # pylint: disable=broad-except
                log.exception("heartbeat failed")  # the next beat tries again

    def stop(self) -> None:
        self._stop.set()
        self._notes.shutdown(wait=True)
        self.state.remove_worker(self.worker_id)

    def run(self, request_id: str) -> bool:
        """Run a queued job once; False if its run lock is busy (the queue retries later)."""
        with self.state.run_lock(request_id) as locked:
            if not locked:
                return False
            if not self.state.start_queued(request_id, self.worker_id):
                log.info("request %s is not a queued run any more: skipped", request_id[:8])
                return True
            self.request_id = request_id
            self.beat()
            try:
                self._execute(request_id, json.loads(self.state.request(request_id)
                                                     ["queue_payload"]))
            finally:
                self.request_id = None
                self.beat()
        return True

    def _execute(self, request_id: str, payload: dict) -> None:
        from .job_process import run_forked

        from .progress_notes import Throttle

        last, notes = [0.0], Throttle()
        self.note(request_id, "running")

        def progress(done: int, total: int) -> None:
            t = time.monotonic()
            if t - last[0] >= PROGRESS_EVERY_S or done >= total:
                last[0] = t
                self.state.update_request(request_id, progress_json=json.dumps(
                    {"done": done, "total": total}))
            if notes.due(done, total):
                self.note(request_id, "running", done=done, total=total)

        dataset = json.loads(payload["spec_json"])["dataset"]
        try:
            execute_once(self.state, request_id, dataset, lambda: run_forked(
                payload, on_progress=progress,
                on_start=lambda pid: self.state.update_request(request_id, runner_pid=pid)))
            result = load_result(payload["result_path"])
        except Exception as e:  # pylint: disable=broad-except
            log.warning("request %s failed: %s", request_id[:8], str(e)[-500:])
            record_failed(self.state, self.ledger, request_id, str(e))
            self.note(request_id, "failed")
            return
        record_ran(self.state, request_id, result, Path(payload["result_path"]))
        self.note(request_id, "ran")
        log.info("request %s ran", request_id[:8])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m datasite.worker")
    p.add_argument("home")
    p.add_argument("--worker-id", default=None)
    p.add_argument("--gpu", default="", help="the GPU indices this worker uses, e.g. 0 or "
                                              "0,1 ('' for CPU)")
    p.add_argument("--data-parallel", type=int, default=1,
                   help="train DP-SGD table jobs on this many ranks (one per GPU given)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.data_parallel > 1:  # read by shared.training.distributed in each job
        os.environ["DP_DATASITE_DATA_PARALLEL"] = str(args.data_parallel)
    if args.gpu:  # before anything could initialise CUDA, in this process or the fork server
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU worker never takes a GPU
    from .job_process import warm_up
    from .job_queue import bind, queue_for

    home = SiteHome(Path(args.home))
    worker = Worker(home, args.worker_id or f"{socket.gethostname()}-"
                                                      f"{uuid.uuid4().hex[:6]}", args.gpu)
    bind(worker)
    warm_up()  # imports torch/Opacus/job code once, before the first job
    worker.beat()
    threading.Thread(target=worker.heartbeat_forever, daemon=True).start()
    consumer = queue_for(home).create_consumer(
        workers=1, worker_type="thread", periodic=False, initial_delay=0.02, backoff=1.5,
        max_delay=POLL_S, check_worker_health=False)
    log.info("worker %s ready (gpu=%r)", worker.worker_id, args.gpu)
    try:
        consumer.run()  # until SIGTERM/SIGINT; huey finishes the job in hand first
    finally:
        worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
