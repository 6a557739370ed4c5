"""Test AUC on private records, released only through a priced Gaussian score histogram.

What leaves the site (``metrics_auc``): the histogram of (true class, score bin) over the
held-out split, each cell plus Gaussian noise, and the AUC computed from it.

* Two classes: the score is the predicted probability of class 1, in ``B`` equal bins of
  [0, 1]: a (2 x B) histogram. One record is in exactly one cell: L2 sensitivity 1.
* K > 2 classes: for each class j, the one-vs-rest score of class j (its predicted
  probability), binned: a (K x K x B) histogram, cell [i, j, b] = records of true class i whose
  class-j score is in bin b. One record touches K cells (one per j): L2 sensitivity sqrt(K).

The noise std per cell is ``sigma * sensitivity``, so one release is ``GaussianDpEvent(sigma)``
-- one more Gaussian event at the metrics sigma, composed into the job's price
(:func:`shared.privacy.private_metrics.with_metrics`, ``histograms=2``). The AUC is
post-processing of the noisy cells (negative counts clipped at 0; the ROC's points at the bin
edges from the cumulative counts, trapezoid rule): no further privacy cost. Binning costs some
resolution: records in one bin count as ties (half credit), as in the exact AUC with tied scores.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..randomness import secret_seed

MECHANISM = "noisy_class_x_score_bin_histogram"
BINS = 10
AUC_STREAM = 1  # appended to the metrics stream: independent of the accuracy histogram's noise

# Test-only switch: True releases the exact score histogram (attack tests show what the noise
# defends against). Nothing outside tests sets it.
_EXACT_FOR_TESTS = False


def sensitivity(n_classes: int) -> float:
    """L2 sensitivity of the score histogram: 1 for two classes, sqrt(K) for K > 2."""
    return 1.0 if n_classes == 2 else math.sqrt(n_classes)


def score_histogram(y_true: np.ndarray, probs: np.ndarray, n_classes: int,
                    bins: int = BINS) -> np.ndarray:
    """Exact (2 x bins) histogram (two classes) or (K x K x bins) one-vs-rest histograms."""
    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(y), n_classes)
    # bin b holds scores in [b / B, (b + 1) / B); a score of exactly 1 goes to the last bin
    b = np.clip(np.floor(probs * bins).astype(np.int64), 0, bins - 1)
    if n_classes == 2:
        h = np.zeros((2, bins))
        np.add.at(h, (y, b[:, 1]), 1.0)
        return h
    h = np.zeros((n_classes, n_classes, bins))
    for j in range(n_classes):
        np.add.at(h, (y, j, b[:, j]), 1.0)
    return h


def binned_auc(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """AUC from per-bin counts (bins in increasing score order); None without positive or
    negative mass. Negative (noisy) counts are clipped at 0 first."""
    pos, neg = np.clip(positives, 0, None), np.clip(negatives, 0, None)
    if pos.sum() <= 0 or neg.sum() <= 0:
        return None
    # thresholds at the bin edges from the top: the ROC's points (FPR, TPR), from (0, 0)
    tpr = np.concatenate([[0.0], np.cumsum(pos[::-1]) / pos.sum()])
    fpr = np.concatenate([[0.0], np.cumsum(neg[::-1]) / neg.sum()])
    return float(np.clip(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2), 0, 1))


def auc_from_histogram(h: np.ndarray) -> float | None:
    """Binary AUC (2 x B histogram) or macro one-vs-rest AUC (K x K x B; None if any class's
    AUC is undefined)."""
    if h.ndim == 2:
        return binned_auc(h[1], h[0])
    k = h.shape[0]
    per = [binned_auc(h[j, j], h[np.arange(k) != j, j].sum(0)) for j in range(k)]
    return None if any(a is None for a in per) else float(np.mean(per))


def release_auc(y_true: np.ndarray, probs: np.ndarray, classes: Sequence, sigma: float, *,
                stream: Sequence[int], bins: int = BINS) -> dict:
    """The DP test AUC of predicted probabilities ``probs`` (N x K) against ``y_true`` (class
    indices): the noisy histogram (std ``sigma * sensitivity`` per cell, secret stream
    ``stream`` + AUC_STREAM) and the AUC post-processed from it."""
    k = len(classes)
    exact = score_histogram(y_true, probs, k, bins)
    std = float(sigma) * sensitivity(k)
    if _EXACT_FOR_TESTS:
        noisy = exact
    else:
        rng = np.random.default_rng(secret_seed(*[int(s) for s in stream], AUC_STREAM))
        noisy = exact + rng.normal(0.0, std, exact.shape)
    return {"test_auc": auc_from_histogram(noisy),
            "test_auc_average": "binary" if k == 2 else "macro one-vs-rest",
            "auc_bins": int(bins), "auc_mechanism": MECHANISM, "auc_noise_std": std,
            "auc_noisy_counts": noisy.tolist()}
