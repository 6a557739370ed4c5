"""Attack risk and Gaussian DP of a privacy event, from the trade-off curve of its PLD.

(eps, delta) alone says little about what an attacker can do. The whole privacy profile
delta(eps) of the event's privacy loss distribution (PLD) gives its trade-off curve: the smallest
false-negative rate beta an attacker testing "was this record in the training data?" can have at
false-positive rate alpha. From it we report

* ``tpr_bound``: the largest true-positive rate 1 - beta(alpha) of any membership attack at FPR
  alpha in {0.1%, 1%, 10%}, beside ``tpr_bound_eps_delta``, what the single pair (eps, delta)
  implies, so users see what the full curve buys;
* ``mu`` (Gaussian DP): the smallest mu whose Gaussian trade-off G_mu lies at or below the curve,
  with ``mu_fit_error``, the largest gap between G_mu and the curve (0 = exactly Gaussian).

References: Dong, Roth, Su, "Gaussian differential privacy" (JRSS-B 2022), Prop. 2.5 / 2.12;
Gomez, Kulynych, Kaissis et al., arXiv 2503.10945; Kulynych et al., arXiv 2407.02191. The CLT
approximation of mu for DP-SGD is never used here: it is not a bound in either direction.

:func:`privacy_report` puts these beside the PLD epsilon (the guarantee) and the RDP cross-check.
Also: :func:`calibrate_noise_for`, the DP-SGD noise multiplier for a target eps (at delta), mu,
or attack TPR at a given FPR.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import dp_accounting
import numpy as np
from scipy.stats import norm

from .accounting import (PLD_RTOL, SIGMA_MAX, AccountingError, calibrate_noise, dpsgd_event,
                         epsilon as pld_epsilon, epsilon_rdp, event_to_json, pld_of,
                         refinement_intervals)
from .calibration import CalibrationError, smallest_feasible

REPORT_FPRS: tuple[float, ...] = (0.001, 0.01, 0.1)

# FPR grid on which mu is fitted: dense in log scale at small alpha (where attacks matter) and
# linear up to 0.999. mu-GDP is claimed on [MU_ALPHA_MIN, MU_ALPHA_MAX] only: near alpha = 0 no
# PLD can show it (G_mu -> 1, while the PLD's truncated tail mass keeps beta below 1).
MU_ALPHA_MIN, MU_ALPHA_MAX = 1e-6, 0.999
MU_ALPHAS = np.unique(np.concatenate([np.logspace(math.log10(MU_ALPHA_MIN), -1, 501),
                                      np.linspace(0.1, MU_ALPHA_MAX, 900)]))

# Epsilon grid for the privacy profile. A line with eps > ln(1/MU_ALPHA_MIN) bounds beta by a
# negative number (first form) or by < MU_ALPHA_MIN (second form) on the whole alpha grid, so
# the grid stops there. Step 0.001 below 0.5 (small-eps events), 0.005 above.
EPS_GRID = np.unique(np.concatenate([np.linspace(0.0, 0.5, 501),
                                     np.arange(0.5, math.log(1 / MU_ALPHA_MIN) + 0.005, 0.005)]))

# The curve is refined like epsilon (3e-3, 1e-3, 3.3e-4, 1.1e-4) until the TPR bounds and mu
# agree within PLD_RTOL, but not below this interval: the profile costs O(PLD size) in Python.
CURVE_MIN_INTERVAL = 1e-4


# -- trade-off curves ---------------------------------------------------------------------------
def _lines(eps: np.ndarray, delta: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """f_{eps,delta}(alpha) = max(0, 1 - delta - e^eps alpha, e^-eps (1 - delta - alpha)),
    the trade-off curve of (eps, delta)-DP; shape (len(alpha), len(eps))."""
    a = alpha[:, None]
    one_minus_delta = 1.0 - delta[None, :]
    first = one_minus_delta - np.exp(eps)[None, :] * a
    second = np.exp(-eps)[None, :] * (one_minus_delta - a)
    return np.maximum(np.maximum(first, second), 0.0)


@dataclass(frozen=True)
class TradeOff:
    """A valid lower bound on an event's trade-off function, from pairs (eps_i, delta_i) that the
    event satisfies: beta(alpha) = sup_i f_{eps_i, delta_i}(alpha).

    Direction (why a finite grid is safe): every pair (eps, delta(eps)) of the profile is a true
    (eps, delta)-DP statement (the pessimistic PLD even over-estimates delta), and each one alone
    implies beta(alpha) >= f_{eps,delta}(alpha) for every attack (Dong, Roth, Su, Prop. 2.5). The
    sup over any set of true pairs is therefore still a valid lower bound on beta. A finite grid
    leaves pairs out, which can only make our beta smaller, i.e. the TPR bound 1 - beta larger
    than the exact curve's: conservative, never optimistic. Over all eps >= 0 the sup equals
    the curve that the profile determines (Prop. 2.12); the grid converges to it from below.
    """

    eps: np.ndarray
    delta: np.ndarray

    def beta(self, alpha):
        """Lower bound on the attacker's false-negative rate at false-positive rate ``alpha``."""
        a = np.atleast_1d(np.asarray(alpha, dtype=float))
        if np.any((a < 0) | (a > 1)):
            raise AccountingError("a false-positive rate must lie in [0, 1]")
        out = self._envelope.at(a)
        return float(out[0]) if np.ndim(alpha) == 0 else out

    @functools.cached_property
    def _envelope(self) -> "_Envelope":
        return _Envelope(self.eps, self.delta)

    def tpr(self, alpha):
        """Upper bound on the true-positive rate of any membership attack at FPR ``alpha``."""
        return 1.0 - self.beta(alpha)

    def union(self, other: "TradeOff") -> "TradeOff":
        """Both sets of pairs hold, so the pointwise max of the two curves holds too."""
        if np.array_equal(self.eps, other.eps):  # same eps: the smaller delta is the higher line
            return TradeOff(self.eps, np.minimum(self.delta, other.delta))
        return TradeOff(np.concatenate([self.eps, other.eps]),
                        np.concatenate([self.delta, other.delta]))


