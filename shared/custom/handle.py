"""The accounted ``dp`` handle: the noise a custom function draws through it is counted.

A custom function that declares a parameter named ``dp`` gets a :class:`DP` from the runner (and
from ``jobs.Custom.run_on_mock``). Its methods apply OpenDP measurements and record each one's
privacy loss as a ``DpEvent``; after the function returns, the runner composes them (PLD) and
refuses to release a result whose measured spend exceeds the cost the owner stated.

What this does and does not prove: it counts the noise drawn *through the handle*. Code that
adds no noise, or draws it elsewhere (``numpy.random``), or tampers with the handle inside its
own process, is not caught by the count; that is what the owner's reading of the code (and the
static summary's "randomness outside the handle") is for. The count catches the honest
mistakes: one more query than planned, a per-element loop that composes n mechanisms.
"""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np


class HandleError(ValueError):
    """A measurement the handle cannot account; the message says what to use instead."""


def _event_of(measure_name: str, loss):
    """The DpEvent of one OpenDP measurement's privacy loss under ``measure_name``."""
    import dp_accounting

    from ..privacy.accounting import approx_dp_event

    if measure_name == "MaxDivergence":
        return approx_dp_event(float(loss), 0.0)
    if measure_name == "ZeroConcentratedDivergence":
        rho = float(loss)
        if not rho > 0:
            raise HandleError(f"a zCDP measurement with rho={rho} is not accountable")
        # a sensitivity-1 Gaussian with noise sigma is (1 / (2 sigma^2))-zCDP: same PLD
        return dp_accounting.GaussianDpEvent(1.0 / math.sqrt(2.0 * rho))
    if measure_name.startswith("Approximate") and isinstance(loss, (tuple, list)):
        return approx_dp_event(float(loss[0]), float(loss[1]))
    raise HandleError(f"the handle accounts MaxDivergence, ZeroConcentratedDivergence and "
                      f"Approximate(MaxDivergence) measurements, not {measure_name}; fix delta "
                      "with opendp's make_fix_delta first")


class DP:
    """OpenDP measurements whose privacy loss is recorded (see the module docstring)."""

    def __init__(self):
        self._events: Counter = Counter()

    def measure(self, measurement, arg, d_in):
        """Apply an OpenDP ``measurement`` to ``arg``, recording ``measurement.map(d_in)``
        (``d_in``: the input distance, e.g. the sensitivity); returns the noisy release."""
        from ..privacy.accounting import event_to_json

        event = _event_of(str(measurement.output_measure), measurement.map(d_in))
        out = measurement(arg)
        self._events[event_to_json(event)] += 1  # recorded once the noise was drawn
        return out

    def laplace(self, value, sensitivity: float, epsilon: float):
        """``value`` (a number, or a 1-D array with L1 ``sensitivity``) plus Laplace noise of
        scale sensitivity / epsilon: one epsilon-DP measurement."""
        import opendp.prelude as odp

        odp.enable_features("contrib")
        if not (sensitivity > 0 and epsilon > 0):
            raise HandleError("laplace needs sensitivity > 0 and epsilon > 0")
        scale = float(sensitivity) / float(epsilon)
        if np.ndim(value) == 0:
            space = odp.atom_domain(T=float, nan=False), odp.absolute_distance(T=float)
            return float(self.measure(odp.m.make_laplace(*space, scale=scale), float(value),
                                      float(sensitivity)))
        space = odp.vector_domain(odp.atom_domain(T=float, nan=False)), odp.l1_distance(T=float)
        arr = np.asarray(value, dtype=np.float64).ravel()
        out = self.measure(odp.m.make_laplace(*space, scale=scale), arr.tolist(),
                           float(sensitivity))
        return np.asarray(out, dtype=np.float64).reshape(np.shape(value))

    def gaussian(self, value, sensitivity: float, sigma: float):
        """``value`` (a number, or a 1-D array with L2 ``sensitivity``) plus Gaussian noise of
        standard deviation ``sigma``: one zCDP measurement."""
        import opendp.prelude as odp

        odp.enable_features("contrib")
        if not (sensitivity > 0 and sigma > 0):
            raise HandleError("gaussian needs sensitivity > 0 and sigma > 0")
        if np.ndim(value) == 0:
            space = odp.atom_domain(T=float, nan=False), odp.absolute_distance(T=float)
            return float(self.measure(odp.m.make_gaussian(*space, scale=float(sigma)),
                                      float(value), float(sensitivity)))
        space = odp.vector_domain(odp.atom_domain(T=float, nan=False)), odp.l2_distance(T=float)
        arr = np.asarray(value, dtype=np.float64).ravel()
        out = self.measure(odp.m.make_gaussian(*space, scale=float(sigma)), arr.tolist(),
                           float(sensitivity))
        return np.asarray(out, dtype=np.float64).reshape(np.shape(value))

    @property
    def measurements(self) -> int:
        return sum(self._events.values())

    def report(self) -> dict:
        """{"events": [[event JSON, times], ...], "measurements": n}: what the runner reads."""
        return {"events": [[e, k] for e, k in sorted(self._events.items())],
                "measurements": self.measurements}

    def spent(self, delta: float) -> float:
        """The composed (PLD) epsilon at ``delta`` of what was drawn so far."""
        return spent_epsilon(self.report(), delta)

    def __repr__(self) -> str:
        return f"<dp handle: {self.measurements} measurement(s)>"


def spent_epsilon(report: dict, delta: float) -> float:
    """The composed (PLD) epsilon at ``delta`` of a handle's :meth:`DP.report` (0 when it drew
    nothing); the report comes from the sandbox, so it is checked as untrusted input."""
    import dp_accounting

    from ..privacy.accounting import ApproxDpEvent, AccountingError, epsilon, event_from_json

    events = report.get("events") if isinstance(report, dict) else None
    if not isinstance(events, list):
        raise AccountingError("the handle's report has no event list")
    parts = []
    for item in events:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], int) and item[1] > 0):
            raise AccountingError(f"bad handle report entry: {json.dumps(item)[:100]}")
        ev = event_from_json(item[0])
        parts.append(ev if item[1] == 1 else dp_accounting.SelfComposedDpEvent(ev, item[1]))
    if not parts:
        return 0.0
    tight = epsilon(parts[0] if len(parts) == 1 else dp_accounting.ComposedDpEvent(parts), delta)
    # basic composition is exact for pure mechanisms, where PLD's pessimistic discretisation
    # can land a hair above it: take the smaller of two valid bounds
    approx = [(event_from_json(e), k) for e, k in events]
    if all(isinstance(ev, ApproxDpEvent) for ev, _ in approx) and \
            sum(ev.delta * k for ev, k in approx) <= delta:
        tight = min(tight, sum(ev.epsilon * k for ev, k in approx))
    return tight
