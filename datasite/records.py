"""Per-record (individual) accounting: each record's history of privacy events, grouped.

A job charges *parts*: (record ids, event), or (None, event) for every record of the dataset (the
sound default for jobs that do not say which records they touched). A record's history is the
multiset of events of the parts that named it; records with the same history form one *class*,
so the work grows with the number of distinct histories, not with the number of records. The
dataset's spend is its worst record's: the largest epsilon over classes of the PLD composition
of the class's history.

Speed (a quote must stay well under a second at 1,000 jobs): histories compose at one fixed
pessimistic discretisation (LEDGER_INTERVAL: an upper bound, within ~0.1% of the refined one);
each class's composed PLD is cached (in memory, and in the database authenticated with an HMAC
under a key derived from the site's signing key, so a database writer cannot plant a smaller
one), and a history one event longer than a cached one costs one convolution. Classes are
visited by their RDP epsilon (an independent upper bound, a vector sum per class): once it is
below the worst PLD found, the class cannot be the worst and is skipped.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Column, LargeBinary, MetaData, String, Table, select

LEDGER_INTERVAL = 1e-3
metadata = MetaData()
pld_cache = Table(
    "dpds_pld_cache", metadata,
    Column("key", String(64), primary_key=True),
    Column("blob", LargeBinary, nullable=False),
    Column("mac", String(64), nullable=False),
)


@dataclass
class RecordClass:
    """Records sharing one history; ``count`` None: "every record not named by any part"."""

    count: int | None
    history: Counter
    example: int | None = None  # one record id of the class (owner-side only)


def classes(jobs: list[list[tuple]], n_records: int | None = None) -> list[RecordClass]:
    """Group records by history. ``jobs``: per job, its parts [(ids or None, event_json)]."""
    common: Counter = Counter()
    named: list[tuple[np.ndarray, str]] = []
    for parts in jobs:
        for ids, ev in parts:
            if ids is None:
                common[ev] += 1
            elif len(ids):
                named.append((np.unique(np.asarray(ids, dtype=np.int64)), ev))
    universe = np.unique(np.concatenate([i for i, _ in named])) if named else np.zeros(0, np.int64)
    rest = None if n_records is None else max(int(n_records) - len(universe), 0)
    out = [RecordClass(rest, Counter(common))] if rest is None or rest > 0 else []
    if not len(universe):
        return out or [RecordClass(0, Counter(common))]
    # a multiset hash of each record's history (sums of 64-bit tokens; commutative like
    # composition); only one representative per class is then examined exactly
    sig = np.zeros(len(universe), dtype=np.uint64)
    tokens = {}
    for ids, ev in named:
        tok = tokens.get(ev)
        if tok is None:
            tok = tokens[ev] = np.uint64(int(hashlib.sha256(ev.encode()).hexdigest()[:16], 16))
        sig[np.searchsorted(universe, ids)] += tok
    _, first, counts = np.unique(sig, return_index=True, return_counts=True)
    # each representative's count of every event: one vector per distinct event
    where = np.full(len(universe), -1, dtype=np.int64)
    where[first] = np.arange(len(first))
    per_event: dict[str, np.ndarray] = {}
    for ids, ev in named:
        k = where[np.searchsorted(universe, ids)]
        vec = per_event.setdefault(ev, np.zeros(len(first), dtype=np.int64))
        np.add.at(vec, k[k >= 0], 1)
    hists = [Counter(common) for _ in first]
    for ev, vec in per_event.items():
        for k in np.flatnonzero(vec):
            hists[k][ev] += int(vec[k])
    out += [RecordClass(int(c), h, int(universe[f])) for c, h, f in zip(counts, hists, first)]
    return out


def history_key(history: Counter) -> str:
    items = sorted((e, k) for e, k in history.items() if k)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


class _Composer:
    """Composed PLDs of histories at one discretisation interval, cached."""

    def __init__(self, interval: float, size: int):
        self.interval, self.size = interval, size
        self.plds: "OrderedDict[str, object]" = OrderedDict()
        self.events: dict[str, object] = {}
        self.blocks: dict[tuple, object] = {}
        self.lock = threading.Lock()
        self.load = None  # key -> PLD or None: a second-level cache (the database)

    def pld(self, history: Counter, base: Counter | None = None, key: str | None = None):
        """The composed PLD of ``history``; ``base``: a part of it shared with other histories
        (composed once, cached), to which the rest is added."""
        key = key or history_key(history)
        got = self.get(key) or (self.load(key) if self.load else None)
        if got is not None:
            return self.put(key, got)
        # one event shorter and cached (the usual case: a quote adds one job): one convolution
        for ev in sorted(history):
            parent = Counter(history)
            parent[ev] -= 1
            if not sum(parent.values()):
                break
            cached = self.get(history_key(parent))
            if cached is not None:
                return self.put(key, cached.compose(self.event(ev)))
        pld, rest = None, history
        if base and sum(base.values()) and base != history:
            pld, rest = self.pld(base), history - base
        for ev, k in sorted(rest.items()):
            if k:
                part = self.block(ev, k)
                pld = part if pld is None else pld.compose(part)
        return self.put(key, pld)

    def block(self, ev: str, k: int):
        """``ev`` composed k times (cached: many histories hold the same run of one event)."""
        key = (ev, int(k))
        if key not in self.blocks:
            e = self.event(ev)
            self.blocks[key] = e.self_compose(k) if k > 1 else e
            if len(self.blocks) > self.size:
                self.blocks.pop(next(iter(self.blocks)))
        return self.blocks[key]

    def event(self, ev: str):
        if ev not in self.events:
            from shared.privacy.accounting import Accountant, event_from_json

            acc = Accountant(value_discretization_interval=self.interval)
            acc.compose(event_from_json(ev))
            if acc._contains_non_dp_event:  # pylint: disable=protected-access
                raise ValueError(f"a ledger event is not differentially private: {ev[:80]}")
            self.events[ev] = acc._pld  # pylint: disable=protected-access
        return self.events[ev]

    def get(self, key: str):
        with self.lock:
            pld = self.plds.get(key)
            if pld is not None:
                self.plds.move_to_end(key)
            return pld

    def put(self, key: str, pld):
        with self.lock:
            self.plds[key] = pld
            while len(self.plds) > self.size:
                self.plds.popitem(last=False)
        return pld


class HistoryAccountant:
    """Epsilon of a history (a Counter of event JSONs): the smaller of its PLD epsilon at
    LEDGER_INTERVAL and its RDP epsilon (both upper bounds on the true one), cached."""

    def __init__(self, engine=None, mac_key: bytes | None = None, size: int = 4096):
        self.engine, self.mac_key = engine, mac_key
        self.fine = _Composer(LEDGER_INTERVAL, size)
        self.fine.load = self._load
        self._rdp: dict[str, np.ndarray | None] = {}
        self._unsaved: dict[str, bytes] = {}
        self._saved: set[str] = set()
        self.conn = None  # the connection of the caller's transaction, while it computes
        if engine is not None and mac_key:
            from .state import migrate

            migrate(engine, metadata)

    # -- epsilons --------------------------------------------------------------------------------
    def epsilon(self, history: Counter, delta: float, base: Counter | None = None,
                bound: float | None = None) -> float:
        """The ledger's epsilon of a history; ``bound``: its RDP epsilon if known."""
        if not sum(history.values()):
            return 0.0
        key = history_key(history)
        if bound is None:
            bound = self.rdp_epsilon(history, delta)
        return min(_eps(self.fine.pld(history, base, key), delta), bound)

    def worst(self, histories: list[Counter], delta: float) -> tuple[float, int]:
        """(largest epsilon, its index). Each history's epsilon is min(PLD, RDP), so RDP bounds
        it: histories whose RDP epsilon cannot beat the worst found so far are skipped."""
        if not histories:
            return 0.0, -1
        bounds = self.rdp_epsilons(histories, delta)
        base = histories[0].copy()
        for h in histories[1:]:
            base &= h  # what every history holds (the jobs that charged all records): composed once
        best, arg = -1.0, 0
        for i in sorted(range(len(histories)), key=lambda i: -bounds[i]):
            if bounds[i] <= best:
                break
            h = histories[i]
            if not sum(h.values()):
                continue
            e = min(_eps(self.fine.pld(h, base), delta), float(bounds[i]))
            if e > best:
                best, arg = e, i
        if sum(base.values()):
            self._persist(history_key(base))
        self._persist(history_key(histories[arg]))  # what the next quote starts from
        return max(best, 0.0), arg

    def rdp_epsilons(self, histories: list[Counter], delta: float) -> np.ndarray:
        """RDP epsilon of many histories at once (a matrix product, then the conversion)."""
        from shared.privacy.accounting import RDP_ORDERS

        events = sorted({e for h in histories for e in h})
        vecs = [self._rdp_vector(e) for e in events]
        ok = np.array([v is not None for v in vecs], dtype=bool)
        V = np.array([v if v is not None else np.zeros(len(RDP_ORDERS)) for v in vecs])
        index = {e: i for i, e in enumerate(events)}
        C = np.zeros((len(histories), len(events)))
        for r, h in enumerate(histories):
            for e, k in h.items():
                C[r, index[e]] = k
        V = np.where(np.isfinite(V), V, 1e300)  # inf * 0 would be nan: an unused order
        with np.errstate(over="ignore"):
            R = C @ V if len(events) else np.zeros((len(histories), len(RDP_ORDERS)))
        out = _rdp_to_eps(R, np.asarray(RDP_ORDERS, dtype=np.float64), delta)
        out[(C[:, ~ok] > 0).any(axis=1)] = math.inf  # (eps, delta) events: RDP cannot bound
        return out

    def rdp_epsilon(self, history: Counter, delta: float) -> float:
        from dp_accounting.rdp import rdp_privacy_accountant as rdp

        from shared.privacy.accounting import RDP_ORDERS

        total = np.zeros(len(RDP_ORDERS))
        for ev, k in history.items():
            vec = self._rdp_vector(ev)
            if vec is None:
                return math.inf
            total += k * vec
        if not total.any():
            return 0.0
        return float(rdp.compute_epsilon(list(RDP_ORDERS), total, delta)[0])

    def _rdp_vector(self, ev: str):
        if ev not in self._rdp:
            from shared.privacy.accounting import event_from_json, rdp_curve

            self._rdp[ev] = rdp_curve(event_from_json(ev))
        return self._rdp[ev]

    # -- the database cache of fine PLDs -------------------------------------------------------
    def _load(self, key: str):
        if self.conn is None or not self.mac_key:
            return None
        row = self.conn.execute(select(pld_cache).where(pld_cache.c.key == key)).first()
        if row is None or not hmac.compare_digest(row.mac, self._mac(key, row.blob)):
            return None  # absent, or not written by this site: recompute
        self._saved.add(key)
        return _load(row.blob)

    def _persist(self, key: str) -> None:
        """Mark a computed PLD for the database cache (only the few a later quote starts from:
        each is up to a few hundred kB)."""
        if self.mac_key and key not in self._saved:
            pld = self.fine.get(key)
            if pld is not None:
                self._unsaved[key] = _dump(pld)
                self._saved.add(key)

    def flush(self, c) -> None:
        """Store the PLDs computed since the last flush, on the caller's connection ``c``
        (inside its transaction: a second connection would wait for its lock)."""
        unsaved, self._unsaved = self._unsaved, {}
        if not unsaved:
            return
        if c.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        for key, blob in unsaved.items():  # a concurrent writer's copy is as good as ours
            c.execute(dialect_insert(pld_cache).values(key=key, blob=blob,
                                                       mac=self._mac(key, blob))
                      .on_conflict_do_nothing())

    def _mac(self, key: str, blob: bytes) -> str:
        return hmac.new(self.mac_key, key.encode() + b"\0" + bytes(blob), hashlib.sha256).hexdigest()