class _Envelope:
    """beta(alpha) = max(0, max_i f_{eps_i,delta_i}(alpha)) as the upper envelope of its lines.

    Each pair gives two lines in alpha, 1 - delta - e^eps alpha and e^-eps (1 - delta - alpha),
    so beta is a maximum of lines: convex, and on [0, 1] each line is the maximum on one
    interval at most. The envelope is built once per curve (a sort and one pass); then an
    alpha needs its interval's line, not all 2n of them (``fit_mu`` asks at 1,400 alphas, each
    step of a risk-target calibration again). Every value is one of the lines, evaluated as
    :func:`_lines` does, at the envelope's line and its two neighbours: never above the max
    over all lines (each line is a valid bound), and equal to it up to rounding at a crossing.
    """

    def __init__(self, eps: np.ndarray, delta: np.ndarray):
        e = np.asarray(eps, dtype=float)
        d = np.asarray(delta, dtype=float)
        # (slope, intercept, eps, delta, family): family 0 the first form, 1 the second
        slope = np.concatenate([-np.exp(e), -np.exp(-e), [0.0]])
        icept = np.concatenate([1.0 - d, np.exp(-e) * (1.0 - d), [0.0]])
        fam = np.concatenate([np.zeros(len(e)), np.ones(len(e)), [2]]).astype(np.int8)
        ee, dd = np.concatenate([e, e, [0.0]]), np.concatenate([d, d, [1.0]])
        order = np.lexsort((icept, slope))  # slope ascending; the highest intercept last
        keep = np.append(slope[order][1:] != slope[order][:-1], True)  # one line per slope
        order = order[keep]
        hull: list[int] = []
        for k in order.tolist():  # the envelope, from alpha = -inf (steepest) to +inf
            while len(hull) >= 2 and self._useless(slope, icept, hull[-2], hull[-1], k):
                hull.pop()
            hull.append(k)
        idx = np.asarray(hull)
        m, c = slope[idx], icept[idx]
        self.breaks = (c[1:] - c[:-1]) / (m[:-1] - m[1:])  # where line j+1 takes over from j
        self.fam, self.eps, self.delta = fam[idx], ee[idx], dd[idx]

    @staticmethod
    def _useless(m, c, i: int, j: int, k: int) -> bool:
        """Line j (between i and k in slope) is nowhere strictly above both i and k."""
        return (c[k] - c[i]) * (m[i] - m[j]) <= (c[j] - c[i]) * (m[i] - m[k])

    def at(self, alpha: np.ndarray) -> np.ndarray:
        j = np.searchsorted(self.breaks, alpha, side="left")
        best = np.zeros_like(alpha)
        for jj in (j - 1, j, j + 1):
            jj = np.clip(jj, 0, len(self.fam) - 1)
            one_minus_delta = 1.0 - self.delta[jj]
            first = one_minus_delta - np.exp(self.eps[jj]) * alpha
            second = np.exp(-self.eps[jj]) * (one_minus_delta - alpha)
            fam = self.fam[jj]
            best = np.maximum(best, np.where(fam == 0, first, np.where(fam == 1, second, 0.0)))
        return best


