"""A job's privacy event, computed from its spec and the dataset's metadata alone.

The datasite prices a request with this before anything runs (the researcher's own numbers are
never trusted); the job then reports the event of the schedule it actually executed, which the
ledger checks against this plan before release.
"""
from __future__ import annotations

import dp_accounting

from .accounting import calibrate_noise, dpsgd_event
from .data import DatasetMeta
from .specs import spec_from_dict


def planned_event(spec: dict, meta: DatasetMeta) -> dp_accounting.DpEvent:
    """The DpEvent a job with ``spec`` will run on a dataset described by ``meta``."""
    job = spec_from_dict(spec).validate(meta)
    if job.kind == "dpsgd_table":
        from .specs import n_train_records
        from .training import poisson_schedule

        q, steps = poisson_schedule(n_train_records(meta.n_records, job.test_fraction),
                                    job.batch_size, job.epochs)
        return dpsgd_event(q, calibrate_noise(q, steps, job.epsilon, job.delta), steps)
    raise ValueError(f"no pricing for job kind {job.kind!r}")
