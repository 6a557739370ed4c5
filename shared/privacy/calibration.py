"""The two monotone searches every calibration in the product uses.

* :func:`smallest_feasible` -- the smallest noise scale (geometric bisection) whose guarantee
  meets a target: DP-SGD sigma for epsilon, mu or an attack TPR. :func:`first_feasible_doubling`
  is its bracketing step alone, for a cheap pre-bracket with a looser criterion.
* :func:`largest_feasible` -- the largest x in a bracket with an increasing f(x) <= target
  (Illinois regula falsi on log x): DP-AL's sampling rates and step counts.

Both always return the *feasible* end of the bracket, so a report computed from the returned
value by the same function never exceeds the request.
"""
from __future__ import annotations

import math
from typing import Callable


class CalibrationError(ValueError):
    """The target cannot be reached inside the allowed range."""


def first_feasible_doubling(ok: Callable[[float], bool], *, start: float = 1.0,
                            upper: float = 1e4,
                            out_of_reach: str = "the target is out of reach") -> float:
    """``start * 2**k`` for the smallest k >= 0 with ``ok``: an upper bracket found with as few
    (costly) evaluations as possible; ``CalibrationError(out_of_reach)`` once past ``upper``."""
    hi = start
    while not ok(hi):
        hi *= 2
        if hi > upper:
            raise CalibrationError(out_of_reach)
    return hi


def smallest_feasible(ok: Callable[[float], bool], *, start: float = 1.0,
                      upper: float = 1e4, lower: float = 1e-3, rtol: float = 1e-3,
                      out_of_reach: str = "the target is out of reach") -> float:
    """Smallest scale s (within ``rtol``) with ``ok(s)``, for ``ok`` monotone (false below,
    true above).

    Doubles from ``start`` until feasible (``CalibrationError(out_of_reach)`` past ``upper``),
    halves while still feasible (returns early below ``lower``: tiny noise already meets the
    target), then bisects geometrically keeping the feasible end."""
    hi = first_feasible_doubling(ok, start=start, upper=upper, out_of_reach=out_of_reach)
    lo = hi / 2
    while ok(lo):
        hi, lo = lo, lo / 2
        if lo < lower:
            return hi
    while hi / lo - 1 > rtol:
        mid = math.sqrt(lo * hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def largest_feasible(f: Callable[[float], float], target: float, lo: float, f_lo: float,
                     hi: float, f_hi: float, xrtol: float = 1e-4,
                     ftol: float = 5e-4) -> tuple[float, float]:
    """Largest x in [lo, hi] (f increasing, f(lo) <= target < f(hi)) with f(x) <= target:
    Illinois regula falsi on log x; stops when f is within ftol*target below the target or the
    bracket is xrtol wide. Returns (x, f(x)), always the feasible end."""
    ul, uh = math.log(lo), math.log(hi)
    gl, gh = f_lo - target, f_hi - target
    side = 0
    while -gl > ftol * target and uh - ul > xrtol:
        u = (ul * gh - uh * gl) / (gh - gl)
        w = uh - ul
        u = min(max(u, ul + 1e-3 * w), uh - 1e-3 * w)
        g = f(math.exp(u)) - target
        if g <= 0:
            ul, gl = u, g
            if side == -1:
                gh /= 2
            side = -1
        else:
            uh, gh = u, g
            if side == 1:
                gl /= 2
            side = 1
    return math.exp(ul), gl + target
