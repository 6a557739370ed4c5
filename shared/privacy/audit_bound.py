"""The statistics of a one-run privacy audit: guesses -> an empirical epsilon lower bound.

Steinke, Nasr, Jagielski, "Privacy auditing with one (1) training run", NeurIPS 2023
(arXiv:2305.08846). m canaries are each included independently with probability 1/2; after
the run an auditor guesses "in" or "out" for r of them (abstaining on the rest) and gets v
right. Their main theorem: if the run is (eps, delta)-DP in each canary's inclusion, then

    P[v >= t] <= beta(t) + 2 m delta alpha(t),
    beta(t)  = P[Binomial(r, e^eps / (1 + e^eps)) >= t],
    alpha(t) = max_{1 <= i <= t} P[t - i <= Binomial(r, e^eps / (1 + e^eps)) < t] / i

(the pure-DP binomial tail, Sec. 3, plus the delta term of the approximate-DP result, Sec. 5;
this is the p-value procedure of the paper). The largest eps whose p-value is still below the
significance is rejected: the run is NOT (eps, delta)-DP for any smaller eps, with the stated
confidence. Several guess sizes are tried with a Bonferroni split of the significance, so
picking the best of them keeps the confidence honest (the guess sizes are fixed in advance).
"""
from __future__ import annotations

import numpy as np
from scipy import optimize, special, stats

# Guess sizes, as fractions of m: "in" for the top k scores and "out" for the bottom k.
GUESS_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.45)
EPS_MAX = 100.0  # p-values above this are 1 to float precision for any m we run


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[>= v correct of r guesses] if the run were (epsilon, delta)-DP (see module doc)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if v == 0:
        return 1.0
    q = special.expit(epsilon)  # accuracy of epsilon-DP randomised response
    beta = stats.binom.sf(v - 1, r, q)
    if delta == 0:
        return float(beta)
    i = np.arange(1, v + 1)
    alpha = np.max((stats.binom.sf(v - i - 1, r, q) - beta) / i)
    return float(min(1.0, beta + 2 * m * delta * alpha))


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, significance: float) -> float:
    """The largest eps rejected at ``significance`` (0 if not even eps=0 is rejected)."""
    if not 0 < significance < 1:
        raise ValueError(f"significance must be in (0, 1), got {significance}")

    def gap(eps: float) -> float:  # < 0 while (eps, delta) is rejected
        return p_value(m, r, v, eps, delta) - significance

    if gap(0.0) >= 0:
        return 0.0
    hi = 1.0
    while gap(hi) < 0 and hi < EPS_MAX:
        hi *= 2
    if gap(hi) < 0:
        return hi
    return float(optimize.brentq(gap, hi / 2 if hi > 1 else 0.0, hi, xtol=1e-6))


def guess_and_bound(scores: np.ndarray, included: np.ndarray, delta: float,
                    confidence: float = 0.95, fractions=GUESS_FRACTIONS,
                    rng: np.random.Generator | None = None) -> dict:
    """Guess "in" for the top-k scores and "out" for the bottom k, for each k = fraction * m;
    the best eps lower bound over the k's, each tested at (1 - confidence) / len(fractions).

    Ties are broken at random (``rng``), independently of which canaries were included.
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    m = len(scores)
    if included.shape != (m,) or m < 2:
        raise ValueError("need one inclusion bit per score and at least 2 canaries")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = rng or np.random.default_rng()
    order = np.lexsort((rng.random(m), scores))  # ascending score, random among equal scores
    significance = (1 - confidence) / len(fractions)
    best = {"epsilon_lower_bound": 0.0, "k": 0, "guesses": 0, "correct": 0}
    for frac in fractions:
        k = max(1, min(m // 2, int(round(frac * m))))
        v = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
        eps = epsilon_lower_bound(m, 2 * k, v, delta, significance)
        if eps > best["epsilon_lower_bound"] or best["k"] == 0:
            best = {"epsilon_lower_bound": eps, "k": k, "guesses": 2 * k, "correct": v}
    return {**best, "canaries": m, "included": int(included.sum()), "confidence": confidence,
            "significance_per_k": significance, "ks_tried": len(fractions)}
