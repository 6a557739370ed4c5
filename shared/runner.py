"""The single trusted entry point a datasite calls to run an approved job on its data."""
from __future__ import annotations

from typing import Callable

from .data import DatasetMeta
from .specs import spec_from_dict


def run_job(spec_dict: dict, data, meta: DatasetMeta,
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Validate ``spec_dict`` against ``meta``, run it on ``data``, return the result dict.

    The result holds the job's output plus ``spec`` (the validated spec) and ``kind``.
    Raises ``SpecError`` before touching the data if the spec cannot run.
    """
    spec = spec_from_dict(spec_dict).validate(meta)
    result = spec.run(data, meta, progress)
    result.update(spec=spec.to_dict(), kind=spec.KIND)
    return result
