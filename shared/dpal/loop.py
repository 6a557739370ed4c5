"""The DP active-learning loop (ALGORITHMS.md 3), for tables and for image features.

Round r = 0..R: train the labelled groups with DP-SGD (warm start), group g at the plan's rate
``plan.rates[r][g]`` for ``plan.steps[r]`` steps; then, if r < R, score every unlabelled record
with the current model, take k_{r+1} by private top-k, and ask ``label_oracle`` for their labels.
``label_oracle(indices) -> labels`` is the only way pool labels are read, and only for records
labelled at that point. The start set is a seeded uniform draw (data-independent).

The guarantee (per record, at the plan's delta) covers the model and the selections; with
``dp_metrics`` each round's test metrics are a priced Gaussian release
(:mod:`shared.privacy.private_metrics`; the job kind composes them into its event). Without it
they are exact: for owner-side benchmarks only, never released. Results hold counts, never
record ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..privacy.accounting import event_to_json
from ..privacy.private_metrics import NOISE_STREAM
from ..privacy.reporting import privacy_report
from ..randomness import secret_seed
from .acquisition import natural_bound, select
from .schedule import Plan, group_event

Progress = Callable[[int, int], None]


@dataclass
class LoopInputs:
    """What a job runs :func:`run_dpal` on (``shared.jobs.dpal``)."""

    X: torch.Tensor                                  # model inputs, one per record
    rows: np.ndarray                                 # each record's content, for the split
    y: np.ndarray                                    # label indices
    build_model: Callable[[], torch.nn.Module]       # the same untrained model at every call
    release: Callable[[torch.nn.Module], dict]       # trained model -> model_state, config, ...
    eval_batch: int                                  # records per forward pass when scoring


@torch.no_grad()
def evaluate(model: torch.nn.Module, X: torch.Tensor, y: np.ndarray, n_classes: int,
             batch: int = 4096) -> dict:
    """Accuracy, per-class accuracy, AUC (binary, or macro one-vs-rest) on (X, y)."""
    from ..training.metrics import accuracy, auc, per_class_accuracy
    from .acquisition import predict_proba

    if len(y) == 0:
        return {"accuracy": None, "per_class_accuracy": {}, "auc": None}
    P = predict_proba(model, X, batch)
    return {"accuracy": accuracy(P, y),
            "per_class_accuracy": per_class_accuracy(P.argmax(1), y, range(n_classes)),
            "auc": auc(P, y, n_classes)}


def run_dpal(X_pool: np.ndarray, label_oracle: Callable[[np.ndarray], np.ndarray],
             X_test: np.ndarray, y_test: np.ndarray, plan: Plan,
             build_model: Callable[[], torch.nn.Module], *, n_classes: int,
             acquisition: str = "entropy", clip_norm: float = 1.0, learning_rate: float = 0.5,
             score_bound: float | None = None, seed: int = 0, private: bool = True,
             progress: Progress | None = None, device=None, dp_metrics: bool = False,
             metrics_sigma: float | None = None, eval_batch: int = 4096) -> dict:
    """Run the plan's DP-AL loop on ``X_pool`` (float32, one row per pool record: features, or
    images (N, C, H, W) for a model that takes them).

    ``private=False``: the non-private AL baseline (no noise in training nor in selection,
    gradients still clipped); the result then has no privacy report.
    Returns {"model", "rounds", "privacy", "executed_events", "labelled"} where ``labelled``
    (the count per group) and ``model`` are for the caller; ``rounds`` is JSON-able.
    ``dp_metrics``: each round's test metrics through the Gaussian histogram at
    ``metrics_sigma`` (None: no metrics); else exact (owner-side benchmarks only).
    ``eval_batch``: records per forward pass when scoring and evaluating (small for images).
    """
    R = plan.rounds
    N = len(X_pool)
    bound, esr = _selection_params(plan, N, acquisition, n_classes, score_bound, private)

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    Xp, Xt = _float_tensor(X_pool), _float_tensor(X_test)
    yt = np.asarray(y_test, dtype=np.int64)

    group = np.full(N, -1, dtype=np.int64)  # round in which each record was labelled
    labels = np.full(N, -1, dtype=np.int64)
    start = rng.choice(N, size=plan.start_size, replace=False)
    labels[start] = _ask(label_oracle, start, n_classes)
    group[start] = 0

    trainer = _trainer(build_model, plan.noise_multiplier if private else 0.0,
                       clip_norm=clip_norm, learning_rate=learning_rate, seed=seed,
                       device=device)
    total_steps, done_steps = int(sum(plan.steps)), 0
    executed_steps: list[int] = []
    rounds = []
    try:
        for r in range(R + 1):
            idx = np.flatnonzero(group >= 0)
            rates = np.array([plan.rates[r][g] for g in group[idx]], dtype=np.float64)

            def tick(d, _t, base=done_steps):
                if progress is not None:
                    progress(base + d, total_steps)

            steps = trainer.run(Xp[idx], torch.as_tensor(labels[idx]), rates, plan.steps[r],
                                progress=tick)
            executed_steps.append(int(steps))
            done_steps += steps
            row = {"round": r, "labelled": int(len(idx)), "steps": int(steps),
                   "expected_batch_size": float(rates.sum()),
                   "mean_batch_size": float(np.mean(trainer.last_batch_sizes))
                   if trainer.last_batch_sizes else 0.0}
            row.update(_dp_evaluate(trainer.module, Xt, yt, n_classes, metrics_sigma,
                                    (int(seed), NOISE_STREAM, r), eval_batch) if dp_metrics
                       else evaluate(trainer.module, Xt, yt, n_classes, eval_batch))
            if private:
                row["epsilon_per_group"] = [float(e) for e in plan.eps_after_round[r]]
            if r < R:
                k = plan.query_sizes[r]
                unl = np.flatnonzero(group < 0)
                pick = select(acquisition, trainer.module, Xp[unl], k, esr, bound,
                              seed=secret_seed(int(seed), 2, r), batch=eval_batch)
                new = unl[pick]
                labels[new] = _ask(label_oracle, new, n_classes)
                group[new] = r + 1
                row["selected"] = int(len(new))
            rounds.append(row)
    finally:
        trainer.close()

    out = {"model": trainer.module, "rounds": rounds,
           "labelled": [int((group == g).sum()) for g in range(R + 1)],
           "group_of_pool": group}  # -1: never labelled; owner-side only (the caller strips it)
    if private:
        out["executed_events"], out["privacy"] = _privacy(plan, executed_steps, group,
                                                          clip_norm, bound)
    return out


def _float_tensor(X) -> torch.Tensor:
    if torch.is_tensor(X):
        return X.float()
    return torch.as_tensor(np.asarray(X, dtype=np.float32))


def _trainer(build_model: Callable[[], torch.nn.Module], sigma: float, *, clip_norm: float,
             learning_rate: float, seed: int, device):
    """The DP-SGD trainer of the whole loop (warm start across rounds), its model initialised
    from ``seed`` without touching the caller's torch RNG."""
    from ..training.device import default_device
    from ..training.engine import DPTrainer

    device = default_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = build_model()
    return DPTrainer(model, clip_norm=clip_norm, noise_multiplier=sigma,
                     learning_rate=learning_rate, seed=int(seed), device=device)


