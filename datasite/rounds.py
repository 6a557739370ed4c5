"""Serving the rounds of an approved federated schedule, without further clicks from the owner.

``OwnerSite.run`` on a ``fed_dpsgd_table`` schedule reserves all R rounds in the ledger, tells the
researcher the schedule is approved, and starts this round server in the background:
``python -m datasite.round_server SITE_HOME SCHEDULE_ID`` (which calls ``serve``). For each round
it waits for the researcher's ``fed_round`` request carrying the global model, trains from it on
the private data (in the job subprocess, recorded as an execution) and releases the local model.
After the last round it commits the schedule's spend. ``datasite stop NAME SCHEDULE`` ends it
early: the rounds that ran are committed and the rest refunded.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from shared.protocol import ResultPayload, public_privacy

from .config import SiteError
from .execution import run_claimed_job
from .launch import process_alive
from .inbox import sender_identity
from .release_gate import deposit
from .request_journal import JournalReader, journal_path
from .round_inbox import RequestFeed, RoundInbox, classify_round, poll_interval
from .states import Request

SERVING = Request.SERVING
# a schedule in these serves no more rounds
ENDED = (Request.STOPPED, Request.RELEASED, Request.DENIED, Request.FAILED)


def rounds_done(own: dict) -> int:
    return int((json.loads(own["summary_json"] or "{}")).get("rounds_done", 0))


def start_schedule(site, request_id: str, req, info: dict) -> dict:
    """Approve a schedule: (already reserved and started in the ledger by the caller) tell the
    researcher, and start the round server. Returns the owner's summary."""
    from shared.privacy.accounting import event_from_json
    from shared.privacy.reporting import privacy_report

    spec = info["spec"]
    budget = site.ledger.budget(spec["dataset"])
    report = privacy_report(event_from_json(site.ledger.entry(request_id)["event_json"]),
                            budget["delta"])
    approval = ResultPayload(kind=spec["kind"], spec=spec, privacy=report,
                             payload={"approved": True, "rounds": spec["rounds"]})
    deposit(req, approval)  # the researcher's schedule request returns this
    summary = {"kind": spec["kind"], "rounds": spec["rounds"], "rounds_done": 0,
               "privacy": public_privacy(report)}
    site.state.set_state(request_id, SERVING, summary_json=json.dumps(summary))
    pid = _spawn(site.home.root, request_id)
    site.state.set_state(request_id, SERVING, runner_pid=pid)
    summary["round_server_pid"] = pid
    return summary


def _spawn(home: Path, request_id: str) -> int:
    from .launch import spawn_module

    return spawn_module("datasite.round_server", [str(home), request_id],
                        Path(home) / f"rounds-{request_id[:8]}.log",
                        env=dict(os.environ, PYTHONUNBUFFERED="1")).pid


def serve(site, schedule_id: str, poll: float = 1.0, idle_timeout: float = 3600.0,
          max_poll: float = 5.0) -> str:
    """Serve rounds until the schedule completes, is stopped, or sees no round for
    ``idle_timeout`` seconds (then it stops, committing what ran). Returns the final state.
    Polls every ``poll`` seconds while rounds come, backing off to ``max_poll`` when idle."""
    inbox = RoundInbox(schedule_id)
    feed = RequestFeed(site.syft_requests, lambda rid: _fetch_request(site, rid),
                       JournalReader(journal_path(site.home.syft_dir)))
    last_activity = time.monotonic()
    while True:
        own = site.state.request(schedule_id)
        if own is None or own["state"] != SERVING:
            return own["state"] if own else "gone"
        if _serve_pending(site, schedule_id, own, inbox, feed):
            last_activity = time.monotonic()
            continue
        idle = time.monotonic() - last_activity
        if idle > idle_timeout:
            finish(site, schedule_id, reason=f"no round request for {idle_timeout:.0f}s")
            return Request.STOPPED
        time.sleep(poll_interval(idle, poll, max_poll))


def _round_for(req, schedule_id: str) -> dict | None:
    """The spec of ``req`` if it is a round request of this schedule, else None."""
    return classify_round(req, schedule_id)[0]


