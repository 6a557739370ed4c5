"""Job kind ``dp_stats``: a batch of DP statistics (counts, sums, means, histograms, quantiles)
on a table, answered with OpenDP (:mod:`shared.stats`, imported lazily: this module stays light).

Example::

    DPStatsSpec(dataset="bc", delta=0.0, queries=[
        {"type": "count", "epsilon": 0.1},
        {"type": "mean", "column": "age", "bounds": [0, 100], "epsilon": 0.5},
        {"type": "histogram", "column": "diagnosis", "categories": [0, 1], "epsilon": 0.2},
        {"type": "quantile", "column": "age", "bounds": [0, 100], "alpha": 0.5, "epsilon": 0.2},
    ])

Each query spends its own ``epsilon``; a query with a ``delta`` > 0 gets Gaussian noise, else
Laplace (pure DP). ``delta`` of the job caps the sum of the query deltas (0: pure DP throughout).
There is no seed: OpenDP draws its noise from its own secure RNG, so answers cannot be replayed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from .data import TABLE, DatasetMeta
from .specs import JobSpec, SpecError, register


def meta_columns(meta: DatasetMeta) -> dict[str, str]:
    """Column -> dtype name of a table dataset, the label column included."""
    labels = meta.labels or []
    if labels and all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        label_dtype = "int64"
    elif labels and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in labels):
        label_dtype = "float64"
    else:
        label_dtype = "object"
    return {**meta.features, meta.label: label_dtype}


@register
@dataclass
class DPStatsSpec(JobSpec):
    """DP statistics on a table: ``queries`` is a list of query dicts (see :mod:`shared.stats`)."""

    KIND: ClassVar[str] = "dp_stats"

    dataset: str
    queries: list
    delta: float = 0.0

    def validate(self, meta: DatasetMeta | None = None) -> "DPStatsSpec":
        """Check the spec alone, and against the dataset's metadata if given; return self."""
        from .stats import StatsError, validate_queries

        self._check_types()
        if not (math.isfinite(self.delta) and 0 <= self.delta < 1):
            raise SpecError(f"delta must be in [0, 1) (0 = pure DP), got {self.delta}")
        columns = None
        if meta is not None:
            self._check_meta(meta)
            columns = meta_columns(meta)
        try:
            validate_queries(self.queries, self.delta, columns)
        except StatsError as e:
            raise SpecError(str(e)) from None
        return self

    def planned_event(self, meta: DatasetMeta):
        from .stats import queries_event

        return queries_event(self.queries, self.delta, meta_columns(meta))

    def run(self, data, meta: DatasetMeta, progress=None) -> dict:
        from .stats import run_queries

        return run_queries(data, self.queries, self.delta, progress=progress)

    def _check_meta(self, meta: DatasetMeta) -> None:
        if meta.kind != TABLE:
            raise SpecError(f"dataset {meta.name!r} holds {meta.kind}; {self.KIND} needs a table")
        if self.dataset != meta.name:
            raise SpecError(f"spec names dataset {self.dataset!r} but it runs on {meta.name!r}")
        n = meta.n_records
        if self.delta > 0 and n > 0 and self.delta >= 1 / n:
            raise SpecError(f"delta={self.delta} is too large for {n} records: it must be below "
                            f"1/n = {1 / n:.3g}; or use delta=0 (pure DP, Laplace noise)")
