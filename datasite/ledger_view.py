"""What `datasite ledger` shows: budgets, spend (tight and naive), history, and a plot."""
from __future__ import annotations

from .ledger import Ledger
from .states import SPENDING


def report(ledger: Ledger, dataset: str | None = None,
           sizes: dict[str, int] | None = None) -> dict:
    """``sizes``: records per dataset, for the per-record histogram's counts."""
    out = {"datasets": [], "history": []}
    budgets = [b for b in ledger.all_budgets() if dataset in (None, b["dataset"])]
    for b in (b for b in budgets if not b["researcher"]):
        ds = b["dataset"]
        spent = ledger.spent(ds)
        researchers = []
        for rb in (r for r in budgets if r["dataset"] == ds and r["researcher"]):
            rs = ledger.spent(ds, rb["researcher"])
            researchers.append({"researcher": rb["researcher"], "budget": rb["epsilon"], **rs})
        out["datasets"].append({"dataset": ds, "budget": b["epsilon"], "delta": b["delta"],
                                "spent": spent["epsilon"], "naive": spent["naive_epsilon"],
                                "left": b["epsilon"] - spent["epsilon"], "jobs": spent["jobs"],
                                "researchers": researchers,
                                "records": ledger.record_histogram(ds, (sizes or {}).get(ds))})
    for e in ledger.history(dataset):
        out["history"].append({**{k: (str(v) if k.endswith("_at") else v) for k, v in e.items()
                                  if k not in ("event_json", "realised_json")},
                               "cost": Ledger.cost_source(e)})
    ok, why = ledger.verify()
    out["audit"] = {"intact": ok, "detail": why}
    return out


def render(rep: dict) -> str:
    lines = []
    for d in rep["datasets"]:
        lines.append(f"{d['dataset']}: budget eps={d['budget']:g} at delta={d['delta']:g}; spent "
                     f"{d['spent']:.3f} composed (PLD) vs {d['naive']:.3f} by adding epsilons; "
                     f"left {d['left']:.3f}; {d['jobs']} jobs")
        h = d["records"]
        lines.append(f"  records by epsilon spent ({h['classes']} distinct histories):")
        for b in h["bins"]:
            lines.append(f"    {b['from']:7.3f} - {b['to']:7.3f}: {b['records']} records")
        for r in d["researchers"]:
            lines.append(f"  {r['researcher']}: budget {r['budget']:g}, spent {r['epsilon']:.3f} "
                         f"(naive {r['naive_epsilon']:.3f})")
    if rep["history"]:
        lines.append("history:")
        for h in rep["history"]:
            lines.append(f"  {h['created_at'][:19]}  {h['request_id'][:8]}  {h['dataset']:<16} "
                         f"{h['researcher'] or 'everyone (owner release)':<24} {h['state']:<9} "
                         f"eps={h['epsilon']:.3f} {h.get('cost', 'computed')}"
                         + (f"  {h['request_id']}" if h["request_id"].startswith("mock:") else ""))
    if any(h.get("cost") == "declared" for h in rep["history"]):
        lines.append("  (declared: a cost the owner stated for custom code, not computed here)")
    lines.append(f"audit log: {rep['audit']['detail']}")
    return "\n".join(lines)


def plot(ledger: Ledger, path: str) -> None:
    """Cumulative composed spend over time per dataset and researcher, against the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = ledger.all_budgets()
    datasets = [b for b in budgets if not b["researcher"]]
    fig, axes = plt.subplots(len(datasets) or 1, 1, figsize=(8, 3.5 * max(1, len(datasets))),
                             squeeze=False)
    for ax, b in zip(axes[:, 0], datasets):
        hist = [e for e in ledger.history(b["dataset"]) if e["state"] in SPENDING]
        who = [("dataset", None)] + [(r["researcher"], r["researcher"]) for r in budgets
                                      if r["dataset"] == b["dataset"] and r["researcher"]]
        for label, researcher in who:
            mine = [e for e in hist if not researcher or e["researcher"] == researcher]
            xs = [e["updated_at"] for e in mine]
            ys = ledger.epsilon_series([Ledger.charged_event(e) for e in mine], b["delta"])
            if xs:
                ax.step(xs, ys, where="post", marker="o", label=label)
        ax.axhline(b["epsilon"], color="red", linestyle="--", label="dataset budget")
        ax.set_title(f"{b['dataset']} (delta={b['delta']:g})")
        ax.set_ylabel("epsilon spent (PLD)")
        ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
