"""Job builders for notebooks. Each wraps a validated spec from ``shared.jobs``.

Every builder checks its arguments at once (``SpecError`` says what to change), runs on the
dataset's mock data with ``run_on_mock(site)`` through the very code the datasite runs, and is
sent with ``site.submit(job)``.
"""
from __future__ import annotations

import warnings
from functools import lru_cache

from shared.data import DatasetMeta
from shared.runner import run_job
from shared.jobs.dpal import DPALSpec
from shared.jobs.dpsgd_images import DPSGDImageSpec
from shared.jobs.finetune import FineTuneSpec
from shared.jobs.removal import RemovalSpec
from shared.jobs.stats import DPStatsSpec
from shared.jobs import DPSGDTableSpec, SpecError
from shared.targets import Target, privacy_fields  # noqa: F401  (jobs.Target for users)


class Job:
    """A job of any registered kind, built from its spec (``shared.jobs``); the builders below
    are subclasses that build the spec from keyword arguments. ``Job(spec)`` submits a kind
    that has no builder yet (e.g. one an owner added as a job module)."""

    spec: object

    def __init__(self, spec):
        self.spec = spec.validate()

    def run_on_mock(self, site, progress=None) -> "JobResult":
        """Run the same job code locally on the dataset's mock data. A job that starts from
        the owner's registered backbones (``spec.backbones_needed()``) runs from their weights
        when you hold the very same file (an installed weights package), otherwise from
        random weights of the same architecture (a warning says so)."""
        from .results import JobResult

        remote = site.datasets[self.spec.dataset]
        mock = remote.mock
        meta = DatasetMeta(**{**remote.meta.__dict__, "n_records": _count(mock)})
        needed = self.spec.backbones_needed()
        backbones = mock_backbones(site, needed) if needed else None
        # mock data is public: pin the randomness so a notebook reruns identically, and
        # evaluate exactly (metrics labelled "mock")
        return JobResult(run_job(self.spec.to_dict(), mock, meta, progress=progress,
                                 pin_randomness=getattr(self.spec, "seed", 0), mock=True,
                                 backbones=backbones))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.to_dict()}>"


def mock_backbones(site, names: list[str]) -> dict:
    """Name -> LocalBackbone for a mock run of a job naming the site's registered ``names``:
    the installed package's weights file when its sha256 is the registered one, else None
    (random weights of the architecture: the run only checks that the job runs)."""
    from shared.pretrained.info import LocalBackbone

    catalogue = site.models
    out = {}
    for name in names:
        info = catalogue[name]  # ResearcherError listing the registered ones
        path = _package_file_with(info.sha256)
        if path is None:
            warnings.warn(
                f"The weights of backbone {name!r} ({info.source}) stay with the data owner: "
                f"this mock run uses RANDOM weights of {info.arch}. It only checks that the "
                "job runs; its metrics say nothing about the registered backbone.",
                stacklevel=3)
        out[name] = LocalBackbone(info, path)
    return out


def _package_file_with(sha256: str) -> str | None:
    """The installed weights package's file, if its sha256 is ``sha256``."""
    from shared.pretrained.weights import package_weights

    try:
        _, path, _ = package_weights()
        stat = path.stat()
    except (ValueError, OSError):
        return None
    return str(path) if _sha256_of(str(path), stat.st_size, stat.st_mtime_ns) == sha256 else None


@lru_cache(maxsize=8)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    from shared.pretrained.weights import sha256_file

    return sha256_file(path)


def _count(payload) -> int:
    return len(payload["labels"]) if isinstance(payload, dict) else len(payload)


def _delta(delta) -> float:
    if delta is None:
        raise SpecError("delta is required (e.g. delta=1e-5, below 1 / number of records); "
                        "a mu or TPR target still needs it for the (eps, delta) report")
    return delta


