"""Privacy accounting with Google's ``dp_accounting``: events, epsilons, noise calibration, JSON.

A job's privacy cost is a ``DpEvent`` (what mechanisms ran, with which parameters). PLD is the
reference accountant (tight); RDP is reported alongside as a cross-check. Opacus' accountant is
never used for a guarantee.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import threading
from collections import OrderedDict
from typing import Any, Iterable

import attr
import numpy as np
import dp_accounting
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant, common, privacy_loss_distribution
from dp_accounting.rdp import RdpAccountant, rdp_privacy_accountant

from .calibration import CalibrationError, first_feasible_doubling, smallest_feasible

# Wide RDP order grid: Opacus' grid stops at 63, which is loose at small epsilon (ALGORITHMS.md 1).
RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10 for x in range(1, 101)]
    + list(range(12, 64))
    + [64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024]
)

# PLD discretisation: every interval gives an upper bound on epsilon (pessimistic rounding);
# a finer one is tighter but slower, and how fine is "fine enough" depends on q, sigma, T.
# So refine from coarse until two successive estimates agree to PLD_RTOL.
PLD_START_INTERVAL = 3e-3
PLD_MIN_INTERVAL = 1e-5
PLD_RTOL = 2e-3

SIGMA_MAX = 1e3  # a noise multiplier beyond this trains nothing useful: call it unreachable


class AccountingError(ValueError):
    """A privacy target cannot be met, or an event cannot be read; the message says why."""


# -- events ------------------------------------------------------------------------------------
def dpsgd_event(sample_rate: float, noise_multiplier: float, steps: int) -> dp_accounting.DpEvent:
    """``steps`` rounds of the Poisson-subsampled Gaussian mechanism (DP-SGD)."""
    if not 0 < sample_rate <= 1:
        raise AccountingError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise AccountingError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    if int(steps) != steps or steps < 0:
        raise AccountingError(f"steps must be a non-negative integer, got {steps}")
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            float(sample_rate), dp_accounting.GaussianDpEvent(float(noise_multiplier))),
        int(steps))


@attr.s(frozen=True)
class ApproxDpEvent(dp_event.DpEvent):
    """A mechanism known only to be (epsilon, delta)-DP (objective perturbation, the
    exponential mechanism, ...). The PLD ledger composes it through its worst-case privacy loss
    distribution (dp_accounting's ``from_privacy_parameters``); RDP cannot (None is reported)."""

    epsilon = attr.ib()
    delta = attr.ib()


def approx_dp_event(epsilon: float, delta: float = 0.0) -> dp_accounting.DpEvent:
    """An (epsilon, delta)-DP mechanism as a DpEvent the PLD accountant composes."""
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise AccountingError(f"epsilon must be a finite number >= 0, got {epsilon}")
    if not 0 <= delta < 1:
        raise AccountingError(f"delta must be in [0, 1), got {delta}")
    return ApproxDpEvent(float(epsilon), float(delta))


@attr.s(frozen=True)
class DeclaredDpEvent(ApproxDpEvent):
    """An (epsilon, delta) the data owner *declared* for code whose cost nothing here computes
    (custom syft functions). Composed exactly like :class:`ApproxDpEvent` (its worst-case PLD);
    its own class name in the stored JSON is what makes ledgers, reports and audit entries show
    the cost as declared by the owner rather than computed from a spec."""


def declared_event(epsilon: float, delta: float) -> dp_accounting.DpEvent:
    """The owner's declared (epsilon, delta) for custom code, as a DpEvent the ledger composes."""
    base = approx_dp_event(epsilon, delta)
    if not base.epsilon > 0:
        raise AccountingError("a declared cost needs epsilon > 0: custom code is never free")
    return DeclaredDpEvent(base.epsilon, base.delta)


def is_declared(event_json: str | None) -> bool:
    """Whether a stored event holds a cost the owner declared (see :class:`DeclaredDpEvent`)."""
    return bool(event_json) and '"DeclaredDpEvent"' in event_json


def cost_source(event_json: str | None) -> str:
    """'declared' (by the owner, for custom code) or 'computed' (from a job spec)."""
    return "declared" if is_declared(event_json) else "computed"


class Accountant(PLDAccountant):
    """dp_accounting's PLD accountant, plus :class:`ApproxDpEvent` (so ledgers can hold
    mechanisms known only by their (epsilon, delta))."""

    def _maybe_compose(self, event, count, do_compose):
        if not isinstance(event, ApproxDpEvent):
            return super()._maybe_compose(event, count, do_compose)
        if do_compose:
            pld = privacy_loss_distribution.from_privacy_parameters(
                common.DifferentialPrivacyParameters(event.epsilon, event.delta),
                value_discretization_interval=self._value_discretization_interval)
            self._pld = self._pld.compose(pld.self_compose(count) if count > 1 else pld)
        return None


def _contains_approx(event) -> bool:
    if isinstance(event, ApproxDpEvent):
        return True
    if isinstance(event, dp_event.SelfComposedDpEvent):
        return _contains_approx(event.event)
    if isinstance(event, dp_event.ComposedDpEvent):
        return any(_contains_approx(e) for e in event.events)
    if isinstance(event, dp_event.PoissonSampledDpEvent):
        return _contains_approx(event.event)
    return False


# -- PLDs --------------------------------------------------------------------------------------
# A privacy report needs the same event's PLD twice (epsilon at delta, then the trade-off curve),
# at the same discretisation intervals: keep the last few composed accountants. Keyed by the
# event's JSON (ComposedDpEvent holds a list, so events are not hashable) and the interval.
_PLD_CACHE: "OrderedDict[tuple[str, float], PLDAccountant]" = OrderedDict()
_PLD_CACHE_SIZE = 4
_PLD_CACHE_LOCK = threading.Lock()


def pld_accountant(event: dp_accounting.DpEvent, interval: float) -> PLDAccountant:
    """A ``PLDAccountant`` (pessimistic discretisation at ``interval``) that has composed ``event``.

    Treat it as read-only: it may be shared with other callers.
    """
    try:
        key = (event_to_json(event), float(interval))
    except AccountingError:
        key = None
    if key is not None:
        with _PLD_CACHE_LOCK:
            acc = _PLD_CACHE.get(key)
            if acc is not None:
                _PLD_CACHE.move_to_end(key)
                return acc
    acc = Accountant(value_discretization_interval=interval)
    acc.compose(event)
    if key is not None:
        with _PLD_CACHE_LOCK:
            _PLD_CACHE[key] = acc
            while len(_PLD_CACHE) > _PLD_CACHE_SIZE:
                _PLD_CACHE.popitem(last=False)
    return acc


def clear_pld_cache() -> None:
    """Forget the composed accountants :func:`pld_accountant` keeps, the epsilons
    :func:`epsilon_of_json` keeps and the RDP curves :func:`rdp_curve` keeps (benchmarks time
    cold calls)."""
    with _PLD_CACHE_LOCK:
        _PLD_CACHE.clear()
        _EPS_KEPT.clear()
    _rdp_kept.cache_clear()


def pld_of(event: dp_accounting.DpEvent, interval: float):
    """The event's ``PrivacyLossDistribution`` at ``interval``, or None for a non-private event."""
    acc = pld_accountant(event, interval)
    # dp_accounting 0.6 has no public getter for the composed PLD (tests pin this).
    return None if acc._contains_non_dp_event else acc._pld  # pylint: disable=protected-access


def refinement_intervals() -> list[float]:
    """Discretisation intervals tried in turn: PLD_START_INTERVAL, /3, /9, ... down to
    PLD_MIN_INTERVAL."""
    out = [PLD_START_INTERVAL]
    while out[-1] / 3 >= PLD_MIN_INTERVAL * (1 - 1e-9):
        out.append(out[-1] / 3)
    return out


# -- epsilons ----------------------------------------------------------------------------------
def _pld_epsilon(event: dp_accounting.DpEvent, delta: float, interval: float) -> float:
    return float(pld_accountant(event, interval).get_epsilon(delta))


def epsilon(event: dp_accounting.DpEvent, delta: float,
            value_discretization_interval: float | None = None) -> float:
    """Epsilon at ``delta`` by the PLD accountant (an upper bound at any discretisation).

    With no interval given, it is refined (3e-3, 1e-3, 3e-4, ...) until two successive
    estimates agree within 0.2%: deterministic, so the same event always gives the same number.
    """
    _check_delta(delta)
    if value_discretization_interval is not None:
        return _pld_epsilon(event, delta, value_discretization_interval)
    intervals = refinement_intervals()
    eps = _pld_epsilon(event, delta, intervals[0])
    if math.isinf(eps):  # infinity mass > delta at any interval: refining cannot help
        return eps
    for interval in intervals[1:]:
        finer = _pld_epsilon(event, delta, interval)
        done = abs(eps - finer) <= PLD_RTOL * max(finer, 1e-3)
        eps = min(eps, finer)  # both are upper bounds: keep the tighter
        if done:
            break
    return eps


# A request's one event is priced at review, reserved at run and checked again at release: the
# same deterministic refined epsilon each time (0.2 s of PLD FFTs for a DP-SGD event). Keep the
# last few per (event JSON, delta), so that a request pays for it once per process.
_EPS_KEPT: "OrderedDict[tuple[str, float], float]" = OrderedDict()
_EPS_KEPT_SIZE = 256


def epsilon_of_json(event_json: str, delta: float) -> float:
    """:func:`epsilon` of a stored event (refined discretisation), remembered per
    (event, delta): the same number every time, computed once per process."""
    key = (event_json, float(delta))
    with _PLD_CACHE_LOCK:
        if key in _EPS_KEPT:
            _EPS_KEPT.move_to_end(key)
            return _EPS_KEPT[key]
    eps = epsilon(event_from_json(event_json), delta)
    remember_epsilon(event_json, delta, eps)
    return eps


def remember_epsilon(event_json: str, delta: float, eps: float) -> None:
    """Keep ``eps`` as :func:`epsilon_of_json` (event_json, delta). Only for a number this code
    computed with :func:`epsilon_of_json` in a process the owner runs (the pricing server's
    child), never for one a researcher or a database supplied."""
    with _PLD_CACHE_LOCK:
        _EPS_KEPT[(event_json, float(delta))] = float(eps)
        _EPS_KEPT.move_to_end((event_json, float(delta)))
        while len(_EPS_KEPT) > _EPS_KEPT_SIZE:
            _EPS_KEPT.popitem(last=False)


def kept_keys() -> set[tuple[str, float]]:
    """The (event JSON, delta) pairs :func:`epsilon_of_json` keeps now: a mark for
    :func:`kept_since`."""
    with _PLD_CACHE_LOCK:
        return set(_EPS_KEPT)


def kept_since(mark: set[tuple[str, float]], at_most: int) -> list[tuple[str, float, float]]:
    """(event JSON, delta, epsilon) kept since ``mark`` (:func:`kept_keys`), the newest
    ``at_most``: what a forked child computed, to hand back to the process it serves."""
    with _PLD_CACHE_LOCK:
        new = [(e, d, eps) for (e, d), eps in _EPS_KEPT.items() if (e, d) not in mark]
    return new[-at_most:]


def meets_epsilon(sample_rate: float, sigma: float, steps: int, epsilon: float,
                  delta: float) -> bool:
    """Whether DP-SGD at noise ``sigma`` is ``epsilon``-DP at ``delta`` by PLD: the criterion
    :func:`calibrate_noise` bisects on (and the check of a cached sigma)."""
    return epsilon_of_json(event_to_json(dpsgd_event(sample_rate, sigma, steps)),
                           delta) <= epsilon


def rdp_curve(event: dp_accounting.DpEvent) -> np.ndarray | None:
    """The event's RDP at each of RDP_ORDERS (composition adds these vectors); None for events
    RDP cannot account (those holding an :class:`ApproxDpEvent`). Read-only: it may be shared
    with other callers."""
    if _contains_approx(event):
        return None
    try:
        key = event_to_json(event)
    except AccountingError:  # not storable, so not kept either
        return _read_only(_rdp_of(event))
    return _rdp_kept(key)


# The same event's RDP is asked for again and again: by each trial of a tuned job (one event for
# all of them), its selection report, the privacy report's cross-check after a calibration that
# tried it. Keep the last few, keyed by the event's JSON (events are not hashable).
@functools.lru_cache(maxsize=32)
def _rdp_kept(event_json: str) -> np.ndarray:
    return _read_only(_rdp_of(event_from_json(event_json)))


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _rdp_of(event: dp_accounting.DpEvent) -> np.ndarray:
    acc = RdpAccountant(orders=list(RDP_ORDERS))
    # At large q, dp_accounting cannot evaluate some fractional orders < 2 and logs a warning per
    # order; it then leaves them out, which keeps the bound valid. Silence that noise.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        acc.compose(event)
    finally:
        absl_logger.setLevel(level)
    return np.array(acc._rdp, dtype=np.float64)  # pylint: disable=protected-access


def epsilon_rdp(event: dp_accounting.DpEvent, delta: float) -> float | None:
    """Epsilon at ``delta`` by the RDP accountant over the wide order grid (looser, cheaper);
    None for events RDP cannot account (those holding an :class:`ApproxDpEvent`)."""
    _check_delta(delta)
    curve = rdp_curve(event)
    if curve is None:
        return None
    return float(rdp_privacy_accountant.compute_epsilon(list(RDP_ORDERS), curve, delta)[0])


def compose_epsilon(event_jsons: Iterable[str], delta: float) -> float:
    """PLD epsilon of the composition of several stored events (the ledger's total)."""
    events = [event_from_json(t) for t in event_jsons]
    if not events:
        return 0.0
    return epsilon(dp_accounting.ComposedDpEvent(events), delta)


def _check_delta(delta: float) -> None:
    if not (0 < delta < 1):
        raise AccountingError(f"delta must be in (0, 1), got {delta}")


# -- calibration -------------------------------------------------------------------------------
def calibrate_noise(sample_rate: float, steps: int, epsilon: float, delta: float,
                    rtol: float = 1e-3) -> float:
    """Smallest noise multiplier (within ``rtol``) whose PLD epsilon at ``delta`` is <= ``epsilon``.

    The returned sigma always satisfies the target by :func:`epsilon` itself (bisection keeps the
    feasible end), so a report computed from the same event never exceeds the request.
    The search is bracketed with the cheap RDP epsilon first, then by PLD
    (:func:`shared.privacy.calibration.smallest_feasible`).
    """
    target = epsilon
    if not (target > 0 and math.isfinite(target)):
        raise AccountingError(f"epsilon must be a finite number > 0, got {target}")
    _check_delta(delta)
    if steps < 1:
        raise AccountingError(f"steps must be >= 1, got {steps}")

    def pld_ok(sigma: float) -> bool:
        return meets_epsilon(sample_rate, sigma, steps, target, delta)

    def rdp_ok(sigma: float) -> bool:
        return epsilon_rdp(dpsgd_event(sample_rate, sigma, steps), delta) <= target

    too_far = (f"epsilon {target} at this delta is out of reach: it would need a noise "
               f"multiplier above {SIGMA_MAX:g}. Raise epsilon or delta, or lower the number of "
               "steps (epochs) or the sampling rate (batch size).")
    try:
        # Bracket cheaply with RDP (it is looser, so its sigma is usually feasible for PLD too).
        start = first_feasible_doubling(rdp_ok, start=1.0, upper=SIGMA_MAX, out_of_reach=too_far)
        # Below 1e-3, tiny noise already meets the target (huge epsilon): no need to go lower.
        return smallest_feasible(pld_ok, start=start, upper=SIGMA_MAX, lower=1e-3, rtol=rtol,
                                 out_of_reach=too_far)
    except CalibrationError as e:
        raise AccountingError(str(e)) from None


# -- JSON --------------------------------------------------------------------------------------
# dp_accounting 0.6 has no JSON helpers, only DpEvent.to_named_tuple/from_named_tuple; the latter
# imports whatever module the data names. We write our own format and only build classes from
# dp_accounting.dp_event, so a stored ledger row cannot make us import anything else.
def _event_classes() -> dict[str, type]:
    classes = {name: obj for name, obj in vars(dp_event).items()
               if isinstance(obj, type) and issubclass(obj, dp_event.DpEvent)}
    classes["ApproxDpEvent"] = ApproxDpEvent
    classes["DeclaredDpEvent"] = DeclaredDpEvent
    return classes


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dp_event.DpEvent):
        nt = value.to_named_tuple()  # checks the event is plain (public attrs fields only)
        out = {"class": nt.class_name}  # "class" is a keyword, so never an attrs field name
        for name in nt._fields:
            if name not in ("module_name", "class_name"):
                out[name] = _to_jsonable(getattr(value, name))
        return out
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise AccountingError(f"cannot serialise a non-finite number in an event: {value}")
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise AccountingError(f"cannot serialise {type(value).__name__} inside a DpEvent")


def _from_jsonable(value: Any, classes: dict[str, type]) -> Any:
    if isinstance(value, dict):
        name = value.get("class")
        cls = classes.get(name)
        if cls is None:
            raise AccountingError(f"unknown DpEvent class {name!r}")
        fields = {k: _from_jsonable(v, classes) for k, v in value.items() if k != "class"}
        try:
            return cls(**fields)
        except TypeError as e:
            raise AccountingError(f"bad fields for {name}: {e}") from None
    if isinstance(value, list):
        return [_from_jsonable(v, classes) for v in value]
    return value


def event_to_json(event: dp_accounting.DpEvent) -> str:
    """Stable JSON (sorted keys) of an event; floats keep their exact value (repr round-trips)."""
    return json.dumps(_to_jsonable(event), sort_keys=True, allow_nan=False)


def event_from_json(text: str) -> dp_accounting.DpEvent:
    """Inverse of :func:`event_to_json`: ``event_from_json(event_to_json(e)) == e``."""
    event = _from_jsonable(json.loads(text), _event_classes())
    if not isinstance(event, dp_event.DpEvent):
        raise AccountingError("JSON does not describe a DpEvent")
    return event

