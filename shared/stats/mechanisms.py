"""Queries compiled to OpenDP measurements, and their privacy events (no data involved).

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
sensitivity).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import dp_accounting
import numpy as np
import pandas as pd

from ..privacy.accounting import approx_dp_event
from .queries import StatsError, validate_queries


def _opendp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@dataclass
class Part:
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
                prepare) -> Part:
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
        return Part(role, m, event, "discrete_laplace" if integer else "laplace", scale, sens,
                     epsilon, 0.0, prepare)
    from dp_accounting.pld import common, privacy_loss_mechanism

    sigma = privacy_loss_mechanism.GaussianPrivacyLoss.from_privacy_guarantee(
        common.DifferentialPrivacyParameters(epsilon, delta), sensitivity=sens).standard_deviation
    rho = sens ** 2 / (2 * sigma ** 2)  # zCDP of the calibrated Gaussian: OpenDP's measure
    m, sigma = _calibrated(lambda s: trans >> dp.m.then_gaussian(scale=s), sigma, rho,
                           lambda m: float(m.map(1)))
    return Part(role, m, dp_accounting.GaussianDpEvent(sigma / sens), "gaussian", sigma, sens,
                 epsilon, delta, prepare)


def _space(T=float):
    dp = _opendp()
    return dp.vector_domain(dp.atom_domain(T=T, nan=False) if T is float
                            else dp.atom_domain(T=T)), dp.symmetric_distance()


def _column(df: pd.DataFrame, col: str) -> pd.Series:
    return df[col].dropna()


def _floats(df: pd.DataFrame, col: str, shift: float = 0.0) -> list[float]:
    return (_column(df, col).astype(np.float64) - shift).tolist()


def _compile(q: dict) -> list[Part]:
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
            parts.append(Part(f"alpha={a:g}", m, approx_dp_event(float(m.map(1)), 0.0),
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
                    columns: dict[str, Any] | None = None) -> list[tuple[dict, list[Part]]]:
    """(normalised query, its OpenDP measurements) for each query."""
    return [(q, _compile(q)) for q in validate_queries(queries, delta, columns)]


def compose_events(compiled) -> dp_accounting.DpEvent:
    """One event for a batch of compiled queries: priced and executed alike."""
    return dp_accounting.ComposedDpEvent([p.event for _, parts in compiled for p in parts])


def queries_event(queries: list, delta: float,
                  columns: dict[str, Any] | None = None) -> dp_accounting.DpEvent:
    """The DpEvent of running ``queries`` (pure accounting: builds the measurements, no data)."""
    return compose_events(compile_queries(queries, delta, columns))
