"""Per-record (individual) accounting: each record's history of privacy events, grouped.

A job charges *parts*: (record ids, event), or (None, event) for every record of the dataset (the
sound default for jobs that do not say which records they touched). A record's history is the
multiset of events of the parts that named it; records with the same history form one *class*,
so the work grows with the number of distinct histories, not with the number of records. The
dataset's spend is its worst record's: the largest epsilon over classes of the PLD composition
of the class's history.

Speed (a quote stays O(new events): 0.2 s at 10,000 jobs): histories compose at one fixed
pessimistic discretisation (LEDGER_INTERVAL: an upper bound, within ~0.1% of the refined one),
left to right in ledger order, so a history that grew by k jobs is its cached prefix plus k
convolutions, bit-identical to composing it from scratch. Prefixes are keyed by a hash chain
(no re-serialising of the history) and cached in memory and in the database, authenticated
with an HMAC under a key derived from the site's signing key, so a database writer cannot
plant a smaller one. The summed RDP vector is cached beside each PLD: classes are visited by
their RDP epsilon (an independent upper bound), and once it is below the worst PLD found the
class cannot be the worst and is skipped. The price: a history with no cached prefix (a new
site database, a job committed long after later ones) composes job by job, one convolution
each, where grouping identical events would need fewer.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import math
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

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
    """Records sharing one history; ``count`` None: "every record not named by any part".
    ``sequence``: the history's events in ledger order (what is composed, in that order)."""

    count: int | None
    history: Counter
    example: int | None = None  # one record id of the class (owner-side only)
    sequence: list = field(default_factory=list)


def classes(jobs: list[list[tuple]], n_records: int | None = None) -> list[RecordClass]:
    """Group records by history. ``jobs``: per job (in ledger order), its parts
    [(ids or None, event_json)]."""
    flat = [(ids, ev) for parts in jobs for ids, ev in parts]
    named = [(np.unique(np.asarray(ids, dtype=np.int64)), ev) for ids, ev in flat
             if ids is not None and len(ids)]
    universe = np.unique(np.concatenate([i for i, _ in named])) if named else np.zeros(0, np.int64)
    common = [ev for ids, ev in flat if ids is None]
    rest = None if n_records is None else max(int(n_records) - len(universe), 0)
    out = [RecordClass(rest, Counter(common), None, common)] if rest is None or rest > 0 else []
    if not len(universe):
        return out or [RecordClass(0, Counter(common), None, common)]
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
    # each representative's sequence: the common parts and the parts that named it, in order
    where = np.full(len(universe), -1, dtype=np.int64)
    where[first] = np.arange(len(first))
    seqs: list[list[str]] = [[] for _ in first]
    for ids, ev in flat:
        if ids is None:
            for q in seqs:
                q.append(ev)
        elif len(ids):
            k = where[np.searchsorted(universe, np.unique(np.asarray(ids, dtype=np.int64)))]
            for r in k[k >= 0]:
                seqs[r].append(ev)
    out += [RecordClass(int(c), Counter(q), int(universe[f]), q)
            for c, q, f in zip(counts, seqs, first)]
    return out


@dataclass
class _State:
    """A sequence's composed PLD and summed RDP vector (None: an event RDP cannot bound)."""

    pld: object
    rdp: np.ndarray | None
    origin: str | None = None  # the cached prefix it was composed from


_ROOT = hashlib.sha256(b"dp-datasite ledger history v2").digest()


