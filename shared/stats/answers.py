"""Answering compiled queries on a table, with noise intervals and the executed privacy report.

OpenDP draws its noise from its own cryptographically secure RNG: answers cannot be seeded;
``seed`` only seeds the simulation behind the mean's interval (post-processing).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd

from ..privacy.reporting import privacy_report
from .mechanisms import Part, compile_queries, compose_events
from .queries import StatsError

# Report (eps, delta) of a pure-DP batch at this delta (privacy_report needs delta > 0);
# the result also carries the pure-DP guarantee itself as ``epsilon_pure``.
PURE_REPORT_DELTA = 1e-10
LEVEL = 0.95  # coverage of the reported noise intervals
OTHER = "__other__"  # histogram bin of values outside the listed categories

Progress = Callable[[int, int], None]


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


def mean_interval(noisy_sum: float, noisy_count: float, lo: float, hi: float, s: Part,
                   c: Part, rng: np.random.Generator, draws: int = 20_000) -> list[float]:
    """Approximate interval for the clamped mean: simulate the noise around the released values
    (post-processing of the two noisy answers only)."""
    sums = noisy_sum - _sample_noise(s.noise, s.scale, draws, rng)
    counts = np.maximum(noisy_count - _sample_noise(c.noise, c.scale, draws, rng), 1.0)
    means = np.clip(lo + sums / counts, lo, hi)
    a = (1 - LEVEL) / 2
    return [float(np.quantile(means, a)), float(np.quantile(means, 1 - a))]


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
    event = compose_events(compiled)
    report_delta = delta if delta > 0 else PURE_REPORT_DELTA
    privacy = privacy_report(event, report_delta)
    eps_pure = None if any(q["delta"] > 0 for q, _ in compiled) else \
        sum(p.epsilon for _, parts in compiled for p in parts)
    privacy.update(epsilon_pure=eps_pure, neighbouring="add/remove one record",
                   queries_delta=sum(q["delta"] for q, _ in compiled))
    metrics = {"n_queries": len(answers),
               "epsilon_total": sum(q["epsilon"] for q, _ in compiled)}
    return {"answers": answers, "metrics": metrics, "privacy": privacy}


def _answer(df: pd.DataFrame, i: int, q: dict, parts: list[Part],
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
                   interval_95=mean_interval(s, n, lo, hi, parts[0], parts[1], rng),
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
