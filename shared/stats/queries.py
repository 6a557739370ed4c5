"""Validation of DP statistics queries: what a query may ask, checked before any data is seen."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

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


class StatsError(ValueError):
    """A query cannot run; the message says what to change."""


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
