"""Frozen, data-independent feature extractors for images (nothing downloaded, nothing learned).

Each feature vector is a fixed function of one image alone, so computing features costs no
privacy and removing a record never changes another record's features (certified removal
relies on this). Rows are L2-normalised to norm 1 (0 for a constant image).

* ``scatter``: a 2-layer scattering transform (Mallat; the features of Tramer & Boneh 2021,
  "Differentially private learning needs better features") computed by Kymatio's
  ``Scattering2D``, J=2, L=8 Morlet wavelets: 81 channels per input channel (order 0, 1, 2),
  low-passed by Kymatio's Gaussian at scale 2^J and subsampled to (H // 4, W // 4), pooled to
  at most 8x8, then normalised per record (GroupNorm without learned parameters, 27 groups as
  in Tramer & Boneh). Earlier versions used a hand-written FFT transform whose last low-pass
  was a 2^J box average; the feature length is unchanged, the values are not.
* ``random_conv``: two conv layers with fixed seeded random filters, ReLU, pooling to 4x4
  (random features).
* ``pixels``: the image itself, average-pooled to at most 16x16.

Each backbone has a version (:data:`FEATURE_VERSIONS`): bump it whenever a change alters the
values a backbone computes, even at the same feature length. Removal models record it and
`datasite forget` withdraws a model whose version is not today's (its removal step would run on
features it was never trained on: :func:`shared.removal.stale_features`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import default_device

BACKBONES: tuple[str, ...] = ("scatter", "random_conv", "pixels")

_J, _L = 2, 8  # scattering scales and orientations (Kymatio's defaults for 28x28 images)
_MAX_SIDE = {"scatter": 8, "random_conv": 4, "pixels": 16}
_RANDOM_SEED = 20240531  # fixed: the random_conv filters are part of the backbone's definition
_CHUNK = 128  # images per internal pass on the CPU (bounds the scattering's memory)
_GROUPS = 27  # GroupNorm groups for the scattering channels (C * 81: always divisible)

# The version of each backbone's values: BUMP IT whenever a backbone's features change.
FEATURE_VERSIONS: dict[str, str] = {"scatter": "kymatio-J2-L8", "random_conv": "1", "pixels": "1"}
# What a stored model that records no version was trained on (versions were first recorded after
# the kymatio rewrite, so no version on "scatter" reads as the FFT transform; a kymatio model
# trained in between is withdrawn too: the safe side). History: never change these.
UNRECORDED_VERSIONS: dict[str, str] = {"scatter": "fft-J2-box", "random_conv": "1",
                                       "pixels": "1"}


def _shape(image_shape) -> tuple[int, int, int]:
    """(H, W, C) from (H, W) or (H, W, C)."""
    s = [int(v) for v in image_shape]
    if len(s) == 2:
        s.append(1)
    if len(s) != 3 or min(s) < 1:
        raise ValueError(f"image_shape must be (H, W) or (H, W, C), got {image_shape}")
    return s[0], s[1], s[2]


def _pooled(size: int, stride: int, max_side: int) -> int:
    return min(max(size // stride, 1), max_side)


def feature_version(name: str) -> str:
    """Today's version of backbone ``name``'s feature values (:data:`FEATURE_VERSIONS`)."""
    if name not in FEATURE_VERSIONS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list(BACKBONES)}")
    return FEATURE_VERSIONS[name]


def feature_dim(name: str, image_shape) -> int:
    """Length of the feature vector ``name`` gives for images of ``image_shape``."""
    return Backbone(name, image_shape).dim


class Backbone(nn.Module):
    """``forward``: float images (N, C, H, W) in [0, 1] -> (N, D) features, rows of norm 1."""

    def __init__(self, name: str, image_shape):
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; choose one of {list(BACKBONES)}")
        self.name = name
        self.h, self.w, self.c = _shape(image_shape)
        if name == "scatter":
            if min(self.h, self.w) < 8:
                raise ValueError("the scattering backbone needs images of at least 8x8")
            self.out_hw = (_pooled(self.h, 2 ** _J, 8), _pooled(self.w, 2 ** _J, 8))
            channels = self.c * (1 + _J * _L + _L * _L * _J * (_J - 1) // 2)
            # built on first use (filters cost time and memory; feature_dim needs none)
            self.add_module("scattering", None)
        elif name == "random_conv":
            g = torch.Generator().manual_seed(_RANDOM_SEED)
            # He-scaled Gaussian filters; non-persistent: rebuilt from the seed, never saved
            self.register_buffer("w1", torch.randn(64, self.c, 5, 5, generator=g)
                                 * math.sqrt(2 / (25 * self.c)), persistent=False)
            self.register_buffer("w2", torch.randn(128, 64, 3, 3, generator=g)
                                 * math.sqrt(2 / (9 * 64)), persistent=False)
            self.out_hw = (_pooled(self.h, 4, 4), _pooled(self.w, 4, 4))
            channels = 128
        else:
            self.out_hw = (min(self.h, 16), min(self.w, 16))
            channels = self.c
        self.channels = channels
        self.dim = channels * self.out_hw[0] * self.out_hw[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.c, self.h, self.w):
            raise ValueError(f"backbone built for (C, H, W) = {(self.c, self.h, self.w)}, "
                             f"got images of shape {tuple(x.shape[1:])}")
        if len(x) == 0:
            return x.new_zeros((0, self.dim))
        if self.name == "scatter":
            f = self._scatter(x)
        elif self.name == "random_conv":
            f = F.relu(F.conv2d(x - 0.5, self.w1, padding=2))
            f = F.avg_pool2d(f, 2, ceil_mode=True)
            f = F.relu(F.conv2d(f, self.w2, padding=1))
            f = F.adaptive_avg_pool2d(f, self.out_hw)
            f = F.group_norm(f, 16)  # per record: uses no other record's statistics
        else:
            f = F.adaptive_avg_pool2d(x, self.out_hw) - 0.5
        f = f.flatten(1)
        # (1 + 1e-5): float rounding must not push a norm above 1 (certified removal needs <= 1)
        return f / (f.norm(dim=1, keepdim=True) * (1 + 1e-5)).clamp_min(1e-12)

    # -- scattering ----------------------------------------------------------------------------
    def _scatter(self, x: torch.Tensor) -> torch.Tensor:
        s = self._scattering_on(x.device)(x.float().contiguous())  # (N, C, 81, H//4, W//4)
        s = F.adaptive_avg_pool2d(s.flatten(1, 2), self.out_hw)
        return F.group_norm(s, _GROUPS)  # per record, no learned parameters

    def _scattering_on(self, device) -> nn.Module:
        if self.scattering is None:
            from kymatio.torch import Scattering2D

            try:
                sc = Scattering2D(J=_J, shape=(self.h, self.w), L=_L)
            except (RuntimeError, ValueError) as e:
                raise ValueError(f"kymatio's Scattering2D (J={_J}) refused {self.h}x{self.w} "
                                 f"images ({e}); images of at least 8x8 work") from e
            # the filters are a fixed function of (H, W): non-persistent, so a head model's
            # state dict stays the head alone and older saved heads still load
            for name, buf in list(sc.named_buffers(recurse=False)):
                sc.register_buffer(name, buf, persistent=False)
            self.scattering = sc
        if next(self.scattering.buffers()).device != torch.device(device):
            self.scattering.to(device)
        return self.scattering

    def __getstate__(self):
        # kymatio's module does not pickle (its class is not found under its module's name);
        # it is rebuilt on first use, so a pickled or copied backbone leaves it out
        state = self.__dict__.copy()
        if "scattering" in state.get("_modules", {}):
            state["_modules"] = {**state["_modules"], "scattering": None}
        return state


# -- numpy entry point -------------------------------------------------------------------------
def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1] (x / 255: public)."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C), got shape {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).float().div_(255.0)


@torch.no_grad()
def extract_features(images: np.ndarray, name: str, device=None,
                     batch_size: int = 256) -> np.ndarray:
    """float32 (N, D) features of uint8 images (N, H, W) or (N, H, W, C); each row has L2 norm
    1 (or 0) and depends on its own image only. Deterministic for a given device."""
    images = np.asarray(images)
    device = default_device(device)
    bb = Backbone(name, images.shape[1:]).to(device).eval()
    out = np.empty((len(images), bb.dim), dtype=np.float32)
    step = max(1, min(int(batch_size), _CHUNK if name == "scatter" and device.type == "cpu"
                      else int(batch_size)))
    for i in range(0, len(images), step):
        x = images_to_tensor(images[i:i + step]).to(device)
        out[i:i + len(x)] = bb(x).cpu().numpy()
    return out
