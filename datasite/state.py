"""The owner's own records, in the datasite's database (SQLite file or PostgreSQL).

PySyft's database holds the low side; these tables hold what only the owner knows: where the
real data is, and every request's life on the private side, including each execution on
private data (the proof that nothing ran twice).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import datetime, timezone

from sqlalchemy import (Column, DateTime, ForeignKey, Integer, MetaData, String, Table, Text,
                        create_engine, event, func, insert, select, text, update)
from sqlalchemy.engine import Engine

from .config import SiteHome
from .states import CLAIMABLE, Request, check_request_move

metadata = MetaData()

RUN_LOCK = True  # tests switch it off to show two concurrent runs would both execute

datasets = Table(
    "dpds_datasets", metadata,
    Column("name", String(200), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("meta_json", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

requests = Table(
    "dpds_requests", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("dataset", String(200)),
    Column("researcher", String(320)),
    Column("func_name", String(200)),
    Column("spec_json", Text),
    Column("state", String(20), nullable=False),  # running, ran, failed, released, denied
    Column("result_path", Text),
    Column("reason", Text),
    Column("summary_json", Text),
    Column("runner_pid", Integer),  # the job process while state is 'running'
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # the queue (datasite/job_queue.py): when it was queued, taken by which worker, how far
    Column("queued_at", DateTime(timezone=True)),
    Column("queue_payload", Text),  # JSON: what the owner resolved for the worker (paths)
    Column("started_at", DateTime(timezone=True)),  # set once, by the worker that runs it
    Column("worker", String(200)),
    Column("progress_json", Text),  # {"done": i, "total": n} while it runs
)

# Warm job workers (datasite/worker.py): each writes a heartbeat while it is alive.
job_workers = Table(
    "dpds_workers", metadata,
    Column("worker_id", String(200), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("gpu", String(20)),  # CUDA_VISIBLE_DEVICES of the worker ("" for CPU)
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("request_id", String(64)),  # the job it runs now, if any
)

researchers = Table(
    "dpds_researchers", metadata,
    Column("email", String(320), primary_key=True),
    Column("verify_key", String(64), nullable=False),  # to address private notifications
)

# Released removal-enabled models: what the owner needs to update them when a record is forgotten.
models = Table(
    "dpds_models", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("dataset", String(200), nullable=False),
    Column("researcher", String(320), nullable=False),
    Column("spec_json", Text, nullable=False),
    Column("model_json", Text, nullable=False),      # owner copy: weights + residual state
    Column("record_ids_json", Text, nullable=False),  # the records it currently reflects
    Column("version", Integer, nullable=False),
    Column("status", String(20), nullable=False),     # active, withdrawn
    Column("reason", Text),                           # why it was withdrawn (if it was)
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Owner's choices that outlive a process (e.g. what budget notes disclose).
settings = Table(
    "dpds_settings", metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

# One price per request: pricing a spec can take seconds, and a review must not redo it.
prices = Table(
    "dpds_prices", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("spec_json", Text, nullable=False),      # the spec that was priced
    Column("event_json", Text),                     # None when pricing failed
    Column("record_events_json", Text),             # per-record alternatives, or None
    Column("error", Text),                          # why pricing failed
    Column("priced_at", DateTime(timezone=True), nullable=False),
)

executions = Table(
    "dpds_executions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), ForeignKey("dpds_requests.request_id"), nullable=False),
    Column("dataset", String(200), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("outcome", String(20)),  # ok, failed
)


def now() -> datetime:
    return datetime.now(timezone.utc)


def engine_for(site: SiteHome) -> Engine:
    cfg = site.load()
    url = cfg.db_url or f"sqlite:///{site.root / 'state.db'}"
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    engine = create_engine(url, future=True)
    if url.startswith("sqlite"):
        # SQLite ignores SELECT ... FOR UPDATE; take the write lock when a transaction begins
        # so that two owners' processes cannot both claim the same request.
        @event.listens_for(engine, "connect")
        def _no_implicit_transactions(dbapi_conn, _record):
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA busy_timeout = 600000")  # writers queue, never fail

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    migrate(engine, metadata)
    return engine


def migrate(engine: Engine, meta: MetaData) -> None:
    """Create missing tables and add missing nullable columns (additive, idempotent).

    Schema changes are additive by rule: a new column must be nullable, so a home written by
    an older version opens unchanged in a newer one. Anything else needs a hand-written step.
    """
    from sqlalchemy import inspect

    meta.create_all(engine)
    with engine.begin() as c:  # inspect on the same connection: SQLite holds one writer
        insp = inspect(c)
        for table in meta.sorted_tables:
            have = {col["name"] for col in insp.get_columns(table.name)}
            for col in table.columns:
                if col.name in have:
                    continue
                if not col.nullable:
                    raise RuntimeError(f"cannot add NOT NULL column {table.name}.{col.name}")
                ddl = col.type.compile(dialect=engine.dialect)
                c.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {ddl}')


class State:
    """Small typed accessors over the owner's tables."""

    def __init__(self, engine: Engine):
        self.engine = engine

    # datasets
    def add_dataset(self, name: str, kind: str, meta_json: str, path: str) -> None:
        with self.engine.begin() as c:
            c.execute(insert(datasets).values(name=name, kind=kind, meta_json=meta_json,
                                              path=path, created_at=now()))

    def remove_dataset(self, name: str) -> None:
        with self.engine.begin() as c:
            c.execute(datasets.delete().where(datasets.c.name == name))

    def replace_dataset(self, name: str, kind: str, meta_json: str, path: str) -> None:
        """Point ``name`` at a new version of its data (one update: old or new, never half)."""
        with self.engine.begin() as c:
            c.execute(update(datasets).where(datasets.c.name == name)
                      .values(kind=kind, meta_json=meta_json, path=path, created_at=now()))

    def dataset(self, name: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(select(datasets).where(datasets.c.name == name)).mappings().first()
        return dict(row) if row else None

    def dataset_names(self) -> list[str]:
        with self.engine.connect() as c:
            return [r[0] for r in c.execute(select(datasets.c.name).order_by(datasets.c.name))]

    # requests
    def request(self, request_id: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(select(requests).where(requests.c.request_id == request_id)).mappings().first()
        return dict(row) if row else None

    def requests_on(self, dataset: str, states) -> list[dict]:
        """The owner's rows of the requests on ``dataset`` that are in one of ``states``."""
        with self.engine.connect() as c:
            q = select(requests).where(requests.c.dataset == dataset,
                                       requests.c.state.in_([str(s) for s in states]))
            return [dict(r) for r in c.execute(q.order_by(requests.c.request_id)).mappings()]

    def claim_for_run(self, request_id: str, **fields) -> bool:
        """Atomically move a request into 'running'; False unless it is pending or failed (a
        job runs at most once; a failed one, refunded, may run again)."""
        with self.engine.begin() as c:
            row = c.execute(select(requests.c.state).where(requests.c.request_id == request_id)
                            .with_for_update()).first()
            if row is not None and row[0] not in CLAIMABLE:
                return False
            self._write_state(c, request_id, row[0] if row else None, Request.RUNNING, fields)
            return True

    def set_state(self, request_id: str, state: str, **fields) -> None:
        """Move a request to ``state`` (only along :data:`datasite.states.REQUEST_MOVES`;
        IllegalMove otherwise), updating ``fields``."""
        with self.engine.begin() as c:
            row = c.execute(select(requests.c.state).where(requests.c.request_id == request_id)
                            .with_for_update()).first()
            self._write_state(c, request_id, row[0] if row else None, state, fields)

    def update_request(self, request_id: str, **fields) -> None:
        """Change a request's bookkeeping fields (queue, progress) without moving its state."""
        with self.engine.begin() as c:
            c.execute(update(requests).where(requests.c.request_id == request_id)
                      .values(updated_at=now(), **fields))

    def start_queued(self, request_id: str, worker: str) -> bool:
        """Mark a queued run as taken by ``worker``; False if it is no longer a queued,
        never-started run (refunded, or already taken: a duplicate delivery runs nothing)."""
        with self.engine.begin() as c:
            done = c.execute(update(requests).where(
                requests.c.request_id == request_id, requests.c.state == str(Request.RUNNING),
                requests.c.queued_at.is_not(None), requests.c.started_at.is_(None))
                .values(started_at=now(), worker=worker, updated_at=now()))
            return done.rowcount == 1

    def queue_rows(self) -> list[dict]:
        """Queued and running runs (oldest first) and ran ones waiting for release."""
        with self.engine.connect() as c:
            q = select(requests).where(requests.c.state.in_((str(Request.RUNNING),
                                                             str(Request.RAN))))
            return [dict(r) for r in c.execute(q.order_by(requests.c.queued_at,
                                                          requests.c.updated_at)).mappings()]

    def heartbeat(self, worker_id: str, host: str, pid: int, gpu: str,
                  request_id: str | None) -> None:
        with self.engine.begin() as c:
            t = now()
            got = c.execute(update(job_workers).where(job_workers.c.worker_id == worker_id).values(
                heartbeat_at=t, request_id=request_id, pid=pid))
            if got.rowcount == 0:
                c.execute(insert(job_workers).values(worker_id=worker_id, host=host, pid=pid,
                                                 gpu=gpu, started_at=t, heartbeat_at=t,
                                                 request_id=request_id))

    def remove_worker(self, worker_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(job_workers.delete().where(job_workers.c.worker_id == worker_id))

    def workers(self) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(select(job_workers).order_by(job_workers.c.worker_id))
                    .mappings()]

    @staticmethod
    def _write_state(c, request_id: str, current: str | None, state: str, fields: dict) -> None:
        to = str(check_request_move(request_id, current, state))
        if current is not None:
            c.execute(update(requests).where(requests.c.request_id == request_id)
                      .values(state=to, updated_at=now(), **fields))
        else:
            c.execute(insert(requests).values(request_id=request_id, state=to,
                                              updated_at=now(), **fields))

    # researchers
    def update_dataset_meta(self, name: str, meta_json: str) -> None:
        with self.engine.begin() as c:
            c.execute(update(datasets).where(datasets.c.name == name).values(meta_json=meta_json))

    def add_model(self, request_id: str, **fields) -> None:
        with self.engine.begin() as c:
            c.execute(insert(models).values(request_id=request_id, version=0, status="active",
                                            updated_at=now(), **fields))

    def update_model(self, request_id: str, **fields) -> None:
        with self.engine.begin() as c:
            c.execute(update(models).where(models.c.request_id == request_id)
                      .values(updated_at=now(), **fields))

    def models_for(self, dataset: str) -> list[dict]:
        with self.engine.connect() as c:
            q = select(models).where(models.c.dataset == dataset).order_by(models.c.request_id)
            return [dict(r) for r in c.execute(q).mappings()]

    def add_researcher(self, email: str, verify_key: str) -> None:
        with self.engine.begin() as c:
            c.execute(insert(researchers).values(email=email, verify_key=verify_key))

    def remove_researcher(self, email: str) -> None:
        with self.engine.begin() as c:
            c.execute(researchers.delete().where(researchers.c.email == email))

    def researcher_by_key(self, verify_key: str) -> str | None:
        """The identity the owner registered for a PySyft verify key (None: not registered).

        Budgets, notes and requests are bound to this, never to the e-mail a user shows now."""
        with self.engine.connect() as c:
            row = c.execute(select(researchers.c.email)
                            .where(researchers.c.verify_key == verify_key)).first()
        return row[0] if row else None

    def researcher_keys(self) -> dict[str, str]:
        with self.engine.connect() as c:
            return {r.email: r.verify_key for r in c.execute(select(researchers))}

    # settings
    def setting(self, key: str) -> str | None:
        with self.engine.connect() as c:
            row = c.execute(select(settings.c.value).where(settings.c.key == key)).first()
        return row[0] if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self.engine.begin() as c:
            c.execute(settings.delete().where(settings.c.key == key))
            c.execute(insert(settings).values(key=key, value=value))

    # prices
    def cached_price(self, request_id: str, spec_json: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(select(prices).where(prices.c.request_id == request_id)).mappings().first()
        return dict(row) if row and row["spec_json"] == spec_json else None

    def save_price(self, request_id: str, spec_json: str, event_json: str | None = None,
                   record_events_json: str | None = None, error: str | None = None) -> None:
        with self.engine.begin() as c:
            c.execute(prices.delete().where(prices.c.request_id == request_id))
            c.execute(insert(prices).values(request_id=request_id, spec_json=spec_json,
                                            event_json=event_json, error=error,
                                            record_events_json=record_events_json,
                                            priced_at=now()))

    def forget_prices(self, dataset: str) -> int:
        """Drop the cached prices of requests on ``dataset`` (its record count changed, so
        their price must be computed again); returns how many were dropped."""
        with self.engine.begin() as c:
            stale = []
            for r in c.execute(select(prices.c.request_id, prices.c.spec_json)):
                spec = loads(r.spec_json)
                if isinstance(spec, dict) and spec.get("dataset") == dataset:
                    stale.append(r.request_id)
            if stale:
                c.execute(prices.delete().where(prices.c.request_id.in_(stale)))
        return len(stale)

    # one execution at a time per request
    @contextlib.contextmanager
    def run_lock(self, request_id: str):
        """Hold a request's run lock for as long as it runs; yields False if another process
        holds it. PostgreSQL (advisory lock) or the OS (flock, for SQLite) frees it when its
        holder dies, so a crashed run can be recovered and a live one never is."""
        if not RUN_LOCK:
            yield True
            return
        if self.engine.dialect.name == "postgresql":
            key = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(),
                                 "big", signed=True)
            with self.engine.connect() as c:
                got = bool(c.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
                c.commit()
                try:
                    yield got
                finally:
                    if got:
                        c.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        c.commit()
            return
        import fcntl
        import os

        locks = self.home.root / "locks"
        locks.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(locks / f"{hashlib.sha256(request_id.encode()).hexdigest()[:32]}.lock",
                     os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                got = True
            except BlockingIOError:
                got = False
            yield got
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    # executions on private data
    def start_execution(self, request_id: str, dataset: str) -> int:
        with self.engine.begin() as c:
            return c.execute(insert(executions).values(
                request_id=request_id, dataset=dataset, started_at=now())).inserted_primary_key[0]

    def finish_execution(self, execution_id: int, outcome: str) -> None:
        with self.engine.begin() as c:
            c.execute(update(executions).where(executions.c.id == execution_id)
                      .values(finished_at=now(), outcome=outcome))

    def execution_count(self, request_id: str | None = None) -> int:
        q = select(func.count()).select_from(executions)
        if request_id is not None:
            q = q.where(executions.c.request_id == request_id)
        with self.engine.connect() as c:
            return int(c.execute(q).scalar_one())


def open_state(site: SiteHome) -> State:
    state = State(engine_for(site))
    state.home = site  # the ledger signs its audit chain with this site's key
    return state


def loads(text: str | None):
    return json.loads(text) if text else None
