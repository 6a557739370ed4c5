"""DP fine-tuning of a registered pretrained backbone (job kind ``finetune``) on the one DP-SGD
engine: Poisson sampling at the planned rate, Opacus per-sample clipping and noise.

``head``: the backbone is frozen, so each record's feature vector is a fixed function of its
own image: computed once, then only the head trains (DP-SGD on features, the fast path).
Other methods run the whole model every step with only their parameters trainable.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..data import n_train_records
from ..errors import SpecError
from ..jobs import bounds
from ..pretrained.info import LocalBackbone
from ..pretrained.model import build_finetuned, compute_features, released_state
from ..privacy.accounting import dpsgd_event
from ..privacy.private_metrics import (NOISE_STREAM, histograms_per_release, metrics_sigma,
                                       release)
from ..privacy.private_metrics import privacy_report as metrics_report
from .backbones import images_to_tensor
from .device import default_device
from .engine import DPTrainer
from .images import PREPROCESSING, check_payload
from .metrics import mock_extras, predict_probs
from .preprocess import encode_labels
from .serialise import dump_state
from .split import split_indices

Progress = Callable[[int, int], None]
_EVAL_BATCH = 64  # images per forward pass when predicting or computing features


def train_finetune(data: dict, spec, meta, backbone: LocalBackbone,
                   progress: Progress | None = None, device=None) -> dict:
    """Fine-tune ``backbone`` on an images payload as ``spec`` (a validated FineTuneSpec)
    says; return the result dict (model_state, model_config, metrics, privacy)."""
    device = default_device(device)
    images, raw_labels = check_payload(data)
    if meta.n_records != len(images):
        raise ValueError(f"metadata says {meta.n_records} records, the payload has "
                         f"{len(images)}: the accounted schedule would not be the one run")
    classes = list(meta.labels) if meta.labels else sorted(set(raw_labels.tolist()))
    y = torch.from_numpy(encode_labels(raw_labels, classes))
    tr, te = split_indices(images, y.numpy(), spec.test_fraction, spec.seed)
    n_train = n_train_records(meta.n_records, spec.test_fraction)  # planned, public
    q, steps, sigma = spec.schedule(meta)
    info = backbone.info

    physical = min(spec.physical_batch_size or spec.batch_for(meta), spec.batch_for(meta))
    model = build_checked(backbone, spec.method, len(classes), spec.hidden, spec.lora_rank,
                          spec.seed, physical, hint=" (or set physical_batch_size)")
    model.to(device)
    X = images_to_tensor(images)
    if spec.method == "head":
        X = compute_features(model, X, device, _EVAL_BATCH)
        net = model.head
    else:
        net = model
    trainer = DPTrainer(net, clip_norm=spec.clip_norm, noise_multiplier=sigma,
                        learning_rate=spec.lr(), momentum=spec.momentum, seed=spec.seed,
                        device=device, grad_sample_mode=spec.grad_sample_mode,
                        max_physical_batch_size=spec.physical_batch_size or None)
    tr_t = torch.from_numpy(tr)
    done = trainer.run(X.index_select(0, tr_t), y.index_select(0, tr_t), np.full(len(tr), q),
                       steps, progress=progress, expected_batch_size=q * n_train)
    trainer.close()

    event = dpsgd_event(q, sigma, done)  # the guarantee is for the schedule actually executed
    m_sigma = metrics_sigma(spec)
    privacy = metrics_report(event, m_sigma, 1, spec.delta,
                             histograms=histograms_per_release(spec))
    privacy.update(noise_multiplier=sigma, sample_rate=q, steps=done, clip_norm=spec.clip_norm,
                   expected_batch_size=q * n_train)

    probs = predict_probs(net, X, device, _EVAL_BATCH)
    yn = y.numpy()
    pred_te = probs[te].argmax(1) if len(te) else np.zeros(0, dtype=int)
    return {
        **released(model, info, spec.method, spec.hidden, spec.lora_rank, classes,
                   list(images.shape[1:])),
        # DP (priced above), or exact only on the public mock (shared.privacy.private_metrics)
        "metrics": release(yn[te], pred_te, classes, m_sigma, stream=(spec.seed, NOISE_STREAM, 0),
                           n_train=n_train, n_test=meta.n_records - n_train,
                           probs=probs[te] if spec.metrics_auc else None,
                           mock_extras=lambda: mock_extras(probs, yn, tr, te, classes)),
        "privacy": privacy,
        # exact, on the private training records: the owner's review only, never released
        "_owner_train_loss": trainer.loss_per_epoch(spec.epochs),
    }


def build_checked(backbone: LocalBackbone, method: str, n_classes: int, hidden: int,
                  lora_rank: int, seed: int, batch: int, hint: str = ""):
    """The model a job fine-tunes (seeded by ``seed`` without touching the caller's torch RNG),
    on the CPU; SpecError (+ ``hint``) unless its trained parameters' per-sample gradients over
    ``batch`` records fit the site's memory."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = build_finetuned(backbone.info, backbone.path, method, n_classes, hidden,
                                lora_rank)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:
        bounds.check_model_size(trained, batch, f"{method} fine-tuning of {backbone.info.name!r}")
    except SpecError as e:
        raise SpecError(f"{e}{hint}") from None
    return model


def released(model, info, method: str, hidden: int, lora_rank: int, classes: list,
             image_shape: list) -> dict:
    """The result keys of a fine-tuned model: ``model_state`` (what ``method`` may release),
    ``model_config`` (what :func:`shared.pretrained.model.rebuild` needs) and ``backbone`` (the
    registered backbone it started from). Moves ``model`` to the CPU in eval mode."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.cpu().eval()
    config = {"name": "finetuned", "method": method, "backbone": info.to_dict(),
              "n_classes": len(classes), "hidden": hidden, "lora_rank": lora_rank,
              "classes": list(classes), "preprocessing": PREPROCESSING,
              "image_shape": list(image_shape), "trained_parameters": int(trained)}
    return {"model_state": dump_state(released_state(model, method)), "model_config": config,
            "backbone": {"name": info.name, "sha256": info.sha256, "arch": info.arch,
                         "source": info.source}}
