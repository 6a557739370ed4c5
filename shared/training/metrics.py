"""Exact classifier metrics: accuracy, per-class accuracy, AUC, from predicted probabilities.

Exact metrics of private test records are never released (:mod:`shared.privacy.private_metrics`
releases a noisy histogram instead); these serve the public mock, owner-side benchmarks and the
DP active-learning curves computed on data the owner may evaluate exactly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


@torch.no_grad()
def predict_probs(model: torch.nn.Module, X: torch.Tensor, device=None,
                  batch_size: int = 512) -> np.ndarray:
    """Softmax outputs (N, classes) of ``model`` in eval mode, ``batch_size`` rows at a time on
    ``device`` (default: where the model is); (0, 0) for no rows."""
    model.eval()
    device = next(model.parameters()).device if device is None else device
    out = [torch.softmax(model(X[i:i + batch_size].to(device)), 1).cpu()
           for i in range(0, len(X), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def accuracy(p: np.ndarray, y: np.ndarray) -> float | None:
    """Fraction of rows whose most probable class is the label; None for no rows."""
    return float((np.asarray(p).argmax(1) == y).mean()) if len(y) else None


def per_class_accuracy(pred: np.ndarray, y: np.ndarray, classes: Sequence) -> dict:
    """{str(class): accuracy on the records of that class (None if it has none)}; ``y`` and
    ``pred`` are class indices into ``classes``."""
    out = {}
    for i, c in enumerate(classes):
        mask = y == i
        out[str(c)] = float((pred[mask] == i).mean()) if mask.any() else None
    return out


def auc(p: np.ndarray, y: np.ndarray, n_classes: int) -> float | None:
    """ROC AUC (binary, or macro one-vs-rest); None unless every class occurs in ``y``."""
    from sklearn.metrics import roc_auc_score

    if len(y) == 0 or len(np.unique(y)) != n_classes:
        return None
    try:
        if n_classes == 2:
            return float(roc_auc_score(y, p[:, 1]))
        p = p / p.sum(1, keepdims=True)  # rounding: sklearn wants rows summing to 1
        return float(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    except ValueError:
        return None


def exact_metrics(p: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray,
                  classes: Sequence) -> dict:
    """Exact train/test accuracy, per-class test accuracy and test AUC of probabilities ``p``
    for all records (``tr``/``te``: positions). Never released on private records."""
    pred = p[te].argmax(1) if len(te) else np.zeros(0, dtype=int)
    return {"n_train": int(len(tr)), "n_test": int(len(te)),
            "train_accuracy": accuracy(p[tr], y[tr]), "test_accuracy": accuracy(p[te], y[te]),
            "test_auc": auc(p[te], y[te], len(classes)) if len(te) else None,
            "per_class_accuracy": per_class_accuracy(pred, y[te], classes)}


def mock_extras(p: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray,
                classes: Sequence) -> dict:
    """Exact train accuracy and test AUC: added to the released metrics on the public mock only."""
    m = exact_metrics(p, y, tr, te, classes)
    return {"train_accuracy": m["train_accuracy"], "test_auc": m["test_auc"]}
