"""Job specifications: plain, JSON-able descriptions of what a researcher asks a datasite to run.

A spec is data, never code: the datasite validates it against the real dataset's metadata,
prices it, and runs it with its own trusted trainer (:mod:`shared.runner`).
"""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, fields
from typing import Any, ClassVar

from ..data import DatasetMeta, n_train_records
from ..display import brief
from ..errors import SpecError
from . import bounds

MAX_TEST_FRACTION = 0.5
# Epsilon of the DP test metrics (shared.privacy.private_metrics), on top of the training epsilon.
DEFAULT_METRICS_EPSILON = 0.5


# kind -> spec class. Each kind's module registers itself with @register; the package's
# __init__ imports every kind module, so the registry is full once ``shared.jobs`` is imported.
SPEC_KINDS: dict[str, type] = {}


def register(cls: type) -> type:
    SPEC_KINDS[cls.KIND] = cls
    return cls


def spec_from_dict(d: dict) -> Any:
    """Build the spec of whatever kind ``d["kind"]`` names, every field checked against its
    bounds (``shared.spec_bounds``); not yet validated against the dataset's metadata."""
    if not isinstance(d, dict):
        raise SpecError(f"a spec must be a dict, got {type(d).__name__}")
    kind = d.get("kind")
    if kind not in SPEC_KINDS:
        raise SpecError(f"unknown job kind {kind!r}; known kinds: {sorted(SPEC_KINDS)}")
    return SPEC_KINDS[kind].from_dict(d)


# How a kind's requests live on the owner's side (``JobSpec.LIFECYCLE``):
ONCE = "once"          # priced, run once on the private data, released by the owner
SCHEDULE = "schedule"  # priced and approved once, then served in rounds (datasite.rounds)
MESSAGE = "message"    # not a job: a message inside an approved schedule (never priced or run)


