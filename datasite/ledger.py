"""The privacy ledger: budgets, one entry per request, and a hash-chained audit log.

Composition across jobs composes the stored privacy events with the PLD accountant (tight);
the naive sum of per-job epsilons is kept beside it so the owner sees what tight composition
saves. Reservations happen inside one database transaction holding the dataset's budget row
(SELECT ... FOR UPDATE on PostgreSQL, BEGIN IMMEDIATE on SQLite), so concurrent reservations
can never overspend.
"""
from __future__ import annotations

import hashlib
import json
import math

from sqlalchemy import (Column, DateTime, Float, Integer, MetaData, String, Table, Text, insert,
                        select, update)

from .state import State, migrate, now

metadata = MetaData()

budgets = Table(
    "dpds_budgets", metadata,
    Column("dataset", String(200), primary_key=True),
    Column("researcher", String(320), primary_key=True),  # "" = the dataset's own budget
    Column("epsilon", Float, nullable=False),
    Column("delta", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

entries = Table(
    "dpds_ledger", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("dataset", String(200), nullable=False),
    Column("researcher", String(320), nullable=False),
    # estimated | reserved | running | committed | released | refunded | denied
    Column("state", String(20), nullable=False),
    Column("event_json", Text, nullable=False),       # the reserved (planned) event
    Column("realised_json", Text),                     # what the job reports it ran
    Column("epsilon", Float, nullable=False),          # of the event alone, at the dataset delta
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

audit = Table(
    "dpds_audit", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", String(40), nullable=False),
    Column("actor", String(320), nullable=False),
    Column("action", String(40), nullable=False),
    Column("request_id", String(64)),
    Column("payload", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

SPENDING = ("reserved", "running", "committed", "released")
GENESIS = "0" * 64


class LedgerError(RuntimeError):
    """A ledger operation was refused; the message has the numbers."""


def _hash(prev: str, at: str, actor: str, action: str, request_id: str | None, payload: str) -> str:
    body = json.dumps([prev, at, actor, action, request_id, payload], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


class Ledger:
    def __init__(self, state: State):
        self.engine = state.engine
        migrate(self.engine, metadata)

    # -- accounting helpers --------------------------------------------------------------------
    @staticmethod
    def epsilon_of(event_jsons: list[str], delta: float) -> float:
        """Tight (PLD) epsilon of composing these events.

        Identical events (the same job run again) are grouped into one self-composition, which
        the PLD accountant does by repeated convolution in one go instead of one by one.
        """
        from collections import Counter

        import dp_accounting

        from shared.accounting import epsilon, event_from_json

        if not event_jsons:
            return 0.0
        groups = Counter(event_jsons)
        parts = [event_from_json(e) if k == 1 else
                 dp_accounting.SelfComposedDpEvent(event_from_json(e), k) for e, k in groups.items()]
        return epsilon(parts[0] if len(parts) == 1 else dp_accounting.ComposedDpEvent(parts), delta)

    # -- budgets -------------------------------------------------------------------------------
    def set_budget(self, dataset: str, epsilon: float, delta: float | None, researcher: str = "",
                   actor: str = "owner") -> None:
        """Dataset budget (eps, delta), or a researcher's eps share (delta is the dataset's)."""
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise LedgerError(f"A budget needs epsilon > 0, got {epsilon}.")
        if researcher:
            delta = 0.5  # placeholder, replaced by the dataset's delta below
        if delta is None or not (math.isfinite(delta) and 0 < delta < 1):
            raise LedgerError(f"A budget needs 0 < delta < 1, got {delta}.")
        with self.engine.begin() as c:
            if researcher:
                ds = c.execute(select(budgets).where(budgets.c.dataset == dataset,
                                                     budgets.c.researcher == "")).first()
                if ds is None:
                    raise LedgerError(f"Dataset {dataset!r} has no budget yet; set it first.")
                delta = ds.delta  # one delta per dataset: researcher budgets share it
            row = c.execute(select(budgets.c.dataset).where(
                budgets.c.dataset == dataset, budgets.c.researcher == researcher)).first()
            values = dict(epsilon=float(epsilon), delta=float(delta), updated_at=now())
            if row:
                c.execute(update(budgets).where(budgets.c.dataset == dataset,
                                                budgets.c.researcher == researcher).values(**values))
            else:
                c.execute(insert(budgets).values(dataset=dataset, researcher=researcher, **values))
            self._audit(c, actor, "budget", None, {"dataset": dataset, "researcher": researcher,
                                                    "epsilon": epsilon, "delta": delta})

    def budget(self, dataset: str, researcher: str = "") -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(select(budgets).where(budgets.c.dataset == dataset,
                                                  budgets.c.researcher == researcher)).mappings().first()
        return dict(row) if row else None

    def _events(self, c, dataset: str, researcher: str | None = None) -> list[str]:
        q = select(entries.c.realised_json, entries.c.event_json, entries.c.state).where(
            entries.c.dataset == dataset, entries.c.state.in_(SPENDING))
        if researcher:
            q = q.where(entries.c.researcher == researcher)
        return [r.realised_json or r.event_json for r in c.execute(q.order_by(entries.c.created_at))]

    def spent(self, dataset: str, researcher: str | None = None) -> dict:
        """Spend so far: tight (composed) and naive (summed) epsilon at the dataset's delta."""
        b = self._require_budget(dataset)
        with self.engine.connect() as c:
            events = self._events(c, dataset, researcher)
            q = select(entries.c.epsilon).where(entries.c.dataset == dataset,
                                                entries.c.state.in_(SPENDING))
            if researcher:
                q = q.where(entries.c.researcher == researcher)
            naive = sum(r[0] for r in c.execute(q))
        return {"epsilon": self.epsilon_of(events, b["delta"]), "naive_epsilon": naive,
                "delta": b["delta"], "jobs": len(events)}

    def _require_budget(self, dataset: str) -> dict:
        b = self.budget(dataset)
        if b is None:
            raise LedgerError(f"Dataset {dataset!r} has no privacy budget; set one with "
                              f"`datasite budget NAME {dataset} --epsilon E --delta D`.")
        return b

    # -- request life cycle ------------------------------------------------------------------------
    def quote(self, dataset: str, researcher: str, event_json: str) -> dict:
        """Cost of a request and the budgets before/after, without reserving anything."""
        b = self._require_budget(dataset)
        rb = self.budget(dataset, researcher)
        with self.engine.connect() as c:
            ds_events = self._events(c, dataset)
            r_events = self._events(c, dataset, researcher)
        d = b["delta"]
        out = {"epsilon": self.epsilon_of([event_json], d), "delta": d,
               "dataset_budget": b["epsilon"],
               "dataset_spent": self.epsilon_of(ds_events, d),
               "dataset_after": self.epsilon_of(ds_events + [event_json], d),
               "researcher_budget": rb["epsilon"] if rb else None,
               "researcher_spent": self.epsilon_of(r_events, d),
               "researcher_after": self.epsilon_of(r_events + [event_json], d)}
        out["fits"] = out["dataset_after"] <= b["epsilon"] + 1e-9 and (
            rb is None or out["researcher_after"] <= rb["epsilon"] + 1e-9)
        return out

    def estimate(self, request_id: str, dataset: str, researcher: str, event_json: str,
                 actor: str = "owner") -> None:
        """Record a reviewed request's priced cost (spends nothing)."""
        d = self._require_budget(dataset)["delta"]
        with self.engine.begin() as c:
            row = c.execute(select(entries.c.state).where(entries.c.request_id == request_id)).first()
            if row is not None:
                return  # already estimated, or further along
            eps = self.epsilon_of([event_json], d)
            c.execute(insert(entries).values(
                request_id=request_id, dataset=dataset, researcher=researcher, state="estimated",
                event_json=event_json, epsilon=eps, created_at=now(), updated_at=now()))
            self._audit(c, actor, "estimate", request_id, {"epsilon": eps})

    def deny(self, request_id: str, reason: str, actor: str = "owner") -> None:
        """A denied request: its estimate is closed; nothing was ever reserved."""
        self._transition(request_id, ("estimated",), "denied", actor, {"reason": reason})

    def reserve(self, request_id: str, dataset: str, researcher: str, event_json: str,
                actor: str = "owner") -> dict:
        """Atomically reserve a request's cost, or refuse with the numbers."""
        with self.engine.begin() as c:
            lock = select(budgets).where(budgets.c.dataset == dataset).with_for_update()
            rows = {r.researcher: r for r in c.execute(lock)}
            if "" not in rows:
                raise LedgerError(f"Dataset {dataset!r} has no privacy budget; set one first.")
            existing = c.execute(select(entries.c.state).where(entries.c.request_id == request_id)).first()
            if existing and existing[0] not in ("refunded", "estimated"):
                raise LedgerError(f"Request {request_id[:8]} already has a ledger entry ({existing[0]}).")
            d = rows[""].delta
            ds_after = self.epsilon_of(self._events(c, dataset) + [event_json], d)
            if ds_after > rows[""].epsilon + 1e-9:
                raise LedgerError(f"Refused: dataset {dataset} would reach eps={ds_after:.3f} "
                                  f"> budget {rows[''].epsilon:g} (delta={d:g}).")
            if researcher in rows:
                r_after = self.epsilon_of(self._events(c, dataset, researcher) + [event_json], d)
                if r_after > rows[researcher].epsilon + 1e-9:
                    raise LedgerError(f"Refused: {researcher} would reach eps={r_after:.3f} on "
                                      f"{dataset} > their budget {rows[researcher].epsilon:g}.")
            eps = self.epsilon_of([event_json], d)
            values = dict(dataset=dataset, researcher=researcher, state="reserved",
                          event_json=event_json, realised_json=None, epsilon=eps, updated_at=now())
            if existing:
                c.execute(update(entries).where(entries.c.request_id == request_id).values(**values))
            else:
                c.execute(insert(entries).values(request_id=request_id, created_at=now(), **values))
            self._audit(c, actor, "reserve", request_id, {"epsilon": eps, "dataset_after": ds_after,
                                                          "event": json.loads(event_json)})
        return {"epsilon": eps, "dataset_after": ds_after}

    def _transition(self, request_id: str, frm: tuple[str, ...], to: str, actor: str,
                    payload: dict | None = None, **values) -> dict:
        with self.engine.begin() as c:
            row = c.execute(select(entries).where(entries.c.request_id == request_id)
                            .with_for_update()).mappings().first()
            if row is None or row["state"] not in frm:
                state = row["state"] if row else "not in the ledger"
                raise LedgerError(f"Request {request_id[:8]} is {state}; cannot move it to {to}.")
            c.execute(update(entries).where(entries.c.request_id == request_id)
                      .values(state=to, updated_at=now(), **values))
            self._audit(c, actor, to, request_id, payload or {})
            return dict(row)

    def start(self, request_id: str, actor: str = "owner") -> None:
        self._transition(request_id, ("reserved",), "running", actor)

    def refund(self, request_id: str, reason: str, actor: str = "owner") -> None:
        self._transition(request_id, ("reserved", "running"), "refunded", actor, {"reason": reason})

    def commit(self, request_id: str, realised_json: str, actor: str = "owner") -> None:
        """Commit the spend the job reports, which must not exceed what was reserved."""
        with self.engine.connect() as c:
            row = c.execute(select(entries).where(entries.c.request_id == request_id)).mappings().first()
        if row is None:
            raise LedgerError(f"Request {request_id[:8]} is not in the ledger.")
        d = self._require_budget(row["dataset"])["delta"]
        realised = self.epsilon_of([realised_json], d)
        if realised > row["epsilon"] * (1 + 1e-6) + 1e-9:
            raise LedgerError(f"Request {request_id[:8]} reports eps={realised:.4f}, more than the "
                              f"reserved {row['epsilon']:.4f}: not released; investigate the job.")
        self._transition(request_id, ("running",), "committed", actor,
                         {"realised_epsilon": realised}, realised_json=realised_json, epsilon=realised)

    def released(self, request_id: str, actor: str = "owner") -> None:
        self._transition(request_id, ("committed",), "released", actor)

    def entry(self, request_id: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(select(entries).where(entries.c.request_id == request_id)).mappings().first()
        return dict(row) if row else None

    def history(self, dataset: str | None = None) -> list[dict]:
        q = select(entries).order_by(entries.c.created_at)
        if dataset:
            q = q.where(entries.c.dataset == dataset)
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def all_budgets(self) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(select(budgets).order_by(budgets.c.dataset,
                                                                        budgets.c.researcher)).mappings()]

    # -- audit log -------------------------------------------------------------------------------
    def record(self, action: str, request_id: str | None, payload: dict,
               actor: str = "owner") -> None:
        """Append an audit entry that moves no budget (a round released, a removal certificate)."""
        with self.engine.begin() as c:
            self._audit(c, actor, action, request_id, payload)

    def _audit(self, c, actor: str, action: str, request_id: str | None, payload: dict) -> None:
        if c.dialect.name == "postgresql":  # serialise appends so the chain cannot fork
            c.exec_driver_sql("SELECT pg_advisory_xact_lock(7301)")
        last = c.execute(select(audit.c.hash).order_by(audit.c.seq.desc()).limit(1)).first()
        prev = last[0] if last else GENESIS
        at = now().isoformat()
        body = json.dumps(payload, sort_keys=True, default=str)
        c.execute(insert(audit).values(at=at, actor=actor, action=action, request_id=request_id,
                                       payload=body, prev_hash=prev,
                                       hash=_hash(prev, at, actor, action, request_id, body)))

    def log(self, action: str, request_id: str | None, payload: dict, actor: str = "owner") -> None:
        with self.engine.begin() as c:
            self._audit(c, actor, action, request_id, payload)

    def verify(self) -> tuple[bool, str]:
        """Recompute the hash chain; (False, where) on the first broken link."""
        prev = GENESIS
        with self.engine.connect() as c:
            for r in c.execute(select(audit).order_by(audit.c.seq)):
                if r.prev_hash != prev:
                    return False, f"entry {r.seq}: link to the previous entry is broken"
                if _hash(prev, r.at, r.actor, r.action, r.request_id, r.payload) != r.hash:
                    return False, f"entry {r.seq} ({r.action}) was altered"
                prev = r.hash
        return True, "audit log intact"
