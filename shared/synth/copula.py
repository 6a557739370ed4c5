"""A differentially private Gaussian-copula synthesiser for tables (the owner's DP mock).

Measured from the real table, with Gaussian noise priced by :mod:`shared.synth.budget`:

1. each column's histogram over its declared domain (:mod:`shared.synth.domain`; the label is a
   column, a declared-missing column has a missing bin), sensitivity 1 each;
2. the sums and sums of products of the records' clipped normal scores under those noisy
   marginals (:mod:`shared.synth.correlation`), sensitivity ``sqrt(d c^2 + (d^2+d) c^4 / 2)``.

Everything else is post-processing of these two noisy releases: the marginals (negative and
below-noise counts set to 0), the missing rates, the record count, the correlation matrix
(PSD, unit diagonal). Generation draws normal vectors with that correlation and maps each
coordinate back through its noisy marginal's inverse CDF (piecewise linear inside numeric
bins); missing values are drawn independently at the noisy missing rates.

The noise and the draws come from :func:`shared.randomness.secret_seed` (fresh OS randomness on
a datasite; pinned in tests and benchmarks). This module imports nothing from syft,
``datasite`` or ``researcher``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..data import TABLE, DatasetMeta
from ..privacy.accounting import event_to_json
from ..randomness import secret_seed
from . import correlation as corr
from .budget import Noise, calibrate
from .domain import Column, columns_of, frame

# Noisy counts below this many noise stds are read as empty bins: with a wide declared domain
# most bins are empty, and their positive noise would otherwise spread mass over all of it.
EMPTY_BELOW = 3.0
_NOISE_STREAM, _DRAW_STREAM = 0x5E7C0, 0x5E7C1


@dataclass
class CopulaModel:
    """What the mock is drawn from: all of it is DP (post-processed noisy measurements)."""

    columns: list[Column]
    label: str
    probs: list[np.ndarray]  # per column: shares of its value bins (sum 1)
    missing: list[float]  # per column: share missing (0 unless declared missing)
    corr: np.ndarray  # d x d correlation of the normal scores
    n: float  # noisy record count
    noise: Noise


def histograms(cols: list[Column], table: pd.DataFrame) -> list[np.ndarray]:
    """Exact per-column counts over each column's bins (the missing bin last)."""
    return [np.bincount(c.encode(table[c.name].to_numpy())[0], minlength=c.n_bins)
            .astype(np.float64) for c in cols]


def noisy(values: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``values`` plus independent Gaussian noise of std ``std`` (the one noise primitive)."""
    return values + rng.normal(0.0, std, np.shape(values))


def read_marginals(cols: list[Column], counts: list[np.ndarray], sigma: float):
    """(value-bin shares, missing shares, record count) from noisy histograms."""
    totals = np.array([h.sum() for h in counts])
    sizes = np.array([len(h) for h in counts], dtype=np.float64)
    n = max(float(np.sum(totals / sizes) / np.sum(1 / sizes)), 1.0)  # inverse-variance mean
    probs, missing = [], []
    for c, h in zip(cols, counts):
        h = np.where(h < EMPTY_BELOW * sigma, 0.0, h)
        vals = h[:c.n_values]
        probs.append(vals / vals.sum() if vals.sum() > 0 else np.full(c.n_values, 1 / c.n_values))
        missing.append(float(np.clip(h[c.n_values] / n, 0.0, 0.95)) if c.missing else 0.0)
    return probs, missing, n


def positions(col: Column, p: np.ndarray, x) -> np.ndarray:
    """Each value's position in (0, 1) under the marginal ``p`` (NaN for a missing value)."""
    bins, within = col.encode(x)
    cdf = np.concatenate([[0.0], np.cumsum(p)])
    ok = bins < col.n_values
    b = np.minimum(bins, col.n_values - 1)
    u = cdf[b] + p[b] * within
    return np.where(ok, u, np.nan)


def scores(model_cols: list[Column], probs: list[np.ndarray], table: pd.DataFrame,
           clip: float) -> np.ndarray:
    """The records' clipped normal scores (n x d)."""
    return np.column_stack([corr.normal_scores(positions(c, p, table[c.name].to_numpy()), clip)
                            for c, p in zip(model_cols, probs)])


def fit(table: pd.DataFrame, meta: DatasetMeta, epsilon: float, delta: float) -> CopulaModel:
    """Measure ``table`` once with (epsilon, delta)-DP noise; the model to draw mocks from."""
    if meta.kind != TABLE:
        raise ValueError("A DP mock is built for tables only.")
    cols = columns_of(meta)
    noise = calibrate(len(cols), epsilon, delta)
    rng = np.random.default_rng(secret_seed(_NOISE_STREAM))
    counts = [noisy(h, noise.hist_sigma, rng) for h in histograms(cols, table)]
    probs, missing, n = read_marginals(cols, counts, noise.hist_sigma)
    d = len(cols)
    if d > 1:
        std = noise.corr_sigma * noise.corr_sensitivity
        m = noisy(moments_of(cols, probs, table, noise.clip), std, rng)
        r_upper, var = corr.pearson(m, d, n)
        r = corr.project(corr.unclip(r_upper, noise.clip), d,
                         corr.entry_noise(std, n, var, noise.clip))
    else:
        r = np.eye(1)
    return CopulaModel(cols, meta.label, probs, missing, r, n, noise)


def moments_of(cols, probs, table, clip) -> np.ndarray:
    """The exact score moments the mechanism adds noise to (given the noisy marginals)."""
    return corr.moments(scores(cols, probs, table, clip))


def sample(model: CopulaModel, n: int) -> pd.DataFrame:
    """``n`` mock records drawn from the model (every label at least once when n allows)."""
    rng = np.random.default_rng(secret_seed(_DRAW_STREAM))
    d = len(model.columns)
    z = rng.multivariate_normal(np.zeros(d), model.corr, size=n, method="eigh")
    u = norm.cdf(z)
    out = {}
    for j, (c, p) in enumerate(zip(model.columns, model.probs)):
        cdf = np.cumsum(p)
        b = np.minimum(np.searchsorted(cdf, u[:, j], side="right"), c.n_values - 1)
        within = np.clip((u[:, j] - (cdf[b] - p[b])) / np.maximum(p[b], 1e-12), 0.0, 1.0)
        x = c.decode(b, within)
        if c.missing:
            x = x.astype(np.float64)
            x[rng.random(n) < model.missing[j]] = np.nan
        out[c.name] = x
    out[model.label] = _every_label(out[model.label], model.columns[-1].values, rng)
    return frame(model.columns, out, model.label)


def _every_label(y: np.ndarray, labels: tuple, rng: np.random.Generator) -> np.ndarray:
    """Put each class on one distinct record if it is absent (a job's split needs them all)."""
    y = np.asarray(y).copy()
    absent = [v for v in labels if v not in set(y.tolist())]
    if absent and len(y) >= len(labels):
        for v, i in zip(absent, rng.choice(len(y), len(absent), replace=False)):
            y[i] = v
    return y


def dp_copula_mock(table: pd.DataFrame, meta: DatasetMeta, epsilon: float, delta: float,
                   n: int) -> tuple[pd.DataFrame, str]:
    """(a DP synthetic mock of ``n`` records, the JSON of the DP event it spent)."""
    model = fit(table, meta, epsilon, delta)
    return sample(model, n), event_to_json(model.noise.event())
