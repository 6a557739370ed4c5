"""Job kind ``finetune``: DP fine-tuning of a pretrained image backbone the owner registered.

The researcher names the backbone (``site.models``) and the method; the site resolves the name
to its weights (checked by sha256) and passes them to :meth:`FineTuneSpec.run`. What the
guarantee covers: the released parameters and the test metrics, for the training records, at
(epsilon, delta) by PLD over the Poisson-sampled DP-SGD steps composed with the priced metrics.
The backbone's own weights are public to the job (pre-trained elsewhere): only what the private
records change is priced. Light module: heavy imports happen inside methods.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..data import IMAGES, DatasetMeta, n_train_records
from ..display import brief
from ..errors import SpecError
from ..pretrained.info import METHODS
from . import bounds
from .base import DEFAULT_METRICS_EPSILON, JobSpec, check_training_size, register
from .dpsgd_images import GRAD_SAMPLE_MODES

LORA_RANK_MAX = 64
# The learning rate a method uses when the spec says 0 (measured: benchmarks/finetune.py).
DEFAULT_LEARNING_RATE = {"head": 4.0, "bitfit": 0.5, "lora": 0.1, "full": 0.05}


@register
@dataclass
class FineTuneSpec(JobSpec):
    """DP fine-tuning of the registered ``backbone`` on an image dataset.

    ``method``: ``head`` (a linear head, or an MLP if ``hidden`` > 0, on frozen features computed
    once: the fast path), ``bitfit`` (biases + head), ``lora`` (rank-``lora_rank`` adapters +
    head) or ``full`` (every weight; ``grad_sample_mode="ghost"`` saves memory). Images are
    resized and normalised as the backbone expects (grayscale to 3 channels).
    ``learning_rate`` 0: the method's default. ``batch_size``: expected batch of Poisson
    sampling (0: from the public record count); ``physical_batch_size`` only bounds memory.
    """

    KIND: ClassVar[str] = "finetune"
    AUTO_BATCH_SIZE: ClassVar[bool] = True
    AUTO_LEARNING_RATE: ClassVar[bool] = True  # 0: the method's measured default

    dataset: str
    backbone: str
    epsilon: float
    delta: float
    method: str = "head"
    hidden: int = 0
    lora_rank: int = 8
    epochs: int = 10
    batch_size: int = 0
    clip_norm: float = 1.0
    learning_rate: float = 0.0
    momentum: float = 0.9
    test_fraction: float = 0.2
    seed: int = 0
    grad_sample_mode: str = "hooks"
    physical_batch_size: int = 0
    metrics_epsilon: float = DEFAULT_METRICS_EPSILON
    metrics_auc: bool = False
    target: dict = field(default_factory=dict)  # {}: calibrate to epsilon; see shared.targets

    def _check_spec(self) -> None:
        self._check_dp_training()
        bounds.check_text("backbone", self.backbone)
        if self.method not in METHODS:
            raise SpecError(f"unknown method {brief(self.method)}; choose one of {list(METHODS)}")
        bounds.check_int("hidden", self.hidden, 0, bounds.HIDDEN_MAX, why="0: linear head")
        bounds.check_int("lora_rank", self.lora_rank, 1, LORA_RANK_MAX)
        bounds.check_int("physical_batch_size", self.physical_batch_size, 0,
                         bounds.BATCH_SIZE_MAX, why="0: the whole batch at once")
        if not 0 <= self.momentum < 1:
            raise SpecError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise SpecError(f"grad_sample_mode must be one of {list(GRAD_SAMPLE_MODES)}, "
                            f"got {brief(self.grad_sample_mode)}")
        self._check_test_fraction()
        self._check_metrics_epsilon()
        if self.metrics_auc and (not self.metrics_epsilon or self.test_fraction <= 0):
            raise SpecError("metrics_auc needs private test metrics: set metrics_epsilon > 0 "
                            "and test_fraction > 0, or metrics_auc=False")

    def lr(self) -> float:
        """The learning rate the job trains with."""
        return self.learning_rate or DEFAULT_LEARNING_RATE.get(self.method, 1.0)

    def _check_meta(self, meta: DatasetMeta) -> None:
        if meta.kind != IMAGES:
            raise SpecError(f"dataset {meta.name!r} holds {meta.kind}, but {self.KIND} needs "
                            "images")
        self._check_dataset(meta)
        check_image_shape(meta)
        if len(meta.labels) < 2:
            raise SpecError(f"dataset {meta.name!r} has fewer than two labels: nothing to classify")
        batch = self.batch_for(meta)
        n = check_training_size(meta.n_records, self.test_fraction, self.delta, batch)
        bounds.check_sample_rate(n, batch, self.KIND)
        bounds.check_steps(bounds.dpsgd_steps(n, batch, self.epochs), self.KIND)

    def backbones_needed(self) -> list[str]:
        return [self.backbone]

    def check_backbones(self, infos: dict, meta: DatasetMeta | None = None) -> None:
        """The model fits the site's memory (:func:`check_finetune_size`)."""
        batch = self.physical_batch_size or (self.batch_for(meta) if meta else 1)
        check_finetune_size(infos[self.backbone], self.method, self.hidden, meta, batch)

    def schedule(self, meta: DatasetMeta) -> tuple[float, int, float]:
        """(sample rate, steps, noise multiplier): what the job will run."""
        from ..targets import noise_multiplier
        from ..training.engine import poisson_schedule

        q, steps = poisson_schedule(n_train_records(meta.n_records, self.test_fraction),
                                    self.batch_for(meta), self.epochs)
        return q, steps, noise_multiplier(self, q, steps)

    def planned_event(self, meta: DatasetMeta):
        from ..privacy.accounting import dpsgd_event
        from ..privacy.private_metrics import histograms_per_release, metrics_sigma, with_metrics

        q, steps, sigma = self.schedule(meta)
        return with_metrics(dpsgd_event(q, sigma, steps), metrics_sigma(self),
                            histograms=histograms_per_release(self))

    def run(self, data, meta: DatasetMeta, progress=None, backbones=None) -> dict:
        from ..training.finetune import train_finetune

        return train_finetune(data, self, meta, backbones[self.backbone], progress=progress)


def check_image_shape(meta: DatasetMeta) -> None:
    """Fine-tuning takes grayscale (H, W) or RGB (H, W, 3) images (SpecError otherwise)."""
    shape = meta.image_shape or []
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise SpecError(f"dataset {meta.name!r} declares image shape {shape}: fine-tuning "
                        "takes grayscale (H, W) or RGB (H, W, 3) images")


def check_finetune_size(info, method: str, hidden: int, meta: DatasetMeta | None,
                        batch: int) -> None:
    """The model a job fine-tunes from backbone ``info`` (a BackboneInfo) fits the site's memory
    at ``batch`` records per pass: every backbone weight for ``full``, the head (bitfit and
    lora are checked exactly when the job builds the model: ``build_checked``)."""
    n_classes = len(meta.labels) if meta is not None else 2
    head = bounds.table_params("mlp" if hidden else "logreg", info.feature_dim, n_classes,
                               hidden)
    params = head + (info.n_params if method == "full" else 0)
    bounds.check_model_size(params, batch, f"{method} fine-tuning of {info.name!r}")
