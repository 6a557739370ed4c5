"""The job queue: reserved jobs waiting for a warm worker, kept by huey.

Why huey: it keeps its queue in the database the site already runs, so a site gains no new
service. The default one-machine site keeps it in a SQLite file in the site home
(``queue.db``, durable: jobs queued before a restart run after it). A site whose state is in
PostgreSQL keeps it there too, so workers on other hosts that point at the same database (and
see the same site home, for the data and results) take jobs from the same queue. procrastinate
would need PostgreSQL on every single-machine site; Celery, Dramatiq and RQ a broker.

The queue only carries which request to run; what the owner resolved for it (dataset
directory, result file, context and backbone files) is in the request's row. Whether a job may run is decided by the
owner's tables, not by the queue: a worker takes a run only under the request's run lock and
only if it was never started (``State.start_queued``), so a duplicate delivery or a retry runs
nothing twice.
"""
from __future__ import annotations

from huey import PostgresHuey, SqliteHuey
from huey.exceptions import RetryTask

from .config import SiteHome

TASK_NAME = "dpds_execute"
# A worker that finds the run lock held (recovery looking at it, or another worker running a
# duplicate delivery) tries again shortly; a run already taken is then skipped by start_queued.
# Nothing else is retried: a job that failed was refunded, and runs again only if the owner says.
LOCK_RETRY_DELAY_S = 0.5


_RUNNER = None  # the worker of this process (datasite/worker.py binds itself)


def bind(runner) -> None:
    """Make ``runner`` (its ``run(request_id) -> bool``) run the jobs this process consumes."""
    global _RUNNER
    _RUNNER = runner


def queue_for(home: SiteHome):
    """The site's huey instance, with the job task registered (``queue.run_request``)."""
    cfg = home.load()
    name = f"dpds-{cfg.server_uid[:16]}"
    if cfg.db_url and cfg.db_url.startswith("postgresql"):
        dsn = "postgresql://" + cfg.db_url.split("://", 1)[1]
        # blocking=False: syft 0.9.5 pins psycopg 3.1, whose notifies() has no timeout; the
        # consumer polls instead (every POLL_S at most, see datasite/worker.py)
        q = PostgresHuey(name, dsn=dsn, blocking=False, table_prefix="dpds_queue",
                         results=False)
    else:
        q = SqliteHuey(name, filename=str(home.root / "queue.db"), results=False)

    @q.task(name=TASK_NAME)
    def execute(request_id: str) -> None:
        if _RUNNER is None:
            raise RuntimeError("no datasite worker in this process (start one with `datasite "
                               "workers`)")
        if not _RUNNER.run(request_id):
            raise RetryTask(delay=LOCK_RETRY_DELAY_S)

    q.run_request = execute  # not `execute`: Huey.execute is how its consumer runs a task
    return q


def enqueue(home: SiteHome, request_id: str) -> None:
    """Put a claimed, reserved run (its ``queue_payload`` saved) on the site's queue."""
    queue_for(home).run_request(request_id)


def pending_ids(home: SiteHome) -> set[str]:
    """The requests whose job waits in the queue (not yet taken by a worker)."""
    return {t.args[0] for t in queue_for(home).pending() if t.args}
