"""The one way the private data is touched: :func:`execute_once`, recorded as an execution.

Used by the owner's one-off jobs (``run_once.py``), the round server's rounds (``rounds.py``) and
forget's model updates (``forget.py``); a job runs in its own process so CUDA and the job's
memory never touch the owner's process: forked from the warm fork server of
:mod:`datasite.job_process` (``warm=True``: a long-lived owner process -- the Python API, the
console, a round server -- pays torch's and Opacus' imports once, not per job), or a fresh
``python -m datasite.runner`` (:func:`run_job_subprocess`; a one-shot ``datasite run`` command,
where starting a fork server would import more than the one job needs).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from typing import Callable, TypeVar

from shared.protocol import ResultPayload

from .config import SiteError
from .states import Request

T = TypeVar("T")
PROGRESS_EVERY_S = 0.5  # how often a running job's step count is written to its request row


def execute_once(state, execution_id: str, dataset: str, work: Callable[[], T]) -> T:
    """Run ``work`` (a computation on ``dataset``'s private records) as one recorded execution
    of ``execution_id``: counted whether it succeeds or fails, so `executions` tells the owner
    how often private data was touched."""
    execution = state.start_execution(execution_id, dataset)
    try:
        out = work()
    except BaseException:
        state.finish_execution(execution, "failed")
        raise
    state.finish_execution(execution, "ok")
    return out


def run_claimed_job(state, request_id: str, spec: dict, dataset_dir: str, result_path: Path,
                    progress: bool, context: dict | None = None,
                    backbones: dict | None = None, warm: bool = True) -> ResultPayload:
    """Run a claimed request's job once in its own process and read its result.

    The request must be ``running`` (claimed by ``State.claim_for_run``, which lets a request
    be claimed once); its row gets the job's pid while it runs. ``context`` and ``backbones``:
    see :func:`runner_command`. ``warm``: fork the job from this process's warm fork server
    (module docstring); False: a fresh subprocess."""
    own = state.request(request_id)
    if own is None or own["state"] != Request.RUNNING:
        raise SiteError(f"Request {request_id[:8]} was not claimed to run "
                        f"(state: {own['state'] if own else 'pending'}).")
    last = [0.0]

    def note_progress(done: int, total: int) -> None:  # what `datasite queue` and the console show
        t = time.monotonic()
        if t - last[0] >= PROGRESS_EVERY_S or done >= total:
            last[0] = t
            state.update_request(request_id, progress_json=json.dumps({"done": done,
                                                                       "total": total}))

    run = run_job_forked if warm else run_job_subprocess
    execute_once(state, request_id, spec["dataset"], lambda: run(
        spec, dataset_dir, result_path, progress, context=context, backbones=backbones,
        on_start=lambda pid: state.set_state(request_id, Request.RUNNING, runner_pid=pid),
        on_progress=note_progress))
    return load_result(result_path)


def record_ran(state, request_id: str, result: ResultPayload, result_path: Path) -> dict:
    """The job ran: keep its result for the owner's review; returns its summary."""
    summary = result.summary()
    if result.payload.get("backbone"):  # which registered weights the model started from
        summary["backbone"] = result.payload["backbone"]
    curves = review_curves(result)
    if curves:
        summary["curves"] = curves
    state.set_state(request_id, Request.RAN, result_path=str(result_path),
                    summary_json=json.dumps(summary), progress_json=None)
    return summary


def review_curves(result: ResultPayload) -> list[dict]:
    """Learning curves for the owner's review of a finished run (kept with its summary on the
    site; the console draws them): the training loss per epoch (``_owner_train_loss``: exact,
    on the private training records, so owner-only -- the release gate strips ``_owner_*``
    keys) and, for DP active learning, the DP test accuracy after each round against the
    labelled-set size (its ``rounds``, released too)."""
    curves = []
    loss = result.owner.get("_owner_train_loss")
    if isinstance(loss, list) and any(isinstance(v, (int, float)) for v in loss):
        pts = [(i, float(v)) for i, v in enumerate(loss, 1) if isinstance(v, (int, float))]
        curves.append({"title": "Training loss per epoch (exact, owner only: never released)",
                       "x": [p[0] for p in pts], "y": [p[1] for p in pts], "xlabel": "epoch",
                       "ylabel": "mean training loss"})
    rounds = result.payload.get("rounds")
    if isinstance(rounds, list) and all(isinstance(r, dict) for r in rounds):
        pts = [(int(r["labelled"]), float(r["accuracy"])) for r in rounds
               if isinstance(r.get("labelled"), (int, float))
               and isinstance(r.get("accuracy"), (int, float))]
        if pts:
            curves.append({"title": "Test accuracy after each round (with DP noise)",
                           "x": [p[0] for p in pts], "y": [p[1] for p in pts],
                           "xlabel": "labelled records (after each round)",
                           "ylabel": "test accuracy"})
    return curves


def record_failed(state, ledger, request_id: str, reason: str) -> None:
    """The job failed (or its worker died): the request is failed and its reservation refunded,
    both visibly (the ledger's audit log shows the refund and why)."""
    state.set_state(request_id, Request.FAILED, reason=reason[-2000:], progress_json=None)
    ledger.refund(request_id, reason=reason[:200])


def load_result(path: Path | str) -> ResultPayload:
    """A job's full result, as its runner wrote it (owner-side)."""
    import pickle

    with open(path, "rb") as f:
        return ResultPayload.from_dict(pickle.load(f))


def runner_command(spec: dict, dataset_dir: str, result_path: Path,
                   context: dict | None = None, backbones: dict | None = None) -> list[str]:
    """The job runner's command line (``datasite.runner`` reads it). ``context``: context key
    -> the owner's result file of an earlier release; ``backbones``: name -> {"info": public
    facts, "path": weights file} of the registered backbones the job names
    (``ModelsMixin.backbones_for``)."""
    cmd = [sys.executable, "-m", "datasite.runner", json.dumps(spec), str(dataset_dir),
           str(result_path)]
    if context:
        cmd += ["--context", json.dumps(context)]
    if backbones:
        cmd += ["--backbones", json.dumps(backbones)]
    return cmd


class _ProgressBar:
    """The owner's progress bar over a job's steps (created at the first step report)."""

    def __init__(self, spec: dict, show: bool, on_progress=None):
        self.spec, self.show, self.on_progress, self.bar = spec, show, on_progress, None

    def __call__(self, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)
        if self.show:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=f"job {self.spec['kind']}", unit="step")
            self.bar.update(done - self.bar.n)  # tqdm throttles redraws itself

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_job_forked(spec: dict, dataset_dir: str, result_path: Path, progress: bool,
                   on_start=None, context: dict | None = None,
                   backbones: dict | None = None, on_progress=None) -> None:
    """Run one job in a process forked from this process's warm fork server
    (:func:`datasite.job_process.run_forked`), writing ``result_path``; SiteError with the
    job's traceback if it fails."""
    from .job_process import job_payload, run_forked

    bar = _ProgressBar(spec, progress, on_progress)
    try:
        run_forked(job_payload(spec, dataset_dir, result_path, context, backbones),
                   on_start=on_start, on_progress=bar)
    except RuntimeError as e:
        raise SiteError(str(e)) from None
    finally:
        bar.close()


def run_job_subprocess(spec: dict, dataset_dir: str, result_path: Path, progress: bool,
                       on_start=None, context: dict | None = None,
                       backbones: dict | None = None, on_progress=None) -> None:
    """Run one job (``python -m datasite.runner``) on ``dataset_dir``, writing ``result_path``;
    SiteError with the job's stderr tail if it fails."""
    cmd = runner_command(spec, dataset_dir, result_path, context, backbones)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    errfile = tempfile.TemporaryFile(mode="w+")  # a pipe could fill up and stall the job
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errfile, text=True, env=env)
    if on_start is not None:
        on_start(proc.pid)
    bar = _ProgressBar(spec, progress, on_progress)
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "progress" in msg:
            bar(*msg["progress"])
    code = proc.wait()
    errfile.seek(0)
    err = errfile.read()
    bar.close()
    if code != 0 or not result_path.exists():
        raise SiteError(f"The job failed (exit {code}):\n{err[-3000:]}")
