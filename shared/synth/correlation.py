"""The copula's correlation: clipped normal scores, their noisy moments, and the correlation
matrix read back from them (post-processing only).

A record's normal score in a column is ``Phi^-1`` of its value's position under that column's
*noisy* marginal (already released), so it depends on that record alone; a missing value
scores 0. Scores are clipped to ``[-c, c]``, which bounds what one record adds to the moments
(sums and sums of products, :func:`shared.synth.budget.moment_sensitivity`). The Pearson
correlation of the scores is computed from the noisy moments (so scores squeezed by a marginal
that misses the data are still normalised by their own spread); clipping shrinks it, so it is
mapped back through ``g_c(rho) = E[clip(X) clip(Y)] / E[clip(X)^2]`` for standard normals of
correlation rho (monotone; computed here, public).

Each read-back correlation is shrunk by its own signal-to-noise ratio (``r (1 - s^2/r^2)``,
floored at 0), then the matrix is made a correlation matrix by principal-axis factoring: the
off-diagonal correlations are fitted by ``L L^T`` with only the factors whose eigenvalue is
above what the noise alone could produce (``2 s sqrt(d)`` for entry noise s), and the diagonal
is completed to 1 (``L L^T + diag(1 - communality)``). The result is positive semi-definite
with a unit diagonal, and pure noise gives the identity (independent columns) rather than
spurious structure.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.stats import norm

_RHO_GRID = np.linspace(-1.0, 1.0, 401)
MAX_COMMUNALITY = 0.999  # keeps every column a little of its own noise: no exact copies


def normal_scores(u: np.ndarray, clip: float) -> np.ndarray:
    """``Phi^-1(u)`` clipped to ``[-clip, clip]`` (u: positions in (0, 1), NaN for missing
    values, which score 0)."""
    z = norm.ppf(np.clip(u, 1e-12, 1 - 1e-12))
    return np.clip(np.nan_to_num(z, nan=0.0), -clip, clip)


def moments(z: np.ndarray) -> np.ndarray:
    """``(sum_i z_ij)_j`` then ``(sum_i z_ij z_ik)_{j<=k}`` (row-major upper triangle)."""
    j, k = np.triu_indices(z.shape[1])
    return np.concatenate([z.sum(axis=0), (z.T @ z)[j, k]])


def pearson(m: np.ndarray, d: int, n: float) -> tuple[np.ndarray, np.ndarray]:
    """(upper-triangle (j < k) Pearson correlations, variances) from (noisy) :func:`moments` of
    ``n`` records; a variance the noise made tiny is floored, so the result stays finite."""
    mean = m[:d] / n
    s = np.zeros((d, d))
    s[np.triu_indices(d)] = m[d:] / n
    cov = s - np.outer(mean, mean)
    var = np.maximum(np.diag(cov), 1e-3)
    j, k = np.triu_indices(d, 1)
    return cov[j, k] / np.sqrt(var[j] * var[k]), var


def _clip_mean(m: np.ndarray, s: np.ndarray, c: float) -> np.ndarray:
    """E[clip(Y, -c, c)] for Y ~ N(m, s^2), s > 0."""
    a, b = (-c - m) / s, (c - m) / s
    return (m * (norm.cdf(b) - norm.cdf(a)) + s * (norm.pdf(a) - norm.pdf(b))
            + c * norm.sf(b) - c * norm.cdf(a))


@lru_cache(maxsize=8)
def clip_curve(c: float) -> tuple[np.ndarray, float]:
    """(``g_c`` on :data:`_RHO_GRID`, ``g_c'(0)``): the normalised mean product of clipped
    standard normals of correlation rho (1-D integral over X of ``clip(X) E[clip(Y)|X]``)."""
    x = np.linspace(-9.0, 9.0, 6001)
    w = norm.pdf(x) * (x[1] - x[0])
    cx = np.clip(x, -c, c)
    var = float(np.sum(w * cx * cx))
    g = []
    for r in _RHO_GRID:
        if abs(r) == 1.0:
            g.append(r)
            continue
        s = np.sqrt(1 - r * r)
        g.append(float(np.sum(w * cx * _clip_mean(r * x, np.full_like(x, s), c))) / var)
    slope = float(np.sum(w * (np.abs(x) < c))) ** 2 / var  # Stein: E[clip'(X)]^2 / var
    return np.maximum.accumulate(np.asarray(g)), slope


def unclip(m: np.ndarray, c: float) -> np.ndarray:
    """Correlations of the normal scores from those of the clipped scores (``g_c^-1``)."""
    g, _ = clip_curve(float(c))
    return np.interp(np.clip(m, -1.0, 1.0), g, _RHO_GRID)


def clipped_variance(c: float) -> float:
    """E[clip(X, -c, c)^2] for a standard normal X."""
    x = np.linspace(-9.0, 9.0, 6001)
    return float(np.sum(norm.pdf(x) * (x[1] - x[0]) * np.clip(x, -c, c) ** 2))


def entry_noise(noise_std: float, n: float, var: np.ndarray, c: float) -> np.ndarray:
    """The std of each read-back correlation's noise (upper triangle, near rho = 0), for
    moment noise std ``noise_std`` over ``n`` records whose scores have variances ``var``: a
    column whose scores the marginal squeezed together gets noisier correlations."""
    _, slope = clip_curve(float(c))
    j, k = np.triu_indices(len(var), 1)
    return noise_std / (max(n, 1.0) * np.sqrt(var[j] * var[k])) / slope


def project(r_upper: np.ndarray, d: int, noise, iterations: int = 100) -> np.ndarray:
    """A correlation matrix (PSD, unit diagonal) from noisy upper-triangle correlations whose
    noise has std ``noise`` (one number, or one per entry): each entry is shrunk by its
    signal-to-noise (Wiener), then principal-axis factoring keeps the factors above the noise
    edge (see the module doc)."""
    r_upper = np.clip(r_upper, -1.0, 1.0)
    noise = np.broadcast_to(np.asarray(noise, dtype=np.float64), r_upper.shape)
    keep = np.clip(1.0 - noise ** 2 / np.maximum(r_upper ** 2, 1e-12), 0.0, 1.0)
    r = np.zeros((d, d))
    j, k = np.triu_indices(d, 1)
    r[j, k] = r[k, j] = keep * r_upper
    # the noise matrix's spectral norm, about (before shrinking: the entries noise pushed far
    # out survive it, and must not make a factor; entries are clipped to [-1, 1], so their
    # noise is at most about 1)
    edge = 2.0 * float(np.sqrt(np.mean(np.minimum(noise, 1.0) ** 2) * d)) if d > 1 else 0.0
    h = np.clip(np.abs(r).max(axis=1), 0.05, MAX_COMMUNALITY)
    load = np.zeros((d, 0))
    for _ in range(iterations):
        np.fill_diagonal(r, h)
        lam, vec = np.linalg.eigh(r)
        keep = lam > max(edge, 1e-9)
        load = vec[:, keep] * np.sqrt(lam[keep])
        new = np.minimum((load ** 2).sum(axis=1), MAX_COMMUNALITY)
        done = np.max(np.abs(new - h)) < 1e-6
        h = new
        if done:
            break
    norms = np.sqrt((load ** 2).sum(axis=1))
    load = load * np.minimum(1.0, np.sqrt(MAX_COMMUNALITY) / np.maximum(norms, 1e-12))[:, None]
    out = load @ load.T
    np.fill_diagonal(out, 1.0)  # = load load^T + diag(1 - communality): PSD
    return out
