"""DP statistics on a table with OpenDP: counts, sums, means, histograms, quantiles.

Every query is an OpenDP measurement built from the query alone (never from the data), under
add/remove-one-record neighbours (``SymmetricDistance``, d_in=1: the relation DP-SGD accounting
uses too). Its privacy event is read off the measurement's actual noise scale and OpenDP's own
sensitivity (stability map), so the owner's price (:func:`queries_event`, no data) and the
executed event (:func:`run_queries`) are the same object by construction.

Noise rule: a query with no ``delta`` (or 0) is pure epsilon-DP with Laplace noise; a query that
gives its own ``delta`` > 0 gets Gaussian noise calibrated to that (epsilon, delta). The query
deltas must add up to at most the job's ``delta``. Laplace is the default because every query
here has sensitivity 1 record = 1 cell, where Laplace is more accurate than Gaussian for one
query (eps=1: Laplace std 1.41 vs Gaussian std 4.2 at delta=1e-6). Quantiles always use
OpenDP's exponential mechanism (report noisy max): pure epsilon-DP.

Events: integer Laplace (counts, histograms) is OpenDP's *discrete* Laplace; with sensitivity 1
its privacy loss is exactly +-epsilon, i.e. the worst case of pure epsilon-DP, which is what
``approx_dp_event(epsilon, 0)`` composes (``LaplaceDpEvent`` would understate its cost at
delta > 0). Float Laplace (sums, means) -> ``LaplaceDpEvent(scale / l1)``; Gaussian ->
``GaussianDpEvent(scale / l2)`` (float domains only, so it is the continuous Gaussian up to
OpenDP's fine output grid); quantiles -> ``approx_dp_event(epsilon, 0)``.

Mean = clamped noisy sum / noisy count with the query's budget split in half. n is not taken from
the public metadata: under add/remove the record count is itself private. The sum is taken over
x - lower in [0, upper - lower], whose add/remove sensitivity (upper - lower) is never larger than
OpenDP's for the unshifted sum.

Missing values (NaN) are dropped before each query (a per-record filter: it cannot increase any
sensitivity). OpenDP draws its noise from its own cryptographically secure RNG: answers cannot be
seeded; ``seed`` only seeds the simulation behind the mean's interval (post-processing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import dp_accounting
import numpy as np
import pandas as pd

from .accounting import approx_dp_event
from .reporting import privacy_report

QUERY_TYPES = ("count", "sum", "mean", "histogram", "quantile")
_COMMON_KEYS = {"type", "epsilon", "delta", "column", "name"}
_KEYS = {
    "count": set(),
    "sum": {"bounds"},
    "mean": {"bounds"},
    "histogram": {"bounds", "bins", "edges", "categories"},
    "quantile": {"bounds", "alpha", "alphas", "candidates", "resolution"},
}
MAX_QUERIES = 1000
# Beyond this total the answers protect nothing, and pricing it would be costly: a PLD over
# losses up to eps grows linearly in eps (eps = 1e6 exhausts memory).
MAX_EPSILON = 100.0
MAX_BINS = 10_000
MAX_CANDIDATES = 10_001
DEFAULT_CANDIDATES = 101  # quantile grid when only bounds are given
# Report (eps, delta) of a pure-DP batch at this delta (privacy_report needs delta > 0);
# the result also carries the pure-DP guarantee itself as ``epsilon_pure``.
PURE_REPORT_DELTA = 1e-10
LEVEL = 0.95  # coverage of the reported noise intervals
_Z95 = 1.959963984540054
OTHER = "__other__"  # histogram bin of values outside the listed categories

Progress = Callable[[int, int], None]


class StatsError(ValueError):
    """A query cannot run; the message says what to change."""


# -- validation --------------------------------------------------------------------------------
def is_numeric_dtype(dtype: Any) -> bool:
    """True for int/uint/float/bool dtypes (given as a dtype or its name)."""
    try:
        return pd.api.types.is_numeric_dtype(np.dtype(dtype) if isinstance(dtype, str) else dtype)
    except TypeError:  # "category", "string", ... are not numpy dtypes
        return False


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _bounds(q: dict, where: str) -> tuple[float, float]:
    b = q.get("bounds")
    if b is None:
        raise StatsError(f"{where}: needs bounds [lower, upper] (values are clamped to them; "
                         "choose them from domain knowledge, not from the data)")
    if not (isinstance(b, (list, tuple)) and len(b) == 2 and all(_finite(v) for v in b)):
        raise StatsError(f"{where}: bounds must be [lower, upper], two finite numbers, got {b!r}")
    lo, hi = float(b[0]), float(b[1])
    if not lo < hi:
        raise StatsError(f"{where}: bounds must have lower < upper, got [{b[0]}, {b[1]}]")
    return lo, hi


def _increasing(values, what: str, where: str, n_min: int, n_max: int) -> list[float]:
    if not (isinstance(values, (list, tuple)) and all(_finite(v) for v in values)):
        raise StatsError(f"{where}: {what} must be a list of finite numbers, got {values!r}")
    if not n_min <= len(values) <= n_max:
        raise StatsError(f"{where}: {what} needs {n_min} to {n_max} values, got {len(values)}")
    out = [float(v) for v in values]
    if any(b <= a for a, b in zip(out, out[1:])):
        raise StatsError(f"{where}: {what} must be strictly increasing, got {values!r}")
    return out


def validate_queries(queries: list, delta: float,
                     columns: dict[str, Any] | None = None) -> list[dict]:
    """Check ``queries`` (and their columns against ``columns``: name -> dtype, if given).

    Returns normalised copies: ``type, name, column, epsilon, delta, mechanism`` plus
    ``bounds`` / ``edges`` / ``categories`` / ``alphas`` + ``candidates`` as the type needs.
    """
    if not (_finite(delta) and 0 <= delta < 1):
        raise StatsError(f"delta must be in [0, 1) (0 = pure DP), got {delta!r}")
    if not isinstance(queries, (list, tuple)) or not queries:
        raise StatsError("no queries: give a non-empty list of query dicts, e.g. "
                         "[{'type': 'count', 'epsilon': 0.5}]")
    if len(queries) > MAX_QUERIES:
        raise StatsError(f"{len(queries)} queries; at most {MAX_QUERIES} per job")
    out = [_validate_query(q, i, columns) for i, q in enumerate(queries)]
    eps_total = sum(q["epsilon"] for q in out)
    if eps_total > MAX_EPSILON:
        raise StatsError(f"the queries' epsilons add up to {eps_total:g}, above the cap of "
                         f"{MAX_EPSILON:g} (answers that precise protect nobody): lower them")
    total = sum(q["delta"] for q in out)
    if total > delta * (1 + 1e-9):
        raise StatsError(
            f"the queries ask for a total delta of {total:g} but the job's delta is {delta:g}: "
            "raise the job's delta, lower the queries' deltas, or drop them (pure-DP Laplace)")
    return out


def _validate_query(q: Any, i: int, columns: dict[str, Any] | None) -> dict:
    if not isinstance(q, dict):
        raise StatsError(f"query {i}: must be a dict, got {type(q).__name__}")
    kind = q.get("type")
    if kind not in QUERY_TYPES:
        raise StatsError(f"query {i}: unknown type {kind!r}; choose one of {list(QUERY_TYPES)}")
    where = f"query {i} ({kind})"
    allowed = _COMMON_KEYS | _KEYS[kind]
    unknown = sorted(set(q) - allowed)
    if unknown:
        raise StatsError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    eps = q.get("epsilon")
    if not (_finite(eps) and eps > 0):
        raise StatsError(f"{where}: epsilon must be a finite number > 0, got {eps!r}")
    d = q.get("delta", 0.0)
    if not (_finite(d) and 0 <= d < 1):
        raise StatsError(f"{where}: delta must be in [0, 1), got {d!r}")
    if kind == "quantile" and d > 0:
        raise StatsError(f"{where}: quantiles are pure epsilon-DP (exponential mechanism); "
                         "remove its delta")
    name = q.get("name", "")
    if not isinstance(name, str):
        raise StatsError(f"{where}: name must be a string, got {name!r}")
    out = {"type": kind, "name": name, "epsilon": float(eps), "delta": float(d),
           "mechanism": "gaussian" if d > 0 else "laplace", "column": q.get("column")}
    if kind == "quantile":
        out["mechanism"] = "exponential"

    col = q.get("column")
    needs_numeric = kind in ("sum", "mean", "quantile") or (
        kind == "histogram" and "categories" not in q)
    if col is None and kind != "count":
        raise StatsError(f"{where}: needs a column")
    if col is not None:
        if not isinstance(col, str):
            raise StatsError(f"{where}: column must be a column name (string), got {col!r}")
        if columns is not None and col not in columns:
            raise StatsError(f"{where}: unknown column {col!r}; columns: {sorted(columns)}")
        if needs_numeric and columns is not None and not is_numeric_dtype(columns[col]):
            raise StatsError(
                f"{where}: column {col!r} is not numeric ({columns[col]}); sum, mean, quantile "
                "and binned histograms need a numeric column (use a histogram with "
                "'categories' for a categorical column)")

    if kind in ("sum", "mean"):
        out["bounds"] = list(_bounds(q, where))
    elif kind == "histogram":
        _validate_histogram(q, where, out)
    elif kind == "quantile":
        _validate_quantile(q, where, out)
    return out


def _validate_histogram(q: dict, where: str, out: dict) -> None:
    given = [k for k in ("edges", "categories", "bins") if k in q]
    if "categories" in q:
        if len(given) > 1 or "bounds" in q:
            raise StatsError(f"{where}: give either categories, or edges, or bounds + bins")
        cats = q["categories"]
        if not (isinstance(cats, (list, tuple)) and cats
                and all(isinstance(c, (str, int, float, bool)) for c in cats)):
            raise StatsError(f"{where}: categories must be a non-empty list of strings or "
                             f"numbers, got {cats!r}")
        if len(cats) > MAX_BINS:
            raise StatsError(f"{where}: at most {MAX_BINS} categories, got {len(cats)}")
        if len(set(cats)) != len(cats) or any(isinstance(c, float) and math.isnan(c)
                                               for c in cats):
            raise StatsError(f"{where}: categories must be distinct (1, 1.0 and True count as "
                             f"the same value) and not NaN, got {cats!r}")
        out["categories"] = list(cats)
        return
    if "edges" in q:
        if "bins" in q or "bounds" in q:
            raise StatsError(f"{where}: give either edges, or bounds + bins, not both")
        edges = _increasing(q["edges"], "edges", where, 2, MAX_BINS + 1)
    else:
        if "bins" not in q:
            raise StatsError(f"{where}: needs edges (a list), categories (a list), or bounds "
                             "[lower, upper] with bins (how many equal-width bins)")
        lo, hi = _bounds(q, where)
        bins = q.get("bins")
        if not (isinstance(bins, int) and not isinstance(bins, bool) and 1 <= bins <= MAX_BINS):
            raise StatsError(f"{where}: needs edges, categories, or bounds with bins "
                             f"(an integer in 1..{MAX_BINS}), got bins={bins!r}")
        edges = np.linspace(lo, hi, bins + 1).tolist()
    out["edges"] = edges
    out["bounds"] = [edges[0], edges[-1]]


def _validate_quantile(q: dict, where: str, out: dict) -> None:
    if ("alpha" in q) == ("alphas" in q):
        raise StatsError(f"{where}: give alpha (e.g. 0.5 for the median) or alphas (a list)")
    alphas = q["alphas"] if "alphas" in q else [q["alpha"]]
    if not (isinstance(alphas, (list, tuple)) and alphas
            and all(_finite(a) and 0 <= a <= 1 for a in alphas)):
        raise StatsError(f"{where}: alpha(s) must be numbers in [0, 1], got {alphas!r}")
    out["alphas"] = [float(a) for a in alphas]
    if "candidates" in q:
        if "bounds" in q or "resolution" in q:
            raise StatsError(f"{where}: give either candidates, or bounds (+ resolution)")
        cands = _increasing(q["candidates"], "candidates", where, 2, MAX_CANDIDATES)
    else:
        lo, hi = _bounds(q, where)
        res = q.get("resolution")
        if res is None:
            n = DEFAULT_CANDIDATES
        else:
            if not (_finite(res) and res > 0):
                raise StatsError(f"{where}: resolution must be a number > 0, got {res!r}")
            n = int(math.floor((hi - lo) / res + 1e-9)) + 1
            if n > MAX_CANDIDATES:
                raise StatsError(f"{where}: resolution {res} gives {n} candidates over the "
                                 f"bounds; at most {MAX_CANDIDATES}: choose a coarser one")
            if n < 2:
                raise StatsError(f"{where}: resolution {res} is wider than the bounds")
        cands = np.linspace(lo, hi if res is None else lo + (n - 1) * res, n).tolist()
    out["candidates"] = cands
    out["bounds"] = [cands[0], cands[-1]]


# -- OpenDP measurements -----------------------------------------------------------------------
def _opendp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@dataclass
class _Part:
    """One OpenDP measurement of a query and its accounting."""

    role: str  # "value", "sum", "count", or "alpha=0.5"
    measurement: Any
    event: dp_accounting.DpEvent
    noise: str  # "discrete_laplace", "laplace", "gaussian", "exponential"
    scale: float
    sensitivity: float  # OpenDP's stability map at d_in=1 (L1 or L2 as the noise needs)
    epsilon: float
    delta: float
    prepare: Callable[[pd.DataFrame], Any] = field(repr=False)


def _calibrated(build: Callable[[float], Any], scale: float, epsilon: float,
                measure_eps: Callable[[Any], float]):
    """``build(scale)`` with scale nudged up until OpenDP's own map is <= ``epsilon``."""
    for _ in range(20):
        m = build(scale)
        got = measure_eps(m)
        if got <= epsilon:
            return m, scale
        scale *= (got / epsilon) * (1 + 1e-12)
    raise RuntimeError("OpenDP's privacy map does not meet the requested epsilon")  # never ship


