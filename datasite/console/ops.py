"""The console's one door into the owner API: an :class:`~datasite.owner.OwnerSite`, one
action at a time, every audit entry signed with the owner account that acted.

Nothing here decides about a request: pages call the same OwnerSite methods as the CLI
(``run``, ``deny``, ``release``, ``set_budget``, ``forget``). A job run starts in a thread with
its own OwnerSite (its own PySyft login), so pages stay usable while it runs; its progress is
read from the request's row (``progress_json``), as ``datasite queue`` reads it.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time

from ..config import SiteError, SiteHome

ACTOR_PREFIX = "console:"


def actor(account: str) -> str:
    return ACTOR_PREFIX + account


class Console:
    def __init__(self, home: SiteHome):
        self.home = home
        self._site = None
        self.lock = threading.RLock()  # one owner action (and PySyft client call) at a time
        self.runs: dict[str, dict] = {}  # request id -> {"error", "started", "seen"}

    def site(self):
        from ..owner import OwnerSite

        if self._site is None:
            self._site = OwnerSite(self.home)
        return self._site

    @contextlib.contextmanager
    def reading(self):
        """The owner site, for a page to read (no audit entry is expected)."""
        with self.lock:
            yield self.site()

    @contextlib.contextmanager
    def acting(self, account: str):
        """The owner site, for one action by ``account``: its audit entries name it."""
        with self.lock:
            site = self.site()
            with site.ledger.acting(actor(account)):
                yield site

    # -- runs ---------------------------------------------------------------------------------
    def start_run(self, request_id: str, account: str, **stated) -> None:
        """Approve & run: ``OwnerSite.run`` in a thread (queued to the warm workers if any run,
        else a job subprocess here); its outcome lands in the request's row. ``stated``: the
        ``epsilon`` and ``delta`` the owner states for custom code (run in the sandbox)."""
        if self.runs.get(request_id, {}).get("thread_alive"):
            raise SiteError(f"Request {request_id[:8]} is being started already.")
        rec = self.runs[request_id] = {"error": None, "started": time.time(), "seen": None,
                                       "thread_alive": True}

        def work() -> None:
            from ..owner import OwnerSite

            try:
                site = OwnerSite(self.home)
                with site.ledger.acting(actor(account)):
                    site.run(request_id, progress=False, wait=True, **stated)
            except Exception as e:  # pylint: disable=broad-except  (shown on the page)
                rec["error"] = str(e)
            finally:
                rec["thread_alive"] = False

        threading.Thread(target=work, name=f"console-run-{request_id[:8]}", daemon=True).start()

    def progress(self, state, request_id: str) -> dict:
        """step / steps, phase and ETA of a run (estimated from the steps seen so far)."""
        own = state.request(request_id) or {}
        rec = self.runs.get(request_id, {})
        p = json.loads(own.get("progress_json") or "null")
        out = {"state": own.get("state") or "pending", "error": rec.get("error"),
               "starting": bool(rec.get("thread_alive")) and own.get("state") != "running",
               "done": None,
               "total": None, "eta_s": None, "phase": None}
        if out["state"] == "running":
            queued = own.get("queued_at") is not None and own.get("started_at") is None
            out["phase"] = "queued for a worker" if queued else "training" if p else "starting"
        if p:
            out.update(done=p["done"], total=p["total"])
            now = time.time()
            if rec.get("seen") is None or p["done"] < rec["seen"][1]:
                rec["seen"] = (now, p["done"])
            t0, d0 = rec["seen"]
            if p["done"] > d0 and now > t0:
                out["eta_s"] = (now - t0) / (p["done"] - d0) * (p["total"] - p["done"])
        return out
