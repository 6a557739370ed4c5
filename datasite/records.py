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


class HistoryAccountant:
    """Epsilon of a history (a Counter of event JSONs) by PLD, with the caches above."""

    def __init__(self, engine=None, mac_key: bytes | None = None, size: int = 4096):
        self.engine, self.mac_key, self.size = engine, mac_key, size
        self._plds: "OrderedDict[str, object]" = OrderedDict()
        self._event_plds: dict[str, object] = {}
        self._rdp: dict[str, np.ndarray | None] = {}
        self._lock = threading.Lock()
        self._unsaved: dict[str, bytes] = {}
        self.conn = None  # the connection of the caller's transaction, while it computes
        if engine is not None and mac_key:
            from .state import migrate

            migrate(engine, metadata)

    # -- epsilons --------------------------------------------------------------------------------
    def epsilon(self, history: Counter, delta: float) -> float:
        if not sum(history.values()):
            return 0.0
        pld_eps = float(self.pld(history).get_epsilon_for_delta(delta))
        rdp_eps = self.rdp_epsilon(history, delta)
        return min(pld_eps, rdp_eps)  # both are upper bounds on the true epsilon

    def worst(self, histories: list[Counter], delta: float) -> tuple[float, int]:
        """(largest epsilon, its index): the RDP bound skips classes that cannot be the worst."""
        if not histories:
            return 0.0, -1
        bounds = self.rdp_epsilons(histories, delta)
        best, arg = -1.0, 0
        for i in sorted(range(len(histories)), key=lambda i: -bounds[i]):
            if bounds[i] <= best:
                break
            e = self.epsilon(histories[i], delta)
            if e > best:
                best, arg = e, i
        return max(best, 0.0), arg

    def rdp_epsilons(self, histories: list[Counter], delta: float) -> np.ndarray:
        """RDP epsilon of many histories at once (a matrix product, then the conversion)."""
        from shared.accounting import RDP_ORDERS

        events = sorted({e for h in histories for e in h})
        vecs = [self._rdp_vector(e) for e in events]
        ok = np.array([v is not None for v in vecs], dtype=bool)
        V = np.array([v if v is not None else np.zeros(len(RDP_ORDERS)) for v in vecs])
        index = {e: i for i, e in enumerate(events)}
        C = np.zeros((len(histories), len(events)))
        for r, h in enumerate(histories):
            for e, k in h.items():
                C[r, index[e]] = k
        out = _rdp_to_eps(C @ V if len(events) else np.zeros((len(histories), len(RDP_ORDERS))),
                          np.asarray(RDP_ORDERS, dtype=np.float64), delta)
        out[(C[:, ~ok] > 0).any(axis=1)] = math.inf  # (eps, delta) events: RDP cannot bound
        return out

    def rdp_epsilon(self, history: Counter, delta: float) -> float:
        from dp_accounting.rdp import rdp_privacy_accountant as rdp

        from shared.accounting import RDP_ORDERS

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
            from dp_accounting.rdp import RdpAccountant

            from shared.accounting import RDP_ORDERS, _contains_approx, event_from_json

            event = event_from_json(ev)
            vec = None
            if not _contains_approx(event):
                acc = RdpAccountant(orders=list(RDP_ORDERS))
                import logging

                absl = logging.getLogger("absl")
                level = absl.level
                absl.setLevel(logging.ERROR)
                try:
                    acc.compose(event)
                finally:
                    absl.setLevel(level)
                vec = np.array(acc._rdp, dtype=np.float64)  # pylint: disable=protected-access
            self._rdp[ev] = vec
        return self._rdp[ev]

    # -- composed PLDs ---------------------------------------------------------------------------
    def pld(self, history: Counter):
        key = history_key(history)
        got = self._get(key)
        if got is not None:
            return got
        # one event shorter and cached (the usual case: a quote adds one job): one convolution
        for ev in sorted(history):
            parent = Counter(history)
            parent[ev] -= 1
            if not sum(parent.values()):
                break
            cached = self._get(history_key(parent))
            if cached is not None:
                return self._put(key, cached.compose(self._event_pld(ev)))
        pld = None
        for ev, k in sorted(history.items()):
            if not k:
                continue
            part = self._event_pld(ev)
            part = part.self_compose(k) if k > 1 else part
            pld = part if pld is None else pld.compose(part)
        return self._put(key, pld)

    def _event_pld(self, ev: str):
        if ev not in self._event_plds:
            from shared.accounting import _Accountant, event_from_json

            acc = _Accountant(value_discretization_interval=LEDGER_INTERVAL)
            acc.compose(event_from_json(ev))
            if acc._contains_non_dp_event:  # pylint: disable=protected-access
                raise ValueError(f"a ledger event is not differentially private: {ev[:80]}")
            self._event_plds[ev] = acc._pld  # pylint: disable=protected-access
        return self._event_plds[ev]

    def _get(self, key: str):
        with self._lock:
            pld = self._plds.get(key)
            if pld is not None:
                self._plds.move_to_end(key)
                return pld
        if self.conn is None or not self.mac_key:
            return None
        row = self.conn.execute(select(pld_cache).where(pld_cache.c.key == key)).first()
        if row is None or not hmac.compare_digest(row.mac, self._mac(key, row.blob)):
            return None  # absent, or not written by this site: recompute
        pld = _load(row.blob)
        self._remember(key, pld)
        return pld

    def _put(self, key: str, pld):
        self._remember(key, pld)
        if self.mac_key:
            self._unsaved[key] = _dump(pld)
        return pld

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

    def _remember(self, key: str, pld) -> None:
        with self._lock:
            self._plds[key] = pld
            while len(self._plds) > self.size:
                self._plds.popitem(last=False)

    def _mac(self, key: str, blob: bytes) -> str:
        return hmac.new(self.mac_key, key.encode() + b"\0" + bytes(blob), hashlib.sha256).hexdigest()


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
    np.savez_compressed(buf, **arrays)
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