def _eps(pld, delta: float) -> float:
    """pld.get_epsilon_for_delta(delta), vectorised (dp_accounting loops in Python: 1 ms per
    call at this size). Same scan: the first loss, from the top, past which epsilon lies."""
    pmfs = [pld._pmf_remove] if pld._symmetric else [pld._pmf_remove, pld._pmf_add]  # pylint: disable=protected-access
    return max(_pmf_eps(p.to_dense_pmf(), delta) for p in pmfs)


def _pmf_eps(pmf, delta: float) -> float:
    inf_mass = pmf._infinity_mass  # pylint: disable=protected-access
    if inf_mass > delta:
        return math.inf
    q = np.flip(np.asarray(pmf._probs, dtype=np.float64))  # pylint: disable=protected-access
    upper = (pmf._lower_loss + len(q) - 1) * pmf._discretization  # pylint: disable=protected-access
    r = upper - np.arange(len(q)) * pmf._discretization  # pylint: disable=protected-access
    if len(r) and r[0] > 700:  # exp(-loss) underflows: dp_accounting's special case
        return float(pmf.get_epsilon_for_delta(delta))
    U = inf_mass + np.concatenate([[0.0], np.cumsum(q)])
    W = np.concatenate([[0.0], np.cumsum(np.exp(-r) * q)])
    with np.errstate(divide="ignore", invalid="ignore"):
        stop = (U[:-1] > delta) & (W[:-1] > 0) & (np.log((U[:-1] - delta) / W[:-1]) >= r)
    k = int(np.argmax(stop)) if stop.any() else len(q)
    if U[k] <= W[k] + delta:
        return 0.0
    return float(math.log((U[k] - delta) / W[k]))


