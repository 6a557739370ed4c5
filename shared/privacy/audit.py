"""Empirical privacy audit of a job kind in ONE run, with canaries (owner side, never released).

Steinke, Nasr, Jagielski, "Privacy auditing with one (1) training run", NeurIPS 2023. The job's
own code runs once on the owner's data plus m canaries, each included independently with
probability 1/2; each canary is then scored on the trained model, the auditor guesses "in" for
the top scores and "out" for the bottom ones, and :mod:`shared.privacy.audit_bound` turns the
number of correct guesses into an epsilon lower bound with its confidence. A bound above the
epsilon the job claims (its planned event, :mod:`shared.privacy.pricing`) is a violation: the
implementation leaks more than it is charged for.

Canaries (white-box, input space, built so canaries do not interfere with each other -- the
main obstacle to one-run audits, Keinan et al. 2025): the table gets m extra feature columns,
zero on every real record; canary j is a record whose only non-zero feature is 1 in column j,
with a random label. Only canary j ever moves the model's weights on column j, so its score --
the change of its own label's logit margin from the public initialisation (the spec's seed
fixes it) -- is its clipped gradient contributions plus the DP noise. Ideal for linear models
and the first layer of an MLP; any score keeps the bound valid, a good one makes it tight.

Faithful to the job: the real records are split exactly as the job splits them and canaries
join the training records (DP-SGD) or the pool (DP-AL), so the canary bits never move real
records between train and test. As in the paper's experiments, the job's n-dependent public
settings (Opacus' sample rate, DP-AL's plan) follow the realised number of records.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import torch

from ..data import TABLE, DatasetMeta
from ..jobs import SpecError, spec_from_dict
from ..randomness import secret_seed
from ..training import engine
from .accounting import epsilon
from .audit_bound import guess_and_bound
from .pricing import planned_event

AUDITABLE_KINDS = ("dpsgd_table", "dpal")
DEFAULT_CANARIES = 1000
CANARY_PREFIX = "audit_canary_"
_STREAM = 7_301_001  # names the audit's secret streams (canary bits, labels, tie breaks)


def audit_job(spec_dict: dict, data, meta: DatasetMeta, canaries: int = DEFAULT_CANARIES,
              confidence: float = 0.95, progress=None) -> dict:
    """Run ``spec_dict`` once on ``data`` + ``canaries`` canaries; the audit report (a dict).

    Not a release: the report is for the data owner only and is charged to no budget.
    """
    t0 = time.perf_counter()
    spec = spec_from_dict(spec_dict).validate(meta)
    if spec.KIND not in AUDITABLE_KINDS or meta.kind != TABLE:
        raise SpecError(f"the audit runs {list(AUDITABLE_KINDS)} jobs on tables; this is "
                        f"{spec.KIND} on {meta.kind}. Audit a table job of one of those kinds.")
    if not (isinstance(canaries, int) and 100 <= canaries <= 20000):
        raise SpecError(f"canaries must be an integer in [100, 20000], got {canaries!r}; "
                        "1000 is typical (more canaries, tighter bound, longer run)")
    bits_rng, label_rng, tie_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(
        secret_seed(_STREAM, int(spec.seed))).spawn(3))
    included = bits_rng.random(canaries) < 0.5
    labels = label_rng.integers(len(meta.labels), size=canaries)
    canary_rows = _canary_table(data, meta, spec.label, labels)
    aug = pd.concat([_with_zero_columns(data, canary_rows.columns),
                     canary_rows[included]], ignore_index=True)
    aug[spec.label] = aug[spec.label].astype(data[spec.label].dtype)
    aug_meta = _meta_with_canaries(meta, [c for c in canary_rows if c.startswith(CANARY_PREFIX)],
                                   len(aug))
    run = (_run_dpsgd if spec.KIND == "dpsgd_table" else _run_dpal)(
        spec, aug, aug_meta, len(data), progress)
    scores = _scores(run, canary_rows, labels)
    delta = float(spec.delta)
    stats = guess_and_bound(scores, included, delta, confidence, rng=tie_rng)
    claimed = float(epsilon(run["claimed_event"], delta))
    return {
        "kind": spec.KIND, "dataset": meta.name, "spec": spec.to_dict(), **stats,
        "claimed_epsilon": claimed, "delta": delta,
        "job_epsilon": float(epsilon(planned_event(spec.to_dict(), meta), delta)),
        "violation": bool(stats["epsilon_lower_bound"] > claimed),
        "canary": "one extra zero feature column per canary, 1 on its own record, random label",
        "score": "change of the canary's own-label logit margin from the public initialisation",
        "method": "one-run audit (Steinke, Nasr, Jagielski, NeurIPS 2023)",
        "released": False, "charged": False,
        "noise_disabled_by_test_hook": bool(engine.TEST_ONLY_DISABLE_NOISE),
        "seconds": round(time.perf_counter() - t0, 2),
    }


# -- canaries ----------------------------------------------------------------------------------
def _canary_table(df: pd.DataFrame, meta: DatasetMeta, label: str,
                  labels: np.ndarray) -> pd.DataFrame:
    """All m canaries: the real columns at 0 (or the declared value nearest 0), canary column
    j at 1 on canary j and 0 elsewhere, label ``meta.labels[labels[j]]``; df's columns first."""
    m = len(labels)
    cols = [f"{CANARY_PREFIX}{j:05d}" for j in range(m)]
    if any(str(c).startswith(CANARY_PREFIX) for c in df.columns):
        raise SpecError(f"the table already has columns named {CANARY_PREFIX}*; rename them")
    feats = [c for c in df.columns if c != label]
    values = np.zeros((m, len(feats) + m))
    values[:, :len(feats)] = [_nearest_zero(meta, c) for c in feats]
    values[np.arange(m), len(feats) + np.arange(m)] = 1.0
    out = pd.DataFrame(values, columns=feats + cols)
    out[label] = [meta.labels[int(c)] for c in labels]
    return out[[*df.columns, *cols]]


