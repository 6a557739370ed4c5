"""The DP copula's noise: how its (epsilon, delta) is split between its two measurements, and
the ``dp_accounting`` event that prices exactly the noise the mechanism adds.

Both measurements add Gaussian noise (add/remove neighbours):

1. one histogram per column (the label included), L2 sensitivity 1 each, noise multiplier
   ``hist_sigma``: ``SelfComposedDpEvent(GaussianDpEvent(hist_sigma), d)``;
2. the sums and the sums of products of the records' clipped normal scores (the moments
   a correlation matrix is computed from), L2 sensitivity :func:`moment_sensitivity`, noise multiplier ``corr_sigma``: ``GaussianDpEvent(corr_sigma)``.

A composition of Gaussian mechanisms is exactly a Gaussian mechanism with
``mu**2 = sum(1 / sigma_i**2)`` (Gaussian DP), so the split is one of ``mu**2``:
:data:`HISTOGRAM_SHARE` of it to the d histograms together, the rest to the moments. ``mu`` is
calibrated to (epsilon, delta) analytically, then every sigma is raised until the PLD
accountant (the ledger's) confirms epsilon at delta, so the ledger never charges less than the
target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import dp_accounting

from ..privacy.accounting import AccountingError, epsilon as pld_epsilon

HISTOGRAM_SHARE = 0.3
CLIP = 0.5  # normal scores are clipped to [-CLIP, CLIP] (see shared.synth.correlation)


def moment_sensitivity(d: int, clip: float = CLIP) -> float:
    """L2 sensitivity of the score moments ``(sum_i z_ij)_j`` and ``(sum_i z_ij z_ik)_{j<=k}``
    under adding or removing one record whose scores satisfy ``|z_j| <= clip``: that record
    adds ``(z_j)_j`` and ``(z_j z_k)_{j<=k}``, of squared norm
    ``sum z_j^2 + ((sum z_j^2)^2 + sum z_j^4) / 2``, at most ``d c^2 + (d^2 + d) c^4 / 2``
    (reached when every ``|z_j| = c``)."""
    return math.sqrt(d * clip ** 2 + (d * d + d) * clip ** 4 / 2)


@dataclass(frozen=True)
class Noise:
    """The copula's noise multipliers (noise std = multiplier * sensitivity)."""

    d: int  # columns, the label included
    hist_sigma: float
    corr_sigma: float
    clip: float = CLIP

    @property
    def corr_sensitivity(self) -> float:
        return moment_sensitivity(self.d, self.clip)

    def event(self) -> dp_accounting.DpEvent:
        parts = [dp_accounting.SelfComposedDpEvent(
            dp_accounting.GaussianDpEvent(self.hist_sigma), self.d)]
        if self.d > 1:
            parts.append(dp_accounting.GaussianDpEvent(self.corr_sigma))
        return dp_accounting.ComposedDpEvent(parts)


def gaussian_mu(epsilon: float, delta: float) -> float:
    """The Gaussian-DP mu of the Gaussian mechanism that is exactly (epsilon, delta)-DP."""
    from dp_accounting.pld import common, privacy_loss_mechanism

    sigma = privacy_loss_mechanism.GaussianPrivacyLoss.from_privacy_guarantee(
        common.DifferentialPrivacyParameters(epsilon, delta), sensitivity=1.0).standard_deviation
    return 1.0 / sigma


def calibrate(d: int, epsilon: float, delta: float, share: float = HISTOGRAM_SHARE,
              clip: float = CLIP) -> Noise:
    """The noise of a ``d``-column copula that is (epsilon, delta)-DP by the PLD accountant."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise AccountingError(f"The mock's epsilon must be a number above 0, got {epsilon}.")
    if not 0 < delta < 1:
        raise AccountingError(f"The mock's delta must be in (0, 1), got {delta}.")
    mu2 = gaussian_mu(epsilon, delta) ** 2
    h_share = share if d > 1 else 1.0  # one column: no pairs
    noise = Noise(d, math.sqrt(d / (h_share * mu2)),
                  math.sqrt(1 / ((1 - h_share) * mu2)) if d > 1 else 1.0, clip)
    for _ in range(200):  # PLD rounds pessimistically: a few 0.2% steps at most
        if pld_epsilon(noise.event(), delta) <= epsilon:
            return noise
        noise = Noise(d, noise.hist_sigma * 1.002, noise.corr_sigma * 1.002, clip)
    raise AccountingError(f"Could not calibrate the mock's noise to epsilon={epsilon}.")
