"""Differentially private active learning with step amplification (ALGORITHMS.md 3).

* :mod:`.planner` -- :func:`make_plan`: the privacy schedule (naive or step-amplified), every
  group's rates and step counts, planned before any record is read.
* :mod:`.schedule` -- :class:`Plan` and the DpEvent each group receives from it.
* :mod:`.accountants` -- the per-group accountants the planner searches over (PLD, or the
  reference code's RDP).
* :mod:`.acquisition` -- acquisition scores and their private top-k selection.
* :mod:`.loop` -- :func:`run_dpal`: the loop itself (DP-SGD, private selection, label oracle).
* :mod:`.pretrained` -- the loop's model and release when the job fine-tunes a registered
  pretrained backbone (``DPALSpec.method``).
"""
from .accountants import ACCOUNTANTS
from .acquisition import ACQUISITIONS
from .loop import evaluate, plot_accuracy, plot_group_epsilon, run_dpal
from .planner import MODES, ROUNDINGS, PlanError, base_schedule, make_plan
from .schedule import Plan, group_event, selection_event

__all__ = ["ACCOUNTANTS", "ACQUISITIONS", "MODES", "ROUNDINGS", "Plan", "PlanError",
           "base_schedule", "evaluate", "group_event", "make_plan", "plot_accuracy",
           "plot_group_epsilon", "run_dpal", "selection_event"]
