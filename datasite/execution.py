"""Running a job in its own subprocess, and checking whether such a process is still alive.

Shared by the owner's one-off jobs (owner.py) and the round server's rounds (rounds.py), so
neither has to import the other.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .config import SiteError


def process_alive(pid: int) -> bool:
    """True if a process with this pid exists (also one owned by another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_job_subprocess(spec: dict, dataset_dir: str, result_path: Path, progress: bool,
                       on_start=None, context: dict | None = None) -> None:
    """Run one job (``python -m datasite.runner``) on ``dataset_dir``, writing ``result_path``;
    SiteError with the job's stderr tail if it fails."""
    from tqdm import tqdm

    cmd = [sys.executable, "-m", "datasite.runner", json.dumps(spec), dataset_dir, str(result_path)]
    if context:
        cmd.append(json.dumps(context))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    errfile = tempfile.TemporaryFile(mode="w+")  # a pipe could fill up and stall the job
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errfile, text=True, env=env)
    if on_start is not None:
        on_start(proc.pid)
    bar = None
    for line in proc.stdout:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "progress" in msg and progress:
            done, total = msg["progress"]
            if bar is None:
                bar = tqdm(total=total, desc=f"job {spec['kind']}", unit="step")
            bar.update(done - bar.n)  # tqdm throttles redraws itself
    code = proc.wait()
    errfile.seek(0)
    err = errfile.read()
    if bar is not None:
        bar.close()
    if code != 0 or not result_path.exists():
        raise SiteError(f"The job failed (exit {code}):\n{err[-3000:]}")
