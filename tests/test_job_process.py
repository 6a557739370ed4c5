"""The workers' fork server: it imports what jobs would otherwise import lazily, so a forked job
starts warm (benchmarks/workflow.py: opendp, torch._dynamo and sklearn cost a forked DP
statistics job ~1 s and a DP-SGD table job ~3 s when each job imported them itself; pyarrow's
parquet reader 0.3 s per table job); and a job process never outlives its worker."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from datasite import job_process
from datasite.launch import process_alive
from datasite.launch import LAUNCHER_ENV

# imported inside job code (shared.stats.mechanisms, the first torch.optim optimizer, the
# table preprocessing), not at the top of any PRELOAD module
LAZY = ("opendp.prelude", "torch._dynamo", "sklearn.compose", "sklearn.impute",
        "sklearn.preprocessing", "pyarrow.parquet", "pyarrow.dataset")  # + reading a table


def _missing(conn) -> None:
    conn.send([m for m in LAZY if m not in sys.modules])


def _ask_a_job(target, read=lambda sent: sent) -> tuple:
    """Fork a job that runs ``target(conn)``: ``read`` of what it sends (read while it still
    runs), and its exit code."""
    recv, send = job_process.context().Pipe(duplex=False)
    p = job_process.JobProcess(target=target, args=(send,))
    p.start()
    send.close()
    got = read(recv.recv())
    p.join()
    return got, p.exitcode


def test_a_forked_job_starts_with_the_lazy_imports_already_loaded():
    assert _ask_a_job(_missing) == ([], 0)


# A "worker" that forks one job which sends nothing and sleeps: only PR_SET_PDEATHSIG can end
# it when the worker dies (a job that reports progress would also die of the broken pipe).
_WORKER_JOB = textwrap.dedent("""
    import time
    from datasite import job_process

    def job():
        job_process._die_with_parent()
        time.sleep(120)
""")
_WORKER = textwrap.dedent("""
    import sys, time
    from datasite import job_process
    from worker_job import job  # a job's code comes from a module, never from __main__

    if __name__ == "__main__":
        job_process.PRELOAD[:] = ["datasite.job_process"]  # fast: this job needs no torch
        p = job_process.JobProcess(target=job)
        p.start()
        print(p.pid, flush=True)
        time.sleep(120)
""")


@pytest.mark.parametrize("launcher", [True, False], ids=["launched", "fresh"])
def test_a_job_process_dies_with_its_worker_even_when_silent(tmp_path, launcher):
    """Both ways of starting the fork server: forked from the warm launcher (the tests') and
    multiprocessing's own fresh interpreter (a deployment's)."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    (tmp_path / "worker_job.py").write_text(_WORKER_JOB)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    if not launcher:
        env.pop(LAUNCHER_ENV)
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env=env)
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


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_a_foreground_job_forks_from_the_owner_process_warm_server(tmp_path):
    """The owner's own process (the Python API, the console, a round server) runs a foreground
    job in a process forked from its fork server, not in a fresh interpreter that imports torch
    again: the job's parent is the fork server; ``warm=False`` (a one-shot CLI ``run``) starts
    ``python -m datasite.runner`` as our own child. Both write a result and report progress;
    a job killed mid-run is a failure either way."""
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    from datasite.config import SiteError
    from datasite.execution import load_result, run_job_forked, run_job_subprocess
    from datasite.storage import write_private
    from shared.data import TABLE, DatasetMeta

    df = load_breast_cancer(as_frame=True).frame.rename(columns=lambda c: c.replace(" ", "_"))
    df = pd.DataFrame(df).rename(columns={"target": "diagnosis"})
    meta = DatasetMeta(name="bc", kind=TABLE, n_records=len(df), label="diagnosis", labels=[0, 1],
                       features={c: "float64" for c in df if c != "diagnosis"})
    (tmp_path / "private").mkdir()
    dataset_dir = str(write_private(tmp_path / "private", meta, df))
    spec = dict(kind="dpsgd_table", dataset="bc", label="diagnosis", epsilon=1.0, delta=1e-5,
                epochs=2, batch_size=64, learning_rate=0.1)
    server = _parent_of_a_fork()
    for run, warm in ((run_job_forked, True), (run_job_subprocess, False)):
        steps = []
        out = tmp_path / f"result-{warm}.pkl"
        run(spec, dataset_dir, out, False, on_progress=lambda done, total: steps.append(done))
        assert load_result(out).kind == "dpsgd_table" and steps
        if warm:  # the epsilons the job computed come back for the next job, and are right
            from shared.privacy import accounting

            kept = dict(job_process._JOB_EPSILONS)  # pylint: disable=protected-access
            assert kept
            (event_json, delta), eps = list(kept.items())[-1]
            accounting.clear_pld_cache()
            assert eps == accounting.epsilon_of_json(event_json, delta)

        parents, pids = [], []

        def started(pid):
            pids.append(pid)
            parents.append(_parent_of(pid))  # alive: 2,000 epochs take minutes

        def stop(done, total):
            if done and pids:
                os.kill(pids[0], signal.SIGKILL)
                pids.clear()

        with pytest.raises(SiteError, match="failed"):
            run(dict(spec, epochs=2000), dataset_dir, tmp_path / f"long-{warm}.pkl", False,
                on_start=started, on_progress=stop)
        assert parents == ([server] if warm else [os.getpid()])
        assert server != os.getpid()


