"""Custom syft functions on the owner's side: read, priced by the owner, run once in the
sandbox, checked, released.

A request whose code is not a recognised job template is *custom code*. The owner reads it in
full (``datasite review``: the code, the researcher's declared cost and a static summary), and
states the cost to run it (``datasite run NAME REQ --epsilon E --delta D``): the ledger reserves
and commits that cost as a :class:`shared.privacy.accounting.DeclaredDpEvent`, so reports show
it was declared by the owner, not computed. It runs once (the same claim as templates) in the
sandbox (:mod:`.sandbox`) on the one dataset it names; its result comes back as data
(:mod:`shared.custom.output`). When the function takes the accounted ``dp`` handle, the spend
it measured is composed and a result that spent more than the stated cost is not released.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from shared.custom.output import decode, output_digest, output_size
from shared.custom.output import describe as describe_output
from shared.custom.summary import declared_cost, static_summary
from shared.privacy.accounting import AccountingError, declared_event, event_to_json

from . import sandbox
from .config import SiteError
from .execution import execute_once, record_failed
from .ledger import LedgerError
from .states import Entry, Request

KIND = "custom"
DEFAULT_LIMITS = sandbox.Limits()
_ALL_STATES = tuple(Request)


def code_sha256(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def asset_inputs(code) -> dict[str, str]:
    """The function's asset parameters: kwarg name -> asset (= dataset) name."""
    try:
        return {k: a.name for k, a in code.assets.items()}
    except Exception:  # an asset the low side no longer has
        return {}


def describe(site, request_id: str, code, user: str | None, state: str) -> dict:
    """What ``describe_request`` adds for custom code: the code, the dataset it reads, the
    researcher's declared cost, a static summary, whether it can run here, and what stating
    the declared cost would do to the budgets."""
    source = code.raw_code
    inputs = asset_inputs(code)
    summary = static_summary(source, code.service_func_name)
    declared = declared_cost(source)
    dataset = next(iter(inputs.values()), None) if len(inputs) == 1 else None
    available, why = sandbox.available()
    sha = code_sha256(source)
    info = {"code": source, "dataset": dataset if dataset else ", ".join(inputs.values()),
            "custom": {"declared_by_researcher": declared, "summary": summary,
                       "asset_parameters": inputs, "code_sha256": sha,
                       "sandbox": why if available else f"NONE ({why})",
                       "priced_by": "measurement through the dp handle, checked against the "
                                    "cost you state" if summary.get("takes_handle") else
                                    "your declaration only (no dp handle)"}}
    if user is None:
        info["validation"] = ("sent by an identity this site did not register (`datasite users "
                              "add`); it cannot run")
    elif len(inputs) != 1 or site.state.dataset(dataset) is None:
        info["validation"] = (f"custom code must take exactly one asset of this site; it takes "
                              f"{inputs or 'none'}")
    else:
        info["validation"] = "ok"
    if dataset and site.state.dataset(dataset) is not None:
        dups = [r["request_id"][:8] for r in site.state.requests_on(dataset, _ALL_STATES)
                if r["request_id"] != request_id
                and json.loads(r["spec_json"] or "{}").get("code_sha256") == sha]
        if dups:
            info["custom"]["same_code_as"] = dups
    if (info["validation"] == "ok" and declared and declared["epsilon"] > 0
            and state == Request.PENDING and site.ledger.budget(dataset)):
        try:
            ev = event_to_json(declared_event(declared["epsilon"], declared["delta"]))
            info["custom"]["declared_quote"] = site.ledger.quote(dataset, user, ev)
        except (AccountingError, LedgerError):
            pass
    return info