def _fetch_request(site, rid: str):
    """The PySyft request ``rid``, or None if it is gone (or cannot be read now: the feed's
    next full listing looks again)."""
    from syft.types.uid import UID

    try:
        req = site.client.api.services.request.get_by_uid(uid=UID(rid))
    except Exception:
        return None
    return None if type(req).__name__ in ("SyftError", "SyftException") else req


def _serve_pending(site, schedule_id: str, own: dict, inbox: RoundInbox,
                   feed: RequestFeed | None = None) -> bool:
    """Handle the new round requests waiting for this schedule; True if any was handled.
    Without a ``feed``, looks through the full listing (each request still classified once)."""
    spec = json.loads(own["spec_json"])
    handled = False
    requests = feed.requests(inbox.seen) if feed is not None else site.syft_requests()
    new = inbox.new_rounds(requests, lambda rid: site.state.request(rid) is not None)
    for rid, req, round_spec in new:
        handled = True
        done = rounds_done(site.state.request(schedule_id))
        problem = None
        if sender_identity(site.state, req) != own["researcher"]:
            problem = "only the researcher whose schedule was approved can send its rounds"
        elif round_spec.get("dataset") != spec["dataset"]:
            problem = f"the schedule runs on {spec['dataset']}, not {round_spec.get('dataset')}"
        elif round_spec.get("round") != done:
            problem = f"round {round_spec.get('round')} was sent, but round {done} is next"
        if problem:
            _refuse(site, rid, req, own["researcher"], problem)
            continue
        _run_round(site, schedule_id, spec, own["researcher"], rid, req, round_spec, done)
        if site.state.request(schedule_id)["state"] != SERVING:
            break
    return handled


def _refuse(site, rid, req, researcher, reason: str) -> None:
    req.deny(reason=reason)
    site.state.claim_for_run(rid, dataset=None, researcher=researcher, func_name=None,
                             spec_json=None)
    site.state.set_state(rid, Request.DENIED, reason=reason)


def refuse_if_ended(site, rid: str, req, info: dict) -> bool:
    """Refuse a round that arrived after its schedule ended (no round server will ever run it);
    True if refused. Rounds are submitted as the previous one completes, so one can arrive
    just after the owner stopped the schedule."""
    schedule = site.state.request(str((info.get("spec") or {}).get("schedule", "")))
    if info["state"] != "pending" or schedule is None or schedule["state"] not in ENDED:
        return False
    why = json.loads(schedule["summary_json"] or "{}").get("ended") or schedule["state"]
    _refuse(site, rid, req, info["researcher"], "the site stopped participating in schedule "
            f"{schedule['request_id'][:8]} ({why})")
    info["state"] = Request.DENIED
    return True


def _run_round(site, schedule_id, spec, researcher, rid, req, round_spec, r) -> None:
    job = dict(spec, round=r, init_state=round_spec.get("init_state", ""))
    row = site.state.dataset(spec["dataset"])
    site.state.claim_for_run(rid, dataset=spec["dataset"], researcher=researcher,
                             func_name=req.code.service_func_name,
                             spec_json=json.dumps(round_spec, sort_keys=True))
    result_path = site.home.results / f"{rid}.pkl"
    try:
        result = run_claimed_job(site.state, rid, job, row["path"], result_path, progress=False)
    except BaseException as e:
        # the job's log stays with the owner: a traceback can quote private values
        site.ledger.log("round_failed", schedule_id, {"round": r, "round_request": rid,
                                                      "error": str(e)[-2000:]})
        reason = f"round {r} failed at the datasite; the site stopped participating"
        _refuse(site, rid, req, researcher, reason)
        finish(site, schedule_id, reason=f"round {r} failed at the datasite (the owner has "
                                         "the details)")
        return
    try:
        check_round_metrics(result)
    except SiteError as e:
        _refuse(site, rid, req, researcher, f"round {r} withheld by the datasite")
        finish(site, schedule_id, reason=str(e))
        return
    deposit(req, result, only=ROUND_KEYS)
    site.state.set_state(rid, Request.RELEASED, result_path=str(result_path))
    own = site.state.request(schedule_id)
    summary = json.loads(own["summary_json"] or "{}")
    summary["rounds_done"] = r + 1
    site.state.set_state(schedule_id, SERVING, summary_json=json.dumps(summary))
    site.ledger.log("round_released", schedule_id, {"round": r, "round_request": rid})
    if r + 1 >= spec["rounds"]:
        finish(site, schedule_id, reason="all rounds done")


