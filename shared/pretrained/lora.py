"""Low-rank adapters (LoRA, Hu et al. 2022) on a frozen backbone's convolutions and linears.

Our own small module rather than PEFT: the adapters are plain ``nn.Conv2d`` / ``nn.Linear``
layers, for which Opacus has exact per-sample gradient samplers, and nothing rewires the
forward pass behind Opacus' hooks (Opacus issue 820: PEFT's LoRA under Opacus silently gave
wrong updates). ``tests/test_finetune.py`` checks that a noiseless, unclipped DP step equals a
plain SGD step on the adapters.

A conv ``W`` (out, in, k, k) becomes ``W x + (alpha / r) * up(down(x))`` with ``down`` a conv of
W's geometry into r channels and ``up`` a 1x1 conv back to ``out``; ``up`` starts at zero, so
the adapted backbone starts as the pretrained one. Depthwise/grouped convs are left alone.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class LoRA(nn.Module):
    """``base(x) + scale * up(down(x))`` with ``base`` frozen."""

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        base.requires_grad_(False)
        self.base = base
        if isinstance(base, nn.Conv2d):
            self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride,
                                  base.padding, base.dilation, bias=False)
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            self.down = nn.Linear(base.in_features, rank, bias=False)
            self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)
        self.scale = float(alpha) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x)) * self.scale


def adaptable(m: nn.Module) -> bool:
    """Layers that get an adapter: linears and ungrouped convolutions."""
    return (type(m) is nn.Linear
            or (type(m) is nn.Conv2d and m.groups == 1 and isinstance(m.padding, tuple)))


def add_lora(backbone: nn.Module, rank: int, alpha: float | None = None) -> int:
    """Wrap every adaptable layer of ``backbone`` in :class:`LoRA` (in place); count them.
    ``alpha`` defaults to ``rank`` (scale 1). Initialised from torch's current RNG."""
    from .layers import replace_modules

    alpha = float(rank if alpha is None else alpha)
    count = replace_modules(backbone, lambda m: LoRA(m, rank, alpha) if adaptable(m) else None)
    if count == 0:
        raise ValueError("this backbone has no linear or ungrouped conv layer to adapt")
    return count