class DPSGD(Job):
    """DP-SGD training of a classifier (logistic regression or MLP) on a table.

    Give ``epsilon`` (at ``delta``) or ``privacy=Target(mu=...)`` / ``Target(tpr=..., fpr=...)``:
    the datasite calibrates the noise to it on the real dataset's size. The other options
    default to settings measured to learn on clinical tables at eps=1..4 (``model="logreg"``,
    ``epochs=30``, ``learning_rate=2.0``, ``batch_size=64``, ``clip_norm=1.0``, see
    :class:`shared.jobs.DPSGDTableSpec`); a first job needs none of them."""

    def __init__(self, dataset: str, label: str, epsilon: float | None = None,
                 delta: float | None = None, *, privacy: Target | None = None, **options):
        self.spec = DPSGDTableSpec(dataset=dataset, label=label, delta=_delta(delta),
                                   **privacy_fields(epsilon, privacy), **options).validate()

    def feature_names(self, site) -> list[str]:
        """The model's inputs by name, from the dataset's public metadata, in the order of the
        model's weights: ``grade=II`` per declared category, ``age`` per number or bool,
        ``crp_missing`` after a column declared ``missing: true``."""
        from shared.training.preprocess import feature_names

        return feature_names(site.datasets[self.spec.dataset].meta)

    def features(self, site):
        """The mock's rows as the model sees them: a DataFrame with one column per
        :meth:`feature_names` entry (one-hot categories, scaled numbers, missing indicators)."""
        from shared.training.preprocess import model_inputs

        remote = site.datasets[self.spec.dataset]
        return model_inputs(remote.mock, remote.meta)


class DPSGDImages(Job):
    """DP-SGD on images: a GroupNorm CNN or ResNet-9 trained end to end, or (``model="head"``,
    the fast path) a DP head on features of a frozen, data-independent ``backbone``.
    ``epsilon`` or ``privacy=Target(...)`` as for :class:`DPSGD`."""

    def __init__(self, dataset: str, epsilon: float | None = None, delta: float | None = None,
                 *, privacy: Target | None = None, **options):
        self.spec = DPSGDImageSpec(dataset=dataset, delta=_delta(delta),
                                   **privacy_fields(epsilon, privacy), **options).validate()


class FineTune(Job):
    """DP fine-tuning of a pretrained backbone the data owner registered (``site.models``;
    its weights stay with the owner). ``method``: ``"head"`` (a head on frozen features: the
    fast path), ``"bitfit"``, ``"lora"`` or ``"full"``; the other options are
    :class:`shared.jobs.finetune.FineTuneSpec`'s (``epochs``, ``batch_size``, ``hidden``,
    ``lora_rank``, ...). ``epsilon`` or ``privacy=Target(...)`` as for :class:`DPSGD`.
    ``result.model`` rebuilds the model; give ``result.load_model(backbone_weights=PATH)``
    the registered weights unless they came from an installed package (found by sha256)."""

    def __init__(self, dataset: str, backbone: str, epsilon: float | None = None,
                 delta: float | None = None, *, privacy: Target | None = None,
                 method: str = "head", **options):
        self.spec = FineTuneSpec(dataset=dataset, backbone=backbone, delta=_delta(delta),
                                 method=method, **privacy_fields(epsilon, privacy),
                                 **options).validate()


class DPActiveLearning(Job):
    """DP active learning: a start set, then ``query_sizes`` acquisitions selected privately,
    with DP-SGD between them; ``mode="step_amplified"`` gives late groups higher sampling rates
    so every record ends at ``epsilon``. ``plan(site)`` shows the schedule before you submit.

    The design card's spelling works too: ``start`` (= ``start_size``) labelled records, then
    ``queries`` (= ``query_sizes``, one size per round; ``rounds`` must match if given), and
    ``step_amplification`` (True: ``mode="step_amplified"``, False: ``"naive"``).

    On images, ``backbone=NAME, method="head" | "bitfit" | "lora" | "full"`` (and
    ``lora_rank``) fine-tunes a backbone the owner registered (``site.models``) between
    acquisitions, as :class:`FineTune` does (``learning_rate`` defaults to the method's);
    ``run_on_mock`` then runs from the installed package's weights or random ones, and
    ``result.load_model(backbone_weights=...)`` rebuilds the model. Without ``method``,
    ``backbone`` is a data-independent feature extractor."""

    def __init__(self, dataset: str, epsilon: float | None = None, delta: float | None = None,
                 *, privacy: Target | None = None, start: int | None = None,
                 queries: list | None = None, rounds: int | None = None,
                 step_amplification: bool | None = None, **options):
        options = _design_card_options(options, start, queries, rounds, step_amplification)
        if options.get("method") and "learning_rate" not in options:
            options["learning_rate"] = 0.0  # the method's rate (DPALSpec.lr), not 0.5
        fields = privacy_fields(epsilon, privacy)
        if fields["target"]:
            # Step amplification plans every group's rates to end at one epsilon; a mu or TPR
            # target would need an outer search over whole plans (not built yet).
            raise SpecError("DP active learning takes privacy=Target(epsilon=...) only; "
                            "job.plan(site) shows the mu and attack TPR that epsilon gives")
        self.spec = DPALSpec(dataset=dataset, epsilon=fields["epsilon"], delta=_delta(delta),
                             **options).validate()

    def plan(self, site):
        """The schedule the datasite will price: per round, steps, each group's sampling rate
        and planned epsilon (computed from the published metadata)."""
        from shared.jobs.dpal import plan_for

        return plan_for(self.spec, site.datasets[self.spec.dataset].meta)



