"""Requests: the list by state, one request's page (spec, code, price, budgets, checks,
result summary), and the decisions on it: approve & run, deny with a reason, release."""
from __future__ import annotations

import copy
import functools
import json
import re

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from ..config import SiteError
from ..ledger import Ledger
from . import charts, words
from .web import back, checked_form, flash, owner, render

router = APIRouter()
ops = None  # the app's Console, set by app.create_app

# the steward's groups of the owner-side request states (datasite/states.py)
GROUPS = {"pending": ("pending",), "running": ("running", "serving"),
          "awaiting release": ("ran",), "released": ("released", "stopped"),
          "denied": ("denied",), "failed": ("failed",)}
_ID = re.compile(r"[0-9a-f]{8,64}")


def _group(state: str) -> str:
    return next((g for g, states in GROUPS.items() if state in states), state)


def _rid(request_id: str) -> str:
    if not _ID.fullmatch(request_id):
        raise SiteError("That is not a request id (8 to 64 hex digits); pick one from the list.")
    return request_id


@router.get("/requests", response_class=HTMLResponse)
def list_requests(request: Request, show: str = "", account: str = Depends(owner)):
    with ops.reading() as site:
        items = site.review(include_done=True)
    for it in items:
        it["group"] = _group(it["state"])
    counts = {g: sum(it["group"] == g for it in items) for g in GROUPS}
    if show in GROUPS:
        items = [it for it in items if it["group"] == show]
    items.sort(key=lambda it: str(it.get("submitted")), reverse=True)
    return render(request, "requests.html", items=items, groups=list(GROUPS), counts=counts,
                  show=show if show in GROUPS else "")


def _event_json(site, rid: str, info: dict) -> str | None:
    """The priced event (cached by the review that priced it), or the ledger's entry."""
    entry = site.ledger.entry(rid)
    if entry:
        return site.ledger.charged_event(entry)
    if info.get("spec"):
        cached = site.state.cached_price(rid, json.dumps(info["spec"], sort_keys=True))
        return cached["event_json"] if cached and not cached["error"] else None
    return None


@router.get("/requests/{request_id}", response_class=HTMLResponse)
def show_request(request: Request, request_id: str, account: str = Depends(owner)):
    rid = _rid(request_id)
    with ops.reading() as site:
        info = site.describe_request(rid)
        rid = info["request_id"]
        own = site.state.request(rid) or {}
        entry = site.ledger.entry(rid)
        event_json = _event_json(site, rid, info)
        summary = json.loads(own.get("summary_json") or "null")
        progress = ops.progress(site.state, rid)
        ds_budget = site.ledger.budget(info["dataset"]) if info.get("dataset") else None
    cost = info.get("cost") or {}
    if not cost and entry and info.get("template") and ds_budget and event_json:
        cost = _charged(event_json, ds_budget["delta"])  # decided: what the ledger charged
    budget = cost.get("budget") or {}
    # custom code is not priced here: its bars are at the researcher's declared cost
    quote, at = budget, ""
    if not budget and ((info.get("custom") or {}).get("declared_quote")):
        quote, at = info["custom"]["declared_quote"], " at the researcher's declared cost"
    bars = [(label + at, words.bar(quote.get(f"{k}_spent"), quote.get(f"{k}_after"),
                                   quote.get(f"{k}_budget")))
            for label, k in (("Dataset budget", "dataset"), ("Researcher's budget", "researcher"))]
    rows, curves, noisy = words.metric_rows((summary or {}).get("metrics"))
    figures = _result_figures(summary or {}, curves, noisy)
    group = _group(info["state"])
    return render(
        request, "request.html", info=info, own=own, entry=entry, group=group,
        pill=_pill(group, progress), noisy=noisy, ds_delta=(ds_budget or {}).get("delta"),
        entry_cost=Ledger.cost_source(entry) if entry else None,
        entry_states=words.ENTRY_STATES, metric_label=words.metric_label,
        spec_rows=words.spec_rows(info.get("spec")), cost=cost, budget=budget,
        bars=[(label, b) for label, b in bars if b], summary=summary, metric_rows=rows,
        open_decision=group in ("pending", "failed", "awaiting release")
        and not progress["starting"],
        figures=figures,
        tradeoff=charts.tradeoff(event_json) if event_json else None,
        code=words.code_html(info["code"]) if info.get("code") else None,
        code_css=words.code_css(), progress=progress, number=words.number)


def _result_figures(summary: dict, series: dict, noisy: bool) -> list[tuple[str, str]]:
    """(alt text, PNG) of a finished run's plots for the owner: its review curves (the exact
    training loss per epoch, owner only; DP-AL accuracy per round), per-class accuracy as
    bars, and any list of numbers among its metrics."""
    out = [(c["title"] + f": {c['ylabel']} against {c['xlabel']}", charts.curve(c))
           for c in summary.get("curves") or [] if c.get("x")]
    per = (summary.get("metrics") or {}).get("per_class_accuracy")
    bars = charts.per_class(per, noisy) if isinstance(per, dict) else None
    if bars:
        out.append(("Per-class accuracy on the test split, one bar per class", bars))
    return out + [(f"{k} over training", charts.series(k, v)) for k, v in series.items()]


