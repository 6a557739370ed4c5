"""Small classifiers for tables, rebuildable from a plain config dict.

No BatchNorm anywhere: it mixes records within a batch, which per-sample DP-SGD cannot account.
"""
from __future__ import annotations

from torch import nn

MODEL_NAMES = ("logreg", "mlp")


def build_model(name: str, n_features: int, n_classes: int, hidden: int = 32) -> nn.Module:
    """``logreg``: one Linear layer (logits). ``mlp``: Linear-ReLU-Linear."""
    if n_features < 1 or n_classes < 2:
        raise ValueError(f"need n_features >= 1 and n_classes >= 2, got {n_features}, {n_classes}")
    if name == "logreg":
        return nn.Sequential(nn.Linear(n_features, n_classes))
    if name == "mlp":
        return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(),
                             nn.Linear(hidden, n_classes))
    raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")


def model_config(name: str, n_features: int, n_classes: int, hidden: int = 32) -> dict:
    """The arguments of :func:`build_model`, as a JSON-able dict."""
    return {"name": name, "n_features": int(n_features), "n_classes": int(n_classes),
            "hidden": int(hidden)}


def build_from_config(config: dict) -> nn.Module:
    return build_model(config["name"], config["n_features"], config["n_classes"],
                       config.get("hidden", 32))
