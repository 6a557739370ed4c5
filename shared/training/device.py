"""Where training, prediction and feature extraction run unless the caller says otherwise."""
from __future__ import annotations

import torch


def default_device(device=None) -> torch.device:
    """``device`` if given, else the GPU when there is one: every job picks it the same way."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