# The design card's name for the same builder (DESIGN.md: ``jobs.ActiveLearning(dataset=...,
# start=..., queries=..., step_amplification=True)``); one class, two names.
ActiveLearning = DPActiveLearning


def _design_card_options(options: dict, start, queries, rounds, step_amplification) -> dict:
    """``options`` with the spec fields the design card's keywords stand for (None: not
    given); a field given both ways is an error."""
    sizes = queries if queries is not None else options.get("query_sizes", [])
    if rounds is not None and rounds != len(sizes):
        raise SpecError(f"rounds={rounds} but {len(sizes)} query sizes were given: give one "
                        "size per round")
    card = {"start_size": start, "query_sizes": None if queries is None else list(queries),
            "mode": None if step_amplification is None
            else "step_amplified" if step_amplification else "naive"}
    out = dict(options)
    for name, value in card.items():
        if value is not None:
            if name in options:
                raise SpecError(f"{name} is given twice (once by its design-card keyword)")
            out[name] = value
    return out


class RemovableLogReg(Job):
    """L2-regularised logistic regression with objective perturbation whose records can later
    be removed (the datasite's `forget`): on a table, or on frozen backbone features of images
    (``features=<backbone>``). After each forget, ``request.updates()`` brings a fresh DP
    release trained without the record, each priced like the job; keep ``delta`` well below
    the dataset's (every release adds it): the owner's review shows how many forgets fit."""

    def __init__(self, dataset: str, delta: float, **options):
        self.spec = RemovalSpec(dataset=dataset, delta=delta, **options).validate()


class Statistics(Job):
    """A batch of DP statistics (count, sum, mean, histogram, quantile) on table columns, each
    with declared bounds and its own epsilon. Add queries with the helpers, then submit."""

    def __init__(self, dataset: str, delta: float = 0.0, queries: list | None = None):
        self.spec = DPStatsSpec(dataset=dataset, queries=list(queries or []), delta=delta)

    def _add(self, query: dict) -> "Statistics":
        from shared.stats import validate_queries

        validate_queries([query], self.spec.delta)  # fail here, not at the datasite
        self.spec.queries.append(query)
        return self

    def count(self, epsilon: float, column: str | None = None, **kw) -> "Statistics":
        return self._add({"type": "count", "epsilon": epsilon,
                          **({"column": column} if column else {}), **kw})

    def sum(self, column: str, bounds, epsilon: float, **kw) -> "Statistics":
        return self._add({"type": "sum", "column": column, "bounds": _bounds(bounds, column),
                          "epsilon": epsilon, **kw})

    def mean(self, column: str, bounds, epsilon: float, **kw) -> "Statistics":
        return self._add({"type": "mean", "column": column, "bounds": _bounds(bounds, column),
                          "epsilon": epsilon, **kw})

    def histogram(self, column: str, epsilon: float, **kw) -> "Statistics":
        return self._add({"type": "histogram", "column": column, "epsilon": epsilon, **kw})

    def quantile(self, column: str, alphas, bounds, epsilon: float, **kw) -> "Statistics":
        return self._add({"type": "quantile", "column": column, "alphas": list(alphas),
                          "bounds": _bounds(bounds, column), "epsilon": epsilon, **kw})


def _bounds(bounds, column: str) -> list:
    """``bounds`` as a list; a SpecError that says what to give when they are missing."""
    if bounds is None or isinstance(bounds, (str, bytes)) or not hasattr(bounds, "__len__") \
            or len(bounds) != 2:
        raise SpecError(f"give bounds=(lower, upper) for {column!r}: values are clipped to them "
                        "and the noise is scaled to them; the owner's declared bounds are in "
                        "site.datasets[NAME].meta.columns")
    return list(bounds)


