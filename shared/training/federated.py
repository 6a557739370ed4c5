"""Federated averaging of model states (post-processing of released DP models)."""
from __future__ import annotations

import base64
from typing import Sequence

import torch

from .serialise import dump_state, load_state


def state_to_text(state: dict[str, torch.Tensor]) -> str:
    """A state dict as base64 text, small enough to travel inside a job spec."""
    return base64.b64encode(dump_state(state)).decode("ascii")


def state_from_text(text: str) -> dict[str, torch.Tensor]:
    """The state dict of :func:`state_to_text`; ValueError (never code) for anything else."""
    try:
        return load_state(base64.b64decode(text.encode("ascii"), validate=True))
    except Exception as e:
        raise ValueError(f"not a model state: {e}") from None


def average_states(states: Sequence[dict], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted average of state dicts with identical keys and shapes (FedAvg)."""
    if not states:
        raise ValueError("nothing to average")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise ValueError("model states differ in layers or shapes; they cannot be averaged")
    return {k: sum(s[k].double() * (w / total) for s, w in zip(states, weights)).to(states[0][k].dtype)
            for k in keys}
