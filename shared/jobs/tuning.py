"""The hyperparameter candidates of a tuned DP-SGD table job, checked without the data.

A tuned job (``tuning_trials`` > 0) runs a secret, random number of trials, each with one of the
public ``candidates`` drawn at random, and releases the best by its DP test accuracy
(:mod:`shared.privacy.tuning` prices it, :mod:`shared.training.selection` runs it). Every trial
must be the same privacy event, so a candidate may only change what leaves the event alone.
"""
from __future__ import annotations

from dataclasses import replace

from ..display import brief
from ..errors import SpecError
from . import bounds
from .base import ONCE

# Fields a candidate may set. None changes a trial's event: the noise std is sigma * clip_norm
# for a sensitivity of clip_norm; model, width and learning rate shape what the noisy gradients
# do; tail averaging is post-processing.
TUNABLE = ("learning_rate", "clip_norm", "model", "hidden", "tail_average")
# Fields that set a trial's event (sample rate, steps, noise, metric noise): RepeatAndSelect
# prices one event repeated, so every trial must share them.
EVENT_FIELDS = ("epsilon", "delta", "target", "epochs", "batch_size", "test_fraction",
                "metrics_epsilon")
CANDIDATES_MAX = 20
# The mean number of trials: at least 2 (a mean of 1 is one run), at most 20 (the job runs
# about this many times the work of one run, and the price grows with its logarithm).
TRIALS_MIN, TRIALS_MAX = 2.0, 20.0
SHAPE_MAX = 10.0  # beyond it the TNB is close to Poisson and only costlier


def is_tuned(spec) -> bool:
    """Whether ``spec`` asks for hyperparameter selection."""
    return bool(spec.tuning_trials)


def trial_spec(spec, candidate: dict):
    """The spec one trial runs: ``spec`` with ``candidate``'s hyperparameters, untuned."""
    return replace(spec, candidates=[], tuning_trials=0.0, **candidate)


def check_tuning(spec) -> None:
    """SpecError unless the tuning fields of ``spec`` are absent or form a valid tuned job."""
    bounds.check_number("tuning_shape", spec.tuning_shape, 0, SHAPE_MAX,
                        why="0: logarithmic, 1: geometric (the default)")
    bounds.check_number("tuning_trials", spec.tuning_trials, 0, TRIALS_MAX,
                        why="0: no tuning, else the mean number of trials")
    if 0 < spec.tuning_trials < TRIALS_MIN:
        raise SpecError(f"tuning_trials={spec.tuning_trials:g} is out of range: 0 (no tuning) "
                        f"or the mean number of trials in [{TRIALS_MIN:g}, {TRIALS_MAX:g}]")
    bounds.check_list("candidates", spec.candidates, CANDIDATES_MAX)
    if not is_tuned(spec):
        if spec.candidates:
            raise SpecError("candidates are tried only in a tuned job: set tuning_trials, the "
                            "mean number of trials (e.g. 5)")
        return
    if spec.LIFECYCLE != ONCE:
        raise SpecError(f"{spec.KIND} cannot tune hyperparameters: tuning releases the best of "
                        "several runs inside one job, a schedule releases every round")
    if not spec.candidates:
        raise SpecError("tuning_trials needs candidates: a list of dicts, each setting some of "
                        f"{list(TUNABLE)}, e.g. [{{'learning_rate': 0.5}}, "
                        "{'learning_rate': 2.0}]")
    if not (spec.metrics_epsilon > 0 and spec.test_fraction > 0):
        raise SpecError("a tuned job picks the trial with the best noisy test accuracy, a DP "
                        "release of each trial: set metrics_epsilon > 0 (e.g. 0.1) and "
                        "test_fraction > 0")
    for i, candidate in enumerate(spec.candidates):
        _check_candidate(spec, i, candidate)


def _check_candidate(spec, i: int, candidate) -> None:
    where = f"candidates[{i}]"
    if not isinstance(candidate, dict) or not candidate:
        raise SpecError(f"{where} must be a non-empty dict of hyperparameters, got "
                        f"{brief(candidate)}")
    for key in candidate:
        if key in EVENT_FIELDS:
            raise SpecError(
                f"{where} sets {key}, which changes the privacy event of its trials (sample "
                "rate, steps or noise): every trial must pay the same event, the one the "
                f"selection is priced on. Set {key} on the job itself; candidates may set "
                f"{list(TUNABLE)}")
        if key not in TUNABLE:
            raise SpecError(f"{where} sets {brief(key)}, which is not a hyperparameter a trial "
                            f"may change; candidates may set {list(TUNABLE)}")
    try:
        trial_spec(spec, candidate)._check_spec()
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from None
