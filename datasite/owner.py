"""The data owner's operations, as a Python API (the CLI is a thin layer over this).

The PySyft server is the *low side*: mock data, users, code requests. The owner's process is
the *high side*: real data on disk, the trusted job runner, the record of every execution.
A request moves: pending (on the server) -> running -> ran -> released | denied (| failed).
"""
from __future__ import annotations

import contextlib
import json
import pickle
import re
import sys
from pathlib import Path
from typing import Any

from shared.data import AUDIT_HEAD_KEY, BUDGET_NOTE_PREFIX, DatasetMeta, published_description
from shared.template import recognise

from . import inbox, lifecycle
from .config import SiteError, SiteHome, open_site
from .execution import process_alive, run_job_subprocess
from .ledger import Ledger, LedgerError
from .state import loads, open_state
from .storage import remove_private, write_private


DISCLOSE_DATASET_LEFT = "disclose_dataset_left"
PRICE_TIMEOUT_S = 120.0  # one request's pricing; beyond this it is refused, not waited for
PRICE_MEMORY_MB = 4096


class OwnerSite:
    """One datasite, seen by its owner."""

    def __init__(self, site: SiteHome):
        self.home = site
        self.config = site.load()
        self.state = open_state(site)
        self.ledger = Ledger(self.state)
        self._client = None

    @classmethod
    def open(cls, name: str, home: Path | None = None) -> "OwnerSite":
        return cls(open_site(name, home))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def url(self) -> str:
        return lifecycle.url_for(self.config.port)

    # -- server ------------------------------------------------------------------------------
    def up(self, port: int | None = None) -> str:
        url = lifecycle.up(self.home, port=port)
        self.config = self.home.load()
        return url

    def down(self) -> bool:
        self._client = None
        return lifecycle.down(self.home)

    @property
    def client(self):
        """Root client of the low side (logs in on first use)."""
        if self._client is None:
            if not lifecycle.is_healthy(self.url):
                raise SiteError(f"Datasite {self.name} is not running at {self.url}; "
                                f"start it with `datasite up {self.name}`.")
            import syft as sy

            with contextlib.redirect_stdout(sys.stderr):  # keep the owner's stdout for results
                self._client = sy.login(url=self.url, email=self.config.root_email,
                                        password=self.home.root_password())
        return self._client

    # -- datasets ----------------------------------------------------------------------------
    def upload(self, dataset: str, *, table: str | None = None, label: str | None = None,
               images: str | None = None, labels: str | None = None, npz: str | None = None,
               schema=None, mock: str = "synthetic", description: str = "", seed: int = 0,
               budget_epsilon: float | None = None, delta: float | None = None) -> DatasetMeta:
        """Import real data, check it against the owner's public ``schema`` (a YAML path or a
        dict), publish the metadata and mock built from the schema alone."""
        from .schema import SchemaError, prepare

        sources = [x for x in (table, images, npz) if x]
        if len(sources) != 1:
            raise SiteError("Give exactly one of --table FILE, --images DIR or --npz FILE.")
        if mock != "synthetic":
            raise SiteError(f"Unknown mock kind {mock!r}; the only one is 'synthetic'.")
        if (budget_epsilon is None) != (delta is None):
            raise SiteError("Give both --budget-eps and --delta (or neither, and set the budget "
                            "later with `datasite budget`).")
        if self.state.dataset(dataset) or dataset in self._server_dataset_names():
            raise SiteError(f"A dataset named {dataset!r} already exists on {self.name}; "
                            "choose another name.")
        if images and not labels:
            raise SiteError("An image folder needs --labels labels.csv (filename,label).")
        try:
            payload, meta, mock_payload, notes = prepare(
                dataset, schema, table=table, label=label, images=images, labels=labels,
                npz=npz, description=description, seed=seed)
        except SchemaError as e:
            raise SiteError(str(e)) from None
        for note in notes:  # the owner's eyes only: counts about the records are never published
            print(f"note: {note}", file=sys.stderr)

        path = write_private(self.home.private, meta, payload)
        try:
            self._publish(meta, mock_payload)
            self.state.add_dataset(dataset, meta.kind, meta.to_json(), str(path))
            if budget_epsilon is not None:
                self.set_budget(dataset, budget_epsilon, delta)
        except BaseException:
            self.state.remove_dataset(dataset)
            remove_private(path)
            self._unpublish(dataset)
            raise
        return meta

    def _server_dataset_names(self) -> list[str]:
        return [d.name for d in self.client.datasets.get_all()]

    def _publish(self, meta: DatasetMeta, mock_payload) -> None:
        import syft as sy

        ds = sy.Dataset(name=meta.name, summary=f"{meta.kind}, {meta.n_records} records",
                        description=published_description(meta))
        # The low side never holds real data: its "private" asset is the mock as well.
        ds.add_asset(sy.Asset(name=meta.name, data=mock_payload, mock=mock_payload))
        result = self.client.upload_dataset(ds)
        if isinstance(result, sy.SyftError):
            raise SiteError(f"Publishing {meta.name} failed: {result.message}")

    def _unpublish(self, dataset: str) -> None:
        try:
            for d in self.client.datasets.get_all():
                if d.name == dataset:
                    self.client.api.services.dataset.delete(uid=d.id)
        except Exception:  # cleanup after a failure must not hide the original error
            pass

    def datasets(self) -> dict[str, DatasetMeta]:
        out = {}
        for name in self.state.dataset_names():
            out[name] = DatasetMeta.from_json(self.state.dataset(name)["meta_json"])
        return out

    # -- budgets -----------------------------------------------------------------------------
    def set_budget(self, dataset: str, epsilon: float, delta: float | None = None,
                   researcher: str = "") -> None:
        """The dataset's total budget (eps, delta), or a registered researcher's share of it."""
        if self.state.dataset(dataset) is None:
            raise SiteError(f"No dataset {dataset!r} on {self.name}.")
        if researcher:
            researcher = self._registered(researcher)
        if not researcher and delta is None:
            raise SiteError("A dataset budget needs --delta as well as --epsilon.")
        if delta is not None and not researcher:
            n = DatasetMeta.from_json(self.state.dataset(dataset)["meta_json"]).n_records
            if delta >= 1.0 / n:
                raise SiteError(f"delta={delta:g} is not below 1/n = {1.0 / n:.2g} for {n} records: "
                                "choose a smaller delta.")
        try:
            self.ledger.set_budget(dataset, epsilon, delta, researcher=researcher)
        except LedgerError as e:
            raise SiteError(str(e)) from None
        self.publish_budgets([researcher] if researcher else None)

    def budgets_for(self, researcher: str, _dataset_left: dict | None = None) -> dict:
        """What a researcher may know: per dataset, their own budget left and whether the
        dataset can still pay for it. The dataset's exact remaining budget reveals what other
        researchers spent, so it is shown only where the owner opted in (`disclose_dataset_left`)."""
        dataset_left = _dataset_left if _dataset_left is not None else self._dataset_left()
        disclose = self.state.setting(DISCLOSE_DATASET_LEFT) == "yes"
        out = {}
        for b in self.ledger.all_budgets():
            if b["researcher"]:
                continue
            ds = b["dataset"]
            left = {"delta": b["delta"], "researcher_left": None}
            own = self.ledger.budget(ds, researcher)
            if own:
                left["researcher_left"] = own["epsilon"] - self.ledger.spent(ds, researcher)["epsilon"]
            # one bit: can the dataset still pay for all this researcher may spend (or, with
            # no share of their own, for anything at all)?
            need = left["researcher_left"]
            left["dataset_can_pay"] = bool(dataset_left[ds] >= need - 1e-9 if need is not None
                                           else dataset_left[ds] > 1e-9)
            if disclose:
                left["dataset_left"] = dataset_left[ds]
            out[ds] = left
        return out

    def disclose_dataset_left(self, yes: bool) -> None:
        """Opt in (or out) to telling every researcher each dataset's exact remaining budget
        (which reveals how much the others spent)."""
        self.state.set_setting(DISCLOSE_DATASET_LEFT, "yes" if yes else "no")
        self.ledger.log("disclosure", None, {DISCLOSE_DATASET_LEFT: bool(yes)})
        self.publish_budgets()

    def _dataset_left(self) -> dict[str, float]:
        return {b["dataset"]: b["epsilon"] - self.ledger.spent(b["dataset"])["epsilon"]
                for b in self.ledger.all_budgets() if not b["researcher"]}

    def publish_budgets(self, researchers: list[str] | None = None) -> None:
        """Tell researchers their budgets, privately, as a PySyft notification to each."""
        from syft.server.credentials import SyftVerifyKey
        from syft.service.notification.notifications import CreateNotification

        targets = {e: k for e, k in self.state.researcher_keys().items()
                   if researchers is None or e in researchers}
        if not targets:
            return
        dataset_left = self._dataset_left()  # composed once, not once per researcher
        for email, key in targets.items():
            # the signed audit head rides along, so researchers can catch a rewritten history
            head = self.ledger.head_for(email)
            note = {**self.budgets_for(email, dataset_left), AUDIT_HEAD_KEY: head}
            res = self.client.api.services.notifications.send(notification=CreateNotification(
                subject=BUDGET_NOTE_PREFIX + json.dumps(note, sort_keys=True),
                to_user_verify_key=SyftVerifyKey.from_string(key),
                from_user_verify_key=self.client.verify_key))
            if type(res).__name__ != "SyftError":  # the next proof starts where they are
                self.ledger.mark_sent(email, head)

    def price(self, spec: dict) -> str:
        """The privacy event of a spec, computed here from the spec (never from the client)."""
        from shared.accounting import event_to_json
        from shared.pricing import planned_event

        meta = DatasetMeta.from_json(self.state.dataset(spec["dataset"])["meta_json"])
        return event_to_json(planned_event(spec, meta))

    def _record_charges(self, own: dict, result: dict) -> list[tuple] | None:
        """A result's owner-only record groups, as (record ids, event) for the ledger."""
        import numpy as np

        from .storage import record_ids

        groups = result.get("_owner_record_groups")
        if not groups:
            return None
        ids = record_ids(self.state.dataset(own["dataset"])["path"])
        return [(ids[np.asarray(g["rows"], dtype=np.int64)].tolist(), g["event"]) for g in groups]

    # -- users -------------------------------------------------------------------------------
    def add_user(self, email: str, password: str, name: str | None = None,
                 institution: str = "") -> None:
        email = email.strip().lower()  # one identity per address, whatever its case
        if not _EMAIL.fullmatch(email):
            raise SiteError(f"{email!r} is not an e-mail address (name@host, at most 254 "
                            "characters, no spaces or control characters).")
        if len(password) < 8:
            raise SiteError("Choose a password of at least 8 characters for the researcher.")
        existing = {str(u.email).lower() for u in self.client.users.get_all()}
        if email in existing or email in self.state.researcher_keys():
            raise SiteError(f"{email} is already registered on {self.name}.")
        res = self.client.users.create(email=email, name=name or email.split("@")[0],
                                       password=password, password_verify=password,
                                       institution=institution or None)
        import syft as sy

        if isinstance(res, sy.SyftError):
            raise SiteError(f"Could not register {email}: {res.message}")
        # PySyft generates the researcher's key server-side and shows it to no admin API;
        # one login with the password we just set tells us where to send their budget notes.
        with contextlib.redirect_stdout(sys.stderr):
            as_user = sy.login(url=self.url, email=email, password=password)
        self.state.add_researcher(email, str(as_user.verify_key))

    def _registered(self, researcher: str) -> str:
        """The registered identity named by ``researcher`` (an e-mail given at `users add`)."""
        who = researcher.strip().lower()
        if who not in self.state.researcher_keys():
            raise SiteError(f"{researcher!r} is not a researcher registered on {self.name}; "
                            f"register them with `datasite users add {self.name} EMAIL`.")
        return who

    # -- requests ----------------------------------------------------------------------------
    def syft_requests(self) -> dict[str, Any]:
        return {r.id.to_string(): r for r in self.client.requests.get_all()}

    def syft_request(self, request_id: str):
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
            info["code"] = code.raw_code
        elif user is None:
            info["validation"] = ("sent by an identity this site did not register (`datasite "
                                  "users add`); it cannot run")
        else:
            info["validation"] = self._validate(spec)
            if spec.get("kind") == "fed_round":
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
        from shared.accounting import AccountingError
        from shared.jobs import SpecError

        from .pricing_worker import PricingError, price_bounded

        spec_json = json.dumps(spec, sort_keys=True)
        cached = self.state.cached_price(request_id, spec_json)
        if cached is None:
            meta_json = self.state.dataset(spec["dataset"])["meta_json"]
            try:
                event_json, alternatives = price_bounded(
                    spec, meta_json, timeout_s=PRICE_TIMEOUT_S, memory_mb=PRICE_MEMORY_MB)
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
        from shared.accounting import event_from_json
        from shared.reporting import privacy_report

        event_json, alternatives = self._priced(request_id, spec)
        budget = self.ledger.budget(spec["dataset"])
        delta = budget["delta"] if budget else spec.get("delta", 1e-5)
        cost = {k: v for k, v in privacy_report(event_from_json(event_json), delta).items()
                if k != "event"}
        if budget:
            cost["budget"] = self.ledger.quote(spec["dataset"], researcher, event_json,
                                               alternatives=alternatives)
            self.ledger.estimate(request_id, spec["dataset"], researcher, event_json)
            if spec.get("kind") == "removal_logreg" and cost["budget"]["fits"]:
                from .forget import affordable_forgets  # each forget is a priced release

                cost["forgets"] = affordable_forgets(self, spec, researcher, event_json)
        else:
            cost["budget"] = None
        return cost

    def review(self, include_done: bool = False) -> list[dict]:
        out = []
        from .rounds import refuse_if_ended

        for rid, req in self.syft_requests().items():
            try:
                info = self.describe_request(rid, req)
                if info["kind"] == "fed_round":
                    refuse_if_ended(self, rid, req, info)
            except Exception as e:  # one request the tools cannot read must not hide the rest
                info = {"request_id": rid, "researcher": inbox.shown_sender(self.state, req),
                        "registered": inbox.sender_identity(self.state, req) is not None,
                        "submitted": "", "function": None, "template": False,
                        "kind": "unreadable", "dataset": None, "spec": None, "code": None,
                        "request_type": inbox.change_summary(req), "state": "pending",
                        "server_status": "", "validation": f"could not be read: "
                        f"{type(e).__name__}: {e}"[:500]}
            if include_done or info["state"] in ("pending", "ran", "failed"):
                out.append(info)
        return out

    def _validate(self, spec: dict) -> str:
        """'ok' or the reason the spec cannot run here -- checked against the REAL metadata."""
        from shared.jobs import SpecError, spec_from_dict

        try:
            job = spec_from_dict(spec)
            row = self.state.dataset(spec.get("dataset", ""))
            if row is None:
                raise SpecError(f"unknown dataset {spec.get('dataset')!r} on {self.name}")
            job.validate(DatasetMeta.from_json(row["meta_json"]))
        except (SpecError, TypeError, ValueError) as e:
            return str(e)
        return "ok"

    def run(self, request_id: str, progress: bool = True) -> dict:
        """Run a recognised job once on the real data; keep the result for review.

        The request's run lock is held throughout, so a second owner process (or a second
        `datasite run`) can neither run it again nor mistake the live run for a crashed one."""
        request_id, req = self.syft_request(request_id)
        with self.state.run_lock(request_id) as locked:
            if not locked:
                raise SiteError(f"Request {request_id[:8]} is being run by another owner process "
                                "right now; wait for it, then see `datasite review --all`.")
            return self._run_locked(request_id, req, progress)

    def _run_locked(self, request_id: str, req, progress: bool) -> dict:
        info = self.describe_request(request_id, req, with_cost=False)
        if info["state"] == "denied":
            raise SiteError(f"Request {request_id[:8]} was denied; it cannot run.")
        if info["kind"] == inbox.NOT_CODE:
            raise SiteError(f"Request {request_id[:8]} is not a code request "
                            f"({info['request_type']}); deny it with `datasite deny`.")
        if not info["registered"]:
            raise SiteError(f"Request {request_id[:8]} comes from {info['researcher']}, not a "
                            "researcher registered with `datasite users add`; deny it.")
        if info["spec"] is None:
            raise SiteError(
                f"Request {request_id[:8]} is custom code, not a dp-datasite job template. "
                "The trusted runner only runs recognised jobs, whose privacy cost it can price. "
                f"Read it with `datasite review {self.name}` and deny it with a reason.")
        if info["validation"] != "ok":
            raise SiteError(f"Request {request_id[:8]} cannot run: {info['validation']}")
        spec = info["spec"]
        context = self._job_context(spec, info["researcher"])
        if spec["kind"] == "fed_round":
            raise SiteError(f"Request {request_id[:8]} is a round of a federated schedule: the "
                            "schedule's round server runs it once the schedule is approved.")
        row = self.state.dataset(spec["dataset"])
        self._recover_interrupted(request_id)
        if self.ledger.budget(spec["dataset"]) is None:
            raise SiteError(f"Dataset {spec['dataset']} has no privacy budget; set one with "
                            f"`datasite budget {self.name} {spec['dataset']} --epsilon E --delta D`.")
        claimed = self.state.claim_for_run(
            request_id, dataset=spec["dataset"], researcher=info["researcher"],
            func_name=info["function"], spec_json=json.dumps(spec, sort_keys=True))
        if not claimed:
            raise SiteError(f"Request {request_id[:8]} already ran on the private data "
                            f"(state: {self.state.request(request_id)['state']}); "
                            "a job runs at most once.")
        try:
            event_json, alternatives = self._priced(request_id, spec)
            self.ledger.reserve(request_id, spec["dataset"], info["researcher"], event_json,
                                alternatives=alternatives)
        except (LedgerError, SiteError) as e:
            self.state.set_state(request_id, "failed", reason=str(e))
            raise SiteError(str(e)) from None
        self.ledger.start(request_id)
        self.publish_budgets([info["researcher"]])
        if spec["kind"] == "fed_dpsgd_table":
            from .rounds import start_schedule

            return start_schedule(self, request_id, req, info)
        result_path = self.home.results / f"{request_id}.pkl"
        execution = self.state.start_execution(request_id, spec["dataset"])
        try:
            run_job_subprocess(spec, row["path"], result_path, progress, context=context,
                               on_start=lambda pid: self.state.set_state(request_id, "running",
                                                                         runner_pid=pid))
        except BaseException as e:
            self.state.finish_execution(execution, "failed")
            self.state.set_state(request_id, "failed", reason=str(e)[-2000:])
            self.ledger.refund(request_id, reason="job failed")
            self.publish_budgets([info["researcher"]])
            raise
        self.state.finish_execution(execution, "ok")
        with open(result_path, "rb") as f:
            result = pickle.load(f)
        summary = summarise(result)
        self.state.set_state(request_id, "ran", result_path=str(result_path),
                             summary_json=json.dumps(summary))
        return summary

    def _job_context(self, spec: dict, researcher: str) -> dict | None:
        """What the owner adds to a job that builds on an earlier release (a DP extractor)."""
        ref = spec.get("extractor") if spec.get("kind") == "removal_logreg" else None
        if not ref:
            return None
        own = self.state.request(ref)
        if own is None or own["state"] != "released":
            raise SiteError(f"The extractor {ref[:8]} is not a released job on {self.name}.")
        if own["researcher"] != researcher or own["dataset"] != spec["dataset"]:
            raise SiteError(f"The extractor {ref[:8]} must be a job released to {researcher} "
                            f"on {spec['dataset']}.")
        if json.loads(own["spec_json"])["kind"] not in ("dpsgd_table", "dpsgd_images"):
            raise SiteError(f"The extractor {ref[:8]} is not a DP-SGD model.")
        return {"extractor_result": own["result_path"]}

    def _recover_interrupted(self, request_id: str) -> None:
        """A run whose owner process died: refund its reservation, visibly, so it can run again.

        Its job process is gone and left no result, so nothing was computed that could leave.
        """
        own = self.state.request(request_id)
        if not own or own["state"] != "running":
            return
        if own["runner_pid"] and process_alive(own["runner_pid"]):
            raise SiteError(f"Request {request_id[:8]} is running now (pid {own['runner_pid']}).")
        if own["result_path"] and Path(own["result_path"]).exists():
            return
        entry = self.ledger.entry(request_id)
        if entry and entry["state"] in ("reserved", "running"):
            self.ledger.refund(request_id, reason="interrupted: the job process died")
        self.state.set_state(request_id, "failed", reason="interrupted; reservation refunded")

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

    def stop(self, request_id: str) -> dict:
        """Stop serving a federated schedule: commit the rounds that ran, refund the rest."""
        from .rounds import stop

        return stop(self, request_id)

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

    def executions(self, request_id: str | None = None) -> int:
        """How many times any job (or this request) touched the private data."""
        return self.state.execution_count(request_id)


_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.-]{1,189}")


def _asset_names(code) -> str:
    try:
        return ", ".join(code.assets.keys()) if hasattr(code.assets, "keys") else str(code.assets)
    except Exception:
        return "?"


def summarise(result: dict) -> dict:
    """What the owner sees before releasing: metrics and privacy, no model bytes."""
    return {"kind": result.get("kind"), "metrics": result.get("metrics"),
            "privacy": {k: v for k, v in (result.get("privacy") or {}).items() if k != "event"}}