# What a round may send back: its model and its DP metrics, both priced in the schedule.
ROUND_KEYS = ("kind", "spec", "round", "rounds", "model_state", "model_config", "metrics",
              "privacy")


def check_round_metrics(result: ResultPayload) -> None:
    """SiteError unless the round's metrics came through the priced DP mechanism (the owner
    does not see rounds, so nothing unpriced may leave)."""
    from shared.privacy.private_metrics import MECHANISM

    if result.metrics.get("test_accuracy") is not None \
            and result.metrics.get("mechanism") != MECHANISM:
        raise SiteError("round metrics did not come through the priced DP mechanism; the round "
                        "was not released")


def released_round(result: dict) -> dict:
    """What the release gate deposits for a round's ``result``; SiteError if its metrics did
    not come through the DP mechanism."""
    payload = ResultPayload.from_dict(result)
    check_round_metrics(payload)
    view = payload.public_view()
    return {k: view[k] for k in ROUND_KEYS if k in view}


def finish(site, schedule_id: str, reason: str) -> dict:
    """End a schedule: commit the rounds that ran (refund the rest) and deny its waiting rounds."""
    from shared.privacy.accounting import event_to_json
    from shared.data import DatasetMeta
    from shared.jobs import spec_from_dict

    own = site.state.request(schedule_id)
    if own is None or own["state"] != SERVING:
        raise SiteError(f"Schedule {schedule_id[:8]} is not being served "
                        f"(state: {own['state'] if own else 'unknown'}).")
    spec = spec_from_dict(json.loads(own["spec_json"]))
    done = rounds_done(own)
    if done == 0:
        site.ledger.refund(schedule_id, reason=f"schedule ended before any round: {reason}")
        final = Request.STOPPED
    else:
        meta = DatasetMeta.from_json(site.state.dataset(spec.dataset)["meta_json"])
        site.ledger.commit(schedule_id, event_to_json(spec.rounds_event(meta, done)))
        site.ledger.released(schedule_id)
        final = Request.RELEASED if done >= spec.rounds else Request.STOPPED
    summary = json.loads(own["summary_json"] or "{}")
    summary.update(rounds_done=done, ended=reason)
    site.state.set_state(schedule_id, final, reason=reason, summary_json=json.dumps(summary),
                         runner_pid=None)
    for rid, req in site.syft_requests().items():
        mine = site.state.request(rid)
        # waiting rounds, and a round whose job was cut short by the stop
        if req.status.name == "PENDING" and (mine is None or mine["state"] not in (
                Request.RELEASED, Request.DENIED)) and _round_for(req, schedule_id) is not None:
            _refuse(site, rid, req, own["researcher"],
                    f"the site stopped participating in schedule {schedule_id[:8]} ({reason})")
    site.publish_budgets([own["researcher"]])
    return summary


def stop(site, schedule_id: str) -> dict:
    """The owner ends participation: stop the round server, commit what ran, refund the rest."""
    schedule_id, _ = site.syft_request(schedule_id)
    own = site.state.request(schedule_id)
    if own is None or own["state"] != SERVING:
        raise SiteError(f"Request {schedule_id[:8]} is not a schedule being served "
                        f"(state: {own['state'] if own else 'pending'}).")
    pid = own["runner_pid"]
    if pid and process_alive(pid):
        try:
            os.killpg(pid, signal.SIGTERM)  # the server and any round job it started
        except ProcessLookupError:
            pass
        for _ in range(100):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:  # our own child: reap it
                    break
            except ChildProcessError:
                pass
            if not process_alive(pid):
                break
            time.sleep(0.1)
    return finish(site, schedule_id, reason="stopped by the data owner")
