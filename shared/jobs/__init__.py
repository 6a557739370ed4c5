"""Job kinds: one module each, registered in ``base.SPEC_KINDS`` when imported here.

Adding a kind: a module in this package with a ``@register``ed ``JobSpec`` subclass (its
``validate``, ``planned_event`` and ``run``; bounds for every field from :mod:`.bounds`), its
import below, and a builder in ``researcher/jobs.py``. The base knows nothing of its children
(the registry pattern of Opacus' ``accountants/registry.py``).

A site may also add kinds without changing this package: the modules named (comma-separated) in
the environment variable ``DP_DATASITE_JOB_MODULES`` are imported after the built-in ones, in
every process of the site (owner, pricing worker, job runner). They run with the owner's
rights, like this package: only the owner sets it (SECURITY.md).
"""
import importlib
import os

from ..data import n_train_records
from ..errors import SpecError
from . import dpal, dpsgd_images, dpsgd_table, federated, finetune, removal, stats  # noqa: F401
from .base import MESSAGE, ONCE, SCHEDULE, SPEC_KINDS, JobSpec, Message, register, spec_from_dict
from .dpsgd_table import DPSGDTableSpec

JOB_MODULES_ENV = "DP_DATASITE_JOB_MODULES"

__all__ = ["JOB_MODULES_ENV", "MESSAGE", "ONCE", "SCHEDULE", "SPEC_KINDS", "DPSGDTableSpec",
           "JobSpec", "Message", "SpecError", "load_job_modules", "n_train_records", "register",
           "spec_from_dict"]


def load_job_modules() -> list[str]:
    """Import the site's extra job-kind modules (``DP_DATASITE_JOB_MODULES``); their names."""
    names = [n.strip() for n in os.environ.get(JOB_MODULES_ENV, "").split(",") if n.strip()]
    for name in names:
        importlib.import_module(name)
    return names


load_job_modules()
