"""Private hyperparameter selection: its price, its noise, and how many trials run.

Papernot & Steinke, "Hyperparameter tuning with Renyi differential privacy" (ICLR 2022,
arXiv 2110.03620): draw K from a truncated negative binomial distribution (TNB, shape eta,
mean ``mean``; eta = 1 is the geometric, eta = 0 the logarithmic distribution), run the base
mechanism K times (each trial with hyperparameters drawn at random from public candidates) and
release only the best trial, ranked by a score the trial itself released with DP. If one trial
is (lambda, eps(lambda))-RDP at every order, the whole is RDP with the bound of their Theorem 2,
which dp_accounting's RDP accountant computes for ``RepeatAndSelectDpEvent(base, mean, shape)``.

The theorem covers the best trial's output alone. K and the other trials' outputs stay secret:
with K known the release is "best of K", which can cost up to K times a trial's epsilon.

PLD cannot account RepeatAndSelect, and the ledger composes with PLD. So a tuned job's event is
``approx_dp_event(eps, delta)`` with eps the RDP epsilon of the RepeatAndSelect event at the
job's delta: a true (eps, delta)-DP statement (valid), but only one point of the privacy
profile, so the ledger's composition with other jobs and the mu / TPR read from it are looser
than a full trade-off curve would give.
"""
from __future__ import annotations

import math
import numpy as np
from dp_accounting import dp_event

from .accounting import AccountingError, SIGMA_MAX, approx_dp_event, dpsgd_event, epsilon, \
    epsilon_rdp
from .calibration import CalibrationError, smallest_feasible
from .private_metrics import event as metrics_event, with_metrics

# TNB shape of K's distribution. 1 (geometric: after each trial, stop with probability
# 1 / mean) is the default: K >= 1 always (Poisson can draw K = 0 and release nothing, yet
# costs more above a mean of ~5), P(K = 1) = 1 / mean, and its tail is light (P(K > 6 mean)
# ~ 0.1%). The logarithmic (0) is ~15% cheaper in epsilon at mean 5 but runs a single trial
# 35% of the time; larger shapes concentrate K and cost more (docs/hyperparameter_tuning.md).
DEFAULT_SHAPE = 1.0


# -- events ------------------------------------------------------------------------------------
def trial_event(sample_rate: float, noise_multiplier: float, steps: int,
                metrics_sigma: float | None):
    """One trial: DP-SGD composed with its DP test-metrics release (the selection score)."""
    return with_metrics(dpsgd_event(sample_rate, noise_multiplier, steps), metrics_sigma)


def tuned_event(base, mean: float, shape: float) -> dp_event.RepeatAndSelectDpEvent:
    """``base`` run a TNB(``mean``, ``shape``) number of times, the best output released."""
    return dp_event.RepeatAndSelectDpEvent(base, float(mean), float(shape))


def tuned_epsilon(base, mean: float, shape: float, delta: float) -> float:
    """RDP epsilon at ``delta`` of :func:`tuned_event` (the only accountant that prices it)."""
    eps = epsilon_rdp(tuned_event(base, mean, shape), delta)
    if eps is None:
        raise AccountingError("a tuned trial must be an event the RDP accountant can price")
    return eps


def priced_event(base, mean: float, shape: float, delta: float):
    """What the ledger stores for a tuned job: (RDP epsilon of the tuned event, delta)-DP."""
    return approx_dp_event(tuned_epsilon(base, mean, shape, delta), delta)


# -- calibration -------------------------------------------------------------------------------
def pair_meets(eps: float, delta: float, target_epsilon: float, target: dict) -> bool:
    """Whether an (eps, delta)-DP release meets the request: ``eps`` <= ``target_epsilon`` by
    the ledger's PLD measure (target {}), or the mu / attack-TPR ``target`` read from the
    (eps, delta) trade-off curve alone. The privacy report adds the same pair to the curve of
    the stored event, so its mu and TPR are never above these."""
    from .reporting import fit_mu, tradeoff_from_profile

    if not target:
        return epsilon(approx_dp_event(eps, delta), delta) <= target_epsilon
    curve = tradeoff_from_profile([eps], [delta])
    if "mu" in target:
        mu, _ = fit_mu(curve)
        return mu is not None and mu <= target["mu"]
    return float(curve.tpr(float(target["fpr"]))) <= target["tpr"]


