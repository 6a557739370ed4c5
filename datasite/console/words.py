"""Requests and results in plain words for the steward: spec fields, metrics, custom code."""
from __future__ import annotations

import math

from markupsafe import Markup

from shared.display import escape_block

# What a spec field means, for someone who does not read job specs; unknown fields show
# their own name (it is the researcher's text, escaped like the value).
FIELDS = {
    "kind": "job kind",
    "dataset": "dataset it runs on",
    "label": "column it predicts",
    "epsilon": "privacy loss asked for (epsilon; smaller is more private)",
    "delta": "chance the epsilon guarantee fails (delta)",
    "epochs": "passes over the data",
    "batch_size": "records per training step",
    "lr": "learning rate",
    "learning_rate": "learning rate",
    "max_grad_norm": "clipping bound on each record's gradient",
    "model": "model architecture",
    "features": "columns used as inputs",
    "test_fraction": "share of records held out to test the model",
    "seed": "random seed",
    "queries": "statistics asked for",
    "backbone": "pretrained model it starts from",
    "method": "training method",
    "hidden": "hidden layer size",
    "rounds": "training rounds",
    "removable": "model can later forget a patient's record",
    "noise_multiplier": "noise added per step (relative to clipping)",
    "clip_norm": "clipping bound on each record's gradient",
    "class_weights": "weighting of the classes in the loss (\"balanced\": from the label rates "
                     "declared in the schema)",
    "metrics_epsilon": "privacy loss spent on the test metrics (epsilon; 0: no metrics on the "
                       "private data)",
    "metrics_auc": "also release the test AUC (with noise, priced)",
    "tail_average": "release the average of the weights over the last half of training "
                    "(no privacy cost)",
    "target": "privacy target the noise is set to instead of epsilon (empty: epsilon)",
    "tuning_trials": "average number of tuning trials (0: no tuning; the real number is "
                     "secret)",
    "tuning_shape": "shape of the random number of tuning trials (1: geometric)",
    "candidates": "settings the tuning trials choose from",
}

# What a result metric means (the first part of its dotted key; "{}" takes the rest, e.g. the
# class). Unknown metrics show their key with spaces.
METRICS = {
    "n_test": "records in the test split",
    "n_train": "records trained on",
    "test_accuracy": "test accuracy",
    "test_accuracy_std": "spread of the test accuracy from the noise (standard deviation)",
    "per_class_accuracy": "accuracy on class {}",
    "per_class_recall": "recall on class {}",
    "balanced_accuracy": "balanced accuracy (mean recall over classes)",
    "test_auc": "test AUC",
    "auc": "test AUC",
    "evaluated_on": "metrics computed on",
    "mechanism": "how the metrics were made private",
    "noise": "noise added to the metric counts",
    "noise_scale": "noise scale on each count (sigma)",
    "noisy_counts": "test records of class {} {} (with noise)",
    "epochs_run": "passes over the data",
    "steps": "training steps",
    "loss": "training loss",
}
_NOISY_WORDS = {"correct": "predicted right", "wrong": "predicted wrong"}


def field_label(key) -> str:
    return FIELDS.get(key, str(key).replace("_", " ")) if isinstance(key, str) else repr(key)


def spec_rows(spec: dict | None) -> list[tuple[str, str, object]]:
    """(meaning, field name, value) of every spec field, in name order."""
    if not spec:
        return []
    return [(field_label(k), k, v) for k, v in sorted(spec.items(), key=lambda kv: repr(kv[0]))]


def code_html(code: str) -> Markup:
    """Custom code, in full, highlighted: made safe by :mod:`shared.display` first (control,
    bidi and invisible characters shown as escapes), then HTML-escaped by Pygments."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    safe = escape_block(code, max_lines=10**6, max_line_chars=10**5)
    return Markup(highlight(safe, PythonLexer(), HtmlFormatter(nowrap=True)))


def code_css() -> str:
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(style="default").get_style_defs(".code")


def flat_metrics(metrics: dict | None) -> tuple[list[tuple[str, object]], dict[str, list]]:
    """(scalar metrics as (dotted name, value), number series such as learning curves)."""
    rows, curves = [], {}

    def walk(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        elif (isinstance(v, (list, tuple)) and len(v) > 2
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
            curves[prefix] = [float(x) for x in v]
        else:
            rows.append((prefix, v))

    walk("", metrics or {})
    return rows, curves


def metric_label(key: str) -> str:
    """A result metric's dotted key in words (``per_class_accuracy.1``: accuracy on class 1)."""
    head, *rest = str(key).split(".")
    words = METRICS.get(head)
    if words is None:
        return str(key).replace("_", " ").replace(".", " / ")
    rest = [_NOISY_WORDS.get(r, r) for r in rest] if head == "noisy_counts" else rest
    n = words.count("{}")
    if n == 0:
        return words + (" / " + " / ".join(rest) if rest else "")
    rest = (rest + [""] * n)[:n - 1] + [".".join(rest[n - 1:])]
    return words.format(*rest).replace("  ", " ").strip()


def metric_rows(metrics: dict | None) -> tuple[list[dict], dict[str, list], bool]:
    """(rows {label, key, value, below_zero}, number series, whether any count is noisy)."""
    rows, curves = flat_metrics(metrics)
    out = [{"label": metric_label(k), "key": k, "value": v,
            "below_zero": k.startswith("noisy_counts.") and isinstance(v, (int, float))
            and v < 0} for k, v in rows]
    noisy = any(k.startswith("noisy_counts.") for k, _ in rows) or "DP noise" in str(
        (metrics or {}).get("evaluated_on", ""))
    return out, curves, noisy


# What a ledger entry's state means for the owner (datasite/states.py)
ENTRY_STATES = {
    "estimated": "priced only; nothing reserved",
    "reserved": "reserved before the run",
    "running": "held while it runs and until you release or deny it",
    "committed": "spent",
    "released": "spent; the result was released",
    "refunded": "given back: not spent",
    "denied": "denied: not spent",
}


def number(v, digits: int = 3) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def bar(spent: float | None, after: float | None, budget: float | None) -> dict | None:
    """Widths (percent of the budget) of a before/after budget bar."""
    if budget is None or budget <= 0 or spent is None:
        return None
    clip = lambda x: max(0.0, min(100.0, 100.0 * x / budget))  # noqa: E731
    after = spent if after is None else after
    return {"spent": clip(spent), "added": max(0.0, clip(after) - clip(spent)),
            "over": after > budget + 1e-9, "before": spent, "after": after, "budget": budget}