class _Composer:
    """Composed PLDs of event sequences at one discretisation interval, composed left to right
    in sequence order and cached by prefix: a sequence is keyed by a hash chain over its events
    (key_i = sha256(key_i-1 || event_i)), so the longest cached prefix of a sequence is
    found without re-serialising it, and a sequence one event longer than a cached one costs one
    convolution. The fold order is fixed, so the result is bit-identical to composing the whole
    sequence from scratch."""

    def __init__(self, interval: float, size: int = 32, events: int = 256):
        self.interval, self.size, self.n_events = interval, size, events
        self.states: "OrderedDict[str, _State]" = OrderedDict()  # few: each up to a few MB
        self.events: "OrderedDict[str, object]" = OrderedDict()
        self.rdp: dict[str, np.ndarray | None] = {}
        self.chains: "OrderedDict[int, tuple[list, list]]" = OrderedDict()  # recent key chains
        self.lock = threading.Lock()
        self.load = None  # keys -> (prefix length, _State) or None: the database level
        self.convolutions = 0  # for tests: incremental work is O(new events)

    # -- keys --------------------------------------------------------------------------------------
    def keys(self, seq: list) -> list[str]:
        """keys[i]: the key of seq[:i + 1]. Reuses the longest common prefix with a recently
        keyed sequence (list slices compare in C), so a quote hashes only its new events."""
        best, bkeys = 0, []
        with self.lock:
            recent = list(self.chains.values())
        for mseq, mkeys in recent:
            n = _common_prefix(mseq, seq)
            if n > best:
                best, bkeys = n, mkeys
        keys = bkeys[:best]
        prev = bytes.fromhex(keys[-1]) if keys else _ROOT
        sha = hashlib.sha256
        for ev in seq[best:]:
            prev = sha(prev + ev.encode()).digest()  # prev: 32 bytes, so the split is unambiguous
            keys.append(prev.hex())
        with self.lock:
            self.chains[id(keys)] = (list(seq), keys)
            while len(self.chains) > 8:
                self.chains.popitem(last=False)
        return keys

    def resolve(self, seq: list, keys: list[str]) -> tuple[int, _State | None]:
        """(n, state of seq[:n]) for the longest cached prefix (memory, then database)."""
        n, st = 0, None
        with self.lock:
            for i in range(len(keys), 0, -1):
                got = self.states.get(keys[i - 1])
                if got is not None:
                    self.states.move_to_end(keys[i - 1])
                    n, st = i, got
                    break
        if self.load is not None and n < len(keys):
            found = self.load(keys[n:])
            if found is not None:
                m, st = found
                n += m
                self.put(keys[n - 1], st)
        return n, st

    # -- composition -------------------------------------------------------------------------------
    def rdp_total(self, seq: list) -> np.ndarray | None:
        """The summed RDP vector of ``seq`` (same left-to-right sum as a full fold)."""
        keys = self.keys(seq)
        n, st = self.resolve(seq, keys)
        total = st.rdp if st is not None else np.zeros(_n_orders())
        for ev in seq[n:]:
            v = self.rdp_vector(ev)
            if v is None or total is None:
                return None
            total = total + v
        return total

    def state(self, seq: list, keep: tuple = ()) -> _State:
        """The composed state of ``seq``; the states of the prefixes of lengths ``keep`` are
        cached too (what the next call will extend)."""
        keys = self.keys(seq)
        n, st = self.resolve(seq, keys)
        if n == len(seq):
            return st
        origin = keys[n - 1] if n else None
        pld = st.pld if st is not None else None
        rdp = st.rdp if st is not None else np.zeros(_n_orders())
        for i in range(n, len(seq)):
            ev = seq[i]
            e = self.event(ev)
            if pld is None:
                pld = _dense(e)
            else:
                pld = pld.compose(e)
                self.convolutions += 1
            v = self.rdp_vector(ev)
            rdp = None if v is None or rdp is None else rdp + v
            if i + 1 in keep or i + 1 == len(seq):
                st = self.put(keys[i], _State(pld, rdp, origin))
        return st

    def event(self, ev: str):
        with self.lock:
            got = self.events.get(ev)
        if got is None:
            from shared.privacy.accounting import Accountant, event_from_json

            acc = Accountant(value_discretization_interval=self.interval)
            acc.compose(event_from_json(ev))
            if acc._contains_non_dp_event:  # pylint: disable=protected-access
                raise ValueError(f"a ledger event is not differentially private: {ev[:80]}")
            got = acc._pld  # pylint: disable=protected-access
            with self.lock:
                self.events[ev] = got
                while len(self.events) > self.n_events:
                    self.events.popitem(last=False)
        return got

    def rdp_vector(self, ev: str):
        if ev not in self.rdp:
            from shared.privacy.accounting import event_from_json, rdp_curve

            self.rdp[ev] = rdp_curve(event_from_json(ev))
        return self.rdp[ev]

    def get(self, key: str):
        with self.lock:
            return self.states.get(key)

    def put(self, key: str, st: _State) -> _State:
        with self.lock:
            self.states[key] = st
            self.states.move_to_end(key)
            while len(self.states) > self.size:
                self.states.popitem(last=False)
        return st


