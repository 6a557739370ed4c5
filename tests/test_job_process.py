"""The workers' fork server: it imports what jobs would otherwise import lazily, so a forked job
starts warm (benchmarks/workflow.py: opendp, torch._dynamo and sklearn cost a forked DP
statistics job ~1 s and a DP-SGD table job ~3 s when each job imported them itself); and a job
process never outlives its worker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from datasite import job_process
from datasite.execution import process_alive

# imported inside job code (shared.stats.mechanisms, the first torch.optim optimizer, the
# table preprocessing), not at the top of any PRELOAD module
LAZY = ("opendp.prelude", "torch._dynamo", "sklearn.compose", "sklearn.impute",
        "sklearn.preprocessing")


def _missing(conn) -> None:
    conn.send([m for m in LAZY if m not in sys.modules])


def test_a_forked_job_starts_with_the_lazy_imports_already_loaded():
    ctx = job_process.context()
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_missing, args=(send,))
    p.start()
    send.close()
    missing = recv.recv()
    p.join()
    assert p.exitcode == 0 and missing == []


# A "worker" that forks one job which sends nothing and sleeps: only PR_SET_PDEATHSIG can end
# it when the worker dies (a job that reports progress would also die of the broken pipe).
_WORKER = textwrap.dedent("""
    import sys, time
    from datasite import job_process

    def job():
        job_process._die_with_parent()
        time.sleep(120)

    if __name__ == "__main__":
        job_process.PRELOAD[:] = ["datasite.job_process"]  # fast: this job needs no torch
        p = job_process.context().Process(target=job)
        p.start()
        print(p.pid, flush=True)
        time.sleep(120)
""")


def test_a_job_process_dies_with_its_worker_even_when_silent(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.getcwd()))
    job_pid = int(worker.stdout.readline())
    try:
        time.sleep(0.5)  # the job is past _die_with_parent
        assert process_alive(job_pid)
        worker.kill()  # kill -9: no clean-up runs in the worker
        worker.wait()
        t = time.monotonic()
        while process_alive(job_pid):
            assert time.monotonic() - t < 10, "the job outlived its worker"
            time.sleep(0.05)
    finally:
        if process_alive(job_pid):
            os.kill(job_pid, signal.SIGKILL)