class Custom:
    """Your own function, run by the data owner on the real data of one dataset, as PySyft's
    tutorials do it (``@sy.syft_function_single_use(df=asset)``), with a declared cost.

    ``func(df)`` (or ``func(df, dp=None)``: then the owner's runner passes an accounted handle,
    ``shared.custom.handle.DP``, whose OpenDP measurements are counted and checked against the
    cost the owner states). The owner reads the code, states the cost (``declared_epsilon``,
    ``declared_delta`` are your proposal), and runs it in a sandbox; the result must be data
    (numbers, numpy, pandas, skops bytes for scikit-learn models, torch state dicts).
    ``run_on_mock(site)`` runs it here, on the mock, with a local handle; ``site.submit(job)``
    does that first (``run_on_mock_first=False``: submit without trying it) and submits nothing
    when it fails there, returns what cannot leave the sandbox as data, or spends more through
    the handle than the declared epsilon. ``mock_result``: what it returned on the mock."""

    def __init__(self, func, dataset: str, declared_epsilon: float, declared_delta: float = 0.0,
                 run_on_mock_first: bool = True):
        import inspect

        from shared.custom.summary import function_node

        if not (declared_epsilon > 0 and 0 <= declared_delta < 1):
            raise SpecError("declare epsilon > 0 and 0 <= delta < 1: the owner reads them")
        self.func, self.dataset = func, dataset
        self.declared_epsilon, self.declared_delta = float(declared_epsilon), float(declared_delta)
        self.source = inspect.getsource(func)
        fn = function_node(_dedent(self.source), func.__name__)
        params = [a.arg for a in fn.args.args]
        data_params = [p for p in params if p != "dp"]
        if not data_params:
            raise SpecError(f"{func.__name__} needs a parameter for the dataset's records")
        self.asset_param = data_params[0]
        self.takes_handle = "dp" in params
        self.last_handle = None
        self.run_on_mock_first = bool(run_on_mock_first)
        self.mock_result = None

    def run_on_mock(self, site):
        """``func`` on the dataset's mock data, here (with a local ``dp`` handle, whose
        measurements are in ``self.last_handle``); returns what it returns."""
        from shared.custom.handle import DP

        kwargs = {self.asset_param: site.datasets[self.dataset].mock}
        if self.takes_handle:
            self.last_handle = kwargs["dp"] = DP()
        return self.func(**kwargs)

    def check_on_mock(self, site):
        """What ``submit`` does first: run on the mock, encode the result as the sandbox will,
        compare the handle's spend with the declared epsilon; ResearcherError says what failed."""
        import tempfile

        from shared.custom.handle import spent_epsilon
        from shared.custom.output import OutputError, encode

        from .errors import ResearcherError

        name, hint = self.func.__name__, ("nothing was submitted; fix it, or pass "
                                          "run_on_mock_first=False to jobs.Custom")
        try:
            value = self.run_on_mock(site)
        except Exception as e:  # noqa: BLE001 (the researcher's own code)
            raise ResearcherError(f"{name} failed on the mock of {self.dataset} "
                                  f"({type(e).__name__}: {e}); {hint}") from e
        try:
            with tempfile.TemporaryDirectory() as d:
                encode(value, d)
        except OutputError as e:
            raise ResearcherError(f"{name}'s result on the mock cannot leave the owner's "
                                  f"sandbox as data: {e}; {hint}") from None
        if self.last_handle is not None and self.last_handle.measurements:
            spent = spent_epsilon(self.last_handle.report(), max(self.declared_delta, 1e-6))
            if spent > self.declared_epsilon * 1.001:
                raise ResearcherError(
                    f"{name} spent eps={spent:.4g} through its dp handle on the mock "
                    f"({self.last_handle.measurements} measurements), more than the "
                    f"declared eps={self.declared_epsilon:g}: the owner would not release it; "
                    f"{hint}")
        self.mock_result = value
        return value

    def submitted_source(self) -> str:
        """The code the owner reads: your function, its own decorators removed, under the
        syft decorator, with the declared cost as a comment line in its body."""
        import ast

        from shared.custom.summary import declaration, function_node

        src = _dedent(self.source)
        fn = function_node(src, self.func.__name__)
        lines = src.splitlines()
        first = fn.body[0]
        indent = " " * first.col_offset
        body_start = first.lineno - 1
        def_start = fn.lineno - 1  # decorators sit above fn.lineno
        out = [f"@sy.syft_function_single_use({self.asset_param}=asset)", *lines[def_start:
               body_start], f"{indent}# {declaration(self.declared_epsilon, self.declared_delta)}",
               *lines[body_start:]]
        text = "\n".join(out) + "\n"
        ast.parse(text)
        return text

    def __repr__(self) -> str:
        return (f"<Custom {self.func.__name__} on {self.dataset}: declared eps="
                f"{self.declared_epsilon:g}, delta={self.declared_delta:g}>")


def _dedent(source: str) -> str:
    import textwrap

    return textwrap.dedent(source)
