"""Which parameters a fine-tuning method trains (the head is always trained):

* ``head``: none of the backbone (features are computed once per job: the fast path);
* ``bitfit``: the backbone's biases only (DP-BiTFiT, Bu et al. 2022): BatchNorm's beta and the
  biases of convs and linears;
* ``lora``: low-rank adapters on the backbone (:mod:`.lora`), nothing else;
* ``full``: every backbone parameter (BatchNorm's statistics stay frozen: :mod:`.layers`).
"""
from __future__ import annotations

from torch import nn

from .info import METHODS
from .layers import ChannelAffine


def apply_method(backbone: nn.Module, method: str, lora_rank: int = 8) -> int:
    """Set ``requires_grad`` on ``backbone`` for ``method`` (adding adapters for ``lora``);
    return the number of backbone parameters it will train."""
    if method not in METHODS:
        raise ValueError(f"unknown fine-tuning method {method!r}; choose one of {list(METHODS)}")
    backbone.requires_grad_(False)
    if method == "lora":
        from .lora import LoRA, add_lora

        add_lora(backbone, lora_rank)
        for m in backbone.modules():
            if isinstance(m, LoRA):
                m.down.requires_grad_(True)
                m.up.requires_grad_(True)
    elif method == "bitfit":
        for m in backbone.modules():
            if isinstance(m, (ChannelAffine, nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.requires_grad_(True)
    elif method == "full":
        backbone.requires_grad_(True)
    return sum(p.numel() for p in backbone.parameters() if p.requires_grad)
