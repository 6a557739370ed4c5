"""Acquisition scores for active learning and their private top-k selection.

Each unlabelled record gets a score from the current (DP) model's outputs on that record alone,
clipped to [0, S] (S = the declared ``score_bound``); selection takes the top k of
score + Laplace(S / eps_round), noise drawn independently per record. A record's noisy score is
the Laplace mechanism on a quantity of sensitivity S, so it is eps_round-DP for that record;
the top-k of the noisy vector is post-processing (``shared.dpal.schedule.selection_event``).

Core-set and BADGE are not offered: they score records *jointly* (distances to the other
records, k-means++ over gradient embeddings), so one record changes everybody's score and the
per-record Laplace argument above does not hold.

BALD needs a stochastic model: we use MC dropout on the inputs of the model's last Linear
layer (the models here are ``nn.Sequential`` ending in Linear, a frozen-backbone head is one
Linear/MLP over features, and a fine-tuned model has ``features()`` and such a ``head``), active
only at scoring time; the trained weights are unchanged.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

ACQUISITIONS = ("random", "entropy", "least_confidence", "margin", "bald")
BALD_SAMPLES = 20
BALD_DROPOUT = 0.3


def natural_bound(acquisition: str, n_classes: int) -> float:
    """Largest value the score can take (used as S when no smaller bound is declared)."""
    if acquisition in ("entropy", "bald"):
        return math.log(n_classes)
    if acquisition == "least_confidence":
        return 1.0 - 1.0 / n_classes
    if acquisition in ("margin", "random"):
        return 1.0
    raise ValueError(f"unknown acquisition {acquisition!r}; choose one of {list(ACQUISITIONS)}")


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(1)


@torch.no_grad()
def predict_proba(model: nn.Module, X: torch.Tensor, batch: int = 4096) -> np.ndarray:
    """(N, C) softmax outputs, ``batch`` rows per forward pass."""
    model.eval()
    device = next(model.parameters()).device
    out = [torch.softmax(model(X[i:i + batch].to(device)), 1).cpu() for i in
           range(0, len(X), batch)]
    return torch.cat(out).double().numpy() if out else np.zeros((0, 0))


def _body_and_last(model: nn.Module):
    """(everything before the last Linear layer, that layer) of an ``nn.Sequential`` ending in
    Linear, or of a model with ``features()`` and such a ``head`` (a fine-tuned backbone)."""
    if isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear):
        return model[:-1], model[-1]
    head = getattr(model, "head", None)
    if (callable(getattr(model, "features", None)) and isinstance(head, nn.Sequential)
            and isinstance(head[-1], nn.Linear)):
        return (lambda x: head[:-1](model.features(x))), head[-1]
    raise ValueError("BALD needs an nn.Sequential model ending in nn.Linear, or a model with "
                     "features() and such a head")


@torch.no_grad()
def mc_dropout_proba(model: nn.Module, X: torch.Tensor, n_samples: int = BALD_SAMPLES,
                     p: float = BALD_DROPOUT, seed: int = 0, batch: int = 4096) -> np.ndarray:
    """(n_samples, N, C) softmax outputs with dropout(p) on the last Linear layer's inputs
    (the body runs once per batch)."""
    body, last = _body_and_last(model)
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    outs = []
    for i in range(0, len(X), batch):
        h = body(X[i:i + batch].to(device))
        samples = []
        for _ in range(n_samples):
            mask = (torch.rand(h.shape, generator=gen, device=device) >= p).to(h.dtype)
            samples.append(torch.softmax(last(h * mask / (1 - p)), 1).cpu())
        outs.append(torch.stack(samples))
    return torch.cat(outs, 1).double().numpy()


def scores(acquisition: str, model: nn.Module, X: torch.Tensor, seed: int = 0,
           batch: int = 4096) -> np.ndarray:
    """Unclipped informativeness of each row of X (higher = query first); random: zeros.
    ``batch``: rows per forward pass."""
    if acquisition == "random":
        return np.zeros(len(X))
    if acquisition == "bald":
        P = mc_dropout_proba(model, X, seed=seed, batch=batch)
        return np.maximum(_entropy(P.mean(0)) - np.mean([_entropy(p) for p in P], 0), 0.0)
    P = predict_proba(model, X, batch)
    if acquisition == "entropy":
        return _entropy(P)
    if acquisition == "least_confidence":
        return 1.0 - P.max(1)
    if acquisition == "margin":
        top2 = np.sort(P, 1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])
    raise ValueError(f"unknown acquisition {acquisition!r}; choose one of {list(ACQUISITIONS)}")


def private_top_k(score: np.ndarray, k: int, epsilon: float | None, bound: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Indices of the k largest clip(score, 0, bound) + Laplace(bound / epsilon) (sorted by
    noisy score). ``epsilon`` None: no noise (non-private AL)."""
    if not bound > 0:
        raise ValueError(f"score bound must be > 0, got {bound}")
    if k > len(score):
        raise ValueError(f"cannot select {k} of {len(score)} records")
    s = np.clip(np.asarray(score, dtype=np.float64), 0.0, bound)
    if epsilon is not None:
        if not epsilon > 0:
            raise ValueError(f"selection epsilon must be > 0, got {epsilon}")
        s = s + rng.laplace(0.0, bound / epsilon, size=len(s))
    else:
        s = s + rng.random(len(s)) * 1e-12  # random tie-breaks (random acquisition)
    return np.argsort(-s, kind="stable")[:k]


def select(acquisition: str, model: nn.Module, X: torch.Tensor, k: int,
           epsilon: float | None, bound: float, seed: int, batch: int = 4096) -> np.ndarray:
    """Score X with ``model`` and take k privately. Random acquisition draws uniformly."""
    rng = np.random.default_rng(seed)
    if acquisition == "random":
        return rng.permutation(len(X))[:k]
    return private_top_k(scores(acquisition, model, X, seed=seed, batch=batch), k, epsilon,
                         bound, rng)
