"""The single trusted entry point a datasite calls to run an approved job on its data."""
from __future__ import annotations

from typing import Callable

from .data import DatasetMeta
from .specs import DPSGDTableSpec, spec_from_dict


def _run_dpsgd_table(spec: DPSGDTableSpec, data, meta: DatasetMeta, progress) -> dict:
    from .training import train_dpsgd_table  # torch/opacus imported only when a job runs

    # Public label set from the metadata, so the class list does not depend on the records.
    return train_dpsgd_table(data, spec, progress=progress, classes=meta.labels or None,
                             feature_scales=meta.feature_scales or None)


# kind -> trainer; later job kinds add theirs next to their spec class.
TRAINERS: dict[str, Callable] = {DPSGDTableSpec.KIND: _run_dpsgd_table}


def run_job(spec_dict: dict, data, meta: DatasetMeta,
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Validate ``spec_dict`` against ``meta``, run it on ``data``, return the result dict.

    The result holds the trainer's output plus ``spec`` (the validated spec) and ``kind``.
    Raises ``SpecError`` before touching the data if the spec cannot run.
    """
    spec = spec_from_dict(spec_dict).validate(meta)
    result = TRAINERS[spec.KIND](spec, data, meta, progress)
    result.update(spec=spec.to_dict(), kind=spec.KIND)
    return result