def _noise_part(role: str, trans, integer: bool, epsilon: float, delta: float,
                prepare) -> _Part:
    """``trans`` (a transformation ending in a scalar or vector) followed by Laplace (delta=0)
    or Gaussian noise calibrated to (epsilon, delta)."""
    dp = _opendp()
    sens = float(trans.map(1))
    if delta == 0:
        m, scale = _calibrated(lambda s: trans >> dp.m.then_laplace(scale=s), sens / epsilon,
                               epsilon, lambda m: float(m.map(1)))
        if integer:
            # discrete Laplace, sensitivity 1: loss exactly +-eps (see module docstring)
            if sens != 1.0:
                raise RuntimeError(f"integer query with sensitivity {sens}")  # never ship
            event = approx_dp_event(float(m.map(1)), 0.0)
        else:
            event = dp_accounting.LaplaceDpEvent(scale / sens)
        return _Part(role, m, event, "discrete_laplace" if integer else "laplace", scale, sens,
                     epsilon, 0.0, prepare)
    from dp_accounting.pld import common, privacy_loss_mechanism

    sigma = privacy_loss_mechanism.GaussianPrivacyLoss.from_privacy_guarantee(
        common.DifferentialPrivacyParameters(epsilon, delta), sensitivity=sens).standard_deviation
    rho = sens ** 2 / (2 * sigma ** 2)  # zCDP of the calibrated Gaussian: OpenDP's measure
    m, sigma = _calibrated(lambda s: trans >> dp.m.then_gaussian(scale=s), sigma, rho,
                           lambda m: float(m.map(1)))
    return _Part(role, m, dp_accounting.GaussianDpEvent(sigma / sens), "gaussian", sigma, sens,
                 epsilon, delta, prepare)