def _common_prefix(a: list, b: list) -> int:
    """Length of the longest common prefix (binary search on C-speed slice comparisons)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _n_orders() -> int:
    from shared.privacy.accounting import RDP_ORDERS

    return len(RDP_ORDERS)


def _dense(pld):
    """The same PLD with dense pmfs: every fold then convolves the same arrays the same way."""
    from dp_accounting.pld import privacy_loss_distribution

    # pylint: disable=protected-access
    add = None if pld._symmetric else pld._pmf_add.to_dense_pmf()
    return privacy_loss_distribution.PrivacyLossDistribution(pld._pmf_remove.to_dense_pmf(), add)


class HistoryAccountant:
    """Epsilon of a history (a list of event JSONs in ledger order): the smaller of its PLD
    epsilon at LEDGER_INTERVAL and its RDP epsilon (both upper bounds on the true one). The
    composed state of each history is cached by prefix (see :class:`_Composer`), in memory and
    in the database, so a history that grew by k events costs k convolutions."""

    def __init__(self, engine=None, mac_key: bytes | None = None, size: int = 32):
        self.engine, self.mac_key = engine, mac_key
        self.fine = _Composer(LEDGER_INTERVAL, size)
        self.fine.load = self._load
        self._unsaved: dict[str, tuple[bytes, str | None]] = {}
        self._saved: set[str] = set()
        self.conn = None  # the connection of the caller's transaction, while it computes
        if engine is not None and mac_key:
            from .state import migrate

            migrate(engine, metadata)

    # -- epsilons --------------------------------------------------------------------------------
    def epsilon(self, history: list, delta: float) -> float:
        """The ledger's epsilon of a history (a sequence of event JSONs)."""
        if not history:
            return 0.0
        st = self.fine.state(list(history))
        return min(_eps(st.pld, delta), _rdp_eps(st.rdp, delta))

    def worst(self, histories: list[list], delta: float,
              keep: list[int] | None = None) -> tuple[float, int]:
        """(largest epsilon, its index). ``keep[i]``: the length of history i's committed
        prefix, whose state is stored for the next call to extend. Each history's epsilon is
        min(PLD, RDP), so RDP bounds it: histories whose RDP epsilon cannot beat the worst found
        so far are skipped."""
        if not histories:
            return 0.0, -1
        bounds = self.rdp_epsilons(histories, delta)
        best, arg = -1.0, 0
        for i in sorted(range(len(histories)), key=lambda i: -bounds[i]):
            if bounds[i] <= best:
                break
            h = histories[i]
            if not h:
                continue
            k = keep[i] if keep is not None else len(h)
            st = self.fine.state(h, keep=(k,))
            if k:
                self._persist(self.fine.keys(h[:k])[-1])
            e = min(_eps(st.pld, delta), float(bounds[i]))
            if e > best:
                best, arg = e, i
        return max(best, 0.0), arg

    def rdp_epsilons(self, histories: list[list], delta: float) -> np.ndarray:
        """RDP epsilon of each history (its summed RDP vector, then the conversion)."""
        return np.array([_rdp_eps(self.fine.rdp_total(h), delta) if h else 0.0
                         for h in histories], dtype=np.float64)

    # -- the database cache of fine PLDs -------------------------------------------------------
    def _load(self, keys: list[str]):
        """The longest prefix among ``keys`` (keys[i]: prefix i + 1) stored with a valid MAC."""
        if self.conn is None or not self.mac_key:
            return None
        for end in range(len(keys), 0, -500):  # newest first, in chunks (SQL parameter limits)
            chunk = keys[max(end - 500, 0):end]
            have = {r[0] for r in self.conn.execute(
                select(pld_cache.c.key).where(pld_cache.c.key.in_(chunk)))}
            for i in range(len(chunk) - 1, -1, -1):
                if chunk[i] not in have:
                    continue
                row = self.conn.execute(select(pld_cache).where(pld_cache.c.key == chunk[i])).first()
                if row is None or not hmac.compare_digest(row.mac, self._mac(row.key, row.blob)):
                    continue  # not written by this site: ignored, recomputed
                self._saved.add(row.key)
                return max(end - 500, 0) + i + 1, _load(row.blob)
        return None

    def _persist(self, key: str) -> None:
        """Mark a computed state for the database cache (only the committed prefixes a later
        call starts from: each is up to a few MB; the prefix it extended is then deleted)."""
        if self.mac_key and key not in self._saved:
            st = self.fine.get(key)
            if st is not None:
                self._unsaved[key] = (_dump(st), st.origin)
                self._saved.add(key)

    def flush(self, c) -> None:
        """Store the states computed since the last flush, on the caller's connection ``c``
        (inside its transaction: a second connection would wait for its lock)."""
        unsaved, self._unsaved = self._unsaved, {}
        if not unsaved:
            return
        if c.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        for key, (blob, _) in unsaved.items():  # a concurrent writer's copy is as good as ours
            c.execute(dialect_insert(pld_cache).values(key=key, blob=blob,
                                                       mac=self._mac(key, blob))
                      .on_conflict_do_nothing())
        # superseded prefixes: a cache, so dropping one only costs a recomputation
        old = [o for _, o in unsaved.values() if o and o not in unsaved]
        if old:
            c.execute(pld_cache.delete().where(pld_cache.c.key.in_(old)))
            self._saved.difference_update(old)

    def _mac(self, key: str, blob: bytes) -> str:
        return hmac.new(self.mac_key, key.encode() + b"\0" + bytes(blob), hashlib.sha256).hexdigest()