def tradeoff_from_profile(eps, delta) -> TradeOff:
    """The curve implied by (eps_i, delta_i) pairs, each of which the mechanism satisfies."""
    eps = np.asarray(eps, dtype=float).ravel()
    delta = np.clip(np.asarray(delta, dtype=float).ravel(), 0.0, 1.0)
    if eps.shape != delta.shape or np.any(eps < 0) or not np.all(np.isfinite(eps)):
        raise AccountingError("a privacy profile needs matching finite eps >= 0 and delta")
    return TradeOff(eps, delta)


def _dense_profile(pmf, grid: np.ndarray) -> np.ndarray:
    """delta(eps) of one direction's PMF for sorted eps >= 0, as dp_accounting computes it,
    delta = inf_mass + sum_{l > eps} p_l (1 - e^(eps - l)), but with numpy suffix sums instead
    of its per-element Python loop (100x faster or more on a 10^5-point PMF)."""
    # pylint: disable=protected-access
    d = pmf.to_dense_pmf()
    probs = np.asarray(d._probs, dtype=float)
    losses = (np.arange(len(probs)) + d._lower_loss) * d._discretization
    # Suffix sums from the largest loss down (the order dp_accounting sums in). Terms with
    # loss <= 0 are never used for eps >= 0; zero them so e^-l cannot overflow.
    upper = np.append(np.cumsum(probs[::-1])[::-1], 0.0)
    terms = probs * np.exp(-np.maximum(losses, 0.0)) * (losses > 0)
    lower = np.append(np.cumsum(terms[::-1])[::-1], 0.0)
    idx = np.searchsorted(losses, grid, side="right")  # first loss > eps
    inf_mass = float(d._infinity_mass)
    return np.maximum(inf_mass + upper[idx] - np.exp(grid) * lower[idx], inf_mass)


def privacy_profile(pld, eps_grid) -> np.ndarray:
    """delta(eps) of a dp_accounting ``PrivacyLossDistribution`` on sorted ``eps_grid`` >= 0: the
    max over the remove and add directions, like ``pld.get_delta_for_epsilon`` (which tests
    check it against); falls back to that public method if the PLD's layout is not the one of
    dp_accounting 0.6."""
    grid = np.asarray(eps_grid, dtype=float)
    try:
        # pylint: disable=protected-access
        pmfs = [pld._pmf_remove] if pld._symmetric else [pld._pmf_remove, pld._pmf_add]
        return np.maximum.reduce([_dense_profile(p, grid) for p in pmfs])
    except AttributeError:
        return np.asarray(pld.get_delta_for_epsilon(grid), dtype=float)


def tradeoff_from_pld(pld, eps_grid: np.ndarray = EPS_GRID) -> TradeOff:
    """Curve of a dp_accounting ``PrivacyLossDistribution`` from its profile on ``eps_grid``.

    The profile is the max over the add and remove directions, so each pair is a standard
    (symmetric) (eps, delta)-DP guarantee.
    """
    grid = np.sort(np.asarray(eps_grid, dtype=float))
    return tradeoff_from_profile(grid, privacy_profile(pld, grid))


def _summary(curve: TradeOff) -> np.ndarray:
    mu, _ = fit_mu(curve)
    return np.append(curve.tpr(np.asarray(REPORT_FPRS)), np.inf if mu is None else mu)


