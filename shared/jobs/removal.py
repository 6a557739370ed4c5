"""Job kind ``removal_logreg``: a removal-enabled logistic regression (Guo et al. 2020) trained by
objective perturbation. Light module: heavy imports happen inside methods.

The result holds, besides ``metrics`` and ``privacy``:
  * ``removable_model``: :meth:`shared.removal.RemovableModel.to_dict` of the freshly trained
    model -- weights, hyper-parameters, feature pipeline and a residual state that is still
    only public constants; no records, never b. The datasite keeps it to serve later removal
    requests (with the data it already holds). After removals its residual fields are
    data-dependent: release updated models with ``public_dict()`` only.
  * ``_owner_training_rows``: positions (in the dataset payload) of the training records, which
    the datasite needs to remove records later. Owner-only: the datasite must strip every key
    starting with ``_owner_`` before a result is released.
  * ``model_state`` / ``model_config``: the same model as a torch ``Linear`` (tables only), so
    researchers decode it like other table models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..data import IMAGES, TABLE, DatasetMeta, n_train_records
from ..display import brief
from ..errors import SpecError
from . import bounds
from .base import DEFAULT_METRICS_EPSILON, JobSpec, check_training_size, register
from .dpsgd_images import BACKBONE_NAMES

DP_EXTRACTOR = "dp_extractor"
FEATURES = ("table",) + BACKBONE_NAMES + (DP_EXTRACTOR,)


@register
@dataclass
class RemovalSpec(JobSpec):
    """Removal-enabled logistic regression (one-vs-rest for > 2 classes).

    ``lam``: L2 regularisation per record (objective lam * n / 2 |w|^2); ``perturbation``: std s
    of the objective perturbation b. Training is (eps_train, ``delta``)-DP with eps_train from
    (lam * n, s) (:func:`shared.removal.training_epsilon`); later removals are
    (``removal_epsilon``, ``removal_delta``)-certified while the residual stays within
    s * removal_epsilon / sqrt(2 ln(1.5 / removal_delta)) -- for the datasite's own copy; each
    forget sends the researcher a fresh (eps_train, ``delta``)-DP release instead, priced as
    one (datasite/forget.py), so keep ``delta`` well below the dataset's: every release adds
    it. ``features``: "table" (public column
    scales), the name of a frozen image backbone, or "dp_extractor": the penultimate layer of
    the model of ``extractor``, a DP-SGD job on this dataset already released to you (its
    records' influence on the features is bounded by that job's DP guarantee, and the
    certificates say so).
    """

    KIND: ClassVar[str] = "removal_logreg"

    dataset: str
    delta: float
    label: str = ""
    lam: float = 1e-4
    perturbation: float = 1.0
    removal_epsilon: float = 1.0
    removal_delta: float = 1e-4
    features: str = "table"
    extractor: str = ""
    test_fraction: float = 0.2
    seed: int = 0
    metrics_epsilon: float = DEFAULT_METRICS_EPSILON

    def _check_spec(self) -> None:
        self._check_types()
        self._require_positive("lam", "perturbation", "removal_epsilon")
        bounds.check_number("lam", self.lam, bounds.LAM_MIN, bounds.LAM_MAX)
        bounds.check_number("perturbation", self.perturbation, bounds.PERTURBATION_MIN,
                            bounds.PERTURBATION_MAX,
                            why="below it the training epsilon's loss term is too wide to price")
        bounds.check_number("removal_epsilon", self.removal_epsilon, 0,
                            bounds.REMOVAL_EPSILON_MAX, lo_open=True)
        self._require_delta()
        self._require_delta("removal_delta")
        self._check_common()
        bounds.check_text("label", self.label, allow_empty=True)
        if self.features not in FEATURES:
            raise SpecError(f"unknown features {brief(self.features)}; choose one of "
                            f"{list(FEATURES)}")
        self._check_test_fraction()
        self._check_metrics_epsilon()
        if (self.features == DP_EXTRACTOR) != bool(self.extractor):
            raise SpecError("features='dp_extractor' needs extractor=<request id of a released "
                            "DP-SGD job on this dataset>, and extractor is only used with it")
        bounds.check_request_id("extractor", self.extractor, allow_empty=True)

    def _check_meta(self, meta: DatasetMeta) -> None:
        self._check_dataset(meta)
        if meta.kind == TABLE:
            if self.features not in ("table", DP_EXTRACTOR):
                raise SpecError(f"dataset {meta.name!r} is a table: use features='table' or "
                                f"'{DP_EXTRACTOR}'")
            if self.label not in ("", meta.label):
                raise SpecError(f"label column is {meta.label!r} on dataset {meta.name!r}, "
                                f"not {self.label!r}")
        elif meta.kind == IMAGES:
            if self.features == "table":
                raise SpecError(f"dataset {meta.name!r} holds images: set features to a "
                                f"backbone, one of {list(BACKBONE_NAMES)}")
        else:
            raise SpecError(f"dataset kind {meta.kind!r} is not supported by {self.KIND}")
        if len(meta.labels) < 2:
            raise SpecError(f"need at least two label values, dataset has {meta.labels}")
        check_training_size(meta.n_records, self.test_fraction, self.delta)
        if self.features in BACKBONE_NAMES:
            n_features = bounds.backbone_dim(self.features, meta.image_shape or [1, 1])
        elif self.features == "table":
            n_features = len(meta.features)
        else:  # the extractor's penultimate layer: an MLP's hidden units
            n_features = bounds.HIDDEN_MAX
        # one (features + intercept) weight vector per one-vs-rest model; no per-sample grads
        bounds.check_model_size(self.n_models(meta) * (n_features + 1), 1,
                                f"removal model on {self.features!r} features")

    def n_models(self, meta: DatasetMeta) -> int:
        return 1 if len(meta.labels) == 2 else len(meta.labels)

    def planned_event(self, meta: DatasetMeta):
        from ..privacy.accounting import approx_dp_event
        from ..privacy.private_metrics import LAPLACE, metrics_sigma, with_metrics
        from ..removal import training_epsilon

        n = n_train_records(meta.n_records, self.test_fraction)
        # Laplace metrics: pure DP, as the training event already uses all of delta
        return with_metrics(approx_dp_event(training_epsilon(
            self.lam, self.perturbation, n, self.delta, self.n_models(meta)), self.delta),
            metrics_sigma(self, 1, LAPLACE), 1, LAPLACE)

    # The datasite passes the extractor's released result (never the researcher).
    NEEDS_CONTEXT: ClassVar[bool] = True
    CONTEXT_FROM_KINDS: ClassVar[tuple[str, ...]] = ("dpsgd_table", "dpsgd_images")
    UPDATED_ON_FORGET: ClassVar[bool] = True

    def context_sources(self) -> dict[str, str]:
        return {"extractor": self.extractor} if self.extractor else {}

    def public_payload(self, payload: dict) -> dict:
        """The removable model without its residual state (data-dependent after removals)."""
        from ..removal import RemovableModel

        if "removable_model" in payload:
            payload["removable_model"] = RemovableModel.from_dict(
                payload["removable_model"]).public_dict()
        return payload

    def run(self, data, meta: DatasetMeta, progress=None, context: dict | None = None) -> dict:
        from ..removal import run_removal_job

        return run_removal_job(self, data, meta, progress,
                               extractor=(context or {}).get("extractor"))
