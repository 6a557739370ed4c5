"""The single trusted entry point a datasite calls to run an approved job on its data."""
from __future__ import annotations

from contextlib import ExitStack
from typing import Callable

from .data import TABLE, DatasetMeta
from .privacy.private_metrics import mock_evaluation
from .randomness import pinned_randomness
from .schema import clip_table
from .errors import SpecError
from .jobs import MESSAGE, spec_from_dict


def run_job(spec_dict: dict, data, meta: DatasetMeta,
            progress: Callable[[int, int], None] | None = None,
            pin_randomness: int | None = None, context: dict | None = None,
            mock: bool = False, backbones: dict | None = None) -> dict:
    """Validate ``spec_dict`` against ``meta``, run it on ``data``, return the result dict.

    The result holds the job's output plus ``spec`` (the validated spec) and ``kind``.
    Raises ``SpecError`` before touching the data if the spec cannot run.
    Sampling and noise are fresh secrets unless ``pin_randomness`` is given (mock runs only:
    a datasite never pins, see :mod:`shared.randomness`). ``context``: what the datasite adds
    for kinds that build on an earlier released job (``NEEDS_CONTEXT``: the results named by the
    spec's ``context_sources``), never the researcher. ``backbones``: name -> LocalBackbone for
    the registered backbones the spec names (``backbones_needed``), resolved by the site (or
    by a researcher for a mock run).
    ``mock``: the data is the public mock, so metrics are exact and labelled mock (a datasite
    never sets it: on private data they are DP, :mod:`shared.privacy.private_metrics`).
    """
    spec = spec_from_dict(spec_dict).validate(meta)
    if spec.LIFECYCLE == MESSAGE:
        raise SpecError(f"{spec.KIND} is a message inside an approved schedule, not a job; the "
                        "schedule's server runs the schedule's own spec")
    if meta.kind == TABLE:  # values outside the declared bounds are clipped, never widen them
        data = clip_table(data, meta)
    kwargs = {"context": context} if spec.NEEDS_CONTEXT else {}
    needed = spec.backbones_needed()
    if needed:
        kwargs["backbones"] = resolve_backbones(spec, needed, backbones or {}, meta)
    with ExitStack() as stack:
        if pin_randomness is not None:
            stack.enter_context(pinned_randomness(pin_randomness))
        if mock:
            stack.enter_context(mock_evaluation())
        result = spec.run(data, meta, progress, **kwargs)
    result.update(spec=spec.to_dict(), kind=spec.KIND)
    return result


def resolve_backbones(spec, needed: list[str], backbones: dict, meta: DatasetMeta) -> dict:
    """The LocalBackbones ``spec`` needs, checked (``check_backbones``); SpecError naming the
    registered ones if one is not registered."""
    missing = [n for n in needed if n not in backbones]
    if missing:
        raise SpecError(f"backbone {missing[0]!r} is not registered on this datasite; "
                        f"registered: {sorted(backbones) or 'none'} (see site.models)")
    chosen = {n: backbones[n] for n in needed}
    spec.check_backbones({n: b.info for n, b in chosen.items()}, meta)
    return chosen
