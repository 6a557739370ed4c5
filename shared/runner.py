"""The single trusted entry point a datasite calls to run an approved job on its data."""
from __future__ import annotations

from typing import Callable

from .data import DatasetMeta
from .randomness import pinned_randomness
from .specs import spec_from_dict


def run_job(spec_dict: dict, data, meta: DatasetMeta,
            progress: Callable[[int, int], None] | None = None,
            pin_randomness: int | None = None, context: dict | None = None) -> dict:
    """Validate ``spec_dict`` against ``meta``, run it on ``data``, return the result dict.

    The result holds the job's output plus ``spec`` (the validated spec) and ``kind``.
    Raises ``SpecError`` before touching the data if the spec cannot run.
    Sampling and noise are fresh secrets unless ``pin_randomness`` is given (mock runs only:
    a datasite never pins, see :mod:`shared.randomness`). ``context``: what the datasite adds
    for kinds that build on an earlier released job (``NEEDS_CONTEXT``), never the researcher.
    """
    spec = spec_from_dict(spec_dict).validate(meta)
    kwargs = {"context": context} if getattr(spec, "NEEDS_CONTEXT", False) else {}
    if pin_randomness is None:
        result = spec.run(data, meta, progress, **kwargs)
    else:
        with pinned_randomness(pin_randomness):
            result = spec.run(data, meta, progress, **kwargs)
    result.update(spec=spec.to_dict(), kind=spec.KIND)
    return result