def _selection_params(plan: Plan, N: int, acquisition: str, n_classes: int,
                      score_bound: float | None, private: bool) -> tuple[float, float | None]:
    """(score bound S, selection epsilon per round; None: non-private), after checking that
    the pool and the plan's selection budget fit the run."""
    # The plan's events depend on the group sizes, not on the pool's size: the pool is the
    # training side of a per-record split (Binomial size, planned at plan.n_pool), and only
    # needs room for every group.
    need = plan.start_size + sum(plan.query_sizes)
    if N < need:
        raise ValueError(f"pool has {N} records, fewer than the {need} the plan labels "
                         f"(planned for {plan.n_pool}); lower start_size or query_sizes")
    bound = float(score_bound) if score_bound else natural_bound(acquisition, n_classes)
    esr = plan.eps_sel_round if private else None
    if private and acquisition != "random" and not (esr and esr > 0):
        raise ValueError("a data-dependent acquisition needs eps_selection > 0")
    return bound, esr


def _privacy(plan: Plan, executed_steps: list[int], group: np.ndarray, clip_norm: float,
             bound: float) -> tuple[list[str], dict]:
    """(executed events as JSON, privacy report): the executed events must equal the plan's
    (else nothing is released); the report is the worst group's, with one entry per group."""
    R = plan.rounds
    events = [group_event(g, plan.eps_sel_round, plan.noise_multiplier, plan.rates,
                          executed_steps) for g in range(R + 1)]
    executed = [event_to_json(e) for e in events]
    if executed != plan.group_events:
        raise RuntimeError("executed events differ from the plan's")  # never release
    worst = plan.worst_group() if plan.group_epsilon else R
    report = privacy_report(events[worst], plan.delta)
    report.update(worst_group=int(worst), noise_multiplier=plan.noise_multiplier,
                  clip_norm=float(clip_norm), score_bound=bound,
                  eps_selection_round=plan.eps_sel_round,
                  group_epsilon=[float(e) for e in plan.group_epsilon],
                  group_events=executed)
    # one report per group (records labelled in the same round share a guarantee)
    report["groups"] = []
    for g, e in enumerate(events):
        r = privacy_report(e, plan.delta)
        report["groups"].append({"group": g, "labelled_in_round": g,
                                 "size": int((group == g).sum()),
                                 **{k: r[k] for k in ("epsilon", "delta", "tpr_bound", "mu")}})
    return executed, report