def _space(T=float):
    dp = _opendp()
    return dp.vector_domain(dp.atom_domain(T=T, nan=False) if T is float
                            else dp.atom_domain(T=T)), dp.symmetric_distance()


def _column(df: pd.DataFrame, col: str) -> pd.Series:
    return df[col].dropna()


def _floats(df: pd.DataFrame, col: str, shift: float = 0.0) -> list[float]:
    return (_column(df, col).astype(np.float64) - shift).tolist()


def _compile(q: dict) -> list[_Part]:
    """The OpenDP measurements of a validated query (no data involved)."""
    dp = _opendp()
    kind, eps, delta, col = q["type"], q["epsilon"], q["delta"], q["column"]
    gauss = delta > 0
    if kind == "count":
        trans = _space(int) >> dp.t.then_count(TO=float if gauss else int)
        prep = ((lambda df: [0] * len(df)) if col is None
                else (lambda df: [0] * int(df[col].notna().sum())))
        return [_noise_part("value", trans, not gauss, eps, delta, prep)]
    if kind == "sum":
        trans = _space() >> dp.t.then_clamp(tuple(q["bounds"])) >> dp.t.then_sum()
        return [_noise_part("value", trans, False, eps, delta, lambda df: _floats(df, col))]
    if kind == "mean":
        lo, hi = q["bounds"]
        s = _space() >> dp.t.then_clamp((0.0, hi - lo)) >> dp.t.then_sum()
        c = _space(int) >> dp.t.then_count(TO=float if gauss else int)
        return [_noise_part("sum", s, False, eps / 2, delta / 2,
                            lambda df: _floats(df, col, shift=lo)),
                _noise_part("count", c, not gauss, eps / 2, delta / 2,
                            lambda df: [0] * int(df[col].notna().sum()))]
    if kind == "histogram":
        cats = q.get("categories")
        k = len(cats) if cats is not None else len(q["edges"]) - 1
        kw = dict(MO="L2Distance<f64>", TOA=float) if gauss else {}
        trans = _space(int) >> dp.t.then_count_by_categories(
            categories=list(range(k)), null_category=cats is not None, **kw)
        return [_noise_part("value", trans, not gauss, eps, delta,
                            lambda df: _bin_codes(df, col, q))]
    if kind == "quantile":
        parts = []
        share = eps / len(q["alphas"])
        for a in q["alphas"]:
            def build(scale, a=a):
                return dp.m.make_private_quantile(
                    *_space(), dp.max_divergence(), candidates=q["candidates"], alpha=a,
                    scale=scale)
            m, scale = _calibrated(build, float(build(1.0).map(1)) / share, share,
                                   lambda m: float(m.map(1)))
            parts.append(_Part(f"alpha={a:g}", m, approx_dp_event(float(m.map(1)), 0.0),
                               "exponential", scale, float(build(1.0).map(1)), share, 0.0,
                               lambda df: _floats(df, col)))
        return parts
    raise StatsError(f"unknown query type {kind!r}")  # validated before: unreachable


