"""Submitting a job, waiting for the owner's decision, and decoding the released result."""
from __future__ import annotations

import time

from shared.display import escape
from shared.template import compile_function, func_name_for, new_nonce, recognise, render

from .errors import JobDenied, JobTimeout, ResearcherError
from .results import JobResult


def submit(site, job) -> "JobRequest":
    """Validate ``job`` against the published metadata, then send it as a code request."""
    import syft as sy

    from .jobs import Custom

    if isinstance(job, Custom):
        return _submit_custom(site, job)
    spec = job.spec
    remote = _dataset(site, spec.dataset)
    spec.validate(remote.meta)  # the owner validates again against the real data
    _check_backbones(site, spec, remote.meta)
    # a fresh nonce per submission: resubmitting the same job is a new request, priced on its own
    nonce = new_nonce()
    source = render(spec.to_dict(), nonce)
    fn = _quietly_compiled(source, {"sy": sy, "asset": remote._asset})
    from syft.types.errors import SyftException

    try:  # PySyft 0.9.5 raises some refusals and returns others
        res = site.client.code.request_code_execution(fn)
    except SyftException as e:
        raise ResearcherError(f"Submission failed: {getattr(e, 'public_message', e)}") from None
    if isinstance(res, sy.SyftError):
        raise ResearcherError(f"Submission failed: {res.message}")
    return JobRequest(site, res.id.to_string(), func_name_for(spec.to_dict(), nonce), spec.dataset,
                      code_uid=res.code_id, asset=remote._asset)


def _dataset(site, name: str):
    """The published dataset ``name`` (metadata and asset): what a submission checks against.
    Without the budget notes ``site.datasets`` reads too (a listing that grows with every job)."""
    return site._catalog({})[name]  # pylint: disable=protected-access


def _submit_custom(site, job) -> "CustomRequest":
    """Send a custom function as a code request on the dataset's asset."""
    import syft as sy
    from syft.types.errors import SyftException

    remote = _dataset(site, job.dataset)
    if job.run_on_mock_first:  # as PySyft's tutorials do: try it on the mock, here, first
        job.check_on_mock(site)
    fn = _quietly_compiled(job.submitted_source(), {"sy": sy, "asset": remote._asset})
    try:
        res = site.client.code.request_code_execution(fn)
    except SyftException as e:
        raise ResearcherError(f"Submission failed: {getattr(e, 'public_message', e)}") from None
    if isinstance(res, sy.SyftError):
        raise ResearcherError(f"Submission failed: {res.message}")
    return CustomRequest(site, res.id.to_string(), job.func.__name__, job.dataset,
                         code_uid=res.code_id, asset=remote._asset)


def _check_backbones(site, spec, meta) -> None:
    """Fail before submitting when the job names a backbone the site has not registered, or
    one it cannot start from (the owner checks again against its own registry)."""
    needed = spec.backbones_needed()
    if not needed:
        return
    from shared.errors import SpecError

    catalogue = site.models
    missing = [n for n in needed if n not in catalogue]
    if missing:
        raise ResearcherError(f"{site.name} has no registered model {missing[0]!r}; registered: "
                              f"{sorted(catalogue) or 'none'} (see site.models).")
    try:
        spec.check_backbones({n: catalogue[n] for n in needed}, meta)
    except SpecError as e:
        raise ResearcherError(f"This job cannot start from {needed[0]!r} on {site.name}: {e}") \
            from None


def _quietly_compiled(source: str, namespace: dict):
    """The syft function of a rendered template. PySyft 0.9.5 displays "please create a project
    ..." when a syft function is defined: advice for its own workflow, wrong here (the job is
    submitted as a code request at once), so that one display is muted while it is defined."""
    from unittest import mock

    from syft.service.code import user_code

    with mock.patch.object(user_code, "display", lambda *a, **k: None):
        return compile_function(source, namespace)


