"""The console's plots, as PNG data URIs (matplotlib, Agg; nothing fetched by the browser).

Titles and labels are the console's own words or numbers; a researcher-chosen name that ends
up in a label is drawn as text in the image, never interpreted.
"""
from __future__ import annotations

import base64
import io

import numpy as np

from ..ledger import Ledger
from ..state import now
from ..states import SPENDING


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


def tradeoff(event_json: str) -> str | None:
    """Membership-attack trade-off: the largest TPR of any attack at each FPR (the job's
    trade-off curve, as the privacy report computes it), with the 0.1/1/10% points marked."""
    from shared.privacy.accounting import event_from_json
    from shared.privacy.reporting import REPORT_FPRS, tradeoff_curve

    curve = tradeoff_curve(event_from_json(event_json))
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


def spend_over_time(ledger: Ledger, dataset: str) -> str | None:
    """Cumulative spend on ``dataset``: composed (PLD, tight) and naive (epsilons added)."""
    b = ledger.budget(dataset)
    if b is None:
        return None
    hist = sorted((e for e in ledger.history(dataset) if e["state"] in SPENDING),
                  key=lambda e: e["updated_at"])
    fig, ax = _figure()
    if hist:
        from datetime import timedelta

        # from zero just before the first spend, to now: a readable time axis for one point too
        events, xs, tight, naive = [], [hist[0]["updated_at"] - timedelta(minutes=1)], [0.0], [0.0]
        for e in hist:
            events.append(e["realised_json"] or e["event_json"])
            xs.append(e["updated_at"])
            tight.append(Ledger.epsilon_of(events, b["delta"]))
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


def series(name: str, values: list[float]) -> str:
    """A learning curve (or any list of numbers from a result's metrics)."""
    fig, ax = _figure(4.8, 2.8)
    ax.plot(range(1, len(values) + 1), values, marker="o" if len(values) < 40 else None)
    ax.set_xlabel("step / epoch")
    ax.set_title(name, fontsize=10)
    return _png(fig)


def images(batch) -> list[str]:
    """Mock images as PNG data URIs (grey or RGB, uint8)."""
    from PIL import Image

    out = []
    for img in batch:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(img, dtype=np.uint8)).resize((84, 84)).save(buf, "PNG")
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
    return out
