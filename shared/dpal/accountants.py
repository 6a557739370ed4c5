"""The accountants DP-AL planning runs over one group's history (selections, then training).

Both answer ``history(n_sel, segments)`` and ``eps(history, sigma, q, steps)``:

* ``"pld"`` (:class:`PldAccountant`): each group's events composed exactly by PLD (Laplace and
  subsampled Gaussian together). Inside the searches PLD runs at a fixed coarse discretisation
  (pessimistic, so an upper bound); at that interval one evaluation costs about as much as one
  RDP evaluation over the wide order grid, and planning against the accountant that reports
  avoids the 10-20% slack an RDP plan would leave. Final epsilons come from
  ``shared.privacy.accounting.epsilon``.
* ``"rdp_reference"`` (:class:`ReferenceAccountant`): the reference code's accountant
  (kschwethelm/DPAL): Opacus' RDP with its default orders for training, selection epsilons
  ADDED.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Sequence

import numpy as np

ACCOUNTANTS = ("pld", "rdp_reference")
SEARCH_INTERVAL = 1e-2  # PLD discretisation inside the searches (pessimistic: an upper bound)


@contextmanager
def quiet_absl():
    """RDP at large q logs a warning per fractional order it has to drop (the bound stays
    valid): silence them while the searches run."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class PldAccountant:
    """Epsilon of (g Laplace selections, training segments) by PLD at a fixed interval."""

    def __init__(self, delta: float, eps_sel_round: float, interval: float = SEARCH_INTERVAL):
        from dp_accounting.pld import privacy_loss_distribution as pld

        self.delta, self.eps_sel_round, self.interval, self._pld = delta, eps_sel_round, \
            interval, pld
        self._seg_cache: dict = {}

    def _segment(self, sigma: float, q: float, steps: int):
        key = (sigma, q, steps)
        if key not in self._seg_cache:
            if len(self._seg_cache) > 256:
                self._seg_cache.clear()
            self._seg_cache[key] = self._pld.from_gaussian_mechanism(
                standard_deviation=sigma, sampling_prob=min(1.0, q),
                value_discretization_interval=self.interval).self_compose(int(steps))
        return self._seg_cache[key]

    def history(self, n_sel: int, segments: Sequence[tuple[float, float, int]]):
        """The composed PLD of ``n_sel`` selections and the (sigma, q, steps) segments, built
        once per history so the searches only compose their candidate segment onto it."""
        out = None
        if n_sel and self.eps_sel_round > 0:
            out = self._pld.from_laplace_mechanism(
                parameter=1 / self.eps_sel_round,
                value_discretization_interval=self.interval).self_compose(n_sel)
        for sigma, q, steps in segments:
            if q > 0 and steps > 0:
                seg = self._segment(sigma, q, steps)
                out = seg if out is None else out.compose(seg)
        return out

    def eps(self, hist, sigma: float = 0.0, q: float = 0.0, steps: int = 0) -> float:
        """Epsilon of ``hist`` followed by ``steps`` steps at rate ``q`` (none if 0)."""
        pld = hist
        if q > 0 and steps > 0:
            seg = self._pld.from_gaussian_mechanism(
                standard_deviation=sigma, sampling_prob=min(1.0, q),
                value_discretization_interval=self.interval).self_compose(int(steps))
            pld = seg if pld is None else pld.compose(seg)
        return 0.0 if pld is None else float(pld.get_epsilon_for_delta(self.delta))


class ReferenceAccountant:
    """The reference's accountant: Opacus RDP, default orders; selection epsilons added.

    Speed: Opacus evaluates each fractional order by a slow series, and the searches need
    hundreds of evaluations. The minimising order moves little between them, so vectors are
    computed lazily only on a window of orders around the last minimiser. Epsilon over a
    subset of orders is >= epsilon over all of them (a minimum over fewer terms), so a rate or
    sigma found feasible on the window is feasible; and when the minimiser is inside the
    window (not at its edge) the value is exactly the full-grid one. At an edge we widen.
    """

    WINDOW = 6

    def __init__(self, delta: float, eps_sel_round: float):
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis import rdp

        self.delta, self.eps_sel_round = delta, eps_sel_round
        self.orders = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
        self._rdp = rdp
        self._one_step: dict[tuple[float, float], np.ndarray] = {}
        self._center: int | None = None
        self._centers: dict = {}

    def _step_vec(self, sigma: float, q: float, idx: np.ndarray) -> np.ndarray:
        """RDP of one step at every order in ``idx`` (NaN elsewhere), cached per (sigma, q)."""
        key = (float(sigma), float(min(1.0, q)))
        vec = self._one_step.get(key)
        if vec is None:
            if len(self._one_step) > 4096:
                self._one_step.clear()
            vec = self._one_step[key] = np.full(len(self.orders), np.nan)
        missing = idx[np.isnan(vec[idx])]
        if len(missing):
            vec[missing] = self._rdp.compute_rdp(q=key[1], noise_multiplier=key[0], steps=1,
                                                 orders=self.orders[missing])
        return vec

    def history(self, n_sel: int, segments):
        """The history as data: RDP is re-evaluated per candidate (see the class docstring)."""
        return [(float(s), float(q), int(t)) for s, q, t in segments if q > 0 and t > 0], n_sel

    def eps(self, hist, sigma: float = 0.0, q: float = 0.0, steps: int = 0) -> float:
        """Epsilon of ``hist`` followed by ``steps`` steps at rate ``q``, selections added."""
        segs, n_sel = hist
        if q > 0 and steps > 0:
            segs = segs + [(float(sigma), float(q), int(steps))]
        sel = n_sel * self.eps_sel_round
        if not segs:
            return sel
        n = len(self.orders)
        key = tuple(hist[0])  # the minimiser depends mostly on the history: remember per history
        center = self._centers.get(key, self._center)
        for _ in range(n):
            lo = 0 if center is None else max(0, center - self.WINDOW)
            hi = n if center is None else min(n, center + self.WINDOW + 1)
            idx = np.arange(lo, hi)
            vec = sum(t * self._step_vec(s, q_, idx)[idx] for s, q_, t in segs)
            a = self.orders[idx]
            conv = vec - (np.log(self.delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
            j = int(np.nanargmin(conv))  # Opacus' RDP -> (eps, delta) conversion, above
            center = int(idx[j])
            if not ((j == 0 and lo > 0) or (j == len(idx) - 1 and hi < n)):
                break  # interior minimiser: equal to the full-grid value
            # minimiser at the window's edge: slide the window there and look again
        self._center = self._centers[key] = center
        if len(self._centers) > 4096:
            self._centers.clear()
        return float(conv[j]) + sel


def make_accountant(accountant: str, delta: float, eps_sel_round: float):
    """The planner's accountant by name (one of ``ACCOUNTANTS``): both answer ``history`` and
    ``eps`` the same way, so the searches need not know which one runs."""
    return ReferenceAccountant(delta, eps_sel_round) if accountant == "rdp_reference" else \
        PldAccountant(delta, eps_sel_round)
