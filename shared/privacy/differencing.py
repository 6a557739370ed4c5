"""The differencing attack on unlearning (Chen et al., "When Machine Unlearning Jeopardizes
Privacy", CCS 2021) against removal-enabled logistic regression, for tests and benchmarks.

The attacker holds the release before a forget, w0, and the one after, w1, and knows every other
record (the DP threat model). If w1 is the Newton update w0 + H^-1 (lam w0 + grad loss(x)), then
H (w1 - w0) - lam w0, with H the Hessian of the regularised loss on the remaining records at w0,
is the forgotten record's gradient, a multiple of its features x: ranking the candidates by
|cosine| with that vector names the forgotten patient. Against independent fresh releases the
vector is noise and the rank is no better than DP allows.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import special

from ..removal import RemovableModel, train_removable, training_epsilon


def attack_vector(w0: np.ndarray, w1: np.ndarray, X_rest: np.ndarray, lam: float,
                  n_reg: int | None = None) -> np.ndarray:
    """H (w1 - w0) - lam w0 for a binary model ((d,) weights), H at w0 on ``X_rest`` with the
    regulariser lam * n_reg (the release's public count after the forget; default
    ``len(X_rest)``: a mismatch adds lam * offset * (w1 - w0) and blurs the record)."""
    p = special.expit(X_rest @ w0)  # the logistic Hessian does not depend on the label's sign
    n_reg = len(X_rest) if n_reg is None else int(n_reg)
    H = (X_rest * (p * (1 - p))[:, None]).T @ X_rest + lam * n_reg * np.eye(len(w0))
    return H @ (w1 - w0) - lam * w0


def rank_of(target: int, candidates: np.ndarray, vector: np.ndarray) -> int:
    """0-based rank of row ``target`` of ``candidates`` by |cosine| with ``vector`` (0: named
    first; ties count against the target)."""
    cos = np.abs(candidates @ vector) / (np.linalg.norm(candidates, axis=1)
                                          * np.linalg.norm(vector) + 1e-300)
    return int(np.sum(cos >= cos[target]) - 1)


def forget_sequence_ranks(update: Callable, X, y, n_forgets: int, lam: float, s: float,
                          rng: np.random.Generator, noise_seed: int | None = None) -> list[int]:
    """Train a binary model on (X, y), then forget ``n_forgets`` uniformly chosen records one
    after the other with ``update(model, X, y, row, stream) -> (owner copy, released, cert)``
    (:func:`datasite.forget.updated_models`). Before each forget the attacker holds the latest
    release; returns the forgotten record's rank among the records present before it."""
    model: RemovableModel = train_removable(X, y, [0, 1], lam, s, eps=1.0, delta=1e-9,
                                            seed=noise_seed)
    released = model
    alive = np.arange(len(X))
    ranks = []
    for k in range(n_forgets):
        row = int(rng.integers(len(alive)))
        model, new_release, _ = update(model, X[alive], y[alive], row, (k,))
        rest = np.delete(alive, row)
        vec = attack_vector(released.weights[:, 0], new_release.weights[:, 0], X[rest], lam)
        ranks.append(rank_of(row, X[alive], vec))
        alive, released = rest, new_release
    return ranks


def identification_bound(lam: float, s: float, n: int, delta: float) -> float:
    """Largest probability that any attacker names a uniformly chosen forgotten record first
    among ``n`` from an (eps, delta)-DP release on the n - 1 others: the releases for two
    candidates differ by replacing one record (remove + add: 2 eps, (1 + e^eps) delta), so
    P(success) <= e^(2 eps) / n + (1 + e^eps) delta."""
    eps = training_epsilon(lam, s, n - 1, delta)
    return math.exp(2 * eps) / n + (1 + math.exp(eps)) * delta
