"""DP-SGD training of an image classifier (job kind ``dpsgd_images``); guarantee from PLD.

What the guarantee covers: the model weights, for the training records, at (epsilon, delta),
and the test metrics, released through the priced Gaussian histogram of
:mod:`shared.privacy.private_metrics` (the report composes both).

Preprocessing is public: x / 255, channel-first. For ``model="head"`` the frozen backbone's
features are computed once for all records (a fixed function of each image alone, so they cost
no privacy) and only the head is trained with DP-SGD: the fast path.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..data import n_train_records
from ..privacy.accounting import dpsgd_event
from ..privacy.private_metrics import NOISE_STREAM, metrics_sigma, release
from ..privacy.private_metrics import privacy_report as metrics_report
from .backbones import Backbone, extract_features, images_to_tensor
from .device import default_device
from .engine import DPTrainer
from .metrics import mock_extras, predict_probs
from .models import HeadOnBackbone, build_model, model_config
from .preprocess import encode_labels
from .serialise import model_bytes
from .split import split_indices

PREPROCESSING = "unit_scale_channel_first"  # x / 255, (N, C, H, W)

Progress = Callable[[int, int], None]


def check_payload(data: dict) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(data, dict) or "images" not in data or "labels" not in data:
        raise ValueError('an images payload is a dict {"images": uint8 array, "labels": ints}')
    images, labels = np.asarray(data["images"]), np.asarray(data["labels"]).reshape(-1)
    if images.ndim not in (3, 4) or len(images) != len(labels):
        raise ValueError(f"need images (N, H, W) or (N, H, W, C) and N labels, got "
                         f"{images.shape} and {labels.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0..255), got {images.dtype}")
    return images, labels


def train_dpsgd_images(data: dict, spec, meta, progress: Progress | None = None,
                       device=None) -> dict:
    """Train ``spec`` (a validated DPSGDImageSpec) on an images payload; return the result dict
    (model_state, model_config, metrics, privacy). Same spec + data + device, same model."""
    device = default_device(device)
    images, raw_labels = check_payload(data)
    classes = list(meta.labels) if meta.labels else sorted(set(raw_labels.tolist()))
    y = encode_labels(raw_labels, classes)
    h, w = images.shape[1:3]
    c = images.shape[3] if images.ndim == 4 else 1
    tr, te = split_indices(images, y, spec.test_fraction, spec.seed)
    # planned (public) count: the schedule and scaling never depend on the realised split
    n_train = n_train_records(meta.n_records, spec.test_fraction)

    if meta.n_records != len(images):
        raise ValueError(f"metadata says {meta.n_records} records, the payload has "
                         f"{len(images)}: the accounted schedule would not be the one run")
    q, steps, sigma = spec.schedule(meta)

    if spec.model == "head":
        feats = extract_features(images, spec.backbone, device=device)
        X = torch.from_numpy(feats)
        n_in = feats.shape[1]
        arch = dict(hidden=spec.hidden)
    else:
        X = images_to_tensor(images)
        n_in = c * h * w
        arch = dict(hidden=0, width=spec.width or None)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(spec.seed)
        if spec.model == "head":
            net = (build_model("mlp", n_in, len(classes), spec.hidden) if spec.hidden > 0
                   else build_model("logreg", n_in, len(classes)))
        else:
            net = build_model(spec.model, n_in, len(classes), in_channels=c, image_size=(h, w),
                              width=arch["width"])
    trainer = DPTrainer(net, clip_norm=spec.clip_norm, noise_multiplier=sigma,
                        learning_rate=spec.learning_rate, momentum=spec.momentum,
                        seed=spec.seed, device=device, grad_sample_mode=spec.grad_sample_mode,
                        max_physical_batch_size=spec.physical_batch_size or None)
    yt = torch.from_numpy(y)
    tr_t = torch.from_numpy(tr)
    done = trainer.run(X.index_select(0, tr_t), yt.index_select(0, tr_t),
                       np.full(len(tr), q), steps, progress=progress,
                       expected_batch_size=q * n_train)
    trainer.close()

    # The guarantee is for the schedule actually executed.
    event = dpsgd_event(q, sigma, done)
    m_sigma = metrics_sigma(spec)
    privacy = metrics_report(event, m_sigma, 1, spec.delta)
    privacy.update(noise_multiplier=sigma, sample_rate=q, steps=done, clip_norm=spec.clip_norm,
                   expected_batch_size=q * n_train)

    net.eval()
    if spec.model == "head":
        model = HeadOnBackbone(Backbone(spec.backbone, (h, w, c)), net.cpu())
        config = model_config("head", n_in, len(classes), spec.hidden, in_channels=c,
                              image_size=(h, w), backbone=spec.backbone)
    else:
        model = net.cpu()
        config = model_config(spec.model, n_in, len(classes), 0, in_channels=c,
                              image_size=(h, w), width=arch["width"])
    config.update(classes=classes, preprocessing=PREPROCESSING, image_shape=list(images.shape[1:]))
    probs = predict_probs(net.to(device), X, device)
    return {
        "model_state": model_bytes(model),
        "model_config": config,
        # DP (priced above), or exact only on the public mock (shared.privacy.private_metrics)
        "metrics": release(y[te], probs[te].argmax(1) if len(te) else np.zeros(0, dtype=int),
                           classes, m_sigma, stream=(spec.seed, NOISE_STREAM, 0),
                           n_train=n_train, n_test=meta.n_records - n_train,
                           mock_extras=lambda: mock_extras(probs, y, tr, te, classes)),
        "privacy": privacy,
        # exact, on the private training records: the owner's review only, never released
        "_owner_train_loss": trainer.loss_per_epoch(spec.epochs),
    }


@torch.no_grad()
def predict_images_proba(model: torch.nn.Module, config: dict, images: np.ndarray,
                         batch_size: int = 256) -> np.ndarray:
    """Class probabilities (columns in ``config["classes"]`` order) of uint8 images, with a model
    from ``shared.training.results.load_model`` (a head model includes its backbone)."""
    if config.get("preprocessing") != PREPROCESSING:
        raise ValueError(f"not an image model config: preprocessing {config.get('preprocessing')!r}")
    images = np.asarray(images)
    if list(images.shape[1:]) != list(config["image_shape"]):
        raise ValueError(f"model expects images of shape {config['image_shape']}, "
                         f"got {list(images.shape[1:])}")
    device = next(model.parameters()).device
    return predict_probs(model, images_to_tensor(images), device, batch_size)

