"""One job in a fresh process forked from a warm parent (the worker's fork server).

A worker (``datasite/worker.py``) starts a multiprocessing *forkserver* once, with torch,
Opacus and the job code imported (:data:`PRELOAD`); each job is a new process forked from that
server, so it starts in milliseconds instead of paying the imports, and it exits when the job
ends. Why a process per job rather than a warm process that runs job after job: the fork
server never reads private data, so each job starts from a parent that holds none, and one
job's records, model or CUDA context can never be seen by the next; the worker process itself
only reads the result file. The fork server is single-threaded (forking the multi-threaded
worker would copy its locks mid-use) and touches no GPU (CUDA does not survive a fork): the
job initialises CUDA itself.

Where the environment names a warm launcher (:data:`datasite.launch.LAUNCHER_ENV`, the test
suite's), the fork server itself is forked from that launcher, which imports :data:`PRELOAD`
once for every fork server it starts (:func:`datasite.launch.start_server`); it is still
this process's own server: it takes this process's environment, working directory and output,
and it exits when this process does.
"""
from __future__ import annotations

import ctypes
import io
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from multiprocessing import (connection, forkserver, popen_forkserver, reduction,
                             resource_tracker, spawn, util)
from multiprocessing.context import ForkServerProcess, set_spawning_popen

from .launch import LAUNCHER_ENV, process_alive, start_server

# Imported once by the fork server: what every job needs before it touches data.
PRELOAD = ["torch", "opacus", "shared.runner", "shared.training", "shared.privacy.accounting",
           "shared.stats", "shared.dpal", "shared.removal", "datasite.runner",
           "datasite.job_process",
           # imported lazily by the jobs; left out, every forked job paid them again
           # (benchmarks/workflow.py: ~1 s for a DP statistics job, ~3 s for DP-SGD)
           "opendp.prelude",  # shared.stats.mechanisms
           "torch._dynamo",  # the first torch.optim optimizer built
           "sklearn.compose", "sklearn.impute", "sklearn.preprocessing",  # schema_transformer
           # pandas.read_parquet of a table job's data: 0.3 s per job when left to each job
           "pyarrow.parquet", "pyarrow.dataset", "pyarrow.pandas_compat",
           "shared.training.selection", "shared.privacy.tuning"]  # every DP-SGD job's report

_CTX = None
_NOT_FOR_JOBS = ("init_main_from_path", "init_main_from_name")
# Epsilons this process's jobs and pricings computed (event JSON, delta) -> epsilon, handed to
# the next job: each DP-SGD job checks its cached sigma (a refined PLD, ~0.2 s), which its
# pricing checked already and the next job of the same kind checks again. Kept apart from the
# accountant's own memo: only jobs read them, and a job that took a wrong one would report an
# event the ledger's commit refuses.
_JOB_EPSILONS: "dict[tuple[str, float], float]" = {}
_JOB_EPSILONS_SIZE = 64
_JOB_EPSILONS_LOCK = threading.Lock()