def _charged(event_json: str, delta: float) -> dict:
    """eps at the dataset's delta, mu and attack TPRs of the event the ledger charged (a decided
    request is not priced again by the review; this reads its ledger entry's event)."""
    return copy.deepcopy(_charged_once(event_json, delta))


@functools.lru_cache(maxsize=256)  # a ledger entry's event never changes; its report costs PLDs
def _charged_once(event_json: str, delta: float) -> dict:
    from shared.privacy.accounting import event_from_json
    from shared.privacy.reporting import privacy_report
    from shared.protocol import public_privacy

    try:
        return public_privacy(privacy_report(event_from_json(event_json), delta))
    except Exception:  # pylint: disable=broad-except  (the page still shows the ledger's eps)
        return {}


def _pill(group: str, progress: dict) -> str:
    """The state shown in the title: "starting" while an approved run has not begun."""
    return "starting" if progress.get("starting") and group != "running" else group


@router.get("/requests/{request_id}/progress", response_class=HTMLResponse)
def progress(request: Request, request_id: str, account: str = Depends(owner)):
    rid = _rid(request_id)
    with ops.reading() as site:
        p = ops.progress(site.state, rid)
    # the title's state pill is swapped out of band, so it follows the run
    resp = render(request, "progress.html", progress=p, rid=rid,
                  pill=_pill(_group(p["state"]), p))
    if p["state"] != "running" and not p["starting"]:
        # finished: stop polling (htmx's 286) and reload once to show the result (or the
        # error), static/console.js. An HX-Refresh header instead was sent by every poll that
        # fired while the result page loaded, and each reload restarted the last: on a busy
        # host the page never arrived.
        resp.status_code = 286
        resp.headers["HX-Trigger"] = "run-finished"
    return resp


def _stated_cost(form: dict) -> dict:
    """The cost the owner states for custom code (``epsilon``, ``delta`` fields), or {}."""
    if not form.get("epsilon") and not form.get("delta"):
        return {}
    try:
        eps, delta = float(form.get("epsilon", "")), float(form.get("delta", ""))
    except ValueError:
        raise SiteError("State the cost as numbers: epsilon > 0 and delta in [0, 1). Nothing "
                        "was done.") from None
    if not (eps > 0 and 0 <= delta < 1):
        raise SiteError("State the cost as numbers: epsilon > 0 and delta in [0, 1). Nothing "
                        "was done.")
    return {"epsilon": eps, "delta": delta}


def _current(site, rid: str, form: dict) -> tuple[str, dict]:
    """The request's full id and state now; SiteError when the form was shown for another
    state (someone acted in between): nothing is done on a stale page."""
    info = site.describe_request(rid, with_cost=False)
    shown = form.get("state", "")
    if shown != info["state"]:
        raise SiteError(f"This request is now {info['state']} (it was {shown or 'unknown'} when "
                        "the page was shown: someone acted in between). Nothing was done; "
                        "review it again.")
    return info["request_id"], info


@router.post("/requests/{request_id}/run")
async def run(request: Request, request_id: str, account: str = Depends(owner)):
    form = await checked_form(request)
    rid = _rid(request_id)
    try:
        with ops.acting(account) as site:
            rid, info = _current(site, rid, form)
            if info["state"] not in ("pending", "failed"):
                raise SiteError(f"Request {rid[:8]} is {info['state']}: only a pending request "
                                "(or a failed one) can be run.")
        ops.start_run(rid, account, **_stated_cost(form))
        flash(request, "ok", f"Approved; request {rid[:8]} is starting on the private data.")
    except SiteError as e:
        flash(request, "error", str(e))
    return back(f"/requests/{rid}")


async def _act_on_current(request: Request, request_id: str, account: str, act, check=None):
    """Check the form (CSRF, then ``check(form)``, which needs no site, then a stale page), run
    ``act(site, rid, form)`` as ACCOUNT and flash the message it returns, or the error; back to
    the request's page either way."""
    form = await checked_form(request)
    rid = _rid(request_id)
    try:
        if check is not None:
            check(form)
        with ops.acting(account) as site:
            rid, _ = _current(site, rid, form)
            message = act(site, rid, form)
        flash(request, "ok", message)
    except SiteError as e:
        flash(request, "error", str(e))
    return back(f"/requests/{rid}")


def _reason(form) -> str:
    reason = (form.get("reason") or "").strip()
    if not reason:
        raise SiteError("Say why you deny it: the researcher reads the reason. Nothing was done.")
    return reason[:2000]


def _deny(site, rid: str, form) -> str:
    site.deny(rid, _reason(form))
    return f"Denied request {rid[:8]}."


def _release(site, rid: str, form) -> str:
    site.release(rid)
    return f"Released request {rid[:8]} to its researcher."


@router.post("/requests/{request_id}/deny")
async def deny(request: Request, request_id: str, account: str = Depends(owner)):
    return await _act_on_current(request, request_id, account, _deny, check=_reason)


@router.post("/requests/{request_id}/release")
async def release(request: Request, request_id: str, account: str = Depends(owner)):
    return await _act_on_current(request, request_id, account, _release)
