"""Frozen, data-independent feature extractors for images (nothing downloaded, nothing learned).

Each feature vector is a fixed function of one image alone, so computing features costs no
privacy and removing a record never changes another record's features (certified removal
relies on this). Rows are L2-normalised to norm 1 (0 for a constant image).

* ``scatter``: a 2-layer scattering transform (Mallat; the features of Tramer & Boneh 2021,
  "Differentially private learning needs better features"), J=2, L=8 Morlet wavelets, computed
  by FFT as in Kymatio: 81 channels per input channel (order 0, 1, 2), spatially averaged at
  scale 2^J, pooled to at most 8x8, then normalised per record (GroupNorm without learned
  parameters, 27 groups as in Tramer & Boneh) -- kymatio itself is not installed; the final
  low-pass is a 2^J box average instead of Kymatio's Gaussian.
* ``random_conv``: two conv layers with fixed seeded random filters, ReLU, pooling to 4x4
  (random features).
* ``pixels``: the image itself, average-pooled to at most 16x16.
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
_CHUNK = 32  # images per internal pass (scattering holds 81 maps per image)


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
        self._filters: dict = {}

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
        n = len(x)
        m = x.reshape(n * self.c, 1, self.h, self.w)
        pad = 2 ** _J * 2  # reflect margin against FFT wrap-around, as Kymatio pads
        mode = "reflect" if min(self.h, self.w) > pad else "replicate"
        xp = F.pad(m, (pad, pad, pad, pad), mode=mode)[:, 0]
        psi = self._bank(xp.shape[-2], xp.shape[-1], xp.device)
        u1 = torch.fft.ifft2(torch.fft.fft2(xp)[:, None] * psi[None]).abs()  # (M, J*L, Hp, Wp)
        # order 2 only along increasing scale: j1 = 0 paths through j2 = 1 filters
        u1_fine = torch.fft.fft2(u1[:, :_L])
        u2 = torch.fft.ifft2(u1_fine[:, :, None] * psi[None, None, _L:]).abs().flatten(1, 2)
        s = torch.cat([xp[:, None], u1, u2], 1)[..., pad:pad + self.h, pad:pad + self.w]
        # low-pass and subsample at scale 2^J: a box average (Kymatio uses a Gaussian; the box
        # saves two FFTs of all 81 maps and serves a linear head as well)
        s = F.avg_pool2d(s, 2 ** _J, ceil_mode=True)
        s = F.adaptive_avg_pool2d(s, self.out_hw)
        s = s.reshape(n, self.channels, *self.out_hw)
        return F.group_norm(s, _groups(self.channels))  # per record, no learned parameters

    def _bank(self, hp: int, wp: int, device) -> torch.Tensor:
        key = (hp, wp, str(device))
        if key not in self._filters:
            # Kymatio's Morlet parameters: sigma 0.8 * 2^j, centre frequency 3 pi / 4 / 2^j
            psi = [_morlet(hp, wp, 0.8 * 2 ** j, t * math.pi / _L, 3 * math.pi / 4 / 2 ** j)
                   for j in range(_J) for t in range(_L)]
            psi_f = torch.fft.fft2(torch.from_numpy(np.stack(psi)))
            self._filters[key] = psi_f.to(device=device, dtype=torch.complex64)
        return self._filters[key]


def _groups(channels: int) -> int:
    for g in (27, 9, 3, 1):
        if channels % g == 0:
            return g
    return 1


def _gabor(hp: int, wp: int, sigma: float, theta: float, xi: float,
           slant: float = 0.5) -> np.ndarray:
    """A Gabor filter on the periodic (hp, wp) grid, centred at the origin (FFT layout)."""
    yy = np.fft.fftfreq(hp, 1 / hp)[:, None] * np.ones((1, wp))
    xx = np.ones((hp, 1)) * np.fft.fftfreq(wp, 1 / wp)[None, :]
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy  # along / across the oscillation
    env = np.exp(-(u ** 2 + (slant * v) ** 2) / (2 * sigma ** 2))
    return env * np.exp(1j * xi * u)


def _morlet(hp: int, wp: int, sigma: float, theta: float, xi: float) -> np.ndarray:
    """Zero-mean Morlet wavelet: Gabor minus its envelope times the constant that cancels the
    mean (so flat regions give no response), normalised to unit L1 norm."""
    gab = _gabor(hp, wp, sigma, theta, xi)
    env = _gabor(hp, wp, sigma, theta, 0.0)
    wav = gab - env * (gab.sum() / env.sum())
    return wav / np.abs(wav).sum()


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