class JobRequest:
    """A submitted job. ``wait()`` returns its result once the owner releases it."""

    def __init__(self, site, request_id: str, func_name: str, dataset: str, code_uid=None,
                 asset=None):
        self.site = site
        self.id = request_id
        self.func_name = func_name
        self.dataset = dataset
        self._result: JobResult | None = None
        # the submitted UserCode's id and the dataset's asset: known at submit, else looked up
        # once (each lookup is a round trip; wait() polls)
        self._code_uid = code_uid
        self._asset_ref = asset

    def _code_and_asset(self):
        if self._code_uid is None:
            self._code_uid = self._syft_request().code_id
        if self._asset_ref is None:
            self._asset_ref = _dataset(self.site, self.dataset)._asset
        return self._code_uid, self._asset_ref

    @classmethod
    def find(cls, site, request_id: str) -> "JobRequest":
        for req in site.client.requests.get_all():
            rid = req.id.to_string()
            if rid.startswith(request_id):
                code = req.code
                spec = recognise(code.raw_code)
                if spec is None:
                    raise ResearcherError(f"Request {rid[:8]} is not a dp-datasite job.")
                return cls(site, rid, code.service_func_name, spec["dataset"])
        raise ResearcherError(f"No request {request_id!r} of yours on {site.name}.")

    def _syft_request(self):
        from syft.service.response import SyftError
        from syft.types.uid import UID

        try:  # one request by its id: wait() polls this, and a listing grows with every job
            req = self.site.client.api.services.request.get_by_uid(uid=UID(self.id))
        except Exception:  # syft raises its own exceptions for a missing or foreign request
            req = None
        if req is not None and not isinstance(req, SyftError):
            return req
        for req in self.site.client.requests.get_all():  # e.g. an older server: look it up
            if req.id.to_string() == self.id:
                return req
        raise ResearcherError(f"Request {self.id[:8]} is no longer on {self.site.name}.")

    def status(self) -> str:
        """'pending' (waiting for the owner), 'denied' or 'released'."""
        if self._result is not None or self._try_fetch():  # released: one round trip
            return "released"
        return "denied" if self._syft_request().status.name == "REJECTED" else "pending"

    def denial_reason(self) -> str | None:
        req = self._syft_request()
        if req.status.name != "REJECTED":
            return None
        return req.code.status.first_denial_reason

    def _try_fetch(self) -> bool:
        # code.call by the code's id: `client.code.<func_name>` would re-download the whole
        # API for each new function (0.6-1.2 s per poll, benchmarks/workflow.py)
        try:
            code_uid, asset = self._code_and_asset()
            out = self.site.client.api.services.code.call(uid=code_uid, data=asset)
        except ResearcherError:
            raise
        except Exception:  # "waiting for approval": nothing released yet
            return False
        value = out.get() if hasattr(out, "get") else out
        if not isinstance(value, dict) or "kind" not in value:
            return False
        self._result = JobResult(value)
        return True

    def progress(self) -> dict | None:
        """The owner's latest progress note on this job: ``phase`` (queued, running, ran,
        failed), and ``position`` in the queue or ``done``/``total`` steps; None before any."""
        from shared.protocol import decode_progress_note

        notes = sorted(self.site.client.api.services.notifications.get_all(),
                       key=lambda n: n.created_at)
        mine = [p for p in (decode_progress_note(n.subject) for n in notes)
                if p and p.get("request") == self.id]
        return mine[-1] if mine else None

    def _describe_progress(self) -> str:
        p = self.progress()
        if not p:
            return "waiting for the data owner"
        if p.get("phase") == "queued":
            return f"queued (#{p['position']})" if p.get("position") else "queued"
        if p.get("phase") == "running" and p.get("total"):
            return f"running, step {p['done']}/{p['total']}"
        return {"running": "running", "ran": "ran; waiting for the owner's release",
                "failed": "failed at the datasite"}.get(p.get("phase"), "waiting")

    def wait(self, timeout: float | None = 3600, poll: float = 2.0, progress: bool = True) -> JobResult:
        """Block until the owner releases the result (or denies it, or ``timeout`` passes)."""
        from tqdm.auto import tqdm

        start = time.monotonic()
        bar = tqdm(desc=f"{self.func_name[:28]}: waiting for the data owner", unit="s",
                   disable=not progress, bar_format="{desc} {elapsed}")
        try:
            while True:
                state = self.status()
                if state == "released":
                    bar.set_description_str(f"{self.func_name[:28]}: released")
                    return self._result
                if state == "denied":
                    raise JobDenied(self.id, self.denial_reason() or "no reason given")
                if timeout is not None and time.monotonic() - start > timeout:
                    raise JobTimeout(f"Request {self.id[:8]} is still pending after {timeout:.0f}s; "
                                     "call wait() again later, or ask the data owner.")
                if progress:
                    bar.set_description_str(f"{self.func_name[:28]}: "
                                            f"{self._describe_progress()}")
                bar.update(0)
                bar.refresh()
                time.sleep(poll)
        finally:
            bar.close()

    def updates(self) -> list["ModelUpdate"]:
        """Updates of this request's model after records were forgotten at the datasite
        (removal-enabled models only), oldest first."""
        from shared.protocol import decode_model_update

        out = []
        for n in self.site.client.api.services.notifications.get_all():
            payload = decode_model_update(n.subject)
            if payload is not None and payload.get("request") == self.id:
                out.append(ModelUpdate(payload, self._result))
        return sorted(out, key=lambda u: u.version)

    @property
    def result(self) -> JobResult:
        if self._result is None and not self._try_fetch():
            raise ResearcherError(f"Request {self.id[:8]} has no released result yet; use wait().")
        return self._result

    def __repr__(self) -> str:
        return f"<request {self.id[:8]} {escape(self.func_name)} on {escape(str(self.site.name))}>"