def tuned_meets(sample_rate: float, sigma: float, steps: int, metrics_sigma: float,
                mean: float, shape: float, delta: float, target_epsilon: float,
                target: dict) -> bool:
    """Whether a tuned job whose trials run DP-SGD at noise ``sigma`` meets the request: the
    criterion :func:`calibrate_tuned_noise` bisects on (and the check of a cached sigma)."""
    cost = tuned_epsilon(trial_event(sample_rate, sigma, steps, metrics_sigma), mean, shape, delta)
    return pair_meets(cost, delta, target_epsilon, target)


def calibrate_tuned_noise(sample_rate: float, steps: int, metrics_sigma: float, mean: float,
                          shape: float, delta: float, target_epsilon: float, target: dict,
                          rtol: float = 1e-3) -> float:
    """Smallest DP-SGD noise multiplier (within ``rtol``) of each trial such that the whole
    tuned job -- every trial's training and metric release, and the selection -- meets
    ``target_epsilon`` at ``delta`` (target {}) or the mu / TPR ``target``.

    The trials' metric noise is fixed (``metrics_sigma``), so the metric releases alone set a
    floor on the tuned job's epsilon; a request below it is refused at once, naming it.
    """
    if not metrics_sigma:
        raise AccountingError("a tuned job needs its trials' metric release (the selection "
                              "score): set metrics_epsilon > 0")
    want = describe(target_epsilon, target)

    floor = tuned_epsilon(metrics_event(metrics_sigma), mean, shape, delta)  # no training
    if not pair_meets(floor, delta, target_epsilon, target):
        raise AccountingError(
            f"{want} is out of reach for this tuned job: the trials' metric releases alone, "
            f"selected over a mean of {mean:g} trials, cost eps={floor:.3g} at delta="
            f"{delta:g}. Lower metrics_epsilon (e.g. 0.1) or tuning_trials, or ask for more.")

    def ok(sigma: float) -> bool:
        return tuned_meets(sample_rate, sigma, steps, metrics_sigma, mean, shape, delta,
                           target_epsilon, target)

    too_far = (f"{want} is out of reach for this tuned job: it would need a noise multiplier "
               f"above {SIGMA_MAX:g}. Lower tuning_trials, epochs or the sampling rate (batch "
               "size), or ask for more.")
    try:
        return smallest_feasible(ok, start=1.0, upper=SIGMA_MAX, lower=1e-3, rtol=rtol,
                                 out_of_reach=too_far)
    except CalibrationError as e:
        raise AccountingError(str(e)) from None


def describe(target_epsilon: float, target: dict) -> str:
    """The request in words, for error messages."""
    if not target:
        return f"epsilon={target_epsilon:g}"
    if "mu" in target:
        return f"mu={target['mu']:g}"
    return f"TPR {target['tpr']:g} at FPR {target['fpr']:g}"


# -- the number of trials ------------------------------------------------------------------------
def tnb_mean(gamma: float, shape: float) -> float:
    """Mean of the TNB with success probability ``gamma`` and ``shape`` (decreasing in gamma)."""
    if shape == 0:  # logarithmic
        return (1 - gamma) / (gamma * math.log(1 / gamma))
    return shape * (1 - gamma) / (gamma * (1 - gamma ** shape))


def tnb_gamma(mean: float, shape: float) -> float:
    """The TNB's gamma for ``mean``, rounded up (a mean at most ``mean``). dp_accounting prices
    the gamma rounded down, a mean at least ``mean``; its bound grows as gamma falls, so what
    runs is covered by what was priced."""
    if not mean > 1:
        raise AccountingError(f"the mean number of trials must be > 1, got {mean}")
    if shape == 1:
        return 1 / mean
    lo, hi = 0.0, min(1.0, 2 * (shape + 1) / mean)  # mean <= 2 (shape + 1) / gamma
    while hi - lo > 1e-13:
        mid = (lo + hi) / 2
        if tnb_mean(mid, shape) > mean:
            lo = mid
        else:
            hi = mid
    return hi


def draw_trials(mean: float, shape: float, rng: np.random.Generator) -> int:
    """K >= 1 from the TNB with ``mean`` and ``shape``; ``rng`` must be secret (never a seed the
    researcher chose: :mod:`shared.randomness`)."""
    gamma = tnb_gamma(mean, shape)
    if shape == 0:
        return int(rng.logseries(1 - gamma))  # P(k) = (1 - gamma)^k / (k ln(1 / gamma))
    if shape == 1:
        return int(rng.geometric(gamma))  # P(k) = gamma (1 - gamma)^(k - 1)
    while True:  # the negative binomial (failures before `shape` successes), conditioned on >= 1
        k = rng.negative_binomial(shape, gamma, size=256)
        if (k > 0).any():
            return int(k[k > 0][0])