class SpecBase:
    """A plain, JSON-able dataclass sent inside a job template: fields of plain types
    (str, int, float, bool, list, dict), checked on construction from a dict."""

    KIND: ClassVar[str] = ""
    LIFECYCLE: ClassVar[str] = ONCE

    @property
    def kind(self) -> str:
        return self.KIND

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {**asdict(self), "kind": self.KIND}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise SpecError(f"a spec must be a dict, got {type(d).__name__}")
        d = dict(d)
        kind = d.pop("kind", cls.KIND)
        if kind != cls.KIND:
            raise SpecError(f"spec kind is {brief(kind)}, expected {cls.KIND!r}")
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted((k for k in d if k not in known), key=repr)
        if unknown:
            raise SpecError(f"unknown spec field(s) {brief(unknown)}; allowed: {sorted(known)}")
        missing = [f.name for f in fields(cls)
                   if f.init and f.default is MISSING and f.default_factory is MISSING
                   and f.name not in d]
        if missing:
            raise SpecError(f"spec is missing required field(s) {missing}")
        spec = cls(**d)
        # A spec read from a dict (the owner's and the runner's path) is checked at once for
        # everything the metadata is not needed for; researchers' builders call validate().
        spec._check_spec()
        return spec

    def _check_spec(self) -> None:
        """The checks that need no dataset metadata (each kind adds its fields' bounds)."""
        self._check_types()

    def _check_types(self) -> None:
        """Every field has its declared plain type (bools are not accepted as numbers)."""
        for f in fields(self):
            v = getattr(self, f.name)
            # annotations are strings under ``from __future__ import annotations``, else types
            tname = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            want = _PLAIN_TYPES.get(tname)
            if want is None:
                raise TypeError(f"{type(self).__name__}.{f.name}: unsupported field type {f.type}")
            if (isinstance(v, bool) and tname != "bool") or not isinstance(v, want):
                raise SpecError(f"{f.name} must be {tname}, got {brief(v)}")
            if isinstance(v, float) and math.isnan(v):
                raise SpecError(f"{f.name} is NaN; give a number")

    # -- checks shared by the kinds (one wording everywhere) -------------------------------------
    def _require_positive(self, *names: str) -> None:
        for name in names:
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise SpecError(f"{name} must be a finite number > 0, got {v}")

    def _require_at_least_one(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)}")

    def _require_delta(self, field: str = "delta") -> None:
        v = getattr(self, field)
        if not 0 < v < 1:
            raise SpecError(f"{field} must be in (0, 1), got {v}; typical: 1e-5")
        if v > bounds.DELTA_MAX:
            raise SpecError(f"{field}={v:g} is too large: allowed [{bounds.DELTA_MIN:g}, "
                            f"{bounds.DELTA_MAX:g}] (above 1% the guarantee fails too often to "
                            "mean anything); typical: 1e-5, below 1 / number of records")
        bounds.check_number(field, v, bounds.DELTA_MIN, bounds.DELTA_MAX,
                            why="below it the accountant cannot price it reliably")

    def _check_common(self) -> None:
        """Fields most kinds share: dataset, seed, and (if the kind has them) the training
        schedule's numbers."""
        bounds.check_dataset(self.dataset)
        if hasattr(self, "seed"):
            bounds.check_int("seed", self.seed, 0, bounds.SEED_MAX)
        if hasattr(self, "epochs"):
            self._require_at_least_one("epochs")
            bounds.check_int("epochs", self.epochs, 1, bounds.EPOCHS_MAX,
                             why=f"the whole job is also held to {bounds.STEPS_MAX} steps")
        if hasattr(self, "batch_size"):
            auto = getattr(self, "AUTO_BATCH_SIZE", False)  # 0 = from the public record count
            if not auto:
                self._require_at_least_one("batch_size")
            bounds.check_int("batch_size", self.batch_size, 0 if auto else 1,
                             bounds.BATCH_SIZE_MAX,
                             why="0: chosen from the public record count" if auto else "")
        if hasattr(self, "clip_norm"):
            auto_lr = getattr(self, "AUTO_LEARNING_RATE", False)  # 0 = the kind's default
            self._require_positive("clip_norm", *(() if auto_lr else ("learning_rate",)))
            bounds.check_number("clip_norm", self.clip_norm, 0, bounds.CLIP_NORM_MAX,
                                lo_open=True)
            bounds.check_number("learning_rate", self.learning_rate, 0,
                                bounds.LEARNING_RATE_MAX, lo_open=not auto_lr,
                                why="0: the default" if auto_lr else "")

    def _check_test_fraction(self, allow_zero: bool = True) -> None:
        """The held-out split: at most half the records (0: none, no metrics where allowed)."""
        tf = self.test_fraction
        if not ((0 <= tf if allow_zero else 0 < tf) and tf <= MAX_TEST_FRACTION):
            span = "[0, 0.5]" if allow_zero else "(0, 0.5]"
            raise SpecError(f"test_fraction must be in {span}, got {self.test_fraction}; "
                            "0.2 is typical (the held-out records are private data too)")

    def _check_metrics_epsilon(self) -> None:
        if not (self.metrics_epsilon >= 0 and math.isfinite(self.metrics_epsilon)):
            raise SpecError(f"metrics_epsilon must be a finite number >= 0 (0: no metrics on "
                            f"private records), got {self.metrics_epsilon}")
        bounds.check_number("metrics_epsilon", self.metrics_epsilon, 0,
                            bounds.METRICS_EPSILON_MAX, why="0: no metrics on private records")

    def _check_dataset(self, meta: DatasetMeta) -> None:
        if self.dataset != meta.name:
            raise SpecError(f"spec names dataset {brief(self.dataset)} but it runs on "
                            f"{meta.name!r}")

    def _check_dp_training(self) -> None:
        """The spec checks every DP-SGD kind shares: types, epsilon or a risk target, delta,
        and the common fields."""
        from ..targets import check_target

        self._check_types()
        check_target(self.target, self.epsilon)
        bounds.check_privacy(self.epsilon, self.target)
        self._require_delta()
        self._check_common()

    def validate(self, meta: DatasetMeta | None = None):
        """Check the spec alone, and against the dataset's metadata if given; return self."""
        self._check_spec()
        if meta is not None:
            self._check_meta(meta)
        return self

    def _check_meta(self, meta: DatasetMeta) -> None:
        """The checks against the dataset's metadata (each kind adds its own)."""
        self._check_dataset(meta)

    def backbones_needed(self) -> list[str]:
        """Names of the owner's registered backbones (``site.models``) the job starts from; the
        site resolves each to its weights and ``run`` gets ``backbones=`` (name ->
        :class:`shared.pretrained.info.LocalBackbone`). A message names none."""
        return []

    def check_backbones(self, infos: dict, meta: DatasetMeta | None = None) -> None:
        """Checks against the public facts of the backbones named (name -> BackboneInfo)."""