def run(site, request_id: str, info: dict, epsilon: float | None, delta: float | None,
        unsandboxed: bool = False, limits: sandbox.Limits | None = None) -> dict:
    """Run custom code once in the sandbox at the cost the owner states; keep its output for
    review. Refused without a stated cost, or without a sandbox unless ``unsandboxed``."""
    rid = request_id
    if info["validation"] != "ok":
        raise SiteError(f"Request {rid[:8]} cannot run: {info['validation']}")
    if epsilon is None or delta is None:
        said = info["custom"]["declared_by_researcher"]
        raise SiteError(
            f"Request {rid[:8]} is custom code: nothing here can compute its privacy cost, so "
            f"you state it: `datasite run {site.name} {rid[:8]} --epsilon E --delta D` (the "
            f"researcher declared {said or 'nothing'}); or deny it.")
    try:
        event_json = event_to_json(declared_event(epsilon, delta))
    except AccountingError as e:
        raise SiteError(f"Cannot state that cost: {e}") from None
    available, why = sandbox.available()
    if not available and not unsandboxed:
        raise SiteError(f"Request {rid[:8]} is custom code and this host has no sandbox: {why}. "
                        f"{sandbox.ENABLE_HINT}")
    dataset, researcher = info["dataset"], info["researcher"]
    row = site.state.dataset(dataset)
    if site.ledger.budget(dataset) is None:
        raise SiteError(f"Dataset {dataset} has no privacy budget; set one with "
                        f"`datasite budget {site.name} {dataset} --epsilon E --delta D`.")
    site._recover_interrupted(rid)  # pylint: disable=protected-access
    facts = {"kind": KIND, "dataset": dataset, "code_sha256": info["custom"]["code_sha256"],
             "declared_by_owner": {"epsilon": float(epsilon), "delta": float(delta)},
             "declared_by_researcher": info["custom"]["declared_by_researcher"],
             "sandbox": "none (--unsandboxed)" if not available else why,
             "takes_handle": bool(info["custom"]["summary"].get("takes_handle"))}
    if not site.state.claim_for_run(rid, dataset=dataset, researcher=researcher,
                                    func_name=info["function"],
                                    spec_json=json.dumps(facts, sort_keys=True)):
        raise SiteError(f"Request {rid[:8]} already ran on the private data (state: "
                        f"{site.state.request(rid)['state']}); a job runs at most once.")
    try:
        site.ledger.reserve(rid, dataset, researcher, event_json)
    except LedgerError as e:
        site.state.set_state(rid, Request.FAILED, reason=str(e))
        raise SiteError(str(e)) from None
    # what ran, how isolated, at whose stated cost: in the signed audit chain
    site.ledger.log("custom_run", rid, {k: facts[k] for k in (
        "code_sha256", "declared_by_owner", "sandbox", "takes_handle")})
    if not available:
        site.ledger.log("unsandboxed", rid, {"why": why, "flag": "--unsandboxed",
                                             "note": "custom code ran with resource limits "
                                                     "only, no isolation"})
    site.ledger.start(rid)
    site.publish_budgets([researcher])
    job_dir = site.home.results / f"{rid}.custom"
    shutil.rmtree(job_dir, ignore_errors=True)  # a failed, refunded earlier try
    data_file = next(p for p in (Path(row["path"]) / "data.parquet",
                                 Path(row["path"]) / "data.npz") if p.exists())
    asset_param = next(iter(info["custom"]["asset_parameters"]))
    try:
        sandbox.prepare_job_dir(job_dir, info["code"], data_file, info["function"], asset_param,
                                facts["takes_handle"], sandboxed=available)
        outcome = _execute(site, rid, dataset, job_dir, limits or DEFAULT_LIMITS, available)
        value = decode(job_dir / "out")
        report = json.loads((job_dir / "out" / "privacy.json").read_text())
        measured = _measured(report, delta, facts["takes_handle"])
    except Exception as e:  # noqa: BLE001 (whatever failed: refunded, and the owner told why)
        reason = e.reason if isinstance(e, _Failed) else f"{type(e).__name__}: {e}"
        record_failed(site.state, site.ledger, rid, f"custom code: {reason}")
        site.publish_budgets([researcher])
        raise SiteError(f"Request {rid[:8]} failed in the sandbox and was refunded: "
                        f"{reason}") from None
    summary = {"kind": KIND, "output": {**describe_output(value), "size_bytes":
                                        output_size(job_dir / "out")},
               "privacy": {"cost_source": "declared", "declared_by_owner":
                           facts["declared_by_owner"], "measured": measured,
                           "overspent": bool(measured and measured["epsilon"] > epsilon
                                             * (1 + 1e-9) + 1e-12)},
               "sandbox": facts["sandbox"], "output_sha256": output_digest(job_dir / "out"),
               "log_tail": outcome.stderr_tail[-1500:]}
    site.state.set_state(rid, Request.RAN, result_path=str(job_dir),
                         summary_json=json.dumps(summary, default=str), progress_json=None)
    return summary


class _Failed(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _execute(site, rid, dataset, job_dir, limits, sandboxed):
    def work():
        out = sandbox.run_sandboxed(job_dir, limits, sandboxed=sandboxed, on_start=lambda pid:
                                    site.state.set_state(rid, Request.RUNNING, runner_pid=pid))
        if not out.ok:
            raise _Failed(out.reason)
        return out
    return execute_once(site.state, rid, dataset, work)


def _measured(report: dict, delta: float, takes_handle: bool) -> dict | None:
    """The spend measured through the handle, composed at the stated delta (None: no handle)."""
    from shared.custom.handle import spent_epsilon

    if not takes_handle:
        return None
    eps = spent_epsilon(report, max(float(delta), 1e-12))
    return {"epsilon": eps, "measurements": int(report.get("measurements", 0)),
            "delta": float(delta)}


def release(site, request_id: str, req, own: dict) -> dict:
    """Release a custom run's output: exactly what the owner saw (same digest), only if the
    measured spend fits the stated cost; the ledger commits the owner's declared event."""
    from .release_gate import deposit_output

    rid = request_id
    summary = json.loads(own["summary_json"])
    out = Path(own["result_path"]) / "out"
    if output_digest(out) != summary["output_sha256"]:
        raise SiteError(f"Request {rid[:8]}: its output changed on disk since the run; not "
                        "released. Deny it.")
    facts = json.loads(own["spec_json"])
    stated = facts["declared_by_owner"]
    measured = _measured(json.loads((out / "privacy.json").read_text()), stated["delta"],
                         facts["takes_handle"])
    if measured and measured["epsilon"] > stated["epsilon"] * (1 + 1e-9) + 1e-12:
        raise SiteError(
            f"Request {rid[:8]} spent eps={measured['epsilon']:.4f} through its dp handle "
            f"({measured['measurements']} measurements) at delta={stated['delta']:g}, more than "
            f"the eps={stated['epsilon']:g} you stated: not released. Deny it (its reservation "
            "is refunded; nothing left the site).")
    value = decode(out)
    entry = site.ledger.entry(rid)
    if entry["state"] == Entry.RUNNING:
        try:
            site.ledger.commit(rid, entry["event_json"])
        except LedgerError as e:
            raise SiteError(str(e)) from None
    deposit_output(req, value)
    site.ledger.released(rid)
    site.state.set_state(rid, Request.RELEASED)
    site.publish_budgets([own["researcher"]])
    return summary