def tradeoff_curve(event: dp_accounting.DpEvent) -> TradeOff | None:
    """The event's trade-off curve (None: the event is not private at all, TPR = 1).

    Refines the PLD's discretisation until the TPR bounds at REPORT_FPRS and mu agree within
    PLD_RTOL, and keeps the pointwise max of all the curves computed (each is valid).
    Deterministic: the same event always gives the same curve.
    """
    curve, prev = None, None
    for interval in [i for i in refinement_intervals() if i >= CURVE_MIN_INTERVAL * (1 - 1e-9)]:
        pld = pld_of(event, interval)
        if pld is None:
            return None
        fresh = tradeoff_from_pld(pld)
        curve = fresh if curve is None else curve.union(fresh)
        now = _summary(curve)
        if prev is not None:
            with np.errstate(invalid="ignore"):  # inf - inf when no finite mu fits either time
                tol = PLD_RTOL * np.maximum(np.abs(now), 1e-3)
                close = (now == prev) | (np.abs(now - prev) <= tol)
            if np.all(close):
                break
        prev = now
    return curve


# -- bounds ------------------------------------------------------------------------------------
def tpr_bound(event: dp_accounting.DpEvent, fpr: float) -> float:
    """Largest TPR of any membership attack on ``event`` at false-positive rate ``fpr``."""
    curve = tradeoff_curve(event)
    return 1.0 if curve is None else float(curve.tpr(float(fpr)))


def tpr_bound_eps_delta(epsilon: float, delta: float, fpr: float) -> float:
    """The TPR bound that (eps, delta)-DP alone implies: 1 - f_{eps,delta}(fpr), i.e.
    min(1, e^eps fpr + delta, 1 - e^-eps (1 - delta - fpr))."""
    if not math.isfinite(epsilon):
        return 1.0
    return 1.0 - float(_lines(np.array([float(epsilon)]), np.array([float(delta)]),
                              np.array([float(fpr)]))[0, 0])


def gaussian_tradeoff(mu: float, alpha):
    """G_mu(alpha) = Phi(Phi^-1(1 - alpha) - mu): the trade-off curve of mu-GDP."""
    return norm.cdf(norm.isf(alpha) - mu)


def fit_mu(curve: TradeOff, alphas: np.ndarray = MU_ALPHAS) -> tuple[float | None, float]:
    """(mu, fit error): the smallest mu with G_mu(alpha) <= beta(alpha) on ``alphas``, and
    max |G_mu(alpha) - beta(alpha)| there. mu is None when no finite mu fits (beta = 0 somewhere
    on the grid: the event is too weak for any Gaussian description).

    G_mu(alpha) <= beta  <=>  mu >= Phi^-1(1 - alpha) - Phi^-1(beta), so mu is the max of that
    over the grid (no search). Since beta is a valid lower bound on the event's trade-off curve,
    the event is mu-GDP at every grid FPR.
    """
    alphas = np.asarray(alphas, dtype=float)
    beta = curve.beta(alphas)
    if np.any(beta <= 0):
        return None, float(np.max(np.abs(beta - (1 - alphas))))
    mu = max(0.0, float(np.max(norm.isf(alphas) - norm.ppf(beta))))
    return mu, float(np.max(np.abs(gaussian_tradeoff(mu, alphas) - beta)))


def risk_report(event: dp_accounting.DpEvent, epsilon: float, delta: float) -> dict:
    """The attack-risk and GDP fields of a privacy report; ``epsilon`` is the event's PLD epsilon
    at ``delta`` (a true pair, so it is added to the curve's pairs)."""
    curve = tradeoff_curve(event)
    keys = [f"{a:g}" for a in REPORT_FPRS]
    out = {"tpr_bound_eps_delta": {k: tpr_bound_eps_delta(epsilon, delta, a)
                                   for k, a in zip(keys, REPORT_FPRS)}}
    if curve is None or not math.isfinite(epsilon):
        out.update(tpr_bound={k: 1.0 for k in keys}, mu=None, mu_fit_error=None)
    else:
        curve = curve.union(tradeoff_from_profile([epsilon], [delta]))
        mu, err = fit_mu(curve)
        out.update(tpr_bound={k: float(curve.tpr(a)) for k, a in zip(keys, REPORT_FPRS)},
                   mu=mu, mu_fit_error=err)
    out["mu_fpr_range"] = [MU_ALPHA_MIN, MU_ALPHA_MAX]
    return out


