"""DP-SGD training of a table classifier (job kind ``dpsgd_table``); the guarantee comes from PLD.

What the guarantee covers: the model weights, for the training records, at (epsilon, delta),
and the test metrics, released through the priced Gaussian histogram of
:mod:`shared.privacy.private_metrics` (the report composes both).

Training runs through the one DP-SGD engine, :class:`shared.training.engine.DPTrainer`, with
every training record at the planned rate q and the planned expected batch size q * n_planned.
Class weights (``class_weights="balanced"``) scale each record's loss by a public weight of its
class (from the declared label rates); the engine clips the weighted per-sample gradient to
``clip_norm`` before the noise, so the sensitivity -- and the price -- do not change.

Inside a ``torch.distributed`` process group (:func:`train_dpsgd_table_parallel`, or torchrun)
each rank trains on its shard of the training records, same q, same sigma, same steps
(:mod:`shared.training.distributed`): the model and the report are those of one process.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..data import n_train_records
from ..privacy.accounting import dpsgd_event
from ..privacy.private_metrics import NOISE_STREAM, histograms_per_release, metrics_sigma, \
    release
from ..privacy.private_metrics import privacy_report as metrics_report
from ..targets import noise_multiplier as target_noise_multiplier
from .device import default_device
from .distributed import launch, shard, world
from .engine import DPTrainer, poisson_schedule
from .metrics import mock_extras, predict_probs
from .models import build_model, model_config
from .preprocess import (declared_order, encode_labels, feature_columns, preprocess,
                         table_preprocessing)
from .serialise import model_bytes
from .split import split_indices

Progress = Callable[[int, int], None]


def table_xy(df: pd.DataFrame, label: str, classes: Sequence | None = None,
             feature_scales: dict | None = None, feature_bounds: dict | None = None,
             columns: dict | None = None):
    """(X, y, feature columns, classes, preprocessing config) of a table job: X preprocessed
    row by row (public map: the schema's declarations ``columns`` -- one-hot categories,
    missing indicators --, else ``feature_bounds`` to [-1, 1], else ``feature_scales``, else
    row normalisation; see :func:`table_preprocessing`), y class indices. With declarations
    the columns follow the declared order. The split hashes these rows (split_indices)."""
    cols = declared_order(feature_columns(df, label), columns)
    classes = sorted(df[label].unique().tolist()) if classes is None else list(classes)
    if len(classes) < 2:
        raise ValueError(f"need at least two label values to classify, got {classes}")
    prep = table_preprocessing(cols, feature_bounds, feature_scales, columns)
    return preprocess(df[cols].to_numpy(), prep), encode_labels(df[label], classes), cols, \
        classes, prep


def train_dpsgd_table(df: pd.DataFrame, spec, progress: Progress | None = None,
                      device: torch.device | str | None = None,
                      classes: Sequence | None = None,
                      feature_scales: dict | None = None,
                      feature_bounds: dict | None = None,
                      columns: dict | None = None,
                      noise_multiplier: float | None = None,
                      init_state: dict | None = None,
                      sampling_seed: int | None = None,
                      metrics_releases: int = 1, metrics_index: int = 0,
                      label_rates: Sequence[float] | None = None) -> dict:
    """Train ``spec`` (a validated DPSGDTableSpec) on ``df``; return model, metrics, privacy.

    ``classes``: the public label set (DatasetMeta.labels); if None, the sorted labels in ``df``.
    ``columns`` (``meta.columns``) / ``feature_bounds`` / ``feature_scales``: public per-column
    declarations (:func:`table_xy`).
    ``noise_multiplier``: use this sigma instead of calibrating one to ``spec.epsilon`` (a round
    of a longer schedule priced as a whole); ``init_state``: start from these weights (warm start);
    ``sampling_seed``: seed of batch sampling and noise (default ``spec.seed``);
    ``metrics_releases``: how many metric releases the schedule's metric noise is priced for
    (its rounds), ``metrics_index``: which one this is (names the noise stream).
    ``label_rates``: the declared class rates (``meta.label_rates``, in ``classes`` order), which
    ``spec.class_weights="balanced"`` weights the loss by (:func:`class_weights`).
    Under ``pinned_randomness`` the same spec, data and device give the same model.
    """
    if spec.batch_size < 1:  # 0 = "from the public count": only the metadata may choose it
        raise ValueError("spec.batch_size is 0 (chosen from the public record count): pass "
                         "spec.resolved(meta), the spec with the batch size it runs at")
    device = default_device(device)
    X, y, cols, classes, prep = table_xy(df, spec.label, classes, feature_scales,
                                         feature_bounds, columns)
    tr, te = split_indices(X, y, spec.test_fraction, spec.seed)
    # The schedule is planned from the public record count, exactly as the owner priced it
    # (shared.jobs): the realised split sizes are Binomial and never enter the mechanism.
    n_train = n_train_records(len(y), spec.test_fraction)
    q, steps = poisson_schedule(n_train, spec.batch_size, spec.epochs)
    # the spec's target (epsilon, mu or attack TPR), calibrated as the planner does (shared.targets)
    sigma = (target_noise_multiplier(spec, q, steps) if noise_multiplier is None
             else float(noise_multiplier))

    model = _initial_model(spec, X.shape[1], len(classes), init_state)  # one-hot: > len(cols)
    weights = class_weights(getattr(spec, "class_weights", "none"), label_rates, len(classes))
    rank, world_size = world()
    trainer = DPTrainer(model, clip_norm=spec.clip_norm, noise_multiplier=sigma,
                        learning_rate=spec.learning_rate, device=device,
                        seed=spec.seed if sampling_seed is None else sampling_seed,
                        loss_fn=None if weights is None else weighted_cross_entropy(weights),
                        data_parallel=world_size > 1)
    # every training record at the planned rate; "mean" divides by the planned expected batch
    # size q * n_train, never by a function of the realised split or the realised batch
    average = TailAverage(model, steps) if getattr(spec, "tail_average", False) else None
    mine = shard(tr, rank, world_size)  # all of tr in one process
    done = trainer.run(torch.from_numpy(X[mine]), torch.from_numpy(y[mine]), np.full(len(mine), q),
                       steps, progress=_hooked(progress, average),
                       expected_batch_size=q * n_train)
    trainer.close()
    if average is not None:
        average.apply()

    # The guarantee is for the schedule actually executed, counted step by step.
    event = dpsgd_event(q, sigma, done)
    m_sigma = metrics_sigma(spec, metrics_releases)
    auc = getattr(spec, "metrics_auc", False)
    privacy = metrics_report(event, m_sigma, 1, spec.delta,
                             histograms=histograms_per_release(spec))
    privacy.update(noise_multiplier=sigma, sample_rate=q, steps=done, clip_norm=spec.clip_norm,
                   expected_batch_size=q * n_train)

    model.eval()
    config = model_config(spec.model, X.shape[1], len(classes), spec.hidden)
    config.update(classes=classes, feature_columns=cols, **prep)
    return {
        "model_state": model_bytes(model),
        "model_config": config,
        # DP (priced above), or exact only on the public mock (shared.privacy.private_metrics)
        "metrics": _metrics(model, X, y, tr, te, classes, m_sigma,
                            (spec.seed, NOISE_STREAM, metrics_index), n_train, auc),
        "privacy": privacy,
        "_owner_ranks": world_size,  # how many processes trained it (owner-only)
        # exact, on the private training records (this rank's): the owner's review only
        "_owner_train_loss": trainer.loss_per_epoch(spec.epochs),
    }


def train_dpsgd_table_parallel(df: pd.DataFrame, spec, world_size: int,
                               device_type: str | None = None, **kwargs) -> dict:
    """:func:`train_dpsgd_table` data-parallel over ``world_size`` local processes (GPUs 0..n-1
    of CUDA_VISIBLE_DEVICES, or CPU ranks): rank 0's result, the only one released.
    ``kwargs``: those of train_dpsgd_table except ``progress`` and ``device``."""
    return launch(_table_rank, world_size, df, spec, kwargs, device_type=device_type)


def _table_rank(device, df, spec, kwargs) -> dict:
    return train_dpsgd_table(df, spec, device=device, **kwargs)


class TailAverage:
    """The mean of the model's weights over the last half of the steps (Polyak-Ruppert tail
    averaging). Post-processing of the DP-SGD iterates, so it costs no privacy; it averages out
    much of the noise the last steps leave in the final iterate."""

    def __init__(self, model: torch.nn.Module, steps: int):
        self.model, self.start, self.count = model, steps // 2, 0
        self.sums = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}

    def update(self, done: int) -> None:
        """Add the weights after step ``done`` if it is in the tail."""
        if done > self.start:
            for k, v in self.model.state_dict().items():
                self.sums[k] += v.detach()
            self.count += 1

    def apply(self) -> None:
        """Load the averaged weights into the model (nothing if no step was averaged)."""
        if self.count:
            self.model.load_state_dict({k: s / self.count for k, s in self.sums.items()})


def _hooked(progress: Progress | None, average: TailAverage | None) -> Progress | None:
    if average is None:
        return progress

    def hook(done: int, total: int) -> None:
        average.update(done)
        if progress is not None:
            progress(done, total)
    return hook


def _initial_model(spec, n_features: int, n_classes: int, init_state: dict | None):
    """The spec's seeded initialisation, or ``init_state`` (a warm start) on top of it."""
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(spec.seed)
        model = build_model(spec.model, n_features, n_classes, spec.hidden)
    if init_state is not None:
        model.load_state_dict(init_state)  # raises on a mismatched shape: nothing runs
    return model


