"""The owner's decisions after a run: release, deny, stop a schedule, forget a record, audit.

A part of :class:`datasite.owner.OwnerSite` (which holds ``home``, ``config``, ``state``,
``ledger`` and ``client``); its methods are called on the site."""
from __future__ import annotations

import json

from shared.jobs import spec_from_dict
from shared.protocol import ResultPayload

from . import inbox
from .config import SiteError
from .execution import load_result
from .ledger import LedgerError
from .release_gate import deposit
from .state import loads
from .states import Entry, Request



class DecisionsMixin:
    """Release, deny, stop, forget and audit."""

    def release(self, request_id: str) -> dict:
        """Send a run's result back to the researcher."""
        request_id, req = self.syft_request(request_id)
        own = self.state.request(request_id)
        if own is None or own["state"] not in (Request.RAN, Request.RELEASED):
            state = own["state"] if own else "pending"
            raise SiteError(f"Request {request_id[:8]} is {state}: only a job that ran can be "
                            f"released (run it with `datasite run {self.name} {request_id[:8]}`).")
        if own["state"] == Request.RELEASED:
            raise SiteError(f"Request {request_id[:8]} was already released.")
        if json.loads(own["spec_json"] or "{}").get("kind") == "custom":
            from . import custom_code

            return custom_code.release(self, request_id, req, own)
        result = load_result(own["result_path"])
        job = spec_from_dict(result.spec)
        entry = self.ledger.entry(request_id)
        if entry["state"] == Entry.RUNNING:
            try:
                self.ledger.commit(request_id, result.event_json,
                                   record_charges=self._record_charges(own, result))
            except LedgerError as e:
                raise SiteError(str(e)) from None
        if job.UPDATED_ON_FORGET:
            from .forget import register_release

            register_release(self, request_id, result, own["researcher"])
        deposit(req, result, spec=job,
                extra={"audit_head": self.ledger.head_for(own["researcher"])})
        self.ledger.released(request_id)
        self.state.set_state(request_id, Request.RELEASED)
        self.publish_budgets([own["researcher"]])
        return loads(own["summary_json"])

    def _record_charges(self, own: dict, result: ResultPayload) -> list[tuple] | None:
        """A result's owner-only record groups, as (record ids, event) for the ledger."""
        import numpy as np

        from .storage import record_ids

        groups = result.owner.get("_owner_record_groups")
        if not groups:
            return None
        ids = record_ids(self.state.dataset(own["dataset"])["path"])
        return [(ids[np.asarray(g["rows"], dtype=np.int64)].tolist(), g["event"]) for g in groups]

    def deny(self, request_id: str, reason: str) -> None:
        if not reason or not reason.strip():
            raise SiteError("Say why with --reason: the researcher sees it.")
        request_id, req = self.syft_request(request_id)
        own = self.state.request(request_id)
        if own and own["state"] == Request.RELEASED:
            raise SiteError(f"Request {request_id[:8]} was already released; it cannot be denied.")
        import syft as sy

        if inbox.code_of(req) is None:
            # PySyft's deny of a non-code request would *undo* its changes (e.g. tear down a
            # worker pool); the owner only wants it gone: delete it, and say so in the log.
            res = self.client.api.services.request.delete_by_uid(uid=req.id)
            if isinstance(res, sy.SyftError):
                raise SiteError(f"Deny failed: {res.message}")
            self.ledger.log("deny", request_id, {"reason": reason, "request_type":
                                                 inbox.change_summary(req), "deleted": True})
            self.state.set_state(request_id, Request.DENIED, reason=reason)
            return
        res = req.deny(reason=reason)
        if isinstance(res, sy.SyftError):
            raise SiteError(f"Deny failed: {res.message}")
        entry = self.ledger.entry(request_id)
        if entry and entry["state"] in (Entry.RESERVED, Entry.RUNNING):
            # ran but never released: nothing left the site, so the reservation is returned
            self.ledger.refund(request_id, reason=f"denied after run: {reason}")
            self.publish_budgets([entry["researcher"]])
        elif entry and entry["state"] == Entry.ESTIMATED:
            self.ledger.deny(request_id, reason)
        else:
            self.ledger.log("deny", request_id, {"reason": reason})
        self.state.set_state(request_id, Request.DENIED, reason=reason)

    def stop(self, request_id: str) -> dict:
        """Stop serving a federated schedule: commit the rounds that ran, refund the rest."""
        from .rounds import stop

        return stop(self, request_id)

    def forget(self, dataset: str, record=None, data_only: bool = False, *,
               row: int | None = None) -> dict:
        """Remove a record for good and update the removal-enabled models trained on it.
        ``record``: its patient id on a dataset uploaded with an id column, else its row
        number; ``row``: its row number in any case."""
        from .forget import forget

        return forget(self, dataset, record, data_only=data_only, row=row)

    def forget_plan(self, dataset: str, record=None, data_only: bool = False, *,
                    row: int | None = None) -> dict:
        """What :meth:`forget` would do to each model that saw the record; changes nothing."""
        from .forget import forget_plan

        return forget_plan(self, dataset, record, data_only=data_only, row=row)

    def audit(self, dataset: str, spec: dict, canaries: int = 1000,
              confidence: float = 0.95) -> dict:
        """Empirical privacy audit of a job spec on this dataset (owner only: not a release,
        no budget charged, logged); see :mod:`datasite.audit`."""
        from .audit import run_audit

        return run_audit(self, dataset, spec, canaries=canaries, confidence=confidence)