def _nearest_zero(meta: DatasetMeta, col: str) -> float:
    """0, or the declared value closest to it (so clipping to declared bounds leaves it)."""
    decl = (getattr(meta, "columns", None) or {}).get(col, {})
    if "bounds" in decl:
        return float(np.clip(0.0, *decl["bounds"]))
    if decl.get("categories"):
        return float(min(decl["categories"], key=abs))
    return 0.0


def _with_zero_columns(df: pd.DataFrame, columns) -> pd.DataFrame:
    """The real records with every canary column at 0."""
    new = [c for c in columns if c not in df.columns]
    zeros = pd.DataFrame(np.zeros((len(df), len(new))), columns=new)
    return pd.concat([df.reset_index(drop=True), zeros], axis=1)


def _meta_with_canaries(meta: DatasetMeta, cols: list[str], n_records: int) -> DatasetMeta:
    extra = dict(n_records=n_records,
                 features={**meta.features, **{c: "float64" for c in cols}},
                 feature_scales=({**meta.feature_scales, **{c: 1.0 for c in cols}}
                                 if meta.feature_scales else {}))
    if getattr(meta, "columns", None):  # an owner-declared schema: canaries live in [0, 1]
        extra["columns"] = {**meta.columns,
                            **{c: {"type": "float", "unit": "", "bounds": [0, 1]} for c in cols}}
    return dataclasses.replace(meta, **extra)


def _scores(run: dict, canary_rows: pd.DataFrame, labels: np.ndarray) -> np.ndarray:
    """How much training raised canary j's own-label margin at its input x_j relative to the
    canary-free input x_0 (its row with column j at 0): a difference in differences, so drift
    that all canaries of a label share (the bias, the real columns' weights) cancels."""
    base = canary_rows.copy()
    base[[c for c in base.columns if str(c).startswith(CANARY_PREFIX)]] = 0.0
    Xc, X0 = (torch.from_numpy(np.asarray(run["featurise"](rows), dtype=np.float32))
              for rows in (canary_rows, base))
    return ((_margins(run["model"], Xc, labels) - _margins(run["model"], X0, labels))
            - (_margins(run["init"], Xc, labels) - _margins(run["init"], X0, labels)))


