"""What every console page shares: templates, the logged-in owner, CSRF tokens, messages.

Escaping: Jinja2 autoescapes every ``{{ }}`` (HTML), and the ``t`` / ``lines`` filters first
pass researcher-chosen text through :mod:`shared.display` (control, bidi and invisible
characters made visible, long text cut), so neither markup nor a reordered line reaches the
owner's screen.
"""
from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from shared.display import escape, escape_lines

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates", autoescape=True)
templates.env.filters["t"] = lambda v, n=200: "" if v is None else escape(v, n)
templates.env.filters["lines"] = lambda v: escape_lines("" if v is None else v)
templates.env.filters["pyrepr"] = repr  # a number exactly as stored (stale-form checks)
templates.env.filters["short"] = lambda v: escape(str(v)[:8]) if v else ""


class NeedLogin(Exception):
    """No owner is logged in on this session: the app answers with the login page."""


class CsrfRefused(Exception):
    """A POST without this session's CSRF token: refused, nothing done."""


def csrf_token(request: Request) -> str:
    tok = request.session.get("csrf")
    if not tok:
        tok = request.session["csrf"] = secrets.token_urlsafe(32)
    return tok


def token_matches(sent, want: str) -> bool:
    """The CSRF check: the form's token is this session's (constant-time compare)."""
    return (bool(want) and isinstance(sent, str)
            and hmac.compare_digest(sent.encode(), want.encode()))


async def checked_form(request: Request) -> dict:
    """The POSTed form, once its CSRF token matched the session's (CsrfRefused otherwise)."""
    form = await request.form()
    if not token_matches(form.get("csrf") or "", request.session.get("csrf") or ""):
        raise CsrfRefused()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def owner(request: Request) -> str:
    """The logged-in owner account (a FastAPI dependency); NeedLogin when there is none."""
    account = request.session.get("account")
    if not account:
        raise NeedLogin()
    return account


def flash(request: Request, kind: str, text: str) -> None:
    """A message for the next page: ``kind`` is "error" or "ok"."""
    request.session.setdefault("flash", []).append([kind, text[:4000]])


def render(request: Request, name: str, status_code: int = 200, **ctx) -> HTMLResponse:
    ctx.update(account=request.session.get("account"), csrf=csrf_token(request),
               messages=request.session.pop("flash", []), path=request.url.path)
    return templates.TemplateResponse(request, name, ctx, status_code=status_code)


def back(url: str) -> RedirectResponse:
    """After a POST: to a page (303, so a reload does not POST again)."""
    return RedirectResponse(url, status_code=303)
