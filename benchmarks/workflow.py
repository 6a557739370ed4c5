"""Submit -> released result on a real HTTP datasite, against raw PySyft 0.9.5, in one run.

    .venv/bin/python benchmarks/workflow.py [--repeats 3] [--profile] [--torch-threads 1] \
        2>bench.log

Same machine, same breast-cancer table, owner approval automated everywhere:
* raw PySyft: submit a syft function (a column mean), ``request.approve()``, call it
  (``benchmarks/workflow_raw.py``);
* the product: ``site.submit(job)``, ``owner.run``, ``owner.release``, ``request.wait()`` for
  (a) DP statistics (one mean: the cheapest job), (b) a 1-epoch and (c) a 20-epoch DP-SGD table
  job, each in three modes: *fresh runner* (``owner.run`` in the foreground starts a fresh
  ``python -m datasite.runner``, as a one-shot ``datasite run`` does), *owner fork* (the
  foreground job forks from this owner process's warm fork server, as the Python API, the
  console and round servers do) and *warm worker* (a ``python -m datasite.worker`` started
  beforehand; ``owner.run`` queues the job and waits for it);
* direct: ``shared.runner.run_job`` in this process on the same private data (imports and
  calibrated sigmas warm; its privacy report's PLDs composed afresh, as a job process does).

Both servers and the worker stay up for the whole run; each repeat runs raw PySyft, direct,
every mode back to back, so a shared machine's load hits every column alike.
Prints medians of ``--repeats`` (after untimed warm-ups): direct s, end-to-end s, overhead
(e2e - direct), e2e / raw PySyft of the same rounds; then where the end-to-end seconds go
(submit, owner.run split at the queue and the job process's recorded execution, release,
wait) and the issue's targets. Calibrated sigmas come from the site's cache after the warm-up
(as after review). Each mode has its own copy of the table, so both ledgers grow alike.
``--profile``: cProfile of one warm-worker 1-epoch DP-SGD run/release/wait in this process.
``--torch-threads 1``: steadier numbers on a small, shared machine (torch's intra-op threads
wait on each other when other processes hold the cores: a table step can take 10x longer).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_raw import COLUMN, raw_pysyft  # noqa: E402  (this script's folder)

# mode -> its dataset
MODES = {"fresh runner": "bc_fg", "owner fork": "bc_fork", "warm worker": "bc_warm"}
PHASES = ("submit", "owner", "queue", "job", "post", "release", "wait")
PHASE_DOC = {"submit": "site.submit (validate, render, syft code request)",
             "owner": "owner.run until the job is queued or its process starts (syft lookup, "
                      "checks, price, reserve, budget notes)",
             "queue": "queued -> the worker starts the job (enqueue, huey pickup, run lock)",
             "job": "the job process's recorded execution (fork/spawn + read data + job + "
                    "write result)",
             "post": "owner.run after it (worker records RAN, owner polls, reads summary)",
             "release": "owner.release (commit, syft deposit, budget notes)",
             "wait": "request.wait (syft lookup + fetch of the released result)"}


def jobs_to_run(dataset: str):
    from researcher import jobs

    def stats(r):
        return jobs.Statistics(dataset=dataset).mean(COLUMN, bounds=(0, 50), epsilon=0.5)

    def dpsgd(epochs):
        return lambda r: jobs.DPSGD(dataset=dataset, label="diagnosis", epsilon=2.0, delta=1e-5,
                                    epochs=epochs, batch_size=64, seed=r)

    return [("(a) DP stats (1 mean)", stats), ("(b) DP-SGD 1 epoch", dpsgd(1)),
            ("(c) DP-SGD 20 epochs", dpsgd(20))]


def _epoch(t) -> float:
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()  # SQLite drops tz


def execution_span(owner, request_id: str) -> tuple[float, float]:
    """Wall-clock start and end of the request's one recorded execution (the job process)."""
    from sqlalchemy import select

    from datasite.state import executions

    with owner.state.engine.connect() as c:
        row = c.execute(select(executions).where(executions.c.request_id == request_id)
                        ).mappings().one()
    return _epoch(row["started_at"]), _epoch(row["finished_at"])