def _bin_codes(df: pd.DataFrame, col: str, q: dict) -> list[int]:
    """Each record's bin index: a per-record map, so it keeps add/remove distance."""
    if "categories" in q:
        index = {c: i for i, c in enumerate(q["categories"])}
        codes = df[col].map(lambda v: index.get(v, len(index)) if pd.notna(v) else len(index))
        return codes.astype(np.int64).tolist()
    edges = np.asarray(q["edges"])
    x = np.clip(_column(df, col).to_numpy(np.float64), edges[0], edges[-1])
    # bins are [e_i, e_{i+1}), the last one closed; clamping puts outliers in the end bins
    return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2).tolist()


def compile_queries(queries: list, delta: float,
                    columns: dict[str, Any] | None = None) -> list[tuple[dict, list[_Part]]]:
    """(normalised query, its OpenDP measurements) for each query."""
    return [(q, _compile(q)) for q in validate_queries(queries, delta, columns)]


def _compose(compiled) -> dp_accounting.DpEvent:
    return dp_accounting.ComposedDpEvent([p.event for _, parts in compiled for p in parts])


def queries_event(queries: list, delta: float,
                  columns: dict[str, Any] | None = None) -> dp_accounting.DpEvent:
    """The DpEvent of running ``queries`` (pure accounting: builds the measurements, no data)."""
    return _compose(compile_queries(queries, delta, columns))


