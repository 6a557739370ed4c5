"""Job kinds: one module each, registered in ``base.SPEC_KINDS`` when imported here.

Adding a kind: a module in this package with a ``@register``ed ``JobSpec`` subclass (its
``validate``, ``planned_event`` and ``run``; bounds for every field from :mod:`.bounds`), its
import below, and a builder in ``researcher/jobs.py``. The base knows nothing of its children
(the registry pattern of Opacus' ``accountants/registry.py``).
"""
from ..data import n_train_records
from ..errors import SpecError
from . import dpal, dpsgd_images, dpsgd_table, federated, removal, stats  # noqa: F401 (register)
from .base import SPEC_KINDS, JobSpec, register, spec_from_dict
from .dpsgd_table import DPSGDTableSpec

__all__ = ["SPEC_KINDS", "DPSGDTableSpec", "JobSpec", "SpecError", "n_train_records", "register",
           "spec_from_dict"]