def class_weights(mode: str, label_rates: Sequence[float] | None,
                  n_classes: int) -> torch.Tensor | None:
    """Per-class loss weights: None for "none"; for "balanced" proportional to 1 / (K rate_k)
    from the DECLARED rates (public), never from the records' class counts (a statistic of
    private data), scaled so that the largest weight is 1 (= rate_min / rate_k).

    Why scaled: the engine clips each record's weighted gradient to clip_norm, so a weight
    above 1 is mostly undone by the clipping (the minority's gradients are already near the
    bound), while weights <= 1 keep their ratio (measured: benchmarks/class_weights.py)."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise ValueError(f"class_weights must be 'none' or 'balanced', got {mode!r}")
    rates = np.asarray(label_rates if label_rates is not None else [], dtype=np.float64)
    if rates.shape != (n_classes,) or not np.all(rates > 0):
        raise ValueError(f"class_weights='balanced' needs one declared rate > 0 per class "
                         f"({n_classes}), got {list(rates)}: the owner declares label rates "
                         "in the schema")
    balanced = 1.0 / (n_classes * rates)
    return torch.tensor(balanced / balanced.max(), dtype=torch.float32)


def weighted_cross_entropy(weights: torch.Tensor):
    """Per-record cross entropy times its class's weight (the engine clips each record's
    gradient of this weighted loss to clip_norm, so the weights cannot raise the sensitivity)."""
    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, weight=weights.to(logits.device), reduction="none")
    return loss


def _metrics(model, X, y, tr, te, classes, sigma, stream, n_planned, auc: bool) -> dict:
    """The released test metrics: DP histograms (class x correct; with ``auc`` also class x
    score bin), exact extras on the public mock only."""
    p = predict_probs(model, torch.from_numpy(X))
    pred = p[te].argmax(1) if len(te) else np.zeros(0, dtype=int)
    probs = (p[te] if len(te) else np.zeros((0, len(classes)))) if auc else None
    return release(y[te], pred, classes, sigma, stream=stream, n_train=n_planned,
                   n_test=len(y) - n_planned,
                   mock_extras=lambda: mock_extras(p, y, tr, te, classes), probs=probs)
