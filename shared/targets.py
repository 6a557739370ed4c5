"""Privacy targets: what a training job's noise is calibrated to (ALGORITHMS.md section 1).

A researcher asks for one of
* ``Target(epsilon=e)``: (e, delta)-DP at the spec's delta (the spec's ``epsilon`` field, the
  default path, unchanged);
* ``Target(mu=m)``: the released model is m-GDP (fitted as in :mod:`shared.privacy.reporting`);
* ``Target(tpr=t, fpr=f)``: no membership attack reaches TPR t at FPR f.

The target is data in the spec (``target`` = {} | {"mu": m} | {"tpr": t, "fpr": f}; ``epsilon``
is then 0), so the datasite calibrates sigma on its real metadata, at pricing time and again
inside the job, with the same deterministic function: the owner's price is the one enforced.

A tuned job (``tuning_trials`` > 0, :func:`tuned_noise_multiplier`) holds its whole selection --
every trial's training and metric release -- to the target (docs/hyperparameter_tuning.md).

Calibrations are cached in the process and, with ``$DP_DATASITE_CALIBRATION_CACHE`` set, across
processes (:mod:`shared.privacy.calibration_cache`: a stored sigma is used only after checking
that it still meets the target).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

TARGET_KINDS = {"mu": ("mu",), "tpr": ("tpr", "fpr")}


def _spec_error(msg: str):
    from .errors import SpecError

    return SpecError(msg)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_target(target: dict, epsilon: float) -> None:
    """SpecError unless exactly one of ``epsilon`` (> 0, target {}) or a valid ``target`` is set."""
    if not isinstance(target, dict):
        raise _spec_error(f"target must be a dict such as {{'mu': 0.5}}, got {target!r}")
    if not target:
        if not (_is_number(epsilon) and epsilon > 0):
            raise _spec_error(f"epsilon must be a finite number > 0, got {epsilon}; or give a "
                              "target instead: privacy=Target(mu=...) or Target(tpr=..., fpr=...)")
        return
    if epsilon != 0:
        raise _spec_error(f"give either epsilon ({epsilon}) or a target ({target}), not both: "
                          "with a target, epsilon is computed on the datasite")
    keys = tuple(sorted(target))
    if keys not in {tuple(sorted(v)) for v in TARGET_KINDS.values()}:
        raise _spec_error(f"target must be {{'mu': m}} or {{'tpr': t, 'fpr': f}}, got {target}; "
                          "for an epsilon target set the spec's epsilon field")
    if not all(_is_number(v) for v in target.values()):
        raise _spec_error(f"target values must be finite numbers, got {target}")
    if "mu" in target:
        if not target["mu"] > 0:
            raise _spec_error(f"mu must be > 0 (0 would need infinite noise), got {target['mu']}")
        return
    tpr, fpr = target["tpr"], target["fpr"]
    if not 0 < fpr < 1:
        raise _spec_error(f"fpr must lie in (0, 1), e.g. 0.01, got {fpr}")
    if not fpr < tpr < 1:
        raise _spec_error(f"tpr must lie in (fpr, 1) = ({fpr:g}, 1): no mechanism keeps an "
                          f"attacker below TPR = FPR (guessing), got tpr={tpr}")


def noise_multiplier(spec, sample_rate: float, steps: int) -> float:
    """The DP-SGD sigma that meets ``spec``'s target over ``steps`` steps at ``sample_rate``."""
    return _calibrate(float(sample_rate), int(steps), float(spec.epsilon), float(spec.delta),
                      tuple(sorted((k, float(v)) for k, v in spec.target.items())))


@functools.lru_cache(maxsize=64)
def _calibrate(q: float, steps: int, epsilon: float, delta: float, target: tuple) -> float:
    # Cached: pricing, reservation and the job itself ask for the same sigma (deterministic);
    # in this process (lru), and across processes in the calibration cache file.
    from .privacy import accounting, reporting
    from .privacy.calibration_cache import cached

    def compute() -> float:
        if not target:
            return accounting.calibrate_noise(q, steps, epsilon, delta)
        return reporting.calibrate_noise_for(q, steps, **dict(target))

    def meets(sigma: float) -> bool:  # the criterion the calibration bisects on
        if not target:
            return accounting.meets_epsilon(q, sigma, steps, epsilon, delta)
        return reporting.meets_risk_target(q, sigma, steps, **dict(target))

    return cached("targets._calibrate", (q, steps, epsilon, delta, target), compute, meets)


