"""Researchers: registered accounts, their budget on each dataset (edit) and their history."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from .pages_datasets import set_budget
from .web import back, checked_form, owner, render

router = APIRouter()
ops = None  # the app's Console, set by app.create_app


@router.get("/researchers", response_class=HTMLResponse)
def list_researchers(request: Request, account: str = Depends(owner)):
    with ops.reading() as site:
        budgets = site.ledger.all_budgets()
        datasets = [b["dataset"] for b in budgets if not b["researcher"]
                    and site.state.dataset(b["dataset"]) is not None]
        history = [{**e, "cost": site.ledger.cost_source(e)} for e in site.ledger.history()]
        people = []
        for email in sorted(site.state.researcher_keys()):
            own = {b["dataset"]: b for b in budgets if b["researcher"] == email}
            rows = []
            for ds in datasets:
                b = own.get(ds)
                rows.append({"dataset": ds, "budget": b["epsilon"] if b else None,
                             "spent": site.ledger.spent(ds, email)["epsilon"]})
            people.append({"email": email, "budgets": rows,
                           "history": [e for e in history if e["researcher"] == email]})
    return render(request, "researchers.html", people=people)


@router.post("/researchers/budget")
async def edit_budget(request: Request, account: str = Depends(owner)):
    form = await checked_form(request)
    set_budget(request, account, form, form.get("dataset", ""), form.get("researcher", ""))
    return back("/researchers")
