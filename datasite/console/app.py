"""The owner's web console: a FastAPI app over :class:`datasite.owner.OwnerSite`.

Server-rendered pages (Jinja2), htmx (vendored, ``static/htmx.min.js``) only to poll a running
job's progress; nothing is fetched from the internet. Sessions are signed cookies (Starlette's
SessionMiddleware: HttpOnly, SameSite=Strict, Secure when served over https), every POST
carries the session's CSRF token, and a strict Content-Security-Policy allows this origin only.
"""
from __future__ import annotations

import contextlib
import secrets
import threading

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..config import SiteError, SiteHome
from . import pages_auth, pages_datasets, pages_forget, pages_ledger, pages_requests
from . import pages_researchers
from .ops import Console
from .web import HERE, CsrfRefused, NeedLogin, flash, render

SESSION_MAX_AGE_S = 8 * 3600
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGES = (pages_auth, pages_requests, pages_datasets, pages_researchers, pages_ledger,
         pages_forget)


def create_app(home: SiteHome, https: bool = False, allowed_hosts: list[str] | None = None,
               secret: str | None = None) -> FastAPI:
    """The console for the site at ``home``. ``https``: cookies are marked Secure (served
    with TLS); ``allowed_hosts``: Host headers accepted (loopback names by default, which
    also stops DNS rebinding); ``secret``: the session-signing key (default: fresh, so a
    restart logs everyone out)."""
    app = FastAPI(title="dp-datasite console", docs_url=None, redoc_url=None, openapi_url=None)
    console = Console(home)
    app.state.console = console
    for page in PAGES:
        page.ops = console
        app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(SessionMiddleware, secret_key=secret or secrets.token_urlsafe(48),
                       session_cookie="dpds_console", max_age=SESSION_MAX_AGE_S,
                       same_site="strict", https_only=https)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or
                       ["127.0.0.1", "localhost", "::1"])

    @app.middleware("http")
    async def headers(request: Request, call_next):
        resp = await call_next(request)
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.exception_handler(NeedLogin)
    async def need_login(request: Request, exc: NeedLogin):
        if request.headers.get("HX-Request"):
            resp = RedirectResponse("/login", status_code=303)
            resp.headers["HX-Redirect"] = "/login"
            return resp
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(CsrfRefused)
    async def csrf_refused(request: Request, exc: CsrfRefused):
        return render(request, "error.html", status_code=403, title="Refused: stale or forged "
                      "form", message="This form did not carry the page's security token "
                      "(CSRF), so nothing was done. Reload the page and try again.")

    @app.exception_handler(SiteError)
    async def site_error(request: Request, exc: SiteError):
        if request.method == "POST":  # an action: back to where it came from, with why
            flash(request, "error", str(exc))
            return RedirectResponse("/requests", 303)
        return render(request, "error.html", status_code=404, title="Cannot show this page",
                      message=str(exc))

    @app.get("/")
    def home_page():
        return RedirectResponse("/requests", status_code=303)

    return app


def serve(home: SiteHome, host: str = "127.0.0.1", port: int = 8090,
          certfile: str | None = None, keyfile: str | None = None) -> None:
    """Serve the console (blocking) with uvicorn."""
    import uvicorn

    loopback = host in ("127.0.0.1", "localhost", "::1")
    hosts = None if loopback else ["*"]  # exposed on purpose: the owner chose the address
    app = create_app(home, https=bool(certfile), allowed_hosts=hosts)
    warm_pricing()
    uvicorn.run(app, host=host, port=port, ssl_certfile=certfile, ssl_keyfile=keyfile,
                log_level="warning", proxy_headers=False)


def warm_pricing() -> threading.Thread:
    """Start the pricing server in the background (it imports torch and the accountants: many
    seconds on a small machine), so the first page that shows a new request does not wait for
    it. A failed start is not fatal here: the review prices again and shows why."""
    from ..pricing_worker import PricingError, warm_up

    def start() -> None:
        with contextlib.suppress(PricingError):
            warm_up()

    t = threading.Thread(target=start, name="console-pricing-warm-up", daemon=True)
    t.start()
    return t