def end_to_end(owner, site, job, mode: str) -> dict[str, float]:
    """One submit -> released result in ``mode`` (:data:`MODES`), split into :data:`PHASES`
    (wall-clock seconds)."""
    foreground = mode != "warm worker"
    owner.warm_jobs = mode != "fresh runner"
    t0 = time.time()
    req = site.submit(job)
    t1 = time.time()
    owner.run(req.id, progress=False, foreground=foreground)
    t2 = time.time()
    owner.release(req.id)
    t3 = time.time()
    req.wait(timeout=300, poll=0.2, progress=False)
    t4 = time.time()
    own = owner.state.request(req.id)
    assert (own["worker"] is None) == foreground, own["worker"]  # ran where we meant it to
    e0, e1 = execution_span(owner, req.id)
    q = _epoch(own["queued_at"]) if own["queued_at"] is not None else e0
    return {"submit": t1 - t0, "owner": q - t1, "queue": e0 - q, "job": e1 - e0, "post": t2 - e1,
            "release": t3 - t2, "wait": t4 - t3, "total": t4 - t0}


@contextlib.contextmanager
def warm_worker(owner):
    from datasite import workers as W

    p = W.spawn_worker(owner.home, "bench-w")
    try:
        waited = W.wait_ready(owner.state, [p])
        print(f"# warm worker ready after {waited:.1f} s (not in any timing)", file=sys.stderr)
        yield p
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        owner.state.remove_worker("bench-w")


def profile_once(owner, site, job) -> None:
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    end_to_end(owner, site, job, "warm worker")
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(
        r"datasite|researcher|shared|syft/client|pricing", 35)
    print("\n## cProfile: one warm-worker DP-SGD 1-epoch submit -> result (this process only)")
    print("\n".join(s.getvalue().splitlines()[:70]))


def med(xs) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="OMP_NUM_THREADS for this process and every process it starts (the "
                         "server, worker and job processes inherit it); default: torch's own")
    args = ap.parse_args()
    if args.torch_threads:  # before torch is imported anywhere
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.torch_threads)

    import researcher
    from datasite.config import init_site
    from datasite.demo_data import breast_cancer_frame, schema_path, write_breast_cancer_csv
    from datasite.lifecycle import free_port
    from datasite.owner import OwnerSite
    from datasite.storage import read_private
    from shared.privacy.accounting import clear_pld_cache
    from shared.runner import run_job

    base = Path(tempfile.mkdtemp(prefix="dpds-bench-"))
    print(f"# site home, logs: {base}", file=sys.stderr)
    owner = OwnerSite(init_site("bench", home=base / "bench", port=free_port()))
    owner.up()
    raw, direct, rows, phases = {}, {}, {}, {}
    try:
        csv = write_breast_cancer_csv(base / "bc.csv")
        with contextlib.redirect_stdout(sys.stderr):
            for mode in MODES:  # one dataset per mode: each mode's ledger grows the same way
                owner.upload(MODES[mode], table=str(csv), schema=schema_path(csv),
                             budget_epsilon=1000.0, delta=1e-5)
            owner.add_user("bench@uni.edu", "bench-password")
        site = researcher.connect(owner.url, "bench@uni.edu", "bench-password")
        data, meta = read_private(Path(owner.state.dataset("bc_fg")["path"]))
        cases = {mode: jobs_to_run(ds) for mode, ds in MODES.items()}
        labels = [c[0] for c in cases["fresh runner"]]
        with raw_pysyft(breast_cancer_frame(), free_port()) as raw_once, warm_worker(owner):
            for mode in MODES:  # warm-up: pricing server, clients, the worker's first job
                end_to_end(owner, site, cases[mode][0][1](0), mode)
            for i, label in enumerate(labels):
                spec = cases["fresh runner"][i][1](0).spec.to_dict()
                run_job(spec, data, meta)  # warm: imports, calibration cache
                runs = {mode: [] for mode in MODES}
                # interleaved, so that the load of a shared machine hits every column alike
                for r in range(args.repeats):
                    raw.setdefault(label, []).append(raw_once())
                    # the job's own run composes its privacy report's PLDs from nothing (a job
                    # process is new); here they would come from this process's PLD cache,
                    # filled by the run before, and "direct" would leave that work out
                    clear_pld_cache()
                    t = time.perf_counter()
                    run_job(spec, data, meta)
                    direct.setdefault(label, []).append(time.perf_counter() - t)
                    for mode in MODES:
                        runs[mode].append(end_to_end(owner, site, cases[mode][i][1](r), mode))
                for mode in MODES:
                    phases[label, mode] = {k: med([x[k] for x in runs[mode]])
                                           for k in runs[mode][0]}
                    rows[label, mode] = [x["total"] for x in runs[mode]]
            if args.profile:
                profile_once(owner, site, cases["warm worker"][1][1](99))
    finally:
        owner.down()
    report(args, raw, direct, rows, phases, labels)


