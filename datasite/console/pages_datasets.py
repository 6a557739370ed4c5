"""Datasets: records, schema, the published mock, budgets (edit), spend over time and the
per-record spend histogram."""
from __future__ import annotations

import math

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from ..config import SiteError
from . import charts
from .web import back, checked_form, flash, owner, render

router = APIRouter()
ops = None  # the app's Console, set by app.create_app
MOCK_ROWS = 10
MOCK_IMAGES = 8


@router.get("/datasets", response_class=HTMLResponse)
def list_datasets(request: Request, account: str = Depends(owner)):
    with ops.reading() as site:
        rows = []
        for name, meta in site.datasets().items():
            b = site.ledger.budget(name)
            rows.append({"name": name, "meta": meta, "budget": b,
                         "spent": site.ledger.spent(name)["epsilon"] if b else None})
    return render(request, "datasets.html", datasets=rows)


def _mock(site, meta) -> dict:
    """The first rows (tables) or images of the published mock (as the owner API reads it
    back: the schema-drawn mock when the published one cannot be read)."""
    mock = site._published_mock(meta)  # pylint: disable=protected-access
    if hasattr(mock, "head"):
        head = mock.head(MOCK_ROWS)
        return {"columns": [str(c) for c in head.columns],
                "rows": [[_cell(v) for v in r] for r in head.itertuples(index=False)]}
    if isinstance(mock, dict) and "images" in mock:
        return {"images": charts.images(mock["images"][:MOCK_IMAGES]),
                "labels": [str(x) for x in mock["labels"][:MOCK_IMAGES]]}
    return {}


def _cell(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def declared(col: dict) -> str:
    """A column's schema declaration in words: type, unit, bounds or categories, missing."""
    parts = [str(col.get("type", "?"))]
    if col.get("unit"):
        parts.append(f"in {col['unit']}")
    if "bounds" in col:
        parts.append(f"from {col['bounds'][0]} to {col['bounds'][1]}")
    if "categories" in col:
        parts.append(f"categories {col.get('names') or col['categories']}")
    if col.get("missing"):
        parts.append("may be missing")
    return ", ".join(parts)


@router.get("/datasets/{name}", response_class=HTMLResponse)
def show_dataset(request: Request, name: str, account: str = Depends(owner)):
    with ops.reading() as site:
        metas = site.datasets()
        if name not in metas:
            raise SiteError(f"No dataset {name!r} on {site.name}; pick one from the list.")
        meta = metas[name]
        budgets = [b for b in site.ledger.all_budgets() if b["dataset"] == name]
        for b in budgets:
            b["spent"] = site.ledger.spent(name, b["researcher"] or None)["epsilon"]
        own = next((b for b in budgets if not b["researcher"]), None)
        hist = site.ledger.record_histogram(name, meta.n_records) if own else None
        spend = charts.spend_over_time(site.ledger, name)
        mock = _mock(site, meta)
    return render(request, "dataset.html", meta=meta, budgets=budgets, own=own, hist=hist,
                  hist_chart=charts.record_spend(hist) if hist else None,
                  spend=spend, mock=mock, declared=declared)


def parse_epsilon(text: str) -> float:
    try:
        eps = float(text)
    except (TypeError, ValueError):
        raise SiteError(f"Epsilon must be a number, like 3 or 0.5 (got {text!r}). Nothing was "
                        "changed.") from None
    if not (math.isfinite(eps) and eps > 0):
        raise SiteError("Epsilon must be a number above 0. Nothing was changed.")
    return eps


def set_budget(request: Request, account: str, form: dict, dataset: str, researcher: str) -> None:
    """Change one budget through ``OwnerSite.set_budget``, unless it changed since the form was
    shown (``current``: the epsilon the page showed)."""
    try:
        eps = parse_epsilon(form.get("epsilon", ""))
        with ops.acting(account) as site:
            now = site.ledger.budget(dataset, researcher)
            shown = form.get("current", "")
            if (f"{now['epsilon']!r}" if now else "") != shown:
                raise SiteError("This budget was changed since the page was shown (now "
                                f"{now['epsilon']:g} eps). Nothing was changed; check it and "
                                "try again." if now else "This budget was removed since the "
                                "page was shown. Nothing was changed.")
            site.set_budget(dataset, eps, None if researcher else now["delta"],
                            researcher=researcher)
        flash(request, "ok", f"Budget of {researcher or 'the dataset'} on {dataset} is now "
                             f"eps={eps:g}.")
    except SiteError as e:
        flash(request, "error", str(e))


@router.post("/datasets/{name}/budget")
async def edit_budget(request: Request, name: str, account: str = Depends(owner)):
    form = await checked_form(request)
    set_budget(request, account, form, name, form.get("researcher", ""))
    return back(f"/datasets/{name}")
