"""Forget: remove a patient's record. The confirmation lists every model that saw the record
and what happens to it (``OwnerSite.forget_plan``); then ``OwnerSite.forget`` and its
certificates."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from ..config import SiteError
from .web import back, checked_form, flash, owner, render

router = APIRouter()
ops = None  # the app's Console, set by app.create_app


@router.get("/forget", response_class=HTMLResponse)
def forget_form(request: Request, account: str = Depends(owner)):
    with ops.reading() as site:
        names = site.state.dataset_names()
    return render(request, "forget.html", datasets=names)


def _which(form: dict) -> tuple[str, str | None, int | None, bool]:
    dataset, record = form.get("dataset", ""), (form.get("record") or "").strip()
    if not record:
        raise SiteError("Give the record's patient id (or its row number). Nothing was done.")
    by_row = form.get("by") == "row"
    row = None
    if by_row:
        try:
            row = int(record)
        except ValueError:
            raise SiteError(f"A row number is a whole number from 0 (got {record!r}). Nothing "
                            "was done.") from None
    return dataset, None if by_row else record, row, form.get("data_only") == "yes"


@router.post("/forget/confirm", response_class=HTMLResponse)
async def confirm(request: Request, account: str = Depends(owner)):
    form = await checked_form(request)
    try:
        dataset, record, row, data_only = _which(form)
        with ops.reading() as site:
            plan = site.forget_plan(dataset, record, data_only=data_only, row=row)
    except SiteError as e:
        flash(request, "error", str(e))
        return back("/forget")
    return render(request, "forget_confirm.html", plan=plan, form=form)


@router.post("/forget", response_class=HTMLResponse)
async def forget(request: Request, account: str = Depends(owner)):
    form = await checked_form(request)
    if form.get("confirm") != "yes":
        flash(request, "error", "Tick the confirmation box to forget the record. Nothing was "
                                "done.")
        return back("/forget")
    try:
        dataset, record, row, data_only = _which(form)
        with ops.acting(account) as site:
            out = site.forget(dataset, record, data_only=data_only, row=row)
    except SiteError as e:
        flash(request, "error", str(e))
        return back("/forget")
    return render(request, "forget_done.html", report=out)
