"""Using a released result without syft: rebuild the model, predict on new rows.

Prediction applies the public input map recorded in the model's config (``preprocessing``:
the schema's columns -- one-hot categories, bounds to [-1, 1], missing indicators --, or the
declared bounds / per-column scales / row normalisation of models released before), so new rows
are mapped exactly as the training rows were. Category columns may hold the declared codes or,
when the schema names them, the names (e.g. ``"II"``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .models import build_from_config
from .preprocess import preprocess
from .serialise import load_state


def load_model(result: dict, backbone_weights=None) -> torch.nn.Module:
    """The trained model of a job result (``model_state`` + ``model_config``), in eval mode.
    ``backbone_weights``: for a model fine-tuned from an owner's backbone, its weights file
    (:func:`shared.pretrained.model.rebuild` says when it is needed)."""
    if result["model_config"].get("name") == "finetuned":
        from ..pretrained.model import rebuild

        return rebuild(result["model_config"], load_state(result["model_state"]),
                       backbone_weights)
    model = build_from_config(result["model_config"])
    model.load_state_dict(load_state(result["model_state"]))
    return model.eval()


@torch.no_grad()
def predict_proba(model: torch.nn.Module, config: dict, df: pd.DataFrame) -> np.ndarray:
    """Class probabilities (columns in ``config["classes"]`` order) for the rows of ``df``."""
    missing = [c for c in config["feature_columns"] if c not in df.columns]
    if missing:
        raise ValueError(f"table lacks the model's feature columns {missing}")
    X = preprocess(df[config["feature_columns"]].to_numpy(), config)
    device = next(model.parameters()).device
    return torch.softmax(model(torch.from_numpy(X).to(device)), 1).cpu().numpy()


def predict(model: torch.nn.Module, config: dict, df: pd.DataFrame) -> list:
    """Predicted labels (original label values) for the rows of ``df``."""
    classes = config["classes"]
    return [classes[i] for i in predict_proba(model, config, df).argmax(1)]
