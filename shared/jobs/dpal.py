"""Job kind ``dpal``: differentially private active learning with step amplification.

Per-record accounting (datasite/records.py): every record receives exactly one of the job's
events (``record_events``): its group's (start set, or labelled in round g), a never-labelled pool
record's (R selections), or a held-out record's (the DP metrics of every round). The ledger
reserves, for each record, the worst of them given its history, and at commit charges each record
the one it received (``_owner_record_groups``: owner-side, never released). ``planned_event``
(the worst group's event composed with the metrics) remains the job's headline number and
the upper bound its realised report is checked against.

The guarantee comes from the plan, not the model: ``method`` (fine-tuning a backbone the owner
registered, :mod:`shared.dpal.pretrained`) changes what is trained, never the events.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import ClassVar

from ..data import IMAGES, TABLE, DatasetMeta, n_train_records
from ..display import brief
from ..errors import SpecError
from ..pretrained.info import METHODS
from . import bounds
from .base import DEFAULT_METRICS_EPSILON, JobSpec, register
from .dpsgd_images import BACKBONE_NAMES
from .dpsgd_table import n_model_inputs
from .finetune import DEFAULT_LEARNING_RATE as FINETUNE_LEARNING_RATE
from .finetune import LORA_RANK_MAX, check_finetune_size, check_image_shape

DPAL_MODELS = ("logreg", "mlp", "head")
HIDDEN = 32
DEFAULT_LEARNING_RATE = 0.5  # learning_rate 0 without a method
# learning_rate 0 with a method: finetune's measured rate, as it is (measured there with
# momentum 0.9; the loop runs plain SGD). On the synthetic CXR (400 images, 3 rounds, eps 4)
# these did as well as or better than 10x them (lora at 10x did not learn).
METHOD_LEARNING_RATE = dict(FINETUNE_LEARNING_RATE)
MAX_ROUNDS = bounds.DPAL_ROUNDS_MAX
_PLAN_CACHE: dict = {}


@register
@dataclass
class DPALSpec(JobSpec):
    """DP active learning on a table (``label`` = the label column) or on images (``label`` =
    "label"). ``query_sizes``: records labelled in each of the R rounds; ``eps_selection``:
    total selection budget (eps_selection / R per round); ``batch_size``: expected batch size;
    ``score_bound``: S (0 = the score's natural bound).

    Images, ``method`` "" (the default): a head (``model``) on features of the frozen,
    data-independent ``backbone`` ("scatter", ...). ``method`` "head", "bitfit", "lora" or
    "full": ``backbone`` names a backbone the owner registered (``site.models``) and the loop
    trains, between acquisitions, a linear head (an MLP if ``model="mlp"``) on its frozen
    features computed once (``head``), or the fine-tuned model itself (its biases, rank
    ``lora_rank`` adapters, or every weight; plus the head), as job kind ``finetune`` does.
    ``learning_rate`` (plain SGD, no momentum; 0.5 unless given) 0: 0.5 without a method, else
    finetune's measured rate for the method (head 4, bitfit 0.5, lora 0.1, full 0.05; the
    researcher's builder gives 0 when a method is named without a rate)."""

    KIND: ClassVar[str] = "dpal"
    AUTO_LEARNING_RATE: ClassVar[bool] = True  # 0: the method's default (``lr()``)

    dataset: str
    epsilon: float
    delta: float
    label: str = "label"
    eps_selection: float = 1.0
    start_size: int = 50
    query_sizes: list = field(default_factory=lambda: [25, 25])
    acquisition: str = "entropy"
    mode: str = "step_amplified"
    accountant: str = "pld"
    model: str = "logreg"
    backbone: str = "scatter"
    method: str = ""
    lora_rank: int = 8
    batch_size: int = 32
    epochs_per_round: float = 10.0
    clip_norm: float = 1.0
    learning_rate: float = 0.5
    score_bound: float = 0.0
    test_fraction: float = 0.2
    seed: int = 0
    metrics_epsilon: float = DEFAULT_METRICS_EPSILON  # all rounds' test metrics together

    def _check_spec(self) -> None:
        from ..dpal import ACCOUNTANTS, ACQUISITIONS, MODES

        self._check_types()
        self._require_positive("epsilon")
        bounds.check_privacy(self.epsilon, {})
        self._require_delta()
        self._check_common()
        bounds.check_text("label", self.label)
        if not (0 <= self.eps_selection < self.epsilon):
            raise SpecError(f"eps_selection must be in [0, epsilon), got {self.eps_selection}; "
                            "a quarter of epsilon is typical")
        if self.acquisition not in ACQUISITIONS:
            raise SpecError(f"unknown acquisition {brief(self.acquisition)}; choose one of "
                            f"{list(ACQUISITIONS)}")
        if self.acquisition != "random" and self.eps_selection <= 0:
            raise SpecError(f"acquisition {self.acquisition!r} reads the records: give "
                            "eps_selection > 0, or use acquisition='random'")
        if self.mode not in MODES:
            raise SpecError(f"mode must be one of {list(MODES)}, got {brief(self.mode)}")
        if self.accountant not in ACCOUNTANTS:
            raise SpecError(f"accountant must be one of {list(ACCOUNTANTS)}, "
                            f"got {brief(self.accountant)}")
        if self.model not in DPAL_MODELS:
            raise SpecError(f"unknown model {brief(self.model)}; choose one of "
                            f"{list(DPAL_MODELS)}")
        if self.method not in ("",) + METHODS:
            raise SpecError(f"unknown method {brief(self.method)}; choose one of "
                            f"{list(METHODS)} (fine-tune a registered backbone) or '' (features "
                            f"of a data-independent backbone: {list(BACKBONE_NAMES)})")
        bounds.check_int("lora_rank", self.lora_rank, 1, LORA_RANK_MAX)
        # checked on tables too (where it is unused): every field is shown to the owner
        if self.method:
            bounds.check_text("backbone", self.backbone)
        elif self.backbone not in BACKBONE_NAMES:
            raise SpecError(f"unknown backbone {brief(self.backbone)}; choose one of "
                            f"{list(BACKBONE_NAMES)}, or give method= to fine-tune a backbone "
                            "the owner registered (site.models)")
        if not (1 <= len(self.query_sizes) <= MAX_ROUNDS) or not all(
                isinstance(k, int) and not isinstance(k, bool) and k >= 1
                for k in self.query_sizes):
            raise SpecError(f"query_sizes must be 1..{MAX_ROUNDS} integers >= 1 (one per "
                            "round; planning prices every round and group), "
                            f"got {brief(self.query_sizes)}")
        for k in self.query_sizes:
            bounds.check_int("each of query_sizes", k, 1, bounds.DPAL_SIZE_MAX)
        self._require_at_least_one("start_size")
        bounds.check_int("start_size", self.start_size, 1, bounds.DPAL_SIZE_MAX)
        self._require_positive("epochs_per_round")
        bounds.check_number("epochs_per_round", self.epochs_per_round, 0, bounds.EPOCHS_MAX,
                            lo_open=True)
        if not (self.score_bound >= 0 and math.isfinite(self.score_bound)):
            raise SpecError(f"score_bound must be >= 0 (0: natural bound), got {self.score_bound}")
        bounds.check_number("score_bound", self.score_bound, 0, bounds.SCORE_BOUND_MAX,
                            why="0: the score's natural bound")
        self._check_test_fraction(allow_zero=False)
        self._check_metrics_epsilon()

    def _check_meta(self, meta: DatasetMeta) -> None:
        from ..training.backbones import BACKBONES

        self._check_dataset(meta)
        if self.method and meta.kind != IMAGES:
            raise SpecError(f"method={self.method!r} fine-tunes a registered image backbone, "
                            f"but dataset {meta.name!r} holds a {meta.kind}; leave method='' "
                            "(the default) on a table")
        if meta.kind == TABLE:
            if self.label != meta.label:
                raise SpecError(f"label column is {meta.label!r} on dataset {meta.name!r}, "
                                f"not {self.label!r}")
            if self.model == "head":
                raise SpecError("model 'head' is for images; use 'logreg' or 'mlp' on a table")
        elif meta.kind == IMAGES and self.method:
            check_image_shape(meta)  # the backbone's size is checked by check_backbones
        elif meta.kind == IMAGES:
            if self.backbone not in BACKBONES:
                raise SpecError(f"unknown backbone {self.backbone!r}; choose one of "
                                f"{list(BACKBONES)}")
        else:
            raise SpecError(f"dataset kind {meta.kind!r} is not supported by {self.KIND}")
        if len(meta.labels) < 2:
            raise SpecError("the dataset needs at least two label values")
        n = n_train_records(meta.n_records, self.test_fraction)
        need = self.start_size + sum(self.query_sizes)
        if need > n:
            raise SpecError(f"start_size + sum(query_sizes) = {need} exceeds the {n} pool "
                            f"records (after holding out test_fraction={self.test_fraction})")
        if self.delta >= 1 / n:
            raise SpecError(f"delta={self.delta} must be below 1/n = {1 / n:.3g} for {n} "
                            "pool records")
        if self.batch_size > self.start_size:
            raise SpecError(f"batch_size={self.batch_size} exceeds start_size="
                            f"{self.start_size}; choose at most the start set's size")
        # the last round trains on every labelled record: the lowest naive rate
        bounds.check_sample_rate(need, self.batch_size, f"{self.KIND}'s last round")
        bounds.check_steps(self.naive_steps(), self.KIND)
        if self.method:
            return
        n_features = (bounds.backbone_dim(self.backbone, meta.image_shape or [1, 1])
                      if meta.kind == IMAGES else n_model_inputs(meta))
        bounds.check_model_size(bounds.table_params(self.model, n_features, len(meta.labels),
                                                    HIDDEN), self.batch_size,
                                f"model {self.model!r}")

    def backbones_needed(self) -> list[str]:
        return [self.backbone] if self.method else []

    def check_backbones(self, infos: dict, meta: DatasetMeta | None = None) -> None:
        """The fine-tuned model fits the site's memory at ``batch_size`` (as for finetune)."""
        check_finetune_size(infos[self.backbone], self.method, self.head_hidden(), meta,
                            self.batch_size)

    def head_hidden(self) -> int:
        """Hidden units of the head (0: linear)."""
        return HIDDEN if self.model == "mlp" else 0

    def lr(self) -> float:
        """The learning rate the job trains with (0: the method's default)."""
        if self.learning_rate:
            return self.learning_rate
        return METHOD_LEARNING_RATE[self.method] if self.method else DEFAULT_LEARNING_RATE

    def naive_steps(self) -> int:
        """DP-SGD steps of the plan before step amplification (``shared.dpal.planner``'s exact
        rounding: round(epochs * labelled / batch) per round); amplification adds some."""
        labelled, total = self.start_size, 0
        for k in [0] + list(self.query_sizes):
            labelled += k
            total += max(1, int(round(self.epochs_per_round * labelled / self.batch_size)))
        return total

    def planned_event(self, meta: DatasetMeta):
        """The worst group's event (see the module docstring), composed with the DP test
        metrics of every round (R + 1 releases)."""
        from ..privacy.private_metrics import metrics_sigma, with_metrics

        plan = plan_for(self, meta)
        releases = len(self.query_sizes) + 1
        return with_metrics(plan.group_event(plan.worst_group()),
                            metrics_sigma(self, releases), releases)

    def record_events(self, meta: DatasetMeta) -> list[str]:
        """The events one record may receive from this job, exactly one of them: a group's
        (labelled in round g), the selections of a never-labelled pool record, or the test
        metrics (held-out records). The per-record ledger reserves the worst for each record
        and, at commit, charges each record the one it received (``_owner_record_groups``)."""
        plan = plan_for(self, meta)
        return [e for e in list(plan.group_events) + [plan.unlabelled_event, _test_event(self)]
                if e]

    def run(self, data, meta: DatasetMeta, progress=None, backbones=None) -> dict:
        from ..dpal import run_dpal
        from ..privacy.accounting import event_from_json
        from ..privacy.private_metrics import metrics_sigma
        from ..privacy.private_metrics import privacy_report as metrics_report
        from ..training.split import split_indices

        plan = plan_for(self, meta)
        if self.method:
            from ..dpal.pretrained import pretrained_inputs

            inputs = pretrained_inputs(self, data, meta, backbones[self.backbone])
        else:
            inputs = _feature_inputs(self, data, meta)
        y = inputs.y
        # per record (its own side)
        tr, te = split_indices(inputs.rows, y, self.test_fraction, self.seed)
        y_pool = y[tr]
        n_classes = len(meta.labels)

        def oracle(idx):
            return y_pool[idx]

        releases = len(self.query_sizes) + 1
        m_sigma = metrics_sigma(self, releases)
        tr_t, te_t = _torch_index(tr), _torch_index(te)
        out = run_dpal(inputs.X[tr_t], oracle, inputs.X[te_t], y[te], plan, inputs.build_model,
                       n_classes=n_classes, acquisition=self.acquisition,
                       clip_norm=self.clip_norm, learning_rate=self.lr(),
                       score_bound=self.score_bound or None, seed=self.seed, progress=progress,
                       dp_metrics=True, metrics_sigma=m_sigma, eval_batch=inputs.eval_batch)
        privacy = out["privacy"]
        # the released report covers the worst group's training and all rounds' metrics
        privacy.update(metrics_report(event_from_json(privacy["event"]), m_sigma, releases,
                                      self.delta))
        result = inputs.release(out["model"].eval())
        result["model_config"]["classes"] = list(meta.labels)
        last = out["rounds"][-1]
        metrics = {"test_accuracy": last["accuracy"], "test_auc": last["auc"],
                   "per_class_accuracy": last["per_class_accuracy"],
                   # planned, public counts: the realised split sizes are private counts
                   "n_pool": plan.n_pool, "n_test": meta.n_records - plan.n_pool,
                   "labelled": int(last["labelled"])}
        metrics.update({k: last[k] for k in ("evaluated_on", "test_accuracy_std") if k in last})
        return {**result, "metrics": metrics, "privacy": privacy, "rounds": out["rounds"],
                "plan": plan.to_dict(),
                "_owner_record_groups": _record_groups(self, meta, plan, tr, te,
                                                       out.pop("group_of_pool"))}


def _torch_index(idx):
    """A numpy index array as a torch one (features and images are torch tensors)."""
    import torch

    return torch.as_tensor(idx, dtype=torch.long)


def _feature_inputs(spec: DPALSpec, data, meta: DatasetMeta):
    """The loop's inputs on fixed features (:func:`dpal_features`): a head on the frozen,
    data-independent backbone's features, or a model on a table's preprocessed columns."""
    import numpy as np
    import torch

    from ..dpal.loop import LoopInputs
    from ..training.models import build_model, model_config
    from ..training.serialise import model_bytes

    X, y, extra = dpal_features(spec, data, meta)
    n_classes = len(meta.labels)
    head_name = "mlp" if spec.model == "mlp" else "logreg"

    def release(model) -> dict:
        if meta.kind == IMAGES:
            config = model_config("head", X.shape[1], n_classes, spec.head_hidden(),
                                  in_channels=extra["channels"], image_size=extra["hw"],
                                  backbone=spec.backbone)
            return {"model_config": config, "model_state": model_bytes(model, prefix="head.")}
        config = model_config(head_name, X.shape[1], n_classes, HIDDEN)
        config.update(extra)
        return {"model_config": config, "model_state": model_bytes(model)}

    return LoopInputs(X=torch.as_tensor(np.asarray(X, dtype=np.float32)), rows=X, y=y,
                      build_model=lambda: build_model(head_name, X.shape[1], n_classes, HIDDEN),
                      release=release, eval_batch=4096)


def _test_event(spec: DPALSpec) -> str:
    """JSON of a held-out record's event: every round's DP metrics ("" if none)."""
    from ..privacy.accounting import event_to_json
    from ..privacy.private_metrics import event, metrics_sigma

    releases = len(spec.query_sizes) + 1
    e = event(metrics_sigma(spec, releases), releases)
    return event_to_json(e) if e is not None else ""


def _record_groups(spec: DPALSpec, meta: DatasetMeta, plan, tr, te, group) -> list[dict]:
    """Which rows of the dataset received which event (owner-side only: ``_owner_`` keys are
    stripped before release)."""
    import numpy as np

    parts = [(tr[group == g], e) for g, e in enumerate(plan.group_events)]
    parts += [(tr[group < 0], plan.unlabelled_event), (np.asarray(te), _test_event(spec))]
    return [{"rows": [int(i) for i in rows], "event": e} for rows, e in parts if e and len(rows)]


def plan_for(spec: DPALSpec, meta: DatasetMeta, n_pool: int | None = None):
    """The schedule the datasite will run for ``spec`` on ``meta`` (pure accounting, no data);
    researchers call it before submitting to see steps, rates and per-group epsilons.
    ``n_pool``: plan for this many pool records instead (the privacy audit adds canaries)."""
    from ..dpal import make_plan

    if n_pool is None:
        n_pool = n_train_records(meta.n_records, spec.test_fraction)
    # the plan reads these fields only: what is trained (model, backbone, method, learning
    # rate, ...) never changes the privacy schedule
    args = dict(n_pool=n_pool, start_size=spec.start_size, query_sizes=list(spec.query_sizes),
                epsilon=spec.epsilon, delta=spec.delta, eps_selection=spec.eps_selection,
                batch_size=spec.batch_size, epochs_per_round=spec.epochs_per_round,
                mode=spec.mode, accountant=spec.accountant)
    key = json.dumps(args, sort_keys=True)
    if key not in _PLAN_CACHE:
        if len(_PLAN_CACHE) > 16:
            _PLAN_CACHE.clear()
        _PLAN_CACHE[key] = make_plan(**args)
    from ..dpal import Plan

    return Plan.from_dict(_PLAN_CACHE[key].to_dict())  # a copy: callers may not alter the cache


def dpal_features(spec: DPALSpec, data, meta: DatasetMeta):
    """(X float32, y int64 label indices, model-config extras); costs no privacy: a fixed map
    per record (the schema's declarations: one-hot categories, missing indicators, bounds to
    [-1, 1]; else declared bounds / public scales / row normalisation; or a frozen
    data-independent backbone)."""
    import numpy as np

    index = {c: i for i, c in enumerate(meta.labels)}
    if meta.kind == IMAGES:
        from ..training.backbones import extract_features

        images = np.asarray(data["images"])
        y = np.array([index[v] for v in np.asarray(data["labels"]).tolist()], dtype=np.int64)
        X = extract_features(images, spec.backbone)
        chans = 1 if images.ndim == 3 else images.shape[3]
        return X, y, {"channels": chans, "hw": list(images.shape[1:3])}
    from ..training.preprocess import (declared_bounds, declared_order, encode_labels,
                                       feature_columns, preprocess, table_preprocessing)

    cols = declared_order(feature_columns(data, spec.label), meta.columns)
    prep = table_preprocessing(cols, declared_bounds(meta), meta.feature_scales, meta.columns)
    X = preprocess(data[cols].to_numpy(), prep)
    y = encode_labels(data[spec.label], meta.labels)
    return X, y, {**prep, "feature_columns": cols}