def _rdp_to_eps(R: np.ndarray, orders: np.ndarray, delta: float) -> np.ndarray:
    """dp_accounting.rdp.compute_epsilon (its improved bound), one row of R at a time."""
    with np.errstate(divide="ignore", invalid="ignore"):
        eps = R + np.log1p(-1 / orders) - np.log(delta * orders) / (orders - 1)
    eps = np.where(orders > 1.01, eps, np.inf)
    eps = np.where((R < 0) | (delta ** 2 + np.expm1(-R) > 0), 0.0, eps)
    return np.maximum(eps.min(axis=1), 0.0)


def _dump(pld) -> bytes:
    arrays = {}
    for side, pmf in (("remove", pld._pmf_remove), ("add", pld._pmf_add)):  # pylint: disable=protected-access
        d = pmf.to_dense_pmf()
        arrays[f"{side}_probs"] = np.asarray(d._probs, dtype=np.float64)
        arrays[f"{side}_meta"] = np.array([d._discretization, d._lower_loss, d._infinity_mass,
                                           float(d._pessimistic_estimate)], dtype=np.float64)
    arrays["symmetric"] = np.array([float(pld._symmetric)])
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _load(blob: bytes):
    from dp_accounting.pld import pld_pmf, privacy_loss_distribution

    z = np.load(io.BytesIO(bytes(blob)), allow_pickle=False)  # data only, never code

    def pmf(side):
        disc, lower, inf, pess = z[f"{side}_meta"]
        return pld_pmf.DensePLDPmf(float(disc), int(lower), z[f"{side}_probs"], float(inf),
                                   bool(pess))

    remove = pmf("remove")
    add = None if z["symmetric"][0] else pmf("add")
    return privacy_loss_distribution.PrivacyLossDistribution(remove, add)


def histogram(values: list[tuple[int | None, float]], bins: int = 8) -> list[dict]:
    """[(record count, epsilon)] -> [{"from", "to", "records"}], equal-width epsilon bins."""
    if not values:
        return []
    top = max(e for _, e in values)
    if top <= 0:
        return [{"from": 0.0, "to": 0.0, "records": sum(c or 0 for c, _ in values)}]
    width = top / bins
    out = [{"from": i * width, "to": (i + 1) * width, "records": 0} for i in range(bins)]
    for c, e in values:
        out[min(int(e / width), bins - 1)]["records"] += c or 0
    return out
