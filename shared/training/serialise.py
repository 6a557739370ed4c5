"""Model states as bytes (what a job result carries) and back.

One place for both directions, so every job writes states the same way (detached, on the CPU)
and every reader loads them the same safe way (``weights_only``: tensors, never code).
"""
from __future__ import annotations

import io

import torch


def dump_state(state: dict[str, torch.Tensor], prefix: str = "") -> bytes:
    """``torch.save`` bytes of a state dict, tensors detached and on the CPU; ``prefix`` is
    put before every key (e.g. ``"head."`` for a head trained alone on a frozen backbone)."""
    buf = io.BytesIO()
    torch.save({prefix + k: v.detach().cpu() for k, v in state.items()}, buf)
    return buf.getvalue()


def load_state(raw: bytes) -> dict[str, torch.Tensor]:
    """A state dict from ``torch.save`` bytes (tensors only: ``weights_only`` loading)."""
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def model_bytes(model: torch.nn.Module, prefix: str = "") -> bytes:
    """The ``model_state`` of a job result: :func:`dump_state` of the model's state dict."""
    return dump_state(model.state_dict(), prefix)

