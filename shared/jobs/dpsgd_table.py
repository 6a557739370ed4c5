"""DP-SGD on a table: the first job kind, and the template the others follow."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from ..data import TABLE, DatasetMeta, n_train_records
from ..display import brief
from ..errors import SpecError
from . import bounds
from .base import DEFAULT_METRICS_EPSILON, JobSpec, check_training_size, register
from .tuning import check_tuning, is_tuned, trial_spec

MODELS = ("logreg", "mlp")
CLASS_WEIGHTS = ("none", "balanced")


def n_model_inputs(meta: DatasetMeta) -> int:
    """How many inputs a table model has on ``meta`` (one-hot categories, missing indicators)."""
    from ..training.preprocess import feature_names

    return len(feature_names(meta))


@register
@dataclass
class DPSGDTableSpec(JobSpec):
    """DP-SGD training of a classifier on a table, at (epsilon, delta) for the training records.

    ``batch_size`` is the expected batch size of Poisson sampling (0, the default: chosen from
    the public record count by :func:`bounds.auto_batch_size`, 64 up to 6,400 training
    records, then a 1% sample rate); ``delta`` must be below
    1 / (number of training records). ``metrics_epsilon``: the test metrics' own DP release
    (:mod:`shared.privacy.private_metrics`), composed onto the price; 0 = no metrics.
    ``tail_average``: release the mean of the weights over the last half of the steps
    (post-processing: no privacy cost; False = the last iterate).

    ``class_weights``: "none", or "balanced": each record's loss is weighted proportionally to
    1 / (K rate_k), rate_k its class's rate as the owner DECLARED it in the schema
    (``meta.label_rates``; public), never the realised class counts (a statistic of the
    records); scaled so the rarest class has weight 1 (weights above 1 would be undone by the
    clipping: :func:`shared.training.table.class_weights`). Without declared rates "balanced"
    would be uniform weights -- it would change nothing -- so it is refused. The weighted
    per-sample gradient is still clipped to ``clip_norm`` before the noise, so the
    sensitivity, the noise and the price are those of the unweighted job.
    ``metrics_auc``: also release the test AUC (binary; macro one-vs-rest for K > 2) from a
    noisy (true class x score bin) histogram (:mod:`shared.privacy.private_auc`): one more
    Gaussian event at the metrics sigma, composed onto the price (needs ``metrics_epsilon`` > 0).

    Hyperparameter selection (Papernot & Steinke 2022; docs/hyperparameter_tuning.md):
    ``tuning_trials`` (0 = none) is the mean of the secret number K of trials, drawn from a
    truncated negative binomial of shape ``tuning_shape`` (1, the default: geometric); each
    trial trains one of ``candidates`` (dicts over ``learning_rate``, ``clip_norm``, ``model``,
    ``hidden``, ``tail_average``: nothing that changes the privacy event), drawn at random, and
    the trial with the best noisy test accuracy -- its DP metrics release, so
    ``metrics_epsilon`` must be > 0 -- is the only one released (not K, not the other scores).
    The price is the RDP epsilon of the whole selection at ``delta``, and then ``epsilon`` (or
    the target) bounds the whole job, metric releases included; the noise is raised to fit.

    The defaults (30 epochs, learning rate 2, batch 64 on small tables, clip 1) were chosen by measurement
    (``benchmarks/table_utility.py``: breast cancer, GBSG2, FLCHAIN) on features scaled from the
    declared bounds to [-1, 1]: at eps=1..4 they clearly beat the majority class.
    """

    KIND: ClassVar[str] = "dpsgd_table"
    AUTO_BATCH_SIZE: ClassVar[bool] = True

    dataset: str
    label: str
    epsilon: float
    delta: float
    model: str = "logreg"
    epochs: int = 30
    batch_size: int = 0
    clip_norm: float = 1.0
    learning_rate: float = 2.0
    hidden: int = 32
    test_fraction: float = 0.2
    seed: int = 0
    metrics_epsilon: float = DEFAULT_METRICS_EPSILON
    target: dict = field(default_factory=dict)  # {}: calibrate to epsilon; see shared.targets
    tail_average: bool = True
    candidates: list = field(default_factory=list)  # [{"learning_rate": 0.5}, ...]: tuning
    tuning_trials: float = 0.0  # mean number of trials (0: no tuning)
    tuning_shape: float = 1.0  # shape of K's distribution (shared.privacy.tuning.DEFAULT_SHAPE)
    class_weights: str = "none"  # "none" | "balanced" (from the declared label rates)
    metrics_auc: bool = False  # also release a DP test AUC (priced: one more histogram)

    # -- validation ----------------------------------------------------------------------------
    def _check_spec(self) -> None:
        self._check_dp_training()
        bounds.check_text("label", self.label)
        if self.model not in MODELS:
            raise SpecError(f"unknown model {brief(self.model)}; choose one of {list(MODELS)}")
        if self.hidden < 1:
            raise SpecError(f"hidden must be >= 1, got {self.hidden}")
        bounds.check_int("hidden", self.hidden, 1, bounds.HIDDEN_MAX)
        self._check_test_fraction()
        self._check_metrics_epsilon()
        check_tuning(self)
        if self.class_weights not in CLASS_WEIGHTS:
            raise SpecError(f"class_weights must be one of {list(CLASS_WEIGHTS)}, "
                            f"got {brief(self.class_weights)}")
        self._check_metrics_auc()

    def _check_metrics_auc(self) -> None:
        if not self.metrics_auc:
            return
        if not self.metrics_epsilon or self.test_fraction <= 0:
            raise SpecError("metrics_auc needs private test metrics: set metrics_epsilon > 0 "
                            "and test_fraction > 0, or metrics_auc=False")
        if is_tuned(self):
            raise SpecError("metrics_auc is not available with hyperparameter tuning "
                            "(tuning_trials > 0) yet: the selection is priced for one metrics "
                            "histogram per trial; set metrics_auc=False")

    def resolved(self, meta: DatasetMeta) -> "DPSGDTableSpec":
        """This spec with the batch size it runs at (what the result reports)."""
        return replace(self, batch_size=self.batch_for(meta))

    def trial(self, index: int) -> "DPSGDTableSpec":
        """The untuned spec one trial of a tuned job runs: ``candidates[index]`` applied."""
        return trial_spec(self, self.candidates[index])

    def planned_event(self, meta: DatasetMeta):
        """DP-SGD composed with the DP test metrics (``metrics_epsilon``); for a tuned job, the
        (RDP epsilon, delta) of selecting the best of its trials."""
        from ..privacy.accounting import dpsgd_event
        from ..privacy.private_metrics import histograms_per_release, metrics_sigma, with_metrics
        from ..privacy.tuning import priced_event, trial_event
        from ..targets import noise_multiplier, tuned_noise_multiplier
        from ..training.engine import poisson_schedule

        q, steps = poisson_schedule(n_train_records(meta.n_records, self.test_fraction),
                                    self.batch_for(meta), self.epochs)
        m_sigma = metrics_sigma(self)
        if not is_tuned(self):
            return with_metrics(dpsgd_event(q, noise_multiplier(self, q, steps), steps), m_sigma,
                                histograms=histograms_per_release(self))
        sigma = tuned_noise_multiplier(self, q, steps, m_sigma)
        return priced_event(trial_event(q, sigma, steps, m_sigma), self.tuning_trials,
                            self.tuning_shape, self.delta)

    def run(self, data, meta: DatasetMeta, progress=None) -> dict:
        from ..training.distributed import data_parallel_ranks
        from ..training.preprocess import declared_bounds
        from ..training.selection import train_tuned_table
        from ..training.table import train_dpsgd_table

        # Public label set and column declarations from the metadata, never from the records.
        kwargs = dict(classes=meta.labels or None, feature_scales=meta.feature_scales or None,
                      feature_bounds=declared_bounds(meta), columns=meta.columns or None,
                      label_rates=meta.label_rates or None)
        ranks = data_parallel_ranks()
        if ranks > 1 and not is_tuned(self):  # the owner's worker holds several GPUs
            from ..training.table import train_dpsgd_table_parallel

            return train_dpsgd_table_parallel(data, self.resolved(meta), ranks, **kwargs)
        train = train_tuned_table if is_tuned(self) else train_dpsgd_table
        return train(data, self.resolved(meta), progress=progress, **kwargs)

    def _check_meta(self, meta: DatasetMeta) -> None:
        if meta.kind != TABLE:
            raise SpecError(f"dataset {meta.name!r} holds {meta.kind}, but {self.KIND} needs a "
                            "table; use an image job kind")
        self._check_dataset(meta)
        if self.label != meta.label:
            raise SpecError(f"label column is {meta.label!r} on dataset {meta.name!r}, "
                            f"not {self.label!r}")
        self._check_class_weights(meta)
        batch = self.batch_for(meta)
        n = check_training_size(meta.n_records, self.test_fraction, self.delta, batch)
        bounds.check_sample_rate(n, batch, self.KIND)
        bounds.check_steps(bounds.dpsgd_steps(n, batch, self.epochs)
                           * self._rounds_priced(), self.KIND)
        # every model a trial may train (a tuned job's candidates), each within the size cap
        for spec in [trial_spec(self, c) for c in self.candidates] if is_tuned(self) else [self]:
            bounds.check_model_size(bounds.table_params(spec.model, n_model_inputs(meta),
                                                        len(meta.labels), spec.hidden),
                                    batch, f"model {spec.model!r}")

    def _check_class_weights(self, meta: DatasetMeta) -> None:
        """"balanced" needs one declared rate > 0 per class (weights 1 / (K rate_k))."""
        if self.class_weights != "balanced":
            return
        rates = list(meta.label_rates or [])
        if not rates:
            raise SpecError(f"class_weights='balanced' needs the label's class rates, and "
                            f"dataset {meta.name!r} declares none: the owner declares them in "
                            "the schema (label: {..., rates: [0.9, 0.1]}; public by "
                            "declaration). Without them the weights would be uniform (no "
                            "change): use class_weights='none'")
        if len(rates) != len(meta.labels) or not all(r > 0 for r in rates):
            raise SpecError(f"class_weights='balanced' needs one declared rate > 0 per class; "
                            f"dataset {meta.name!r} declares {rates} for classes "
                            f"{list(meta.labels)}: use class_weights='none'")