def _parent_of_a_fork() -> int:
    """The parent of a process the fork server forks now: the fork server."""
    return _ask_a_job(_send_pid, _parent_of)[0]


def _send_pid(conn) -> None:
    conn.send(os.getpid())
    time.sleep(0.5)  # alive while the test reads its parent


# An owner's script with no ``if __name__ == "__main__"`` guard: multiprocessing's own forkserver
# children re-import the parent's main script first, which would run the owner's script again
# inside each job. argv[1]: "job" (job_process.JobProcess) or "plain" (multiprocessing's).
_UNGUARDED = textwrap.dedent("""
    import os, sys
    from datasite import job_process

    with open(os.environ["RAN_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    job_process.PRELOAD[:] = ["datasite.job_process"]  # fast: this job needs no torch
    ctx = job_process.context()
    p = (job_process.JobProcess if sys.argv[1] == "job" else ctx.Process)(target=os.getpid)
    p.start()
    p.join()
    print(p.exitcode)
""")


def test_a_job_never_reruns_the_owners_main_script(tmp_path):
    script = tmp_path / "owner_script.py"
    script.write_text(_UNGUARDED)
    runs = {}
    for how in ("job", "plain"):
        log = tmp_path / f"{how}.log"
        out = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True,
                             timeout=120, env=dict(os.environ, PYTHONPATH=os.getcwd(),
                                                   RAN_LOG=str(log)))
        runs[how] = (log.read_text().split(), out.stdout.split()[-1:])
    assert len(runs["job"][0]) == 1 and runs["job"][1] == ["0"]  # ran once; the job ended well
    # defence off (multiprocessing's own launch): the child runs the script again
    assert len(runs["plain"][0]) == 2 and runs["plain"][1] != ["0"]


# A process that runs jobs, set up at run time as an owner's process may be (environment, the
# site's own job kinds, working directory, umask) before its first job starts the fork server.
_PROBE = textwrap.dedent("""
    import os, sys

    def probe(conn):
        conn.send({"mark": os.environ.get("DPDS_MARK"), "cwd": os.getcwd(),
                   "umask": os.umask(0), "kind_loaded": "probe_kind" in sys.modules})
""")
_CLIENT = textwrap.dedent("""
    import json, os, sys
    from datasite import job_process
    from client_probe import probe

    if __name__ == "__main__":
        job_process.PRELOAD[:] = ["datasite.job_process", "shared.jobs"]  # no torch: fast
        os.environ["DPDS_MARK"] = "set at run time"
        os.environ["DP_DATASITE_JOB_MODULES"] = "probe_kind"
        os.chdir(sys.argv[1])
        os.umask(0o027)
        recv, send = job_process.context().Pipe(duplex=False)
        p = job_process.JobProcess(target=probe, args=(send,))
        p.start()
        send.close()
        seen = recv.recv()
        p.join()
        print(json.dumps(dict(seen, server=job_process._SERVER._forkserver_pid,
                              exitcode=p.exitcode)), flush=True)
        sys.stdin.read()  # the test reads the server's parent while this process lives
""")


@pytest.mark.parametrize("launcher", [True, False], ids=["launched", "fresh"])
def test_a_launched_fork_server_is_its_clients_own(tmp_path, launcher, warm_server_launcher):
    """A fork server forked from the warm launcher runs jobs as multiprocessing's own would:
    with the client's environment as it is when the first job starts, the site's job kinds of
    ``DP_DATASITE_JOB_MODULES`` (imported again in the server: the launcher imported the job
    code with its own environment), the client's working directory and umask; and it exits when
    its client does. Only its parent differs: the launcher, not the client."""
    (tmp_path / "probe_kind.py").write_text("")
    (tmp_path / "work").mkdir()
    script = tmp_path / "client.py"
    script.write_text(_CLIENT)
    (tmp_path / "client_probe.py").write_text(_PROBE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), str(tmp_path)]))
    if not launcher:
        env.pop(LAUNCHER_ENV)
    client = subprocess.Popen([sys.executable, str(script), str(tmp_path / "work")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        seen = json.loads(client.stdout.readline())
        server_parent = _parent_of(seen["server"])
    finally:
        client.stdin.close()
    assert client.wait(timeout=60) == 0
    assert seen["exitcode"] == 0 and seen["mark"] == "set at run time"
    assert seen["kind_loaded"] and seen["cwd"] == str(tmp_path / "work")
    assert seen["umask"] == 0o027
    assert server_parent == (warm_server_launcher._proc.pid if launcher else client.pid)
    t = time.monotonic()
    while process_alive(seen["server"]):
        assert time.monotonic() - t < 10, "the fork server outlived its client"
        time.sleep(0.05)


def test_an_epsilon_a_job_hands_back_never_prices_a_reservation_or_a_release():
    """Attack: a job process (it runs on private data) hands back a tiny epsilon for an event.
    Only later jobs read it; the ledger's reserve and commit still compose their own."""
    from datasite.ledger import Ledger
    from shared.privacy import accounting

    event_json = accounting.event_to_json(accounting.dpsgd_event(0.1, 1.2, 10))
    accounting.clear_pld_cache()
    job_process.keep_job_epsilons([(event_json, 1e-5, 1e-9)])
    try:
        assert Ledger.epsilon_of([event_json], 1e-5) > 0.1
    finally:
        job_process._JOB_EPSILONS.pop((event_json, 1e-5))  # pylint: disable=protected-access