class ModelUpdate:
    """A removal-enabled model after a record was forgotten: its certificate, and (unless the
    model was withdrawn) the updated model, usable like the original result."""

    def __init__(self, payload: dict, original: JobResult | None):
        self.raw = payload
        self.version = payload["version"]
        self.status = payload["status"]  # "updated" or "withdrawn"
        self.certificate = payload["certificate"]
        self.reason = payload.get("reason")

    @property
    def result(self) -> JobResult:
        """The updated model as a result (metrics are those of the original release)."""
        import base64

        if self.status != "updated":
            raise ResearcherError(f"Version {self.version} withdrew the model: {self.reason}. "
                                  "Stop using it and delete your copies.")
        raw = {"kind": "removal_logreg", "removable_model": self.raw["removable_model"],
               "certificate": self.certificate}
        if "model_state" in self.raw:
            raw.update(model_state=base64.b64decode(self.raw["model_state"]),
                       model_config=self.raw["model_config"])
        return JobResult(raw)

    def __repr__(self) -> str:
        c = self.certificate  # a fresh DP release; the owner's Newton copy is never sent
        what = (f"fresh DP release eps={c['training_epsilon']:.3g}" if self.status == "updated"
                else escape(str(self.reason), 500))
        return f"<model update v{self.version}: {self.status}, {what}>"


class CustomRequest(JobRequest):
    """A submitted custom function; ``wait()`` returns exactly what it returned on the real
    data, once the owner releases it (no job-result decoding)."""

    def _try_fetch(self) -> bool:
        try:
            code_uid, asset = self._code_and_asset()
            req = self._syft_request()
            param = next(iter(req.code.input_policy_init_kwargs.values())).keys()
            out = self.site.client.api.services.code.call(
                uid=code_uid, **{next(iter(param)): asset})
        except ResearcherError:
            raise
        except Exception:  # "waiting for approval": nothing released yet
            return False
        if type(out).__name__ in ("SyftError", "SyftException"):
            return False
        self._result = out.get() if hasattr(out, "get") else out
        return True
