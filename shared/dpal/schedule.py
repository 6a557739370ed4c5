"""The record of a DP-AL privacy schedule (:class:`Plan`) and the DpEvents it gives each group.

Group g (the start set is group 0, group g the records labelled in round g) receives g private
selections, then its DP-SGD segments in rounds g..R at its own rates. :func:`group_event` is
the one definition of that event: the planner prices it and the loop checks the executed one
against it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Sequence

import dp_accounting
import numpy as np

from ..privacy.accounting import dpsgd_event, event_from_json


@dataclass
class Plan:
    """A DP-AL privacy schedule; JSON-able. ``rates[r][g]`` is group g's Poisson rate in
    training round r (0 for groups not yet labelled or not trained); ``eps_after_round[r][g]``
    is group g's epsilon (by ``accountant``) after round r, selections included."""

    mode: str
    accountant: str
    rounding: str
    pool_old_groups: bool
    n_pool: int
    start_size: int
    query_sizes: list
    epsilon: float
    delta: float
    eps_selection: float
    batch_size: int
    noise_multiplier: float
    steps: list
    naive_steps: list
    rates: list
    eps_after_round: list
    curve: list  # planned epsilon after each round
    group_sizes: list
    group_events: list  # JSON of each group's DpEvent (shared.privacy.accounting.event_to_json)
    unlabelled_event: str  # JSON of the event of a record never labelled ("" if free)
    group_epsilon: list = field(default_factory=list)  # final PLD epsilon per group
    group_epsilon_rdp: list = field(default_factory=list)  # final RDP (wide orders) per group
    planning_seconds: float = 0.0

    @property
    def rounds(self) -> int:
        return len(self.query_sizes)

    @property
    def eps_sel_round(self) -> float:
        return self.eps_selection / self.rounds if self.rounds else 0.0

    def expected_batch_sizes(self) -> list[float]:
        """Each round's expected batch, sum_g q_g |g|: step amplification keeps it <= B."""
        return [float(sum(q * n for q, n in zip(row, self.group_sizes))) for row in self.rates]

    def group_event(self, g: int) -> dp_accounting.DpEvent:
        """Group g's planned event, as the ledger prices it."""
        return event_from_json(self.group_events[g])

    def worst_group(self) -> int:
        """The group with the largest final PLD epsilon: the per-record worst case."""
        return int(np.argmax(self.group_epsilon))

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(**d)

    def summary(self) -> str:
        """A few lines to read the plan by: sigma, steps, each group's epsilon by round."""
        lines = [f"{self.mode} / {self.accountant}: sigma={self.noise_multiplier:.4f}, "
                 f"steps={self.steps} (naive {self.naive_steps})"]
        for g, n in enumerate(self.group_sizes):
            lines.append(f"  group {g} (n={n}): eps by round "
                         + " ".join(f"{r[g]:.3f}" for r in self.eps_after_round)
                         + f"; final PLD eps={self.group_epsilon[g]:.4f}")
        return "\n".join(lines)


def selection_event(eps_sel_round: float) -> dp_accounting.DpEvent:
    """One private top-k selection: Laplace(S / eps) on each record's score clipped to [0, S]."""
    return dp_accounting.LaplaceDpEvent(1.0 / eps_sel_round)


def group_event(g: int, eps_sel_round: float, sigma: float, rates: Sequence[Sequence[float]],
                steps: Sequence[int]) -> dp_accounting.DpEvent:
    """Group g's event: g selections, then its training segments (rounds g..R, q > 0)."""
    events = [selection_event(eps_sel_round)] * g if eps_sel_round > 0 else []
    for r in range(g, len(steps)):
        q = float(rates[r][g])
        if q > 0 and steps[r] > 0:
            events.append(dpsgd_event(q, sigma, int(steps[r])))
    return dp_accounting.ComposedDpEvent(events)
