"""Job kind ``dpsgd_images``: DP-SGD training of an image classifier (CNN, ResNet-9, or a head on
a frozen, data-independent backbone). Light module: heavy imports happen inside methods."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..data import IMAGES, DatasetMeta, n_train_records
from ..display import brief
from ..errors import SpecError
from . import bounds
from .base import DEFAULT_METRICS_EPSILON, JobSpec, check_training_size, register

# Mirrors of shared.training.models.IMAGE_MODEL_NAMES, shared.training.backbones.BACKBONES and
# shared.training.engine.GRAD_SAMPLE_MODES (those import torch; a test pins that they agree).
IMAGE_MODELS = ("cnn", "resnet9", "head")
BACKBONE_NAMES = ("scatter", "random_conv", "pixels")
GRAD_SAMPLE_MODES = ("hooks", "ghost")


@register
@dataclass
class DPSGDImageSpec(JobSpec):
    """DP-SGD training of an image classifier at (epsilon, delta) for the training records.

    ``model``: ``cnn`` | ``resnet9`` (trained end to end; ``width`` 0 = the model's default) or
    ``head`` (a linear head, or an MLP if ``hidden`` > 0, on features of the frozen ``backbone``
    computed once: the fast path). ``batch_size`` is the expected batch size of Poisson sampling;
    ``physical_batch_size`` (0 = whole batch) only bounds memory. ``delta`` must be below
    1 / (number of training records).
    """

    KIND: ClassVar[str] = "dpsgd_images"

    dataset: str
    epsilon: float
    delta: float
    model: str = "head"
    backbone: str = "scatter"
    hidden: int = 0
    width: int = 0
    epochs: int = 10
    batch_size: int = 128
    clip_norm: float = 1.0
    learning_rate: float = 2.0
    momentum: float = 0.9
    test_fraction: float = 0.2
    seed: int = 0
    grad_sample_mode: str = "hooks"
    physical_batch_size: int = 0
    metrics_epsilon: float = DEFAULT_METRICS_EPSILON
    target: dict = field(default_factory=dict)  # {}: calibrate to epsilon; see shared.targets

    def _check_spec(self) -> None:
        self._check_dp_training()
        if self.model not in IMAGE_MODELS:
            raise SpecError(f"unknown model {brief(self.model)}; choose one of "
                            f"{list(IMAGE_MODELS)}")
        # checked whatever the model: every field is shown to the owner
        if self.backbone not in BACKBONE_NAMES:
            raise SpecError(f"unknown backbone {brief(self.backbone)}; choose one of "
                            f"{list(BACKBONE_NAMES)}")
        if self.hidden < 0:
            raise SpecError(f"hidden must be >= 0 (0: linear head), got {self.hidden}")
        bounds.check_int("hidden", self.hidden, 0, bounds.HIDDEN_MAX, why="0: linear head")
        if self.width < 0:
            raise SpecError(f"width must be >= 0 (0: the model's default), got {self.width}")
        bounds.check_int("width", self.width, 0, bounds.WIDTH_MAX, why="0: the model's default")
        if self.physical_batch_size < 0:
            raise SpecError("physical_batch_size must be >= 0 (0: the whole batch at once), "
                            f"got {self.physical_batch_size}")
        bounds.check_int("physical_batch_size", self.physical_batch_size, 0,
                         bounds.BATCH_SIZE_MAX, why="0: the whole batch at once")
        if not 0 <= self.momentum < 1:
            raise SpecError(f"momentum must be in [0, 1), got {self.momentum}")
        self._check_test_fraction()
        self._check_metrics_epsilon()
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise SpecError(f"grad_sample_mode must be one of {list(GRAD_SAMPLE_MODES)}, "
                            f"got {brief(self.grad_sample_mode)}")

    def _check_meta(self, meta: DatasetMeta) -> None:
        if meta.kind != IMAGES:
            raise SpecError(f"dataset {meta.name!r} holds {meta.kind}, but {self.KIND} needs "
                            "images; use dpsgd_table for a table")
        self._check_dataset(meta)
        shape = meta.image_shape or []
        if len(shape) not in (2, 3):
            raise SpecError(f"dataset {meta.name!r} declares no image shape (H, W) or (H, W, C)")
        if self.model != "head" and min(shape[:2]) < 8:
            raise SpecError(f"model {self.model!r} needs images of at least 8x8, the dataset's "
                            f"are {shape[0]}x{shape[1]}; use model 'head'")
        if len(meta.labels) < 2:
            raise SpecError(f"dataset {meta.name!r} has fewer than two labels: nothing to classify")
        n = check_training_size(meta.n_records, self.test_fraction, self.delta, self.batch_size)
        bounds.check_sample_rate(n, self.batch_size, self.KIND)
        bounds.check_steps(bounds.dpsgd_steps(n, self.batch_size, self.epochs), self.KIND)
        params = bounds.image_params(self.model, shape, len(meta.labels), self.width,
                                     self.hidden, self.backbone)
        bounds.check_model_size(params, min(self.physical_batch_size or self.batch_size,
                                            self.batch_size), f"model {self.model!r}")

    def schedule(self, meta: DatasetMeta) -> tuple[float, int, float]:
        """(sample rate, steps, noise multiplier): what the job will run."""
        from ..targets import noise_multiplier
        from ..training.engine import poisson_schedule

        q, steps = poisson_schedule(n_train_records(meta.n_records, self.test_fraction),
                                    self.batch_size, self.epochs)
        return q, steps, noise_multiplier(self, q, steps)

    def planned_event(self, meta: DatasetMeta):
        from ..privacy.accounting import dpsgd_event
        from ..privacy.private_metrics import metrics_sigma, with_metrics

        q, steps, sigma = self.schedule(meta)
        return with_metrics(dpsgd_event(q, sigma, steps), metrics_sigma(self))

    def run(self, data, meta: DatasetMeta, progress=None) -> dict:
        from ..training.images import train_dpsgd_images

        return train_dpsgd_images(data, self, meta, progress=progress)
