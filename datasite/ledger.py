"""The privacy ledger: budgets, one entry per request, and a hash-chained audit log.

Composition across jobs composes the stored privacy events with the PLD accountant (tight);
the naive sum of per-job epsilons is kept beside it so the owner sees what tight composition
saves. Reservations happen inside one database transaction holding the dataset's budget row
(SELECT ... FOR UPDATE on PostgreSQL, BEGIN IMMEDIATE on SQLite), so concurrent reservations
can never overspend.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import operator
from collections import Counter

import numpy as np

from sqlalchemy import case, func, insert, select, update

from . import audit_log, records
from .audit_log import AuditLog
from .ledger_tables import budgets, charges, charges_digest, entries, metadata  # noqa: F401
from .state import State, migrate, now
from .states import SPENDING, Entry, entry_sources

MAX_CANDIDATES = 50_000
EVERYONE = ""  # the researcher of an owner's release every researcher sees (a DP mock)


class LedgerError(RuntimeError):
    """A ledger operation was refused; the message has the numbers."""


class Ledger:
    def __init__(self, state: State, site=None):
        """``site`` (a SiteHome; default: the one ``state`` was opened from) holds the key that
        signs the audit chain; without one the chain is only hash-linked."""
        self.engine = state.engine
        self.acting_as: str | None = None  # see :meth:`acting`
        migrate(self.engine, metadata)
        migrate(self.engine, audit_log.metadata)
        site = site or getattr(state, "home", None)
        self.audit_log = AuditLog(self.engine, site.signing_key_hex() if site else None,
                                  site.secrets / "audit_head" if site else None)
        key = site.signing_key_hex() if site else None
        mac_key = hashlib.sha256(b"dp-datasite pld cache\0" + bytes.fromhex(key)).digest() \
            if key else None
        self.accountant = records.HistoryAccountant(self.engine, mac_key)

    # -- accounting helpers --------------------------------------------------------------------
    @staticmethod
    def charged_event(entry: dict) -> str:
        """The event an entry stands for: the realised one once committed, else the reserved."""
        return entry["realised_json"] or entry["event_json"]

    @staticmethod
    def cost_source(entry: dict) -> str:
        """'computed' (from a job spec) or 'declared' (by the owner, for custom code)."""
        from shared.privacy.accounting import cost_source

        return cost_source(Ledger.charged_event(entry))

    @staticmethod
    def epsilon_of(event_jsons: list[str], delta: float) -> float:
        """Tight (PLD) epsilon of composing these events.

        Identical events (the same job run again) are grouped into one self-composition, which
        the PLD accountant does by repeated convolution in one go instead of one by one.
        """
        import dp_accounting

        from shared.privacy.accounting import epsilon, epsilon_of_json, event_from_json

        if not event_jsons:
            return 0.0
        if len(event_jsons) == 1:  # one request's cost: the same at estimate, reserve, commit
            return epsilon_of_json(event_jsons[0], delta)
        groups = Counter(event_jsons)
        parts = [event_from_json(e) if k == 1 else
                 dp_accounting.SelfComposedDpEvent(event_from_json(e), k) for e, k in groups.items()]
        return epsilon(parts[0] if len(parts) == 1 else dp_accounting.ComposedDpEvent(parts), delta)

    def epsilon_series(self, event_jsons: list[str], delta: float) -> list[float]:
        """The ledger's epsilon (min of PLD and RDP, as :meth:`spent` composes) after each of
        ``event_jsons`` in turn: a spend-over-time curve. Each prefix extends the one before
        (the accountant's prefix cache), so n events cost n - 1 convolutions; composing every
        prefix afresh (:meth:`epsilon_of` per point) cost O(n^2) and grew with every job."""
        return [self.accountant.epsilon(event_jsons[:i + 1], delta)
                for i in range(len(event_jsons))]

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

    # -- per-record spend ------------------------------------------------------------------------
    def _jobs(self, c, dataset: str, researcher: str | None = None, skip: str | None = None):
        """(committed parts per job, pending alternatives per job, (researcher of each committed
        job, of each pending one)) of the spending entries, in ledger order."""
        e, ch = entries.c, charges.c
        # one query, the job's own event only where it has no charges rows (10,000 jobs: ms)
        own = case((ch.kind.is_(None), func.coalesce(e.realised_json, e.event_json)), else_=None)
        q = (select(e.request_id, e.researcher, e.state, own, ch.kind, ch.event_json, ch.record_ids)
             .select_from(entries.outerjoin(charges, ch.request_id == e.request_id))
             .where(e.dataset == dataset, e.state.in_(SPENDING)))
        if researcher:  # an owner release (researcher '', e.g. a DP mock) reached them all
            q = q.where(e.researcher.in_((researcher, EVERYONE)))
        # ledger order: each history is composed in it, so a new job extends a cached prefix
        q = q.order_by(e.created_at, e.request_id, ch.part)
        done, pending, done_by, pending_by = [], [], [], []
        for rid, rows in itertools.groupby(c.execute(q).all(), key=operator.itemgetter(0)):
            if rid == skip:
                continue
            rows = list(rows)
            who, state, own_event = rows[0][1], rows[0][2], rows[0][3]
            if len(rows) == 1 and rows[0][4] == "all":  # the usual job: one whole-dataset part
                done.append([(None, rows[0][5])])
                done_by.append(who)
                continue
            mine = [r for r in rows if r[4] is not None]
            if any(r[4] == "alt" for r in mine) and state in ("reserved", "running"):
                pending.append([r[5] for r in mine if r[4] == "alt"])
                pending_by.append(who)
            elif any(r[4] != "alt" for r in mine):
                done.append([(json.loads(r[6]) if r[4] == "ids" else None, r[5])
                             for r in mine if r[4] != "alt"])
                done_by.append(who)
            else:  # no record ids: every record of the dataset pays the job's event
                done.append([(None, own_event or next(
                    x.realised_json or x.event_json for x in c.execute(
                        select(entries).where(entries.c.request_id == rid))))])
                done_by.append(who)
        return done, pending, (done_by, pending_by)

    def _worst(self, c, dataset: str, delta: float, researcher: str | None = None,
               new: list[str] | None = None, skip: str | None = None,
               extra: list | None = None) -> float:
        """The worst record's composed epsilon; ``new``: a job about to be added, of which each
        record receives one of these events (the worst one for it is assumed)."""
        return self._worsts(c, dataset, delta, [(researcher, new)], skip, extra)[0]

    def _worsts(self, c, dataset: str, delta: float, views: list[tuple],
                skip: str | None = None, extra: list | None = None) -> list[float]:
        """:meth:`_worst` for each (researcher or None, new job or None) of ``views``; the
        dataset's jobs are read once."""
        all_done, all_pending, (done_by, pending_by) = self._jobs(c, dataset, None, skip)
        self.accountant.conn = c
        try:
            out, bases = [], {}
            for researcher, new in views:
                if researcher not in bases:
                    mine = (researcher, EVERYONE) if researcher else None
                    done = [j for j, r in zip(all_done, done_by) if not mine or r in mine]
                    pending = [j for j, r in zip(all_pending, pending_by) if not mine or r in mine]
                    bases[researcher] = pending, [k.sequence for k in records.classes(
                        done + ([extra] if extra else []))]
                pending, base = bases[researcher]
                hists, keep = base, [len(h) for h in base]  # committed prefixes: kept, extended
                # every combination of the events a record may still receive (jobs reserved,
                # not committed; the new one); past MAX_CANDIDATES, a job takes its worst event
                # by RDP per record instead (the commit re-checks the realised spend exactly)
                for alts in pending + ([new] if new else []):
                    alts = list(dict.fromkeys(alts))
                    if len(hists) * len(alts) > MAX_CANDIDATES:
                        hists = self._add_worst(hists, alts, delta)
                    else:
                        hists, keep = [h + [a] for h in hists for a in alts], \
                            [k for k in keep for _ in alts]
                out.append(self.accountant.worst(hists, delta, keep)[0])
            return out
        finally:
            self.accountant.conn = None

    def _add_worst(self, hists: list[list], alts: list[str], delta: float) -> list[list]:
        if len(set(alts)) == 1:
            return [h + [alts[0]] for h in hists]
        out = []
        for h in hists:
            options = [h + [a] for a in dict.fromkeys(alts)]
            out.append(options[int(np.argmax(self.accountant.rdp_epsilons(options, delta)))])
        return out

    def _flush(self, c) -> None:
        """Store new cached PLDs from a read-only block (its own small transaction)."""
        if self.accountant._unsaved:  # pylint: disable=protected-access
            self.accountant.flush(c)
            c.commit()

    def _naive(self, c, dataset: str, researcher: str | None = None) -> tuple[float, int]:
        q = select(entries.c.epsilon).where(entries.c.dataset == dataset,
                                            entries.c.state.in_(SPENDING))
        if researcher:
            q = q.where(entries.c.researcher.in_((researcher, EVERYONE)))
        eps = [r[0] for r in c.execute(q)]
        return sum(eps), len(eps)

    def spent(self, dataset: str, researcher: str | None = None) -> dict:
        """Spend so far: the worst record's composed (PLD) epsilon, and the naive sum of the
        jobs' epsilons, at the dataset's delta."""
        b = self._require_budget(dataset)
        with self.engine.connect() as c:
            eps = self._worst(c, dataset, b["delta"], researcher)
            naive, jobs = self._naive(c, dataset, researcher)
            self._flush(c)
        return {"epsilon": eps, "naive_epsilon": naive, "delta": b["delta"], "jobs": jobs}

    def record_histogram(self, dataset: str, n_records: int | None = None,
                         bins: int = 8) -> dict:
        """How many records have spent how much (committed and reserved jobs)."""
        b = self._require_budget(dataset)
        with self.engine.connect() as c:
            done, pending, _ = self._jobs(c, dataset)
            cls = records.classes(done, n_records)
            hists = [k.sequence for k in cls]
            self.accountant.conn = c
            try:
                for alts in pending:
                    hists = self._add_worst(hists, alts, b["delta"])
                values = [(k.count, self.accountant.epsilon(h, b["delta"]))
                          for k, h in zip(cls, hists)]
            finally:
                self.accountant.conn = None
            self._flush(c)
        return {"classes": len(cls), "bins": records.histogram(values, bins),
                "unnamed_records": next((k.count for k in cls if k.example is None), None)}

    def _require_budget(self, dataset: str) -> dict:
        b = self.budget(dataset)
        if b is None:
            raise LedgerError(f"Dataset {dataset!r} has no privacy budget; set one with "
                              f"`datasite budget NAME {dataset} --epsilon E --delta D`.")
        return b

    # -- request life cycle ------------------------------------------------------------------------
    def quote(self, dataset: str, researcher: str, event_json: str,
              alternatives: list[str] | None = None) -> dict:
        """Cost of a request and the budgets before/after, without reserving anything.

        ``alternatives``: the events one record may receive from this job (one of them, e.g.
        the groups of a DP-AL job); default: every record receives ``event_json``."""
        b = self._require_budget(dataset)
        rb = self.budget(dataset, researcher)
        new = alternatives or [event_json]
        d = b["delta"]
        with self.engine.connect() as c:
            ds_spent, ds_after, r_spent, r_after = self._worsts(
                c, dataset, d, [(None, None), (None, new), (researcher, None), (researcher, new)])
            out = {"epsilon": self.epsilon_of([event_json], d), "delta": d,
                   "dataset_budget": b["epsilon"],
                   "dataset_spent": ds_spent, "dataset_after": ds_after,
                   "researcher_budget": rb["epsilon"] if rb else None,
                   "researcher_spent": r_spent, "researcher_after": r_after}
            self._flush(c)
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
            self._audit(c, actor, "estimate", request_id, {
                "epsilon": eps, "state": "estimated", "dataset": dataset,
                "researcher": researcher, "event": json.loads(event_json)})

    def deny(self, request_id: str, reason: str, actor: str = "owner") -> None:
        """A denied request: its estimate is closed; nothing was ever reserved."""
        self._transition(request_id, Entry.DENIED, actor, {"reason": reason})

    def reserve(self, request_id: str, dataset: str, researcher: str, event_json: str,
                actor: str = "owner", alternatives: list[str] | None = None) -> dict:
        """Atomically reserve a request's cost, or refuse with the numbers.

        ``alternatives`` as in :meth:`quote`; the job's commit may then name which records
        received which of them."""
        alts = list(dict.fromkeys(alternatives)) if alternatives else None
        with self.engine.begin() as c:
            lock = select(budgets).where(budgets.c.dataset == dataset).with_for_update()
            rows = {r.researcher: r for r in c.execute(lock)}
            if "" not in rows:
                raise LedgerError(f"Dataset {dataset!r} has no privacy budget; set one first.")
            existing = c.execute(select(entries.c.state).where(entries.c.request_id == request_id)).first()
            if existing and existing[0] not in ("refunded", "estimated"):
                raise LedgerError(f"Request {request_id[:8]} already has a ledger entry ({existing[0]}).")
            d = rows[""].delta
            new = alts or [event_json]
            views = [(None, new)] + ([(researcher, new)] if researcher in rows else [])
            ds_after, *r_after = self._worsts(c, dataset, d, views, skip=request_id)
            if ds_after > rows[""].epsilon + 1e-9:
                raise LedgerError(f"Refused: dataset {dataset} would reach eps={ds_after:.3f} "
                                  f"> budget {rows[''].epsilon:g} (delta={d:g}).")
            if r_after:
                r_after = r_after[0]
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
            c.execute(charges.delete().where(charges.c.request_id == request_id))
            for i, a in enumerate(alts or []):
                c.execute(insert(charges).values(request_id=request_id, part=i, kind="alt",
                                                 event_json=a))
            self.accountant.flush(c)
            self._audit(c, actor, "reserve", request_id, {
                "epsilon": eps, "dataset_after": ds_after, "event": json.loads(event_json),
                "state": "reserved", "dataset": dataset, "researcher": researcher,
                "alternatives": charges_digest([("alt", a, None) for a in alts or []])})
        return {"epsilon": eps, "dataset_after": ds_after}

    def _transition(self, request_id: str, to: str, actor: str,
                    payload: dict | None = None, c=None, **values) -> dict:
        """Move an entry to ``to`` from a state :data:`datasite.states.ENTRY_MOVES` allows."""
        if c is None:
            with self.engine.begin() as c:
                return self._transition(request_id, to, actor, payload, c, **values)
        frm, to = entry_sources(to), Entry(to).value
        row = c.execute(select(entries).where(entries.c.request_id == request_id)
                        .with_for_update()).mappings().first()
        if row is None or row["state"] not in frm:
            state = row["state"] if row else "not in the ledger"
            raise LedgerError(f"Request {request_id[:8]} is {state}; cannot move it to {to}.")
        c.execute(update(entries).where(entries.c.request_id == request_id)
                  .values(state=to, updated_at=now(), **values))
        self._audit(c, actor, to, request_id, {**(payload or {}), "state": to})
        return dict(row)

    def start(self, request_id: str, actor: str = "owner") -> None:
        self._transition(request_id, Entry.RUNNING, actor)

    def refund(self, request_id: str, reason: str, actor: str = "owner") -> None:
        self._transition(request_id, Entry.REFUNDED, actor, {"reason": reason})

    def commit(self, request_id: str, realised_json: str, actor: str = "owner",
               record_charges: list[tuple] | None = None) -> None:
        """Commit the spend the job reports, which must not exceed what was reserved.

        ``record_charges``: [(record ids, event JSON)] -- which records received which event
        (owner-side only); each event must be one the reservation allowed for. Without it every
        record of the dataset is charged ``realised_json``."""
        with self.engine.connect() as c:
            row = c.execute(select(entries).where(entries.c.request_id == request_id)).mappings().first()
            alts = {ch.event_json for ch in c.execute(select(charges).where(
                charges.c.request_id == request_id, charges.c.kind == "alt"))}
        if row is None:
            raise LedgerError(f"Request {request_id[:8]} is not in the ledger.")
        b = self._require_budget(row["dataset"])
        realised = self.epsilon_of([realised_json], b["delta"])
        if realised > row["epsilon"] * (1 + 1e-6) + 1e-9:
            raise LedgerError(f"Request {request_id[:8]} reports eps={realised:.4f}, more than the "
                              f"reserved {row['epsilon']:.4f}: not released; investigate the job.")
        parts = [(sorted(int(i) for i in ids), ev) for ids, ev in record_charges or []]
        allowed = alts or {row["event_json"]}
        bad = [ev for _, ev in parts if ev not in allowed and ev != realised_json]
        if bad:
            raise LedgerError(f"Request {request_id[:8]} charges records an event its reservation "
                              "did not allow for: not released; investigate the job.")
        rows = [("ids", ev, ids) for ids, ev in parts] or [("all", realised_json, None)]
        with self.engine.begin() as c:
            c.execute(charges.delete().where(charges.c.request_id == request_id))
            for i, (kind, ev, ids) in enumerate(rows):
                c.execute(insert(charges).values(request_id=request_id, part=i, kind=kind,
                                                 event_json=ev,
                                                 record_ids=json.dumps(ids) if ids is not None else None))
            # the gate: whatever the reservations assumed, the committed spend fits
            after = self._worst(c, row["dataset"], b["delta"], skip=request_id,
                                extra=[(ids, ev) for _, ev, ids in rows])
            if after > b["epsilon"] + 1e-9:
                raise LedgerError(f"Request {request_id[:8]}: committing it would bring dataset "
                                  f"{row['dataset']} to eps={after:.3f} > budget "
                                  f"{b['epsilon']:g}: not released; refund it.")
            self.accountant.flush(c)
            self._transition(request_id, Entry.COMMITTED, actor,
                             {"realised_epsilon": realised, "realised": json.loads(realised_json),
                              "charges": charges_digest(rows)}, c,
                             realised_json=realised_json, epsilon=realised)

    def released(self, request_id: str, actor: str = "owner") -> None:
        self._transition(request_id, Entry.RELEASED, actor)

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
    def _audit(self, c, actor: str, action: str, request_id: str | None, payload: dict) -> None:
        if actor == "owner" and self.acting_as:  # who, of the owners, did it (the console)
            actor = self.acting_as
        self.audit_log.append(c, actor, action, request_id, payload)

    @contextlib.contextmanager
    def acting(self, account: str):
        """Audit entries written inside are by ``account`` (e.g. ``console:root@site``), not
        the anonymous "owner" of the CLI. One ledger per thread: not for concurrent use."""
        before, self.acting_as = self.acting_as, account
        try:
            yield self
        finally:
            self.acting_as = before

    def log(self, action: str, request_id: str | None, payload: dict, actor: str = "owner") -> None:
        """Append an audit entry that moves no budget (a denial, a round released, a removal
        certificate)."""
        with self.engine.begin() as c:
            self._audit(c, actor, action, request_id, payload)

    def head_for(self, researcher: str) -> dict | None:
        """The signed audit head to hand a researcher (None when the chain is unsigned)."""
        return self.audit_log.head_for(researcher)

    def mark_sent(self, researcher: str, head: dict | None) -> None:
        self.audit_log.mark_sent(researcher, head)

    def verify(self) -> tuple[bool, str]:
        """Check the chain (links, hashes, signatures, truncation), replay it, and compare the
        budgets and ledger tables with what the signed chain says; (False, the first problem)."""
        from .ledger_replay import Replay

        replay = Replay()
        ok, why = self.audit_log.verify(replay.apply)
        if not ok:
            return ok, why
        with self.engine.connect() as c:
            problem = replay.compare(c)
        if problem:
            return False, problem
        return True, why + "; budgets and ledger entries match it"