# -- noise intervals ---------------------------------------------------------------------------
def noise_halfwidth(noise: str, scale: float, level: float = LEVEL) -> float:
    """Half-width h with P(|noise| <= h) >= level."""
    if noise == "laplace":
        return scale * math.log(1 / (1 - level))
    if noise == "gaussian":
        from scipy.stats import norm

        return scale * float(norm.ppf(0.5 + level / 2))
    if noise == "discrete_laplace":
        # P(X = x) ∝ exp(-|x| / scale); P(|X| > k) = 2 exp(-t (k+1)) / (1 + exp(-t)), t = 1/scale
        t = 1 / scale
        k = math.log(2 / ((1 - level) * (1 + math.exp(-t)))) / t - 1
        return float(max(0, math.ceil(k - 1e-12)))
    raise ValueError(f"no interval for {noise} noise")


def _sample_noise(noise: str, scale: float, size: int, rng: np.random.Generator) -> np.ndarray:
    if noise == "laplace":
        return rng.laplace(0.0, scale, size)
    if noise == "gaussian":
        return rng.normal(0.0, scale, size)
    p = -math.expm1(-1 / scale)  # discrete Laplace = difference of two geometrics
    return (rng.geometric(p, size) - rng.geometric(p, size)).astype(np.float64)


def _mean_interval(noisy_sum: float, noisy_count: float, lo: float, hi: float, s: _Part,
                   c: _Part, rng: np.random.Generator, draws: int = 20_000) -> list[float]:
    """Approximate interval for the clamped mean: simulate the noise around the released values
    (post-processing of the two noisy answers only)."""
    sums = noisy_sum - _sample_noise(s.noise, s.scale, draws, rng)
    counts = np.maximum(noisy_count - _sample_noise(c.noise, c.scale, draws, rng), 1.0)
    means = np.clip(lo + sums / counts, lo, hi)
    a = (1 - LEVEL) / 2
    return [float(np.quantile(means, a)), float(np.quantile(means, 1 - a))]


