"""Job builders for notebooks. Each wraps a validated spec from ``shared.specs``."""
from __future__ import annotations

from shared.data import DatasetMeta
from shared.runner import run_job
from shared.specs import DPSGDTableSpec


class _Job:
    spec: object

    def run_on_mock(self, site, progress=None) -> "JobResult":
        """Run the same job code locally on the dataset's mock data."""
        from .results import JobResult

        remote = site.datasets[self.spec.dataset]
        mock = remote.mock
        meta = DatasetMeta(**{**remote.meta.__dict__, "n_records": _count(mock)})
        # mock data is public: pin the randomness so a notebook reruns identically
        return JobResult(run_job(self.spec.to_dict(), mock, meta, progress=progress,
                                 pin_randomness=getattr(self.spec, "seed", 0)))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.to_dict()}>"


def _count(payload) -> int:
    return len(payload["labels"]) if isinstance(payload, dict) else len(payload)


class DPSGD(_Job):
    """DP-SGD training of a classifier (logistic regression or MLP) on a table."""

    def __init__(self, dataset: str, label: str, epsilon: float, delta: float, **options):
        self.spec = DPSGDTableSpec(dataset=dataset, label=label, epsilon=epsilon, delta=delta,
                                   **options)
