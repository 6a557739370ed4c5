"""The console's plots, as PNG data URIs (matplotlib, Agg; nothing fetched by the browser).

Titles and labels are the console's own words or numbers; a researcher-chosen name that ends
up in a label is drawn as text in the image, never interpreted.
"""
from __future__ import annotations

import base64
import functools
import io
import json
import threading
from collections import OrderedDict

import numpy as np

from ..ledger import Ledger
from ..state import now
from ..states import SPENDING


# matplotlib is not thread-safe (its mathtext parser, used for log-scale tick labels, is one
# shared object), and the console renders pages in a thread pool: one chart at a time.
_DRAWING = threading.RLock()


def _one_at_a_time(draw):
    """Serialise a chart function (see :data:`_DRAWING`)."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with _DRAWING:
            return draw(*args, **kwargs)
    return wrapper


_KEPT = 64  # drawn charts remembered (PNG data URIs of tens of kB each)


def _remembered(draw):
    """Remember a chart by its inputs. A page is drawn again on every visit and on the reload
    that ends a run's progress poll, and one chart costs a second or two of CPU (tight layout,
    log-scale tick text, PNG encoding); the same inputs always draw the same picture."""
    kept: OrderedDict[str, str | None] = OrderedDict()
    lock = threading.Lock()

    @functools.wraps(draw)
    def wrapper(*args):
        key = json.dumps(args, default=str)  # keys in their order: bars follow it
        with lock:
            if key in kept:
                kept.move_to_end(key)
                return kept[key]
        png = draw(*args)
        with lock:
            kept[key] = png
            while len(kept) > _KEPT:
                kept.popitem(last=False)
        return png
    return wrapper


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float = 5.5, h: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


@_remembered
def tradeoff(event_json: str) -> str | None:
    """Membership-attack trade-off: the largest TPR of any attack at each FPR (the job's
    trade-off curve, as the privacy report computes it), with the 0.1/1/10% points marked."""
    from shared.privacy.accounting import event_from_json
    from shared.privacy.reporting import tradeoff_curve

    # the curve (PLD compositions) outside the drawing lock: only the drawing is serialised
    return _draw_tradeoff(tradeoff_curve(event_from_json(event_json)))


@_one_at_a_time
def _draw_tradeoff(curve) -> str:
    from shared.privacy.reporting import REPORT_FPRS

    fig, ax = _figure(4.8, 3.6)
    fpr = np.logspace(-4, 0, 200)
    tpr = np.ones_like(fpr) if curve is None else np.asarray(curve.tpr(fpr))
    ax.plot(fpr, tpr, label="attack TPR bound (this job)")
    ax.plot(fpr, fpr, "--", color="grey", label="random guess")
    pts = np.asarray(REPORT_FPRS)
    ax.plot(pts, np.ones_like(pts) if curve is None else curve.tpr(pts), "o", color="C3",
            label="FPR 0.1 / 1 / 10 %")
    ax.set_xscale("log")  # log-log: the small FPRs, where attacks on patients matter, show
    ax.set_yscale("log")
    ax.set_xlabel("false-positive rate (FPR)")
    ax.set_ylabel("largest true-positive rate (TPR)")
    ax.set_ylim(1e-4, 1.05)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


@_one_at_a_time
def spend_over_time(ledger: Ledger, dataset: str) -> str | None:
    """Cumulative spend on ``dataset``: composed (the ledger's accountant) and naive (epsilons
    added)."""
    b = ledger.budget(dataset)
    if b is None:
        return None
    hist = sorted((e for e in ledger.history(dataset) if e["state"] in SPENDING),
                  key=lambda e: e["updated_at"])
    fig, ax = _figure()
    if hist:
        from datetime import timedelta

        # from zero just before the first spend, to now: a readable time axis for one point too
        xs, naive = [hist[0]["updated_at"] - timedelta(minutes=1)], [0.0]
        tight = [0.0] + ledger.epsilon_series([Ledger.charged_event(e) for e in hist],
                                              b["delta"])
        for e in hist:
            xs.append(e["updated_at"])
            naive.append(naive[-1] + e["epsilon"])
        xs.append(max(now().replace(tzinfo=xs[-1].tzinfo), xs[-1]))
        tight.append(tight[-1])
        naive.append(naive[-1])
        # the naive sum drawn first, wide and light; the tight line on top: where they agree,
        # both show
        ax.step(xs, naive, where="post", color="C1", linewidth=4, alpha=0.45,
                label=f"naive sum of epsilons: {naive[-1]:.3g}")
        ax.step(xs, tight, where="post", color="C0", linewidth=1.8,
                label=f"composed (PLD, tight): {tight[-1]:.3g}")
        top = max(naive[-1], tight[-1]) * 1.25
        fig.autofmt_xdate()
    else:
        top = 0.0
        ax.text(0.5, 0.5, "nothing spent yet", ha="center", va="center",
                transform=ax.transAxes)
    # scaled to the spend, so small spends and tight vs naive can be told apart; the budget is
    # drawn when it is on that scale, and always stated in the title
    if b["epsilon"] <= max(top, 1e-9) * 1.6 or not hist:
        ax.axhline(b["epsilon"], color="red", linestyle="--", label=f"budget {b['epsilon']:g}")
        top = max(top, b["epsilon"] * 1.05)
    ax.set_ylim(0, top)
    ax.set_title(f"Spent on {dataset} (budget eps={b['epsilon']:g} at delta={b['delta']:g}"
                 + (", far above this scale)" if b["epsilon"] > top else ")"), fontsize=9)
    ax.set_ylabel(f"epsilon spent (delta={b['delta']:g})")
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


@_remembered
@_one_at_a_time
def series(name: str, values: list[float]) -> str:
    """A learning curve (or any list of numbers from a result's metrics)."""
    fig, ax = _figure(4.8, 2.8)
    ax.plot(range(1, len(values) + 1), values, marker="o" if len(values) < 40 else None)
    ax.set_xlabel("step / epoch")
    ax.set_title(name, fontsize=10)
    return _png(fig)


@_remembered
@_one_at_a_time
def curve(c: dict) -> str:
    """One of a finished run's review curves (``datasite.execution.review_curves``): its
    title, x and y axis labels and points."""
    fig, ax = _figure(4.8, 3.0)
    xs, ys = c["x"], c["y"]
    ax.plot(xs, ys, marker="o" if len(xs) < 40 else None)
    ax.set_xlabel(c.get("xlabel", ""))
    ax.set_ylabel(c.get("ylabel", ""))
    ax.set_title(c.get("title", ""), fontsize=9)
    if all(float(x).is_integer() for x in xs) and len(xs) <= 12:
        ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    return _png(fig)


@_remembered
@_one_at_a_time
def per_class(accuracy: dict, noisy: bool) -> str | None:
    """Per-class accuracy (recall) as bars, one per class in the result's order; a class
    without a rate is marked "n/a"."""
    if not accuracy:
        return None
    names = [str(k) for k in accuracy]
    vals = [float(v) if isinstance(v, (int, float)) else None for v in accuracy.values()]
    fig, ax = _figure(max(3.6, min(9.0, 1.2 + 0.6 * len(names))), 3.0)
    xs = np.arange(len(names))
    ax.bar(xs, [v or 0.0 for v in vals], color="C0")
    for x, v in zip(xs, vals):
        ax.text(x, (v or 0.0) + 0.02, "n/a" if v is None else f"{v:.2f}", ha="center",
                fontsize=8)
    ax.set_xticks(xs, names, rotation=0 if len(names) <= 10 else 90)
    ax.set_ylim(0, 1.12)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy on the class" + (" (DP noise)" if noisy else ""))
    ax.set_title("Per-class accuracy on the test split", fontsize=10)
    return _png(fig)


@_remembered
@_one_at_a_time
def record_spend(hist: dict) -> str | None:
    """The per-record spend histogram (``Ledger.record_histogram``): how many records have
    spent how much epsilon, one bar per epsilon range, its count written on it."""
    bins = (hist or {}).get("bins") or []
    if not bins:
        return None
    fig, ax = _figure(5.5, 3.0)
    counts = [int(b["records"] or 0) for b in bins]
    width = max(b["to"] - b["from"] for b in bins)
    if width <= 0:  # nothing spent yet: one range, at 0
        lefts, widths = [0.0], [1.0]
        ax.set_xticks([0.5], ["0"])
    else:
        lefts, widths = [b["from"] for b in bins], [b["to"] - b["from"] for b in bins]
    ax.bar(lefts, counts, width=widths, align="edge", color="C0", edgecolor="white")
    for x, w, n in zip(lefts, widths, counts):
        if n:
            ax.text(x + w / 2, n, str(n), ha="center", va="bottom", fontsize=8)
    ax.set_xlim(min(lefts), max(lefts) + widths[-1])
    ax.set_ylim(0, max(max(counts), 1) * 1.15)
    ax.set_xlabel("epsilon spent per record (range)")
    ax.set_ylabel("number of records")
    ax.set_title("Records by epsilon spent", fontsize=10)
    return _png(fig)


@_one_at_a_time
def images(batch) -> list[str]:
    """Mock images as PNG data URIs (grey or RGB, uint8)."""
    from PIL import Image

    out = []
    for img in batch:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(img, dtype=np.uint8)).resize((84, 84)).save(buf, "PNG")
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
    return out