# -- running -----------------------------------------------------------------------------------
def run_queries(df: pd.DataFrame, queries: list, delta: float, seed: int | None = None,
                progress: Progress | None = None) -> dict:
    """Answer ``queries`` on ``df`` with OpenDP. Returns the job result:
    ``answers`` (one dict per query), ``metrics``, ``privacy`` (``privacy_report`` of the event
    executed, at ``delta``, or at PURE_REPORT_DELTA when delta is 0, plus ``epsilon_pure``)."""
    if not isinstance(df, pd.DataFrame):
        raise StatsError(f"DP statistics need a table (DataFrame), got {type(df).__name__}")
    columns = {str(c): df[c].dtype for c in df.columns}
    compiled = compile_queries(queries, delta, columns)
    rng = np.random.default_rng(seed)
    answers = []
    for i, (q, parts) in enumerate(compiled):
        answers.append(_answer(df, i, q, parts, rng))
        if progress is not None:
            progress(i + 1, len(compiled))
    event = _compose(compiled)
    report_delta = delta if delta > 0 else PURE_REPORT_DELTA
    privacy = privacy_report(event, report_delta)
    eps_pure = None if any(q["delta"] > 0 for q, _ in compiled) else \
        sum(p.epsilon for _, parts in compiled for p in parts)
    privacy.update(epsilon_pure=eps_pure, neighbouring="add/remove one record",
                   queries_delta=sum(q["delta"] for q, _ in compiled))
    metrics = {"n_queries": len(answers),
               "epsilon_total": sum(q["epsilon"] for q, _ in compiled)}
    return {"answers": answers, "metrics": metrics, "privacy": privacy}


def _answer(df: pd.DataFrame, i: int, q: dict, parts: list[_Part],
            rng: np.random.Generator) -> dict:
    out = {"index": i, "type": q["type"], "name": q["name"], "column": q["column"],
           "epsilon": q["epsilon"], "delta": q["delta"], "mechanism": q["mechanism"],
           "bounds": q.get("bounds"),
           "noise": [{"part": p.role, "noise": p.noise, "scale": p.scale,
                      "sensitivity": p.sensitivity, "epsilon": p.epsilon, "delta": p.delta}
                     for p in parts]}
    raw = [p.measurement(p.prepare(df)) for p in parts]
    kind = q["type"]
    if kind in ("count", "sum"):
        v = _plain(raw[0])
        h = noise_halfwidth(parts[0].noise, parts[0].scale)
        out.update(value=v, interval_95=[v - h, v + h])
    elif kind == "mean":
        lo, hi = q["bounds"]
        s, n = float(raw[0]), float(raw[1])
        out.update(value=float(np.clip(lo + s / max(n, 1.0), lo, hi)),
                   interval_95=_mean_interval(s, n, lo, hi, parts[0], parts[1], rng),
                   # the two released parts: noisy sum of (x - lower) and noisy count
                   parts={"sum_minus_lower": s, "count": _plain(raw[1])})
    elif kind == "histogram":
        counts = [_plain(v) for v in raw[0]]
        h = noise_halfwidth(parts[0].noise, parts[0].scale)
        if "categories" in q:
            labels = [*q["categories"], OTHER]
        else:
            e = q["edges"]
            labels = [[e[j], e[j + 1]] for j in range(len(e) - 1)]
            out["edges"] = e
        out.update(bins=labels, value=counts, interval_95=[[c - h, c + h] for c in counts])
    elif kind == "quantile":
        cands = q["candidates"]  # OpenDP returns the chosen candidate itself
        out.update(alphas=q["alphas"], value=[float(v) for v in raw],
                   interval_95=None, candidate_step=float(np.min(np.diff(cands))))
    return out


def _plain(v):
    """A JSON-able Python number."""
    return int(v) if isinstance(v, (int, np.integer)) else float(v)
