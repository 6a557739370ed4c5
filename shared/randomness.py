"""Where a job's private randomness comes from.

Poisson sampling, DP-SGD noise and private selection protect records only if the researcher
cannot predict them, and the researcher writes the spec (and its ``seed``). So every run on the
datasite draws fresh seeds from the OS; the spec's seed only fixes public choices (model
initialisation, the train/test split). A run on mock data, a test or a benchmark may pin the
private randomness with :func:`pinned_randomness` to make the whole run reproducible.
"""
from __future__ import annotations

import secrets
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

_PINNED: ContextVar[int | None] = ContextVar("dpds_pinned_randomness", default=None)


def secret_seed(*stream: int) -> int:
    """A 63-bit seed for one private random stream; ``stream`` names it (public seed, purpose,
    round...). From the OS unless :func:`pinned_randomness` is active."""
    pinned = _PINNED.get()
    if pinned is None:
        return secrets.randbits(63)
    words = np.random.SeedSequence([int(pinned), *[int(s) for s in stream]]).generate_state(2)
    return (int(words[0]) << 31 | int(words[1])) & (2**63 - 1)


@contextmanager
def pinned_randomness(seed: int):
    """Make private randomness a function of ``seed`` (mock runs, tests; never the datasite)."""
    token = _PINNED.set(int(seed))
    try:
        yield
    finally:
        _PINNED.reset(token)