def tuned_noise_multiplier(spec, sample_rate: float, steps: int, metrics_sigma: float) -> float:
    """The sigma of each trial of a tuned job (``spec.tuning_trials`` > 0) such that the whole
    job -- all trials' training and metric releases, and the selection -- meets ``spec``'s
    target (:func:`shared.privacy.tuning.calibrate_tuned_noise`)."""
    return _calibrate_tuned(float(sample_rate), int(steps), float(spec.epsilon),
                            float(spec.delta),
                            tuple(sorted((k, float(v)) for k, v in spec.target.items())),
                            float(metrics_sigma), float(spec.tuning_trials),
                            float(spec.tuning_shape))


@functools.lru_cache(maxsize=64)
def _calibrate_tuned(q: float, steps: int, epsilon: float, delta: float, target: tuple,
                     metrics_sigma: float, mean: float, shape: float) -> float:
    # Cached for the same reason as _calibrate: pricing and the job ask for the same sigma.
    from .privacy import tuning
    from .privacy.calibration_cache import cached

    def compute() -> float:
        return tuning.calibrate_tuned_noise(q, steps, metrics_sigma, mean, shape, delta, epsilon,
                                            dict(target))

    def meets(sigma: float) -> bool:  # the criterion the calibration bisects on
        return tuning.tuned_meets(q, sigma, steps, metrics_sigma, mean, shape, delta, epsilon,
                                  dict(target))

    return cached("targets._calibrate_tuned",
                  (q, steps, epsilon, delta, target, metrics_sigma, mean, shape), compute, meets)


@dataclass(frozen=True)
class Target:
    """``privacy=Target(...)`` for the training job builders: exactly one of ``epsilon``,
    ``mu``, or ``tpr`` with ``fpr``. Checked at once; the datasite calibrates the noise."""

    epsilon: float | None = None
    mu: float | None = None
    tpr: float | None = None
    fpr: float | None = None

    def __post_init__(self):
        given = [n for n in ("epsilon", "mu", "tpr") if getattr(self, n) is not None]
        if len(given) != 1:
            raise _spec_error("Target needs exactly one of epsilon=, mu=, or tpr= (with fpr=); "
                              f"got {given or 'none'}")
        if self.fpr is not None and self.tpr is None:
            raise _spec_error("fpr= goes with tpr=: Target(tpr=0.05, fpr=0.01)")
        if self.tpr is not None and self.fpr is None:
            raise _spec_error("a tpr target needs the false-positive rate it holds at: "
                              "Target(tpr=0.05, fpr=0.01)")
        fields = self.spec_fields()
        check_target(fields["target"], fields["epsilon"])

    def spec_fields(self) -> dict:
        """The spec fields this target sets: ``epsilon`` and ``target``."""
        if self.epsilon is not None:
            return {"epsilon": self.epsilon, "target": {}}
        if self.mu is not None:
            return {"epsilon": 0.0, "target": {"mu": self.mu}}
        return {"epsilon": 0.0, "target": {"tpr": self.tpr, "fpr": self.fpr}}


def privacy_fields(epsilon, privacy) -> dict:
    """Spec fields from a builder's ``epsilon=`` or ``privacy=`` (exactly one)."""
    if (epsilon is None) == (privacy is None):
        raise _spec_error("give exactly one of epsilon=... or privacy=Target(...)")
    if privacy is None:
        return {"epsilon": epsilon, "target": {}}
    if isinstance(privacy, dict):
        privacy = Target(**privacy)
    if not isinstance(privacy, Target):
        raise _spec_error(f"privacy must be a Target(...), got {privacy!r}")
    return privacy.spec_fields()
