"""Classifiers for tables and images, rebuildable from a plain config dict.

No BatchNorm anywhere: it mixes records within a batch, which per-sample DP-SGD cannot account.
Image models use GroupNorm (per record) instead.
"""
from __future__ import annotations

import torch
from torch import nn

MODEL_NAMES = ("logreg", "mlp")  # tables (and heads on image features)
IMAGE_MODEL_NAMES = ("cnn", "resnet9", "head")
DEFAULT_WIDTH = {"cnn": 16, "resnet9": 64}


def build_model(name: str, n_features: int, n_classes: int, hidden: int = 32, *,
                in_channels: int | None = None, image_size=None, width: int | None = None,
                backbone: str | None = None) -> nn.Module:
    """``logreg``: one Linear layer (logits). ``mlp``: Linear-ReLU-Linear.

    Image models take float images (N, C, H, W) in [0, 1] (``in_channels`` C,
    ``image_size`` (H, W)): ``cnn`` (3 conv-GroupNorm-ReLU-pool blocks, ``width`` channels in
    the first), ``resnet9`` (ResNet-9 with GroupNorm, ``width`` 64 in the literature), ``head``
    (the frozen, data-independent ``backbone`` of :mod:`shared.training.backbones` followed by a
    logreg head, or an MLP head if ``hidden`` > 0; ``n_features`` is the backbone's feature dim).
    """
    if n_classes < 2:
        raise ValueError(f"need n_classes >= 2, got {n_classes}")
    if name in IMAGE_MODEL_NAMES:
        if in_channels is None or image_size is None:
            raise ValueError(f"model {name!r} needs in_channels and image_size")
        h, w = (int(image_size[0]), int(image_size[1]))
        if name == "head":
            from .backbones import Backbone

            bb = Backbone(backbone, (h, w, int(in_channels)))
            if n_features != bb.dim:
                raise ValueError(f"backbone {backbone!r} gives {bb.dim} features, not {n_features}")
            head = (build_model("mlp", n_features, n_classes, hidden) if hidden > 0
                    else build_model("logreg", n_features, n_classes))
            return HeadOnBackbone(bb, head)
        if min(h, w) < 8:
            raise ValueError(f"images must be at least 8x8, got {h}x{w}")
        width = int(width or DEFAULT_WIDTH[name])
        if name == "cnn":
            return SmallCNN(int(in_channels), n_classes, width)
        return ResNet9(int(in_channels), n_classes, width)
    if n_features < 1:
        raise ValueError(f"need n_features >= 1, got {n_features}")
    if name == "logreg":
        return nn.Sequential(nn.Linear(n_features, n_classes))
    if name == "mlp":
        return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(),
                             nn.Linear(hidden, n_classes))
    raise ValueError(f"unknown model {name!r}; choose one of "
                     f"{list(MODEL_NAMES + IMAGE_MODEL_NAMES)}")


def model_config(name: str, n_features: int, n_classes: int, hidden: int = 32, *,
                 in_channels: int | None = None, image_size=None, width: int | None = None,
                 backbone: str | None = None) -> dict:
    """The arguments of :func:`build_model`, as a JSON-able dict."""
    config = {"name": name, "n_features": int(n_features), "n_classes": int(n_classes),
              "hidden": int(hidden)}
    if name in IMAGE_MODEL_NAMES:
        config.update(in_channels=int(in_channels),
                      image_size=[int(image_size[0]), int(image_size[1])])
        if name == "head":
            config["backbone"] = str(backbone)
        else:
            config["width"] = int(width or DEFAULT_WIDTH[name])
    return config


def build_from_config(config: dict) -> nn.Module:
    """The (untrained) model a result's ``model_config`` describes: load its state into it."""
    return build_model(config["name"], config["n_features"], config["n_classes"],
                       config.get("hidden", 32), in_channels=config.get("in_channels"),
                       image_size=config.get("image_size"), width=config.get("width"),
                       backbone=config.get("backbone"))


# -- image models ------------------------------------------------------------------------------
def _groups(channels: int, max_groups: int = 16) -> int:
    """Largest group count <= max_groups dividing ``channels`` (GroupNorm needs a divisor)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def _conv_gn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
              nn.GroupNorm(_groups(c_out), c_out), nn.ReLU(inplace=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Three conv-GroupNorm-ReLU-maxpool blocks (width, 2 width, 4 width), global average
    pool, linear: any image size >= 8, ~25k parameters at width 16."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            _conv_gn(in_channels, width, pool=True), _conv_gn(width, 2 * width, pool=True),
            _conv_gn(2 * width, 4 * width, pool=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(4 * width, n_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv_gn(channels, channels), _conv_gn(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class ResNet9(nn.Module):
    """ResNet-9 (Page's DAWNBench net, as used with GroupNorm for DP-SGD by Klause et al. 2022
    and the DPAL reference code): prep, layer1 + residual, layer2, layer3 + residual, global
    max pool, linear scaled by 1/8. ``width`` 64 gives 64-128-256-512 channels."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 64):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_gn(in_channels, w),
            _conv_gn(w, 2 * w, pool=True), _Residual(2 * w),
            _conv_gn(2 * w, 4 * w, pool=True),
            _conv_gn(4 * w, 8 * w, pool=True), _Residual(8 * w),
            nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(8 * w, n_classes, bias=False)
        self.scale = 0.125  # the reference's output multiplier: tames early logits

    def forward(self, x):
        return self.classifier(self.features(x)) * self.scale


class HeadOnBackbone(nn.Module):
    """A trainable head on a frozen backbone; the state dict holds the head only (the
    backbone is a fixed, public function rebuilt from its name)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        with torch.no_grad():
            f = self.backbone(x)
        return self.head(f)
