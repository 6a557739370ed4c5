"""Multi-round federated DP-SGD: a schedule approved once, then rounds without further clicks.

The researcher submits a *schedule* (``fed_dpsgd_table``) to every site: R rounds of local
DP-SGD on a table. Each site prices all R rounds up front (one noise multiplier for the whole
schedule, so R rounds of ``epochs`` each are one long Poisson-subsampled Gaussian run) and
reserves them in its ledger when the owner approves. Each round the researcher sends the current
global model in a *round* request (``fed_round``); the site's round server trains from it and
releases the local model. A site that stops commits the rounds it ran and refunds the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..data import DatasetMeta, n_train_records
from ..errors import SpecError
from . import bounds
from .base import SCHEDULE, Message, register
from .dpsgd_table import DPSGDTableSpec, n_model_inputs

MAX_ROUNDS = bounds.FED_ROUNDS_MAX


@register
@dataclass
class FedScheduleSpec(DPSGDTableSpec):
    """R rounds of DP-SGD (``epochs`` per round) on a table at (epsilon, delta) for all rounds.

    ``round`` and ``init_state`` are set by the datasite when it runs one round; a researcher's
    schedule has round 0 and no initial state.
    """

    KIND: ClassVar[str] = "fed_dpsgd_table"
    LIFECYCLE: ClassVar[str] = SCHEDULE

    rounds: int = 3
    round: int = 0
    init_state: str = ""

    def _check_spec(self) -> None:
        super()._check_spec()
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise SpecError(f"rounds must be between 1 and {MAX_ROUNDS}, got {self.rounds}")
        if not 0 <= self.round < self.rounds:
            raise SpecError(f"round must be in [0, {self.rounds}), got {self.round}")
        # the datasite sets it when it runs a round: base64 weights, never free text
        bounds.check_init_state(self.init_state)

    def _rounds_priced(self) -> int:
        return self.rounds

    def _check_meta(self, meta: DatasetMeta) -> None:
        super()._check_meta(meta)
        _check_state_size(self.init_state, bounds.table_params(
            self.model, n_model_inputs(meta), len(meta.labels), self.hidden))

    def _schedule(self, meta: DatasetMeta) -> tuple[float, int, float]:
        """(sample rate, steps per round, noise multiplier for all rounds)."""
        from ..targets import noise_multiplier
        from ..training.engine import poisson_schedule

        q, steps = poisson_schedule(n_train_records(meta.n_records, self.test_fraction),
                                    self.batch_for(meta), self.epochs)
        return q, steps, noise_multiplier(self, q, steps * self.rounds)

    def planned_event(self, meta: DatasetMeta):
        """All R rounds: the ledger reserves them at approval."""
        return self.rounds_event(meta, self.rounds)

    def rounds_event(self, meta: DatasetMeta, rounds: int):
        """The event of the first ``rounds`` rounds (what a site commits when it stops early):
        their DP-SGD steps and their DP metric releases (one per round, noise priced for R)."""
        from ..privacy.accounting import dpsgd_event
        from ..privacy.private_metrics import histograms_per_release, metrics_sigma, \
            with_metrics

        q, steps, sigma = self._schedule(meta)
        return with_metrics(dpsgd_event(q, sigma, steps * rounds),
                            metrics_sigma(self, self.rounds), rounds,
                            histograms=histograms_per_release(self))

    def run(self, data, meta: DatasetMeta, progress=None) -> dict:
        """Run round ``self.round`` from ``init_state``; the privacy report is this round's.

        The researcher chose ``init_state``: the round's model is still covered (DP-SGD composes
        adaptively) and its metrics are one of the schedule's R priced DP releases."""
        from ..training.federated import state_from_text
        from ..training.preprocess import declared_bounds
        from ..training.table import train_dpsgd_table

        q, steps, sigma = self._schedule(meta)
        init = state_from_text(self.init_state) if self.init_state else None
        result = train_dpsgd_table(
            data, self.resolved(meta), progress=progress, classes=meta.labels or None,
            feature_scales=meta.feature_scales or None, feature_bounds=declared_bounds(meta),
            columns=meta.columns or None, noise_multiplier=sigma,
            init_state=init, sampling_seed=self.seed + 7919 * self.round,
            metrics_releases=self.rounds, metrics_index=self.round,
            label_rates=meta.label_rates or None)
        result["round"] = self.round
        result["rounds"] = self.rounds
        return result


@register
@dataclass
class FedRoundSpec(Message):
    """Round ``round`` of an approved schedule, starting from ``init_state`` (base64 weights):
    a message to the schedule's round server, which trains the schedule's own spec from it."""

    KIND: ClassVar[str] = "fed_round"

    dataset: str
    schedule: str  # the schedule request's id
    round: int
    init_state: str = ""

    def _check_spec(self) -> None:
        self._check_types()
        bounds.check_dataset(self.dataset)
        if not self.schedule:
            raise SpecError("schedule must name the approved schedule request")
        bounds.check_request_id("schedule", self.schedule)
        if self.round < 0:
            raise SpecError(f"round must be >= 0, got {self.round}")
        bounds.check_int("round", self.round, 0, MAX_ROUNDS - 1)
        bounds.check_init_state(self.init_state)



def _check_state_size(init_state: str, params: int) -> None:
    """``init_state`` is no longer than the base64 of ``params`` float32 weights plus framing."""
    limit = 4 * ((4 * params + 2**16) // 3 + 1)
    if len(init_state) > limit:
        raise SpecError(f"init_state is {len(init_state)} characters long; weights of a model "
                        f"with {params:,} parameters take at most {limit}")
