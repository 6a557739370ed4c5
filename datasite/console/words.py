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
}


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