@torch.no_grad()
def _dp_evaluate(model, X: torch.Tensor, y: np.ndarray, n_classes: int, sigma, stream,
                 batch: int = 4096) -> dict:
    """One round's metrics as a DP release (exact only under mock evaluation)."""
    from .acquisition import predict_proba
    from ..privacy.private_metrics import is_mock, release

    pred = predict_proba(model, X, batch).argmax(1) if len(y) else np.zeros(0, dtype=np.int64)
    m = release(y, pred, list(range(n_classes)), sigma, stream=stream)
    out = {"accuracy": m["test_accuracy"], "per_class_accuracy": m["per_class_accuracy"],
           "auc": evaluate(model, X, y, n_classes, batch)["auc"] if is_mock() else None}
    out.update({k: m[k] for k in ("evaluated_on", "test_accuracy_std") if k in m})
    return out


def _ask(oracle, idx: np.ndarray, n_classes: int) -> np.ndarray:
    y = np.asarray(oracle(np.asarray(idx).copy()), dtype=np.int64)
    if y.shape != (len(idx),) or (len(y) and (y.min() < 0 or y.max() >= n_classes)):
        raise ValueError("label_oracle must return one label in [0, n_classes) per index")
    return y


# -- plots -------------------------------------------------------------------------------------
def plot_accuracy(curves: dict[str, Sequence[dict]], path: str, metric: str = "accuracy"):
    """Accuracy vs labelled-set size; ``curves``: name -> rounds list (from run_dpal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, rows in curves.items():
        ax.plot([r["labelled"] for r in rows], [r[metric] for r in rows], marker="o", label=name)
    ax.set_xlabel("labelled records")
    ax.set_ylabel(metric)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_group_epsilon(plan: Plan, path: str):
    """Each group's epsilon after each round (the planned curve dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    E = np.array(plan.eps_after_round)
    for g in range(E.shape[1]):
        ax.plot(range(E.shape[0]), E[:, g], marker="o", label=f"group {g}")
    ax.plot(range(len(plan.curve)), plan.curve, "k--", label="planned curve")
    ax.axhline(plan.epsilon, color="grey", lw=0.8)
    ax.set_xlabel("round")
    ax.set_ylabel(f"epsilon at delta={plan.delta:g}")
    ax.set_title(f"{plan.mode} ({plan.accountant})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
