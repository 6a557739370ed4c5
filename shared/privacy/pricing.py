"""A job's privacy event, computed from its spec and the dataset's metadata alone.

The datasite prices a request with this before anything runs (the researcher's own numbers are
never trusted); the job then reports the event of the schedule it actually executed, which the
ledger checks against this plan before release.
"""
from __future__ import annotations

import dp_accounting

from ..data import DatasetMeta
from ..errors import SpecError
from ..jobs import MESSAGE, spec_from_dict


def planned_event(spec: dict, meta: DatasetMeta) -> dp_accounting.DpEvent:
    """The DpEvent a job with ``spec`` will run on a dataset described by ``meta``."""
    return _job(spec, meta).planned_event(meta)


def _job(spec: dict, meta: DatasetMeta):
    job = spec_from_dict(spec).validate(meta)
    if job.LIFECYCLE == MESSAGE:
        raise SpecError(f"{job.KIND} is a message inside an approved schedule, priced with the "
                        "schedule; it has no price of its own")
    return job


def record_events(spec: dict, meta: DatasetMeta) -> list[str] | None:
    """The events one record may receive from the job (exactly one of them), for per-record
    accounting; None: every record receives the planned event (the sound default)."""
    job = _job(spec, meta)
    return job.record_events(meta) if hasattr(job, "record_events") else None
