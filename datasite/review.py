"""Reading requests: who sent them, what they ask, whether it can run here, and its price.

A part of :class:`datasite.owner.OwnerSite` (which holds ``home``, ``config``, ``state``,
``ledger`` and ``client``); its methods are called on the site."""
from __future__ import annotations

import json
from typing import Any

from shared.data import DatasetMeta
from shared.jobs import MESSAGE, SPEC_KINDS
from shared.protocol import public_privacy
from shared.template import recognise

from . import inbox
from .config import SiteError
from .states import Request

PRICE_TIMEOUT_S = 120.0  # one request's pricing; beyond this it is refused, not waited for
PRICE_MEMORY_MB = 4096


class ReviewMixin:
    """Requests as the owner reads them: sender identity, spec, checks, price."""

    def syft_requests(self) -> dict[str, Any]:
        return {r.id.to_string(): r for r in self.client.requests.get_all()}

    def syft_request(self, request_id: str):
        """(full id, syft Request) of the request ``request_id`` names (a prefix will do)."""
        if len(request_id) == 32:  # a full id (the API, the console, workers): one round trip;
            from syft.service.response import SyftError  # a listing grows with every job
            from syft.types.uid import UID

            try:
                req = self.client.api.services.request.get_by_uid(uid=UID(request_id))
            except Exception:  # not an id, or no such request: the listing says which
                req = None
            if req is not None and not isinstance(req, SyftError):
                return req.id.to_string(), req
        reqs = self.syft_requests()
        matches = [k for k in reqs if k.startswith(request_id)]
        if len(matches) != 1:
            known = ", ".join(k[:8] for k in reqs) or "none"
            raise SiteError(f"No request {request_id!r} on {self.name} (known: {known}). "
                            f"List them with `datasite review {self.name}`.")
        return matches[0], reqs[matches[0]]

    def describe_request(self, request_id: str, req=None, with_cost: bool = True) -> dict:
        """Who asked what (the registered identity behind the request's key), whether the code
        is a recognised template, and its spec. Requests without code, or from identities the
        owner did not register, are described as such and can only be denied."""
        if req is None:
            request_id, req = self.syft_request(request_id)
        code = inbox.code_of(req)
        spec = recognise(code.raw_code) if code is not None else None
        user = inbox.sender_identity(self.state, req)
        own = self.state.request(request_id) or {}
        status = getattr(getattr(req, "status", None), "name", "UNKNOWN")
        info = {
            "request_id": request_id,
            "researcher": user or inbox.shown_sender(self.state, req),
            "registered": user is not None,
            "submitted": str(getattr(req, "request_time", "")),
            "function": code.service_func_name if code is not None else None,
            "template": spec is not None,
            "kind": (spec.get("kind") if spec else "custom") if code is not None else inbox.NOT_CODE,
            "dataset": spec.get("dataset") if spec else (_asset_names(code) if code else None),
            "spec": spec,
            "server_status": status.lower(),
            "state": own.get("state") or ("denied" if status == "REJECTED" else "pending"),
            "validation": None,
        }
        if code is None:
            info["code"] = None
            info["request_type"] = inbox.change_summary(req)
            info["validation"] = ("not a code request: dp-datasite runs only job requests; "
                                  f"deny it with `datasite deny {self.name} {request_id[:8]}`")
        elif spec is None:
            from . import custom_code

            info.update(custom_code.describe(self, request_id, code, user, info["state"]))
        elif user is None:
            info["validation"] = ("sent by an identity this site did not register (`datasite "
                                  "users add`); it cannot run")
        else:
            info["validation"] = self._validate(spec)
            info["backbones"] = self.backbone_facts(spec)
            ran = json.loads(own.get("summary_json") or "{}").get("backbone")
            if ran:
                info["ran_from"] = ran
            if _lifecycle(spec) == MESSAGE:
                info["note"] = (f"round {spec.get('round')} of schedule "
                                f"{str(spec.get('schedule'))[:8]}: priced with its schedule, "
                                "run by the schedule's round server")
            elif info["validation"] == "ok" and with_cost and info["state"] == "pending":
                # a decided request's cost is in the ledger; pricing it again is wasted seconds
                try:
                    info["cost"] = self._quote(request_id, spec, user)
                except SiteError as e:
                    info["cost_error"] = str(e)
        return info

    def _priced(self, request_id: str, spec: dict) -> tuple[str, list[str] | None]:
        """The request's event (and per-record alternatives), priced once in a bounded worker
        and cached; SiteError if pricing failed or went past its time or memory limit."""
        from shared.privacy.accounting import AccountingError
        from shared.jobs import SpecError

        from .pricing_worker import PricingError, price_bounded

        spec_json = json.dumps(spec, sort_keys=True)
        cached = self.state.cached_price(request_id, spec_json)
        if cached is None:
            meta_json = self.state.dataset(spec["dataset"])["meta_json"]
            budget = self.ledger.budget(spec["dataset"])
            try:
                event_json, alternatives = price_bounded(
                    spec, meta_json, timeout_s=PRICE_TIMEOUT_S, memory_mb=PRICE_MEMORY_MB,
                    delta=budget["delta"] if budget else None)
            except (PricingError, SpecError, AccountingError) as e:
                self.state.save_price(request_id, spec_json, error=str(e))
                raise SiteError(f"Pricing request {request_id[:8]} failed: {e}") from None
            self.state.save_price(request_id, spec_json, event_json=event_json,
                                  record_events_json=json.dumps(alternatives))
            cached = self.state.cached_price(request_id, spec_json)
        if cached["error"]:
            raise SiteError(f"Pricing request {request_id[:8]} failed: {cached['error']} "
                            "(deny it; a request is priced once)")
        return cached["event_json"], json.loads(cached["record_events_json"] or "null")

    def _quote(self, request_id: str, spec: dict, researcher: str) -> dict:
        from shared.privacy.accounting import event_from_json
        from shared.privacy.reporting import privacy_report

        event_json, alternatives = self._priced(request_id, spec)
        budget = self.ledger.budget(spec["dataset"])
        delta = budget["delta"] if budget else spec.get("delta", 1e-5)
        cost = public_privacy(privacy_report(event_from_json(event_json), delta))
        if budget:
            cost["budget"] = self.ledger.quote(spec["dataset"], researcher, event_json,
                                               alternatives=alternatives)
            self.ledger.estimate(request_id, spec["dataset"], researcher, event_json)
            if SPEC_KINDS[spec["kind"]].UPDATED_ON_FORGET and cost["budget"]["fits"]:
                from .forget import affordable_forgets  # each forget is a priced release

                cost["forgets"] = affordable_forgets(self, spec, researcher, event_json)
        else:
            cost["budget"] = None
        return cost

    def review(self, include_done: bool = False) -> list[dict]:
        out = []
        from .rounds import refuse_if_ended

        shown = (Request.PENDING, Request.RAN, Request.FAILED)
        for rid, req in self.syft_requests().items():
            own = self.state.request(rid)
            if not include_done and own and own["state"] and own["state"] not in shown:
                # decided here (released, denied, running, a schedule serving): not shown, and
                # describing it costs round trips to the server on every poll of a desk
                continue
            try:
                info = self.describe_request(rid, req)
                if info["spec"] and _lifecycle(info["spec"]) == MESSAGE:
                    refuse_if_ended(self, rid, req, info)
            except Exception as e:  # one request the tools cannot read must not hide the rest
                info = {"request_id": rid, "researcher": inbox.shown_sender(self.state, req),
                        "registered": inbox.sender_identity(self.state, req) is not None,
                        "submitted": "", "function": None, "template": False,
                        "kind": "unreadable", "dataset": None, "spec": None, "code": None,
                        "request_type": inbox.change_summary(req), "state": "pending",
                        "server_status": "", "validation": f"could not be read: "
                        f"{type(e).__name__}: {e}"[:500]}
            if include_done or info["state"] in shown:
                out.append(info)
        return out

    def _validate(self, spec: dict) -> str:
        """'ok' or the reason the spec cannot run here -- checked against the REAL metadata
        and the backbones registered here (an unknown one: the registered names)."""
        from shared.jobs import SpecError, spec_from_dict
        from shared.runner import resolve_backbones

        try:
            job = spec_from_dict(spec)
            row = self.state.dataset(spec.get("dataset", ""))
            if row is None:
                raise SpecError(f"unknown dataset {spec.get('dataset')!r} on {self.name}")
            meta = DatasetMeta.from_json(row["meta_json"])
            job.validate(meta)
            needed = job.backbones_needed()
            if needed:
                resolve_backbones(job, needed, self.local_backbones(), meta)
        except (SpecError, TypeError, ValueError) as e:
            return str(e)
        return "ok"

    def price(self, spec: dict) -> str:
        """The privacy event of a spec, computed here from the spec (never from the client),
        under the same time and memory limits as a request's price."""
        from .pricing_worker import price_bounded

        meta_json = self.state.dataset(spec["dataset"])["meta_json"]
        return price_bounded(spec, meta_json, timeout_s=PRICE_TIMEOUT_S,
                             memory_mb=PRICE_MEMORY_MB)[0]


def _lifecycle(spec: dict) -> str | None:
    kind = SPEC_KINDS.get(spec.get("kind"))
    return kind.LIFECYCLE if kind is not None else None


def _asset_names(code) -> str:
    try:
        return ", ".join(code.assets.keys()) if hasattr(code.assets, "keys") else str(code.assets)
    except Exception:
        return "?"