def report(args, raw, direct, rows, phases, labels) -> None:
    every = [x for label in labels for x in raw[label]]
    print(f"\n## submit -> result, median of {args.repeats}, interleaved (cpus: "
          f"{os.cpu_count()}, torch threads: {args.torch_threads or 'default'}, load avg now "
          f"{os.getloadavg()[0]:.1f})")
    part = {k: med([x[k] for x in every]) for k in every[0]}
    print(f"raw PySyft 0.9.5 ({COLUMN} mean), all {len(every)} runs: {part['total']:.2f} s = "
          f"submit {part['submit']:.2f} + approve {part['approve']:.2f} + call "
          f"{part['call']:.2f}")
    print(f"{'job':<24}{'mode':<13}{'direct s':>9}{'e2e s':>8}{'overhead s':>11}"
          f"{'raw s':>7}{'x raw':>7}   all e2e")
    for label in labels:
        d, rs = med(direct[label]), med([x["total"] for x in raw[label]])
        for mode in MODES:
            e = med(rows[label, mode])
            print(f"{label:<24}{mode:<13}{d:>9.2f}{e:>8.2f}{e - d:>11.2f}{rs:>7.2f}"
                  f"{e / rs:>7.1f}   {', '.join(f'{x:.2f}' for x in rows[label, mode])}")
    print("  raw s: raw PySyft's submit -> result in the same rounds as this job's runs")
    print("\n## where the end-to-end seconds go (medians per phase)")
    print(f"{'job':<24}{'mode':<13}" + "".join(f"{p:>9}" for p in PHASES))
    for label in labels:
        for mode in MODES:
            ph = phases[label, mode]
            print(f"{label:<24}{mode:<13}" + "".join(f"{ph[p]:>9.2f}" for p in PHASES))
    for p in PHASES:
        print(f"  {p}: {PHASE_DOC[p]}")
    print("  (sigmas come from the site's calibration cache, warm as after review; job - direct"
          " = the job process's own overhead)")
    trivial = labels[0]
    for w in ("warm worker", "owner fork"):
        ratio = med(rows[trivial, w]) / med([x["total"] for x in raw[trivial]])
        print(f"\n## issue 15 targets ({w})")
        print(f"trivial job e2e <= 1.5x raw PySyft: {ratio:.1f}x -> "
              f"{'PASS' if ratio <= 1.5 else 'FAIL'}")
        for label in labels[1:]:
            over = med(rows[label, w]) - med(direct[label])
            print(f"{label} overhead over its own run <= 1 s: {over:.2f} s -> "
                  f"{'PASS' if over <= 1 else 'FAIL'}")


if __name__ == "__main__":
    main()