def _rdp_eps(total: np.ndarray | None, delta: float) -> float:
    if total is None:
        return math.inf  # (eps, delta) events: RDP cannot bound
    if not total.any():
        return 0.0
    from shared.privacy.accounting import RDP_ORDERS

    with np.errstate(over="ignore"):
        R = np.where(np.isfinite(total), total, 1e300)[None, :]
    return float(_rdp_to_eps(R, np.asarray(RDP_ORDERS, dtype=np.float64), delta)[0])


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


def _dump(st: _State) -> bytes:
    pld, arrays = st.pld, {}
    for side, pmf in (("remove", pld._pmf_remove), ("add", pld._pmf_add)):  # pylint: disable=protected-access
        d = pmf.to_dense_pmf()
        arrays[f"{side}_probs"] = np.asarray(d._probs, dtype=np.float64)
        arrays[f"{side}_meta"] = np.array([d._discretization, d._lower_loss, d._infinity_mass,
                                           float(d._pessimistic_estimate)], dtype=np.float64)
    arrays["symmetric"] = np.array([float(pld._symmetric)])  # pylint: disable=protected-access
    if st.rdp is not None:
        arrays["rdp"] = np.asarray(st.rdp, dtype=np.float64)
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
    rdp = z["rdp"] if "rdp" in z.files else None
    return _State(privacy_loss_distribution.PrivacyLossDistribution(remove, add), rdp)


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
