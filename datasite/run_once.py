"""Running a recognised job once on the private data.

A part of :class:`datasite.owner.OwnerSite` (which holds ``home``, ``config``, ``state``,
``ledger`` and ``client``); its methods are called on the site."""
from __future__ import annotations

import json
from pathlib import Path

from shared.jobs import MESSAGE, SCHEDULE, spec_from_dict

from . import inbox
from .config import SiteError
from .execution import record_ran, run_claimed_job
from .launch import process_alive
from .ledger import LedgerError
from .states import Entry, Request


_QUEUED = object()  # _run_locked's answer when it queued the job for the workers


class RunMixin:
    """Running a recognised job once on the private data."""

    def run(self, request_id: str, progress: bool = True, wait: bool = True,
            foreground: bool = False, *, epsilon: float | None = None,
            delta: float | None = None, unsandboxed: bool = False,
            limits=None) -> dict:
        """Run a recognised job once on the real data; keep the result for review.

        With warm workers running (``datasite workers``) and not ``foreground``, the job is
        queued for them and (``wait``) waited for; otherwise it runs here, in a fresh
        subprocess. The request's run lock is held while it is claimed and priced (and, here,
        while it runs), so a second owner process (or a second `datasite run`) can neither run
        it again nor mistake the live run for a crashed one.

        Custom code (not a job template) runs only with the cost the owner states
        (``epsilon``, ``delta``), here, in the sandbox (``datasite.custom_code``); without one
        on the host only with ``unsandboxed`` (audit-logged). ``limits``: its
        ``datasite.sandbox.Limits``."""
        from . import workers

        request_id, req = self.syft_request(request_id)
        custom = dict(epsilon=epsilon, delta=delta, unsandboxed=unsandboxed, limits=limits)
        if epsilon is not None or delta is not None or unsandboxed or limits is not None:
            foreground = True  # custom code never goes to the workers' job processes
        queue_it = not foreground and bool(workers.alive(self.state))
        with self.state.run_lock(request_id) as locked:
            if not locked:
                raise SiteError(f"Request {request_id[:8]} is being run by another owner process "
                                "right now; wait for it, then see `datasite review --all`.")
            out = self._run_locked(request_id, req, progress, queue_it, custom)
        if out is not _QUEUED:
            return out
        from .job_queue import enqueue

        from . import progress_notes

        queued = workers.queue_report(self.state)["queued"]  # its place before any worker can
        position = next((q["position"] for q in queued if q["request"] == request_id), None)
        enqueue(self.home, request_id)  # after the lock: a worker can take it at once
        # the researcher's notes go out while a worker starts the job
        progress_notes.send(self, request_id, "queued", position=position)
        self.publish_budgets([self.state.request(request_id)["researcher"]])
        if not wait:
            return {"queued": request_id}
        try:
            return workers.wait_for_run(self.state, self.ledger, request_id, progress)
        except SiteError:
            self.publish_budgets([self.state.request(request_id)["researcher"]])
            raise

    def _run_locked(self, request_id: str, req, progress: bool, queue_it: bool = False,
                    custom: dict | None = None):
        info = self.describe_request(request_id, req, with_cost=False)
        if info["state"] == Request.DENIED:
            raise SiteError(f"Request {request_id[:8]} was denied; it cannot run.")
        if info["kind"] == inbox.NOT_CODE:
            raise SiteError(f"Request {request_id[:8]} is not a code request "
                            f"({info['request_type']}); deny it with `datasite deny`.")
        if not info["registered"]:
            raise SiteError(f"Request {request_id[:8]} comes from {info['researcher']}, not a "
                            "researcher registered with `datasite users add`; deny it.")
        if info["spec"] is None:  # custom code: the owner states its cost; it runs sandboxed
            from . import custom_code

            return custom_code.run(self, request_id, info, **(custom or {}))
        if custom and (custom.get("epsilon") is not None or custom.get("delta") is not None):
            raise SiteError(f"Request {request_id[:8]} is a job template: its cost is computed "
                            "from its spec; run it without --epsilon/--delta.")
        if info["validation"] != "ok":
            raise SiteError(f"Request {request_id[:8]} cannot run: {info['validation']}")
        spec = info["spec"]
        job = spec_from_dict(spec)
        if job.LIFECYCLE == MESSAGE:
            raise SiteError(f"Request {request_id[:8]} is a {job.KIND} message inside a schedule: "
                            "the schedule's round server handles it once the schedule is "
                            "approved.")
        context = self._job_context(job, info["researcher"])
        backbones = self.backbones_for(job)  # the registered weights it starts from
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
            self.state.set_state(request_id, Request.FAILED, reason=str(e))
            raise SiteError(str(e)) from None
        self.ledger.start(request_id)
        result_path = self.home.results / f"{request_id}.pkl"
        if queue_it and job.LIFECYCLE != SCHEDULE:
            from .workers import save_queued

            # the worker reads what the owner resolved from the request's row; run() tells the
            # researcher their budgets once the job is queued, while a worker starts it
            save_queued(self.state, request_id, spec, row["path"], result_path, context,
                        backbones)
            return _QUEUED
        self.publish_budgets([info["researcher"]])
        if job.LIFECYCLE == SCHEDULE:
            from .rounds import start_schedule

            return start_schedule(self, request_id, req, info)
        try:
            result = run_claimed_job(self.state, request_id, spec, row["path"], result_path,
                                     progress, context=context, backbones=backbones,
                                     warm=self.warm_jobs)
        except BaseException as e:
            self.state.set_state(request_id, Request.FAILED, reason=str(e)[-2000:])
            self.ledger.refund(request_id, reason="job failed")
            self.publish_budgets([info["researcher"]])
            raise
        return record_ran(self.state, request_id, result, result_path)

    def _job_context(self, job, researcher: str) -> dict | None:
        """What the owner adds to a job that builds on earlier releases (``context_sources``):
        context key -> the owner's result file of that release."""
        context = {}
        for key, ref in job.context_sources().items():
            own = self.state.request(ref)
            if own is None or own["state"] != Request.RELEASED:
                raise SiteError(f"The {key} {ref[:8]} is not a released job on {self.name}.")
            if own["researcher"] != researcher or own["dataset"] != job.dataset:
                raise SiteError(f"The {key} {ref[:8]} must be a job released to {researcher} "
                                f"on {job.dataset}.")
            if json.loads(own["spec_json"])["kind"] not in job.CONTEXT_FROM_KINDS:
                raise SiteError(f"The {key} {ref[:8]} is not a "
                                f"{' or '.join(job.CONTEXT_FROM_KINDS)} job.")
            context[key] = own["result_path"]
        return context or None

    def _recover_interrupted(self, request_id: str) -> None:
        """A run whose owner process died: refund its reservation, visibly, so it can run again.

        Its job process is gone and left no result, so nothing was computed that could leave.
        """
        own = self.state.request(request_id)
        if not own or own["state"] != Request.RUNNING:
            return
        if own["queued_at"] is not None and own["started_at"] is None:
            raise SiteError(f"Request {request_id[:8]} is queued for the workers; see "
                            f"`datasite queue {self.name}`.")
        if own["runner_pid"] and process_alive(own["runner_pid"]):
            raise SiteError(f"Request {request_id[:8]} is running now (pid {own['runner_pid']}).")
        if own["result_path"] and Path(own["result_path"]).exists():
            return
        entry = self.ledger.entry(request_id)
        if entry and entry["state"] in (Entry.RESERVED, Entry.RUNNING):
            self.ledger.refund(request_id, reason="interrupted: the job process died")
        self.state.set_state(request_id, Request.FAILED, reason="interrupted; reservation refunded")

    def executions(self, request_id: str | None = None) -> int:
        """How many times any job (or this request) touched the private data."""
        return self.state.execution_count(request_id)