def privacy_report(event: dp_accounting.DpEvent, delta: float) -> dict:
    """What the owner and researcher see: PLD epsilon (the guarantee), RDP cross-check, event,
    and the attack risk and Gaussian DP of the event's trade-off curve:

    ``tpr_bound``: {"0.001", "0.01", "0.1"} -> the largest true-positive rate of any membership
    attack at that false-positive rate; ``tpr_bound_eps_delta``: the same bound from (eps, delta)
    alone; ``mu``: the mechanism is mu-GDP at every FPR of the grid in ``mu_fpr_range`` (None: no
    finite mu fits); ``mu_fit_error``: max |G_mu - curve| there (0 = exactly Gaussian).
    """
    eps = pld_epsilon(event, delta)
    report = {
        "epsilon": eps,
        "delta": float(delta),
        "epsilon_rdp": epsilon_rdp(event, delta),
        "accountant": "pld",
        "event": event_to_json(event),
    }
    report.update(risk_report(event, eps, delta))
    return report


# -- calibration -------------------------------------------------------------------------------
def meets_risk_target(sample_rate: float, sigma: float, steps: int, *, mu: float | None = None,
                      tpr: float | None = None, fpr: float | None = None) -> bool:
    """Whether DP-SGD at noise ``sigma`` is ``mu``-GDP, or keeps every membership attack at or
    below ``tpr`` at ``fpr``: the criterion :func:`calibrate_noise_for` bisects on (and the
    check of a cached sigma)."""
    c = tradeoff_curve(dpsgd_event(sample_rate, sigma, steps))
    if mu is not None:
        m = None if c is None else fit_mu(c)[0]
        return m is not None and m <= mu
    return c is not None and float(c.tpr(fpr)) <= tpr


def calibrate_noise_for(sample_rate: float, steps: int, *, epsilon: float | None = None,
                        delta: float | None = None, mu: float | None = None,
                        tpr: float | None = None, fpr: float | None = None,
                        rtol: float = 1e-3) -> float:
    """DP-SGD noise multiplier for exactly one target: ``epsilon`` at ``delta``, or ``mu``
    (Gaussian DP), or attack ``tpr`` at ``fpr``.

    Returns (within ``rtol``) the smallest sigma found by bisection whose guarantee, computed by
    the same functions the privacy report uses, meets the target: the feasible end is returned.
    mu and TPR do not depend on delta; a ``delta`` passed with them is ignored.
    """
    targets = [n for n, v in (("epsilon", epsilon), ("mu", mu), ("tpr", tpr)) if v is not None]
    if len(targets) != 1:
        raise AccountingError("give exactly one target: epsilon (with delta), mu, or tpr "
                              f"(with fpr); got {targets or 'none'}")
    if steps < 1:
        raise AccountingError(f"steps must be >= 1, got {steps}")
    if epsilon is not None:
        if delta is None:
            raise AccountingError("an epsilon target needs delta")
        return calibrate_noise(sample_rate, steps, epsilon, delta, rtol=rtol)
    if fpr is not None and tpr is None:
        raise AccountingError("fpr goes with a tpr target")

    if mu is not None:
        if not (mu > 0 and math.isfinite(mu)):
            raise AccountingError(f"mu must be a finite number > 0, got {mu}")

        def ok(sigma: float) -> bool:
            return meets_risk_target(sample_rate, sigma, steps, mu=mu)
        what = f"mu={mu:g}"
    else:
        if fpr is None or not 0 < fpr < 1:
            raise AccountingError(
                f"a tpr target needs a false-positive rate 0 < fpr < 1, got {fpr}")
        if not fpr < tpr < 1:
            raise AccountingError(f"tpr must lie in (fpr, 1) = ({fpr:g}, 1): no mechanism gives an "
                                  f"attacker less than TPR = FPR, got {tpr}")

        def ok(sigma: float) -> bool:
            return meets_risk_target(sample_rate, sigma, steps, tpr=tpr, fpr=fpr)
        what = f"TPR {tpr:g} at FPR {fpr:g}"

    too_far = (f"{what} is out of reach: it would need a noise multiplier above {SIGMA_MAX:g}. "
               "Relax the target, or lower the number of steps (epochs) or the sampling rate "
               "(batch size).")
    try:  # below 1e-3, tiny noise already meets the target: no need to go lower
        return smallest_feasible(ok, start=1.0, upper=SIGMA_MAX, lower=1e-3, rtol=rtol,
                                 out_of_reach=too_far)
    except CalibrationError as e:
        raise AccountingError(str(e)) from None
