"""The owner's decisions after a run: release, deny, stop a schedule, forget a record, audit.

A part of :class:`datasite.owner.OwnerSite` (which holds ``home``, ``config``, ``state``,
``ledger`` and ``client``); its methods are called on the site."""
from __future__ import annotations

import pickle

from . import inbox
from .config import SiteError
from .ledger import LedgerError
from .state import loads



class DecisionsMixin:
    """Release, deny, stop, forget and audit."""

    def release(self, request_id: str) -> dict:
        """Send a run's result back to the researcher."""
        request_id, req = self.syft_request(request_id)
        own = self.state.request(request_id)
        if own is None or own["state"] not in ("ran", "released"):
            state = own["state"] if own else "pending"
            raise SiteError(f"Request {request_id[:8]} is {state}: only a job that ran can be "
                            f"released (run it with `datasite run {self.name} {request_id[:8]}`).")
        if own["state"] == "released":
            raise SiteError(f"Request {request_id[:8]} was already released.")
        with open(own["result_path"], "rb") as f:
            result = pickle.load(f)
        entry = self.ledger.entry(request_id)
        if entry["state"] == "running":
            try:
                self.ledger.commit(request_id, result["privacy"]["event"],
                                   record_charges=self._record_charges(own, result))
            except LedgerError as e:
                raise SiteError(str(e)) from None
        from .forget import REMOVAL_KIND, public_result, register_release

        if result.get("kind") == REMOVAL_KIND:
            register_release(self, request_id, result["spec"], result, own["researcher"])
        req.deposit_result({**public_result(result),
                            "audit_head": self.ledger.head_for(own["researcher"])})
        self.ledger.released(request_id)
        self.state.set_state(request_id, "released")
        self.publish_budgets([own["researcher"]])
        return loads(own["summary_json"])

    def _record_charges(self, own: dict, result: dict) -> list[tuple] | None:
        """A result's owner-only record groups, as (record ids, event) for the ledger."""
        import numpy as np

        from .storage import record_ids

        groups = result.get("_owner_record_groups")
        if not groups:
            return None
        ids = record_ids(self.state.dataset(own["dataset"])["path"])
        return [(ids[np.asarray(g["rows"], dtype=np.int64)].tolist(), g["event"]) for g in groups]

    def deny(self, request_id: str, reason: str) -> None:
        if not reason or not reason.strip():
            raise SiteError("Say why with --reason: the researcher sees it.")
        request_id, req = self.syft_request(request_id)
        own = self.state.request(request_id)
        if own and own["state"] == "released":
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
            self.state.set_state(request_id, "denied", reason=reason)
            return
        res = req.deny(reason=reason)
        if isinstance(res, sy.SyftError):
            raise SiteError(f"Deny failed: {res.message}")
        entry = self.ledger.entry(request_id)
        if entry and entry["state"] in ("reserved", "running"):
            # ran but never released: nothing left the site, so the reservation is returned
            self.ledger.refund(request_id, reason=f"denied after run: {reason}")
            self.publish_budgets([entry["researcher"]])
        elif entry and entry["state"] == "estimated":
            self.ledger.deny(request_id, reason)
        else:
            self.ledger.log("deny", request_id, {"reason": reason})
        self.state.set_state(request_id, "denied", reason=reason)

    def stop(self, request_id: str) -> dict:
        """Stop serving a federated schedule: commit the rounds that ran, refund the rest."""
        from .rounds import stop

        return stop(self, request_id)

    def forget(self, dataset: str, record_id: int, data_only: bool = False) -> dict:
        """Remove a record for good and update the removal-enabled models trained on it."""
        from .forget import forget

        return forget(self, dataset, record_id, data_only=data_only)

    def audit(self, dataset: str, spec: dict, canaries: int = 1000,
              confidence: float = 0.95) -> dict:
        """Empirical privacy audit of a job spec on this dataset (owner only: not a release,
        no budget charged, logged); see :mod:`datasite.audit`."""
        from .audit import run_audit

        return run_audit(self, dataset, spec, canaries=canaries, confidence=confidence)
