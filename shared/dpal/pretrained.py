"""DP active learning from a backbone the owner registered (``DPALSpec.method``): what the loop
trains and scores, and what the job releases.

* ``head``: the backbone is frozen, so each record's feature vector is a fixed function of its
  own image: computed once, then the loop trains a head on them (as on data-independent
  features).
* ``bitfit`` / ``lora`` / ``full``: the loop trains the whole fine-tuned model (the method's
  parameters; :mod:`shared.pretrained.methods`) on the images between acquisitions, warm
  started, and scores the unlabelled images with it.

The guarantee is the plan's (rates, steps, noise multiplier, selection budget): per-sample
clipping bounds each record's influence whatever the model, and the selection scores are each a
function of one record's image and the DP model. The release is a ``finetune``-style model
(``model_config["name"] == "finetuned"``): ``shared.training.results.load_model`` rebuilds it.
"""
from __future__ import annotations

import copy

import numpy as np
from torch import nn

from ..data import DatasetMeta
from ..pretrained.info import LocalBackbone
from .loop import LoopInputs

EVAL_BATCH = 64  # images per forward pass when scoring, evaluating or computing features


def pretrained_inputs(spec, data: dict, meta: DatasetMeta, backbone: LocalBackbone,
                      device=None) -> LoopInputs:
    """The loop's inputs for ``spec`` (a validated DPALSpec with a ``method``) from the
    registered ``backbone``; SpecError if the trained parameters do not fit the site's memory."""
    from ..training.backbones import images_to_tensor
    from ..training.device import default_device
    from ..training.finetune import build_checked, released
    from ..training.images import check_payload
    from ..training.preprocess import encode_labels

    images, raw_labels = check_payload(data)
    y = encode_labels(raw_labels, list(meta.labels))
    hidden = spec.head_hidden()
    base = build_checked(backbone, spec.method, len(meta.labels), hidden, spec.lora_rank,
                         spec.seed, spec.batch_size)
    X = images_to_tensor(images)
    if spec.method == "head":
        from ..pretrained.model import compute_features

        X = compute_features(base.to(default_device(device)), X, default_device(device),
                             EVAL_BATCH)
        base.cpu()
        trainee = base.head
    else:
        trainee = base

    def release(trained: nn.Module) -> dict:
        if spec.method == "head":
            base.head = trained
            model = base
        else:
            model = trained
        return released(model, backbone.info, spec.method, hidden, spec.lora_rank,
                        list(meta.labels), list(images.shape[1:]))

    # a copy per call: the loop trains it; the release puts a trained head back into ``base``
    return LoopInputs(X=X, rows=np.asarray(images), y=y,
                      build_model=lambda: copy.deepcopy(trainee), release=release,
                      eval_batch=EVAL_BATCH)
