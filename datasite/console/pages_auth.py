"""Logging in and out of the console (accounts: :mod:`.accounts`)."""
from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from .accounts import LoginRefused, check_login
from .web import back, checked_form, csrf_token, render

router = APIRouter()
log = logging.getLogger("datasite.console")
ops = None  # the app's Console, set by app.create_app


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request):
    return render(request, "login.html")


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request):
    form = await checked_form(request)
    account = form.get("account", "")
    with ops.reading() as site:
        try:
            who = check_login(site.home, site.config, site.state, account,
                              form.get("password", ""))
        except LoginRefused as e:  # counted in the site's state (lockout) and logged here;
            # not in the audit chain, which a stranger could otherwise grow without end
            log.warning("console login refused for %r", account[:320])
            return render(request, "login.html", status_code=401, error=str(e),
                          account_tried=account)
        with ops.acting(who) as s:
            s.ledger.log("console_login", None, {"account": who})
    request.session.clear()  # a fresh session (and CSRF token) for the logged-in owner
    request.session["account"] = who
    csrf_token(request)
    return back("/requests")


@router.post("/logout")
async def logout(request: Request):
    await checked_form(request)
    request.session.clear()
    return back("/login")
