"""Privacy schedule of DP active learning (naive or step-amplified), with per-group accounting.

Setting (Schwethelm et al., SaTML 2025; ALGORITHMS.md 3): a pool of N records, a labelled start
set (group 0) and R acquisition rounds labelling k_1..k_R records (group g = records labelled
in round g). Training round r (r = 0..R) runs T_r DP-SGD steps on groups 0..r; before training
round r >= 1 every unlabelled record is scored and pays one Laplace selection of eps_sel / R.
So group g's event is g Laplace selections, then Poisson-subsampled Gaussian steps at its own
rate q_{g,r} in rounds r = g..R; never-labelled records pay the R selections only.

* ``naive``: one rate per round for every labelled record (q_r, T_r from batch size and epochs).
* ``step_amplified``: every round, each group gets the largest rate that keeps it on the planned
  curve c_r (= group 0's epsilon after its amplified history plus the naive round r, capped at
  epsilon), and T_r is the smallest step count with expected batch sum_g q_g |g| <= B.
  Late groups get higher rates, so every group ends at (just below) epsilon.

Accountants (``accountant``, :mod:`.accountants`): ``"pld"`` plans against exact PLD
composition, the accountant that reports; ``"rdp_reference"`` reproduces the reference code
(kschwethelm/DPAL): its RDP accountant, sigma from its bisection (eps in [target - 0.01,
target]) and its batch rounding (q = 1 / (n // B)). This reproduces its CIFAR-10 plan; its
groups are accounted separately here (the reference pools all earlier groups under group 0's
history). The plan itself is a :class:`.schedule.Plan`.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import dp_accounting
import numpy as np

from ..privacy.accounting import epsilon as pld_epsilon, epsilon_rdp, event_to_json
from ..privacy.calibration import largest_feasible
from .accountants import ACCOUNTANTS, make_accountant, quiet_absl
from .schedule import Plan, group_event, selection_event

MODES = ("naive", "step_amplified")
ROUNDINGS = ("reference", "exact")
Q_MIN = 1e-7  # below this a group is not trained in the round


class PlanError(ValueError):
    """The schedule cannot be planned; the message says what to change."""


def _max_rate(acc, hist, sigma: float, steps: int, target: float, guess: float) -> float:
    """Largest q <= 1 with eps(history + steps at q) <= target (0 if even q -> 0 exceeds it)."""
    def f(q):
        return acc.eps(hist, sigma, q, steps)

    if steps <= 0:
        return 1.0
    q = min(1.0, max(guess, 1e-6))
    fq = f(q)
    if fq <= target:
        lo, f_lo = q, fq
        while True:
            if lo >= 1.0:
                return 1.0
            hi = min(1.0, lo * 2)
            f_hi = f(hi)
            if f_hi > target:
                break
            lo, f_lo = hi, f_hi
    else:
        hi, f_hi = q, fq
        while True:
            lo = hi / 2
            if lo < Q_MIN:
                return 0.0
            f_lo = f(lo)
            if f_lo <= target:
                break
            hi, f_hi = lo, f_lo
    return largest_feasible(f, target, lo, f_lo, hi, f_hi)[0]


def base_schedule(sizes: Sequence[int], batch_size: int, epochs: Sequence[float],
                  rounding: str) -> tuple[list[float], list[int]]:
    """Naive per-round (rate, steps) from the labelled-set sizes.

    ``reference``: steps/epoch = max(1, n // B), q = 1 / that (the reference's drop_last
    loader; the expected batch n / (n // B) can exceed B). ``exact``: q = min(1, B / n),
    steps = max(1, round(epochs * n / B)).
    """
    rates, steps = [], []
    for n, e in zip(sizes, epochs):
        if rounding == "reference":
            spe = max(1, n // batch_size)
            rates.append(1.0 / spe)
            steps.append(int(round(spe * e)))
        else:
            rates.append(min(1.0, batch_size / n))
            steps.append(max(1, int(round(e * n / batch_size))))
    return rates, steps


def reference_noise_multiplier(acc, target: float, rates, steps) -> float:
    """The reference's sigma search: double from 10, bisect until target-0.01 <= eps <= target."""
    def eps(sigma):
        return acc.eps(acc.history(0, [(sigma, q, t) for q, t in zip(rates, steps)]))

    lo, hi = 0.0, 10.0
    eps_hi = math.inf
    while eps_hi > target:
        hi *= 2
        eps_hi = eps(hi)
    while target - eps_hi > 0.01:
        mid = (lo + hi) / 2
        e = eps(mid)
        if e < target:
            hi, eps_hi = mid, e
        else:
            lo = mid
    return hi


def _calibrate_sigma(acc, target: float, rates, steps) -> float:
    """Smallest sigma (rel. 1e-3) with group 0's naive eps <= target (eps increasing in 1/sigma)."""
    def f(inv):
        return acc.eps(acc.history(0, [(1 / inv, q, t) for q, t in zip(rates, steps)]))

    # bracket by doubling/halving sigma (eps decreases in sigma)
    sigma = 1.0
    while f(1 / sigma) > target:
        sigma *= 2
        if sigma > 1e3:
            raise PlanError(f"epsilon={target} is out of reach for this schedule: lower the "
                            "epochs per round or the batch size, or raise epsilon")
    lo_inv, f_lo = 1 / sigma, f(1 / sigma)
    hi_inv, f_hi2 = lo_inv * 2, f(lo_inv * 2)
    while f_hi2 <= target:
        lo_inv, f_lo = hi_inv, f_hi2
        hi_inv *= 2
        f_hi2 = f(hi_inv)
    inv, _ = largest_feasible(f, target, lo_inv, f_lo, hi_inv, f_hi2, xrtol=1e-3, ftol=1e-4)
    return 1 / inv


def make_plan(*, n_pool: int, start_size: int, query_sizes: Sequence[int], epsilon: float,
              delta: float, eps_selection: float, batch_size: int,
              epochs_per_round: float | Sequence[float] = 30,
              mode: str = "step_amplified", accountant: str = "pld",
              rounding: str | None = None, noise_multiplier: float | None = None,
              pool_old_groups: bool = False, verify: bool = True,
              rdp_report: bool = False) -> Plan:
    """Plan a DP-AL schedule (see the module docstring).

    ``eps_selection``: total selection budget, eps_selection / R per round (0: selection is
    data-independent, e.g. random). ``rounding``: default "reference" for ``rdp_reference``,
    "exact" for ``pld``. ``noise_multiplier``: fix sigma instead of calibrating it; the naive
    step counts are then scaled by one common factor so that group 0 ends at ``epsilon``
    (the "more steps at the same sigma" variant). ``verify``: final per-group epsilons by
    ``shared.privacy.accounting.epsilon`` (PLD, refined); a group above ``epsilon`` there has
    its last rate lowered until it is not; ``rdp_report`` adds RDP epsilons (slow at large
    rates). ``pool_old_groups``: plan as the reference code does, one rate for all earlier
    groups computed from group 0's history (only to reproduce it: the groups labelled later
    then leave the curve, see ``eps_after_round``).
    """
    t0 = time.perf_counter()
    query_sizes = [int(k) for k in query_sizes]
    R = len(query_sizes)
    _check_inputs(n_pool, start_size, query_sizes, epsilon, delta, eps_selection, batch_size,
                  mode, accountant)
    rounding = rounding or ("reference" if accountant == "rdp_reference" else "exact")
    if rounding not in ROUNDINGS:
        raise PlanError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    epochs = _epochs(epochs_per_round, R)
    group_sizes = [int(start_size)] + query_sizes
    sizes = list(np.cumsum(group_sizes))
    eps_sel_round = eps_selection / R if R else 0.0
    if eps_sel_round * R >= epsilon:
        raise PlanError(f"eps_selection={eps_selection} leaves nothing for training out of "
                        f"epsilon={epsilon}: choose eps_selection well below epsilon")
    acc = make_accountant(accountant, delta, eps_sel_round)
    base_q, base_T = base_schedule(sizes, batch_size, epochs, rounding)

    with quiet_absl():
        if noise_multiplier is None:
            sigma = reference_noise_multiplier(acc, epsilon, base_q, base_T) \
                if accountant == "rdp_reference" else _calibrate_sigma(acc, epsilon, base_q,
                                                                       base_T)
        else:
            sigma = float(noise_multiplier)
            base_T = _scale_steps(acc, epsilon, sigma, base_q, base_T)
        steps, rates, segs, curve = _plan_rounds(
            acc, sigma, base_q, base_T, group_sizes, epsilon=epsilon, batch_size=batch_size,
            mode=mode, pool_old_groups=pool_old_groups)
        eps_after = _eps_after_rounds(acc, segs)

    plan = Plan(mode=mode, accountant=accountant, rounding=rounding,
                pool_old_groups=bool(pool_old_groups), n_pool=int(n_pool),
                start_size=int(start_size), query_sizes=query_sizes, epsilon=float(epsilon),
                delta=float(delta), eps_selection=float(eps_selection),
                batch_size=int(batch_size), noise_multiplier=float(sigma), steps=steps,
                naive_steps=list(base_T), rates=rates, eps_after_round=eps_after, curve=curve,
                group_sizes=group_sizes, group_events=[], unlabelled_event="")
    _attach_events(plan, verify, rdp_report)
    plan.planning_seconds = time.perf_counter() - t0
    return plan


def _epochs(epochs_per_round, R: int) -> list:
    """Epochs of each of the R + 1 training rounds (one number: the same in every round)."""
    epochs = list(epochs_per_round) if isinstance(epochs_per_round, (list, tuple)) \
        else [epochs_per_round] * (R + 1)
    if len(epochs) != R + 1 or not all(e > 0 for e in epochs):
        raise PlanError(f"epochs_per_round needs R+1 = {R + 1} positive values, got {epochs}")
    return epochs


def _plan_rounds(acc, sigma: float, base_q, base_T, group_sizes, *, epsilon: float,
                 batch_size: int, mode: str, pool_old_groups: bool):
    """Rounds 1..R of the schedule after the naive round 0: each round's step count and every
    group's rate (see the module docstring).

    ``base_q``, ``base_T``: the naive (rate, steps) of each round; ``group_sizes``: start set,
    then each round's query size. Returns (steps, rates, segments, curve): ``segments[g]`` is
    group g's training history as (sigma, q, T) per round it trained in, ``curve`` the planned
    epsilon after each round.
    """
    R = len(group_sizes) - 1
    steps = [base_T[0]]
    rates = [[base_q[0]] + [0.0] * R]
    # per-group training segments so far: (sigma, q, T)
    segs: list[list[tuple[float, float, int]]] = [[(sigma, base_q[0], base_T[0])]] + \
        [[] for _ in range(R)]
    curve = [acc.eps(acc.history(0, segs[0]))]
    for r in range(1, R + 1):
        hist0 = acc.history(0, segs[0])
        c_r = min(epsilon, acc.eps(hist0, sigma, base_q[r], base_T[r]))
        curve.append(c_r)
        if mode == "naive":
            T, qs = base_T[r], [base_q[r]] * (r + 1)
        elif pool_old_groups:  # the reference: groups 0..r-1 ride on group 0's history
            T, (q_old, q_new) = _amplify(
                acc, [acc.history(0, segs[0]), acc.history(r, [])],
                [sum(group_sizes[:r]), group_sizes[r]], sigma, c_r, batch_size, base_T[r],
                base_q[r])
            qs = [q_old] * r + [q_new]
        else:
            hists = [acc.history(g, segs[g]) for g in range(r + 1)]
            T, qs = _amplify(acc, hists, group_sizes[:r + 1], sigma, c_r, batch_size,
                             base_T[r], base_q[r])
        steps.append(int(T))
        rates.append([float(q) for q in qs] + [0.0] * (R - r))
        for g in range(r + 1):
            segs[g].append((sigma, float(qs[g]), int(T)))
    return steps, rates, segs, curve


def _eps_after_rounds(acc, segs) -> list[list[float]]:
    """Every group's epsilon after every round, by the planning accountant."""
    n = len(segs)
    eps_after = []
    for r in range(n):
        row = []
        for g in range(n):
            # group g trains from round g on; before that it has paid r selections
            hist = acc.history(g, segs[g][:r - g + 1]) if g <= r else acc.history(r, [])
            row.append(acc.eps(hist))
        eps_after.append(row)
    return eps_after


def _attach_events(plan: Plan, verify: bool, rdp_report: bool) -> None:
    R = plan.rounds
    esr = plan.eps_sel_round
    plan.unlabelled_event = event_to_json(
        dp_accounting.SelfComposedDpEvent(selection_event(esr), R)) if esr > 0 and R else ""
    for _attempt in range(50):
        events = [group_event(g, esr, plan.noise_multiplier, plan.rates, plan.steps)
                  for g in range(R + 1)]
        plan.group_events = [event_to_json(e) for e in events]
        if not verify:
            return
        with quiet_absl():
            plan.group_epsilon = [pld_epsilon(e, plan.delta) for e in events]
            if rdp_report:
                plan.group_epsilon_rdp = [epsilon_rdp(e, plan.delta) for e in events]
        over = [g for g, e in enumerate(plan.group_epsilon) if e > plan.epsilon]
        if not over:
            return
        for g in over:  # safety net: never above the budget by the ledger's own accountant
            plan.rates[R][g] *= 0.999
    raise PlanError("could not bring every group below epsilon; report this schedule")


def _scale_steps(acc, target, sigma, rates, steps) -> list[int]:
    """Naive steps scaled by one common factor so group 0 ends at ``target`` with ``sigma``."""
    def f(s):
        return acc.eps(acc.history(0, [(sigma, q, max(1, int(s * t)))
                                       for q, t in zip(rates, steps)]))

    lo, hi = 1.0, 1.0
    f_lo = f(lo)
    while f_lo > target:
        lo /= 2
        f_lo = f(lo)
        if lo < 1e-3:
            raise PlanError("noise_multiplier is too small for epsilon even at a handful of steps")
    hi = lo * 2
    f_hi = f(hi)
    while f_hi <= target:
        lo, f_lo, hi = hi, f_hi, hi * 2
        f_hi = f(hi)
    s, _ = largest_feasible(f, target, lo, f_lo, hi, f_hi, xrtol=1e-4, ftol=1e-4)
    out = [max(1, int(s * t)) for t in steps]
    while f(s) > target:  # int() rounding only lowers steps, but be sure
        s *= 0.999
        out = [max(1, int(s * t)) for t in steps]
    return out


def _amplify(acc, hists, sizes, sigma, target, batch_size, T_naive, q_naive):
    """Smallest T >= T_naive with sum_g q_g(T) n_g <= B, q_g(T) the largest rate keeping group
    g at or below ``target`` after T steps. Returns (T, rates)."""
    cache: dict[int, list[float]] = {}
    guesses = [q_naive] * len(hists)

    def rates_at(T):
        if T not in cache:
            near = min(cache, key=lambda t: abs(t - T)) if cache else None
            gs = [q * math.sqrt(near / T) for q in cache[near]] if near else guesses
            cache[T] = [_max_rate(acc, h, sigma, T, target, max(g, 1e-4))
                        for h, g in zip(hists, gs)]
        return cache[T]

    def ebs(T):
        return float(sum(q * n for q, n in zip(rates_at(T), sizes)))

    lo = max(1, int(T_naive))
    b_lo = ebs(lo)
    if b_lo <= batch_size:  # rates capped (tiny data): nothing to amplify
        return lo, rates_at(lo)
    hi = lo * 2
    b_hi = ebs(hi)
    while b_hi > batch_size:
        lo, b_lo, hi = hi, b_hi, hi * 2
        b_hi = ebs(hi)
        if hi > 1e7:
            raise PlanError("step amplification did not converge: batch size unreachable")
    # ebs(T) ~ T^-1/2 in the usual regime: interpolate log B in log T inside the integer
    # bracket; fall back to bisection when an interpolation step did not halve it
    interpolate = True
    while hi - lo > 1:
        width = hi - lo
        if interpolate:
            a = (math.log(b_lo) - math.log(batch_size)) / (math.log(b_lo) - math.log(b_hi))
            T = int(round(math.exp(math.log(lo) + a * (math.log(hi) - math.log(lo)))))
        else:
            T = (lo + hi) // 2
        T = min(max(T, lo + 1), hi - 1)
        b = ebs(T)
        if b > batch_size:
            lo, b_lo = T, b
        else:
            hi, b_hi = T, b
        interpolate = (hi - lo) <= width / 2
    return hi, rates_at(hi)


def _check_inputs(n_pool, start_size, query_sizes, epsilon, delta, eps_selection, batch_size,
                  mode, accountant) -> None:
    if mode not in MODES:
        raise PlanError(f"mode must be one of {MODES}, got {mode!r}")
    if accountant not in ACCOUNTANTS:
        raise PlanError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise PlanError(f"epsilon must be a finite number > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise PlanError(f"delta must be in (0, 1), got {delta}")
    if not (eps_selection >= 0 and math.isfinite(eps_selection)):
        raise PlanError(f"eps_selection must be >= 0, got {eps_selection}")
    if start_size < 1:
        raise PlanError(f"start_size must be >= 1, got {start_size}")
    if any(k < 1 for k in query_sizes):
        raise PlanError(f"every query size must be >= 1, got {list(query_sizes)}")
    if start_size + sum(query_sizes) > n_pool:
        raise PlanError(f"start_size + sum(query_sizes) = {start_size + sum(query_sizes)} "
                        f"exceeds the {n_pool} records of the pool")
    if batch_size < 1:
        raise PlanError(f"batch_size must be >= 1, got {batch_size}")