class _ForkServer(forkserver.ForkServer):
    """multiprocessing's fork server, or, where the environment names a warm launcher, the
    same server forked from that launcher (its pid is then not our child: it is watched with
    ``kill(pid, 0)`` and the launcher reaps it)."""

    def __init__(self):
        super().__init__()
        self._lock = threading.RLock()  # ensure_running may hand over to the stdlib's
        self._preload_modules = PRELOAD
        self._launched = False

    def ensure_running(self):
        with self._lock:
            if self._launched:
                if process_alive(self._forkserver_pid):
                    return
                os.close(self._forkserver_alive_fd)
                self._forget()
            launcher = os.environ.get(LAUNCHER_ENV)
            if self._forkserver_pid is not None or not launcher:
                super().ensure_running()
                return
            resource_tracker.ensure_running()  # its fd goes to every job, as in the stdlib
            self._start_launched(launcher)

    def _start_launched(self, launcher: str) -> None:
        address = connection.arbitrary_address("AF_UNIX")
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(address)
            os.chmod(address, 0o600)
            listener.listen()
            # we hold the write end of "alive"; the server exits when no process holds it
            alive_r, alive_w = os.pipe()
            null = os.open(os.devnull, os.O_RDONLY)  # the stdlib's server closes its stdin too
            try:
                pid = start_server(launcher, __name__, [null, 1, 2, listener.fileno(), alive_r],
                                   list(self._preload_modules)).pid
            except BaseException:
                os.close(alive_w)
                raise
            finally:
                os.close(alive_r)
                os.close(null)
        self._forkserver_address, self._forkserver_alive_fd = address, alive_w
        self._forkserver_pid, self._launched = pid, True

    def _stop_unlocked(self):
        if not self._launched:
            super()._stop_unlocked()
            return
        os.close(self._forkserver_alive_fd)  # asks it to stop, as in the stdlib
        deadline = time.monotonic() + 30
        while process_alive(self._forkserver_pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            os.unlink(self._forkserver_address)
        except FileNotFoundError:
            pass
        self._forget()

    def _forget(self) -> None:
        self._forkserver_address = self._forkserver_alive_fd = self._forkserver_pid = None
        self._launched = False


_SERVER = _ForkServer()


class _JobPopen(popen_forkserver.Popen):
    """multiprocessing's forkserver launch, less the owner's ``__main__``: by default each
    child re-imports the parent's main script first, so an owner's script without an
    ``if __name__ == "__main__"`` guard would run again inside every job (and fail there). A job
    runs :func:`child`, which needs nothing from ``__main__``. The rest is CPython 3.11's
    ``popen_forkserver.Popen._launch`` (the project pins Python 3.11)."""

    def _launch(self, process_obj):
        prep_data = {k: v for k, v in spawn.get_preparation_data(process_obj._name).items()
                     if k not in _NOT_FOR_JOBS}
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = _SERVER.connect_to_new_process(self._fds)
        _parent_w = os.dup(w)  # the child's sentinel of its parent, as in the original
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class JobProcess(ForkServerProcess):
    """A process forked from the warm fork server that does not re-run the owner's main."""

    @staticmethod
    def _Popen(process_obj):  # pylint: disable=invalid-name
        return _JobPopen(process_obj)


def context():
    """multiprocessing's forkserver context, for its pipes (a job is a :class:`JobProcess`)."""
    global _CTX
    if _CTX is None:
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(PRELOAD)
    return _CTX


def warm_up() -> None:
    """Start the fork server now (it imports :data:`PRELOAD`), so the first job is warm too."""
    p = JobProcess(target=_noop)
    p.start()
    p.join()


def _noop() -> None:
    return None


def shutdown() -> None:
    """Stop this process's fork server; the next job starts a new one. The server reads the
    environment (``DP_DATASITE_JOB_MODULES``, ``PYTHONPATH``, thread counts) and imports the
    job code when it starts, so an owner process that changed them restarts it (the pricing
    server has the same rule, :func:`datasite.pricing_worker.shutdown`)."""
    _SERVER._stop()  # pylint: disable=protected-access


def serve_launched(fds: list[int], preload: list[str]) -> None:
    """The fork server's loop in a process forked from the warm launcher
    (:func:`datasite.launch.start_server`; ``fds``: its listening socket and the read end of
    its "alive" pipe), which imported ``preload`` with its own environment: what a fresh server
    would read from this one's is read again first (the site's job kinds, torch's thread count),
    then multiprocessing's loop (:func:`multiprocessing.forkserver.main`) runs until the
    client exits."""
    listener_fd, alive_r = fds
    from shared.jobs import load_job_modules

    load_job_modules()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))
    forkserver.main(listener_fd, alive_r, preload)


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the fork server (its parent) exits: a worker killed
    mid-job takes its fork server down, and the job must not outlive them to write a result
    nobody records (a job that reports progress would also die of the broken pipe; a silent
    one, in its privacy report or final evaluation, only of this)."""
    # The fork server exits only when no process holds its "alive" pipe, and every process it
    # forks inherits that pipe's write end: holding it, the job would keep its own parent alive
    # after the worker died, and the signal below would never come. A job forks nothing from
    # the server, so it lets go (tests/test_job_process.py fails without this).
    server = getattr(forkserver, "_forkserver", None)
    if getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)  # pylint: disable=protected-access
        server._forkserver_alive_fd = None  # pylint: disable=protected-access
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the worker's recovery still refunds, the result is ignored
        return
    if os.getppid() != parent:  # the fork server died before the signal was armed
        os._exit(1)


def child(spec_json: str, dataset_dir: str, result_file: str, context_json: str | None,
          backbones_json: str | None, conn, epsilons: list | None = None) -> None:
    """The job process: run the job, report progress, the epsilons it computed and the
    outcome on ``conn``. ``epsilons``: ones earlier jobs computed (see ``_JOB_EPSILONS``)."""
    _die_with_parent()
    from shared.privacy.accounting import kept_keys, kept_since, remember_epsilon

    from .runner import run_to_file

    try:
        for event_json, delta, eps in epsilons or []:
            remember_epsilon(event_json, delta, eps)
        mark = kept_keys()
        run_to_file(spec_json, dataset_dir, result_file, context_json, backbones_json,
                    lambda done, total: conn.send(("progress", int(done), int(total))))
        conn.send(("epsilons", kept_since(mark, _JOB_EPSILONS_SIZE)))
        conn.send(("done",))
    except BaseException:  # pylint: disable=broad-except
        conn.send(("error", traceback.format_exc()[-3000:]))
        os._exit(1)


def job_payload(spec: dict, dataset_dir, result_path, context: dict | None = None,
                backbones: dict | None = None) -> dict:
    """What :func:`run_forked` (and a queued job's row) carries: the spec and the paths the
    owner resolved (``context``: context key -> result file; ``backbones``: name -> info and
    weights path)."""
    return {"spec_json": json.dumps(spec, sort_keys=True), "dataset_dir": str(dataset_dir),
            "result_path": str(result_path),
            "context_json": json.dumps(context) if context else None,
            "backbones_json": json.dumps(backbones) if backbones else None}


def keep_job_epsilons(entries: list) -> None:
    """Keep (event JSON, delta, epsilon) computed on the owner's side (a job, a pricing) for
    the jobs this process forks next (see ``_JOB_EPSILONS``)."""
    with _JOB_EPSILONS_LOCK:
        for event_json, delta, eps in entries:
            key = (str(event_json), float(delta))
            _JOB_EPSILONS.pop(key, None)
            _JOB_EPSILONS[key] = float(eps)
        while len(_JOB_EPSILONS) > _JOB_EPSILONS_SIZE:
            _JOB_EPSILONS.pop(next(iter(_JOB_EPSILONS)))


def run_forked(payload: dict, on_start=None, on_progress=None) -> None:
    """Run the job described by ``payload`` (spec, dataset_dir, result_path, context,
    backbones) in a process forked from the warm server; RuntimeError with the job's
    traceback if it fails."""
    ctx = context()
    recv, send = ctx.Pipe(duplex=False)
    with _JOB_EPSILONS_LOCK:
        known = [(e, d, eps) for (e, d), eps in _JOB_EPSILONS.items()]
    proc = JobProcess(target=child, args=(
        payload["spec_json"], payload["dataset_dir"], payload["result_path"],
        payload.get("context_json"), payload.get("backbones_json"), send, known))
    proc.start()
    send.close()
    if on_start is not None:
        on_start(proc.pid)
    outcome = None
    while True:
        # whether it was alive *before* looking at the pipe: a process that sends its outcome
        # and exits while we wait is seen alive here, so the loop looks again; one already dead
        # here has everything it sent in the pipe, so an empty pipe then is the end
        alive = proc.is_alive()
        try:
            if not recv.poll(0.5 if alive else 0):
                if alive:
                    continue
                break
            msg = recv.recv()
        except EOFError:
            break
        if msg[0] == "progress" and on_progress is not None:
            on_progress(msg[1], msg[2])
        elif msg[0] == "epsilons":
            keep_job_epsilons(msg[1])
        elif msg[0] in ("done", "error"):
            outcome = msg
    proc.join()
    if outcome is None or outcome[0] != "done" or proc.exitcode != 0:
        detail = outcome[1] if outcome and outcome[0] == "error" else \
            f"the job process ended with exit code {proc.exitcode}"
        raise RuntimeError(f"The job failed: {detail}")
    if not os.path.exists(payload["result_path"]):
        raise RuntimeError("The job ended without writing its result.")