class JobSpec(SpecBase):
    """Base of every job kind.

    A subclass is a ``@register``ed ``@dataclass`` with a ``KIND`` and implements
    ``validate(meta)``, ``planned_event(meta)`` (the DpEvent the owner prices before running) and
    ``run(data, meta, progress)`` (imports its heavy modules lazily). The class attributes and
    hooks below are how a kind's differences reach the owner's side (``datasite/`` never asks
    for a kind by name).
    """

    LIFECYCLE: ClassVar[str] = ONCE
    # Released models are kept by the site and updated when a patient is forgotten
    # (datasite.forget); such a kind's result carries ``removable_model`` and
    # ``_owner_training_rows``.
    UPDATED_ON_FORGET: ClassVar[bool] = False
    # ``run`` takes ``context=`` (what the owner adds from earlier releases, see
    # ``context_sources``); never set by the researcher.
    NEEDS_CONTEXT: ClassVar[bool] = False
    # The kinds an earlier release named by ``context_sources`` must be.
    CONTEXT_FROM_KINDS: ClassVar[tuple[str, ...]] = ()

    def _rounds_priced(self) -> int:
        """How many runs of ``epochs`` the price covers (a federated schedule: its rounds)."""
        return 1

    def batch_for(self, meta: DatasetMeta) -> int:
        """The expected batch a DP-SGD kind runs at: ``batch_size``, or when 0 (kinds with
        ``AUTO_BATCH_SIZE``) the rule of :func:`bounds.auto_batch_size` on the public training
        count and all priced epochs."""
        if self.batch_size:
            return self.batch_size
        return bounds.auto_batch_size(n_train_records(meta.n_records, self.test_fraction),
                                      self.epochs * self._rounds_priced())

    def context_sources(self) -> dict[str, str]:
        """Context key -> id of an earlier release (to the same researcher, on the same
        dataset) whose owner-side result the job needs; the owner passes its result path."""
        return {}

    def public_payload(self, payload: dict) -> dict:
        """The kind's public payload with what it keeps private removed (the release gate,
        :meth:`shared.protocol.ResultPayload.public_view`, calls it); default: all of it."""
        return payload

    def planned_event(self, meta: DatasetMeta):
        raise NotImplementedError

    def run(self, data, meta: DatasetMeta, progress=None) -> dict:
        raise NotImplementedError


class Message(SpecBase):
    """Not a job: a message a researcher sends inside an approved schedule (a federated
    round). It is validated like a spec but never priced or run on its own; the schedule's
    server reads it (``datasite.rounds``)."""

    LIFECYCLE: ClassVar[str] = MESSAGE


_PLAIN_TYPES = {"str": str, "float": (int, float), "int": int, "bool": bool, "list": list,
                "dict": dict}


def check_training_size(n_records: int, test_fraction: float, delta: float,
                        batch_size: int | None = None) -> int:
    """The training-record count after the held-out split; SpecError unless it is >= 2, above
    1/delta and (if given) at least the batch size."""
    n = n_train_records(n_records, test_fraction)
    if n < 2:
        raise SpecError(f"only {n} training record(s) after holding out "
                        f"test_fraction={test_fraction}; lower test_fraction")
    if delta >= 1 / n:
        raise SpecError(f"delta={delta} is too large for {n} training records: it must "
                        f"be below 1/n = {1 / n:.3g} (e.g. {_suggest_delta(n):g})")
    if batch_size is not None and batch_size > n:
        raise SpecError(f"batch_size={batch_size} exceeds the {n} training records; "
                        f"choose at most {n}")
    return n


def _suggest_delta(n: int) -> float:
    """A power of ten at most 1/(10 n): the usual choice."""
    return 10.0 ** math.floor(math.log10(1 / (10 * n)))
