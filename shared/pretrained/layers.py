"""Parameter-free and per-channel layers that make a pretrained backbone Opacus-ready.

* :class:`SamePad`: TensorFlow's "SAME" padding computed from the input's size (EfficientNet-Lite
  was trained in TensorFlow); it replaces the port's ``nn.Conv2d`` subclasses, which Opacus does
  not recognise, by a pad followed by a plain ``nn.Conv2d``.
* :class:`Standardize` + :class:`ChannelAffine`: BatchNorm with its running statistics frozen.
  ``Standardize`` holds the statistics as buffers and has no parameters; ``ChannelAffine``
  holds gamma and beta and no buffers (Opacus refuses trainable layers with buffers, rightly:
  a BatchNorm in training mode mixes the records of a batch).

Why per-sample gradients stay correct: with frozen statistics, output n of the pair is
``gamma * (x_n - mean) / sqrt(var + eps) + beta`` -- a fixed per-channel function of record n's
own input. No output depends on another record, so the gradient of record n's loss is its
per-sample gradient, which :func:`_affine_grad_sample` computes exactly (tested against autograd
one record at a time). The statistics are the backbone's, estimated on its public pre-training
data, never on the private records.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_grad_sampler
from torch import nn


class SamePad(nn.Module):
    """Zero padding so that a conv of this kernel/stride/dilation gives ceil(size / stride)."""

    def __init__(self, kernel_size, stride, dilation):
        super().__init__()
        self.kernel_size, self.stride, self.dilation = (tuple(kernel_size), tuple(stride),
                                                        tuple(dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return x


class Standardize(nn.Module):
    """(x - mean) / sqrt(var + eps) per channel, with fixed statistics (no parameters)."""

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, eps: float):
        super().__init__()
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("inv_std", torch.rsqrt(var.detach().float() + eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) * self.inv_std.view(shape)


class ChannelAffine(nn.Module):
    """x * weight + bias per channel (BatchNorm's gamma and beta, no buffers)."""

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None, channels: int):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float() if weight is not None
                                   else torch.ones(channels))
        self.bias = nn.Parameter(bias.detach().clone().float() if bias is not None
                                 else torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(shape) + self.bias.view(shape)


@register_grad_sampler(ChannelAffine)
def _affine_grad_sample(layer: ChannelAffine, activations, backprops: torch.Tensor) -> dict:
    """Per-sample gradients of gamma and beta: sums over the spatial positions of record n."""
    x = activations[0]
    dims = list(range(2, x.dim()))
    out = {}
    if layer.weight.requires_grad:
        out[layer.weight] = (x * backprops).sum(dims) if dims else x * backprops
    if layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(dims) if dims else backprops
    return out


def frozen_batchnorm(bn: nn.modules.batchnorm._BatchNorm) -> nn.Sequential:
    """A BatchNorm layer as Standardize + ChannelAffine with its running statistics frozen."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a BatchNorm without running statistics cannot be frozen: this "
                         "backbone normalises with batch statistics, which DP-SGD cannot use")
    return nn.Sequential(Standardize(bn.running_mean, bn.running_var, bn.eps),
                         ChannelAffine(bn.weight if bn.affine else None,
                                       bn.bias if bn.affine else None, bn.num_features))


def replace_modules(root: nn.Module, convert) -> int:
    """Replace every submodule m for which ``convert(m)`` returns a module; count them."""
    count = 0
    for name, child in list(root.named_children()):
        new = convert(child)
        if new is not None:
            setattr(root, name, new)
            count += 1
        else:
            count += replace_modules(child, convert)
    return count
