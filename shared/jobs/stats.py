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

from ..data import TABLE, DatasetMeta
from ..display import brief
from ..errors import SpecError
from . import bounds
from .base import JobSpec, register

# query keys holding text the owner's review shows, and those holding (bounded) lists
_TEXT_KEYS = ("name", "column")
_LIST_KEYS = {"categories": bounds.STATS_LIST_MAX, "edges": bounds.STATS_LIST_MAX,
              "candidates": bounds.STATS_LIST_MAX, "alphas": bounds.STATS_ALPHAS_MAX,
              "bounds": 2}


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
        from ..stats import StatsError, validate_queries

        self._check_spec()
        columns = None
        if meta is not None:
            self._check_meta(meta)
            columns = meta_columns(meta)
        # after the dataset's 1/n check, whose message says more
        if self.delta > bounds.DELTA_MAX:
            raise SpecError(f"delta={self.delta:g} is too large: allowed 0 (pure DP) or up to "
                            f"{bounds.DELTA_MAX:g}; typical: 1e-6")
        try:
            validate_queries(self.queries, self.delta, columns)
        except StatsError as e:
            raise SpecError(str(e)) from None
        return self

    def _check_spec(self) -> None:
        """Form and size of the queries (their meaning is :func:`shared.stats.validate_queries`'
        job): a builder adds queries after construction, so ``validate`` runs this again."""
        self._check_types()
        if not (math.isfinite(self.delta) and 0 <= self.delta < 1):
            raise SpecError(f"delta must be in [0, 1) (0 = pure DP), got {self.delta}")
        if 0 < self.delta < bounds.DELTA_MIN:
            raise SpecError(f"delta={self.delta:g} is below {bounds.DELTA_MIN:g} (the "
                            "accountant's precision); use 0 for pure DP")
        bounds.check_dataset(self.dataset)
        if len(self.queries) > bounds.STATS_QUERIES_MAX:
            raise SpecError(f"{len(self.queries)} queries; at most {bounds.STATS_QUERIES_MAX} "
                            "per job (each is priced before review): split them into jobs")
        for i, q in enumerate(self.queries):
            _check_query_form(i, q)
        _check_quantile_work(self.queries)

    def planned_event(self, meta: DatasetMeta):
        from ..stats import queries_event

        return queries_event(self.queries, self.delta, meta_columns(meta))

    def run(self, data, meta: DatasetMeta, progress=None) -> dict:
        from ..stats import run_queries

        return run_queries(data, self.queries, self.delta, progress=progress)

    def _check_meta(self, meta: DatasetMeta) -> None:
        if meta.kind != TABLE:
            raise SpecError(f"dataset {meta.name!r} holds {meta.kind}; {self.KIND} needs a table")
        if self.dataset != meta.name:
            raise SpecError(f"spec names dataset {brief(self.dataset)} but it runs on "
                            f"{meta.name!r}")
        n = meta.n_records
        if self.delta > 0 and n > 0 and self.delta >= 1 / n:
            raise SpecError(f"delta={self.delta} is too large for {n} records: it must be below "
                            f"1/n = {1 / n:.3g}; or use delta=0 (pure DP, Laplace noise)")


def _check_query_form(i: int, q) -> None:
    """Query ``i``'s keys are short names, its text printable and its lists bounded."""
    if not isinstance(q, dict):
        raise SpecError(f"query {i}: must be a dict, got {brief(q)}")
    for key, value in q.items():
        if not (isinstance(key, str) and key.isascii() and key.isidentifier() and len(key) <= 32):
            raise SpecError(f"query {i}: key {brief(key)} is not a query key such as 'type', "
                            "'column', 'epsilon'")
        if key == "type":
            bounds.check_text(f"query {i} type", value, 32)
        elif key in _TEXT_KEYS and value is not None:  # a count may say column=None
            bounds.check_text(f"query {i} {key}", value, bounds.STATS_TEXT_MAX_CHARS,
                              allow_empty=(key == "name"))
        elif key in _LIST_KEYS:
            if not isinstance(value, (list, tuple)):
                raise SpecError(f"query {i}: {key} must be a list, got {brief(value)}")
            if len(value) > _LIST_KEYS[key]:
                raise SpecError(f"query {i}: {key} has {len(value)} entries; at most "
                                f"{_LIST_KEYS[key]}")
            for v in value:
                if isinstance(v, str):
                    bounds.check_text(f"query {i} {key} entry", v, bounds.STATS_TEXT_MAX_CHARS)
                elif not isinstance(v, (int, float)):
                    raise SpecError(f"query {i}: {key} entries must be numbers or strings, "
                                    f"got {brief(v)}")
        elif not isinstance(value, (int, float)) and value is not None:
            raise SpecError(f"query {i}: {key} must be a number, got {brief(value)}")


def _quantile_size(q: dict) -> tuple[int, int]:
    """(levels, candidates) of a quantile query, as shared.stats will build it (0, 0 if it is
    malformed: validate_queries then says why)."""
    from ..stats import DEFAULT_CANDIDATES, MAX_CANDIDATES

    levels = len(q["alphas"]) if isinstance(q.get("alphas"), (list, tuple)) else 1
    if isinstance(q.get("candidates"), (list, tuple)):
        return levels, len(q["candidates"])
    b, res = q.get("bounds"), q.get("resolution")
    if res is None:
        return levels, DEFAULT_CANDIDATES
    try:
        n = math.floor((float(b[1]) - float(b[0])) / float(res) + 1e-9) + 1
    except (TypeError, ValueError, IndexError, ZeroDivisionError, OverflowError):
        return 0, 0
    return levels, min(max(n, 0), MAX_CANDIDATES)


def _check_quantile_work(queries: list) -> None:
    """The job's quantile levels and levels x candidates stay within what prices in seconds."""
    sizes = [_quantile_size(q) for q in queries if q.get("type") == "quantile"]
    levels = sum(a for a, _ in sizes)
    work = sum(a * c for a, c in sizes)
    if levels > bounds.STATS_QUANTILE_LEVELS_MAX:
        raise SpecError(f"the quantile queries ask for {levels} quantile levels (alphas) in all; "
                        f"at most {bounds.STATS_QUANTILE_LEVELS_MAX} per job: split them into jobs")
    if work > bounds.STATS_QUANTILE_WORK_MAX:
        raise SpecError(f"the quantile queries score {work:,} (level, candidate) pairs; at most "
                        f"{bounds.STATS_QUANTILE_WORK_MAX:,} per job: use fewer alphas or a "
                        "coarser resolution (fewer candidates)")
