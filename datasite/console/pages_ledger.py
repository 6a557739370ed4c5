"""Ledger: the history with filters, tight vs naive spend over time, the audit chain's
verification (with the first bad entry) and exports (CSV, JSON)."""
from __future__ import annotations

import csv
import io
import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from ..ledger_view import report
from . import charts
from .web import owner, render

router = APIRouter()
ops = None  # the app's Console, set by app.create_app
COLUMNS = ("created_at", "updated_at", "request_id", "dataset", "researcher", "state",
           "epsilon", "delta", "cost")  # cost: "computed" (from a spec) or "declared" (by the
# owner, for custom code: nothing here computed it)


def _report(site, dataset: str, researcher: str, state: str) -> dict:
    rep = report(site.ledger, sizes={n: m.n_records for n, m in site.datasets().items()})
    deltas = {d["dataset"]: d["delta"] for d in rep["datasets"]}
    for h in rep["history"]:  # every entry is charged at its dataset budget's delta
        h["delta"] = deltas.get(h["dataset"])
    rep["history"] = [h for h in rep["history"]
                      if (not dataset or h["dataset"] == dataset)
                      and (not researcher or h["researcher"] == researcher)
                      and (not state or h["state"] == state)]
    return rep


@router.get("/ledger", response_class=HTMLResponse)
def ledger(request: Request, dataset: str = "", researcher: str = "", state: str = "",
           account: str = Depends(owner)):
    with ops.reading() as site:
        rep = _report(site, dataset, researcher, state)
        plots = {d["dataset"]: charts.spend_over_time(site.ledger, d["dataset"])
                 for d in rep["datasets"]}
        everyone = sorted({h["researcher"] for h in site.ledger.history()})
    return render(request, "ledger.html", rep=rep, plots=plots, dataset=dataset,
                  researcher=researcher, state=state, everyone=everyone,
                  states=("estimated", "reserved", "running", "committed", "released",
                          "refunded", "denied"))


@router.get("/ledger/export.{fmt}")
def export(fmt: str, dataset: str = "", researcher: str = "", state: str = "",
           account: str = Depends(owner)):
    with ops.reading() as site:
        rep = _report(site, dataset, researcher, state)
    if fmt == "json":
        return Response(json.dumps(rep, indent=2, default=str), media_type="application/json",
                        headers={"Content-Disposition": 'attachment; filename="ledger.json"'})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for h in rep["history"]:  # a cell starting = + - @ would be a formula in a spreadsheet
        w.writerow([_cell(h.get(c)) for c in COLUMNS])
    return Response(buf.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="ledger.csv"'})


def _cell(v) -> str:
    s = "" if v is None else str(v)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") and not _number(s) else s


def _number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