@torch.no_grad()
def _margins(model: torch.nn.Module, X: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """Own-label logit minus the mean of the other logits, per canary."""
    model = model.cpu().eval()
    logits = model(X).double()
    own = logits[torch.arange(len(labels)), torch.as_tensor(labels)]
    others = (logits.sum(1) - own) / (logits.shape[1] - 1)
    return (own - others).numpy()


# -- the job kinds -------------------------------------------------------------------------------
def _audit_spec(spec, **changes):
    """The job's spec with no metrics on private records (the audit scores the model only)."""
    names = {f.name for f in dataclasses.fields(spec)}
    if "metrics_epsilon" in names:
        changes["metrics_epsilon"] = 0.0
    return dataclasses.replace(spec, **changes)


def _run_dpsgd(spec, aug, aug_meta, n_real, progress) -> dict:
    """The DP-SGD table job (shared.runner.run_job) on its own training records + canaries."""
    from ..training.models import build_from_config, build_model
    from ..runner import run_job
    from ..training.preprocess import encode_labels, preprocess
    from ..training.serialise import load_state
    from ..training.split import split_indices

    y_real = encode_labels(aug[spec.label].iloc[:n_real], aug_meta.labels)
    rows = aug.drop(columns=[spec.label]).iloc[:n_real].to_numpy(dtype=np.float64)
    tr, _ = split_indices(rows, y_real, spec.test_fraction, spec.seed)
    train = aug.iloc[np.concatenate([tr, np.arange(n_real, len(aug))])].reset_index(drop=True)
    job = _audit_spec(spec, test_fraction=0.0)  # the split is done: canaries only train
    train_meta = dataclasses.replace(aug_meta, n_records=len(train))
    result = run_job(job.to_dict(), train, train_meta, progress=progress)
    config = result["model_config"]
    model = build_from_config(config)
    model.load_state_dict(load_state(result["model_state"]))
    with torch.random.fork_rng(devices=[]):  # the job's public initialisation (its seed)
        torch.manual_seed(spec.seed)
        init = build_model(spec.model, config["n_features"], config["n_classes"], spec.hidden)
    return {"model": model, "init": init,
            "featurise": lambda rows: preprocess(rows[config["feature_columns"]].to_numpy(),
                                                 config),
            "claimed_event": planned_event(job.to_dict(), train_meta)}


def _run_dpal(spec, aug, aug_meta, n_real, progress) -> dict:
    """The DP-AL loop (shared.dpal.run_dpal) with canaries in the pool (they may be labelled)."""
    from ..dpal import run_dpal
    from ..training.models import build_model
    from ..jobs.dpal import HIDDEN, dpal_features, plan_for
    from ..training.split import split_indices

    job = _audit_spec(spec)
    X, y, _ = dpal_features(job, aug, aug_meta)
    tr, te = split_indices(X[:n_real], y[:n_real], job.test_fraction, job.seed)
    pool = np.concatenate([tr, np.arange(n_real, len(aug))])
    plan = plan_for(job, aug_meta, n_pool=len(pool))
    y_pool = y[pool]
    n_classes = len(aug_meta.labels)
    head = "mlp" if job.model == "mlp" else "logreg"

    def build():
        return build_model(head, X.shape[1], n_classes, HIDDEN)

    out = run_dpal(X[pool], lambda idx: y_pool[idx], X[te], y[te], plan, build,
                   n_classes=n_classes, acquisition=job.acquisition, clip_norm=job.clip_norm,
                   learning_rate=job.lr(), score_bound=job.score_bound or None,
                   seed=job.seed, progress=progress)
    with torch.random.fork_rng(devices=[]):  # run_dpal's public initialisation
        torch.manual_seed(int(job.seed))
        init = build()
    return {"model": out["model"], "init": init,
            "featurise": lambda rows: dpal_features(job, rows, aug_meta)[0],
            "claimed_event": plan.group_event(plan.worst_group())}
