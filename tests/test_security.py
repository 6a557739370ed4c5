"""Attacks a researcher could try against a datasite, and the proof that each one fails."""
from __future__ import annotations

import pandas as pd
import pytest
import syft as sy

import researcher
from datasite.config import SiteError
from researcher import jobs

from conftest import RESEARCHER

# what these attacks meet (syft's API, the review's identity binding, the run gate) is the same
# on either database; the one-execution race is the database's, so it runs on both
pytestmark = [pytest.mark.slow, pytest.mark.backends("postgres")]


def _submit(site, **kw):
    args = dict(dataset="breast_cancer", label="diagnosis", epsilon=2.0, delta=1e-5, epochs=2,
                batch_size=64)
    args.update(kw)
    return site.submit(jobs.DPSGD(**args))


def _call(site, func_name):
    asset = site.datasets["breast_cancer"]._asset
    out = getattr(site.client.code, func_name)(data=asset)
    return out.get() if hasattr(out, "get") else out


def test_real_data_is_not_on_the_server(live_site, demo_files):
    """Neither the researcher nor even root on the low side can read a real record."""
    real = pd.read_csv(demo_files / "breast_cancer.csv")
    site = researcher.connect(live_site.url, *RESEARCHER)
    asset = site.datasets["breast_cancer"]._asset
    with pytest.raises(Exception):
        data = asset.data
        if data is None or isinstance(data, sy.SyftError):
            raise PermissionError("no access")
    root_view = live_site.client.datasets["breast_cancer"].assets[0].data
    assert len(root_view.merge(real, how="inner", on=list(real.columns))) == 0
    # and no real value is anywhere in the server's files (SQLite backend)
    syft_dir = live_site.home.syft_dir
    blob = b"".join(p.read_bytes() for p in syft_dir.rglob("*") if p.is_file())
    distinctive = real["mean_area"].iloc[:20] if "mean_area" in real else real.iloc[:20, 3]
    import struct

    hits = sum(struct.pack("<d", float(v)) in blob for v in distinctive)
    assert hits == 0


def test_no_execution_before_approval_nor_after_release(live_site):
    site = researcher.connect(live_site.url, *RESEARCHER)
    req = _submit(site)
    with pytest.raises(Exception, match="waiting for approval|never runs"):
        _call(site, req.func_name)
    assert live_site.executions(req.id) == 0

    live_site.run(req.id, progress=False)
    with pytest.raises(Exception):  # ran on the high side, not released: nothing to read
        _call(site, req.func_name)

    live_site.release(req.id)
    first = _call(site, req.func_name)
    second = _call(site, req.func_name)  # PySyft#9391: this would re-execute on a plain server
    assert first["metrics"] == second["metrics"]
    assert live_site.executions(req.id) == 1
    with pytest.raises(SiteError, match="already ran"):
        live_site.run(req.id, progress=False)
    assert live_site.executions(req.id) == 1


def test_custom_code_never_runs(live_site):
    """Custom code is shown to the owner, refused by the runner until the owner states its cost
    (tests/test_custom_code.py runs it then, sandboxed), and cannot execute on the server even
    if the owner approves it by hand in PySyft."""
    site = researcher.connect(live_site.url, *RESEARCHER)
    asset = site.datasets["breast_cancer"]._asset

    @sy.syft_function_single_use(data=asset)
    def steal(data):
        import os
        return {"files": os.listdir("/"), "rows": data.values.tolist()}

    req = site.client.code.request_code_execution(steal)
    rid = req.id.to_string()
    info = {r["request_id"]: r for r in live_site.review()}[rid]
    assert info["template"] is False and "os.listdir" in info["code"]
    with pytest.raises(SiteError, match="custom code"):
        live_site.run(rid, progress=False)
    # the owner approves it natively: the low side still refuses to execute anything
    syft_req = [r for r in live_site.client.requests.get_all() if r.id.to_string() == rid][0]
    try:
        syft_req.approve()
    except Exception:
        pass
    with pytest.raises(Exception, match="never runs|approval|denied"):
        _call(site, "steal")
    assert live_site.executions(rid) == 0


def test_researcher_cannot_act_as_owner(live_site):
    site = researcher.connect(live_site.url, *RESEARCHER)
    req = _submit(site, epsilon=1.0)
    own = [r for r in site.client.requests.get_all() if r.id.to_string() == req.id][0]
    for attempt in (lambda: own.approve(), lambda: own.deposit_result({"kind": "dpsgd_table"})):
        try:
            res = attempt()
        except Exception:
            continue
        assert isinstance(res, sy.SyftError) or res is None
    assert req.status() == "pending"
    # cannot register accounts either
    with pytest.raises(Exception):
        res = site.client.users.create(email="mallory@x.org", name="M", password="mallorypw1",
                                       password_verify="mallorypw1")
        if isinstance(res, sy.SyftError):
            raise PermissionError(res.message)
    users = [u.email for u in live_site.client.users.get_all()]
    assert "mallory@x.org" not in users


def test_no_self_signup(live_site):
    guest = sy.login_as_guest(url=live_site.url)
    try:
        res = guest.register(name="Eve", email="eve@x.org", password="evepassword1",
                             password_verify="evepassword1")
    except Exception as e:  # refused: fine, checked below
        res = e
    users = [u.email for u in live_site.client.users.get_all()]
    assert "eve@x.org" not in users, res


# -- identity: budgets, notes and requests belong to the key registered at `users add` --------
def test_a_renamed_researcher_still_pays_from_her_own_budget(live_site, monkeypatch):
    """Attack: a researcher with eps=0.1 left changes the e-mail on her account (PySyft allows it
    unless the server refuses; here the owner's admin does it for her, as a stand-in for any way
    an account's e-mail could change) and submits an eps=4 job. Her budget line must still
    apply: the review binds the request to the verify key registered at `users add`."""
    from datasite import inbox

    email, password = RESEARCHER
    # eps=0.1 left (a budget cannot go below what earlier tests here already spent; tight
    # composition adds less than 4 to a long history, so the margin must be small)
    spent = live_site.ledger.spent("breast_cancer", email)["epsilon"]
    live_site.set_budget("breast_cancer", spent + 0.1, researcher=email)
    admin = live_site.client
    user = next(u for u in admin.users.get_all() if u.email == email)
    admin.users.update(uid=user.id, email="mallory@evil.org")
    try:
        site = researcher.connect(live_site.url, "mallory@evil.org", password)
        req = _submit(site, epsilon=4.0, seed=11)

        def review():
            return next(i for i in live_site.review() if i["request_id"] == req.id)

        info = review()
        assert info["researcher"] == email and info["registered"]
        assert info["cost"]["budget"]["researcher_budget"] == pytest.approx(spent + 0.1)
        assert not info["cost"]["budget"]["fits"]
        with pytest.raises(SiteError, match="budget"):
            live_site.run(req.id, progress=False)
        assert live_site.executions(req.id) == 0

        live_site.deny(req.id, reason="test")

        # the same attack against the old, e-mail-keyed lookup: no researcher line, "fits"
        monkeypatch.setattr(inbox, "sender_identity", lambda state, r: r.requesting_user_email)
        req = _submit(site, epsilon=4.0, seed=12)
        info = review()
        assert info["researcher"] == "mallory@evil.org"
        assert info["cost"]["budget"]["researcher_budget"] is None and info["cost"]["budget"]["fits"]
        monkeypatch.undo()
        live_site.deny(req.id, reason="test")
    finally:
        admin.users.update(uid=user.id, email=email)
        live_site.set_budget("breast_cancer", 100.0, researcher=email)


def test_unregistered_identities_and_case_variants_are_refused(live_site):
    """Attack: register a case variant of a researcher's address (to appear as her in reviews),
    or send a request from an account the owner never registered with `users add`."""
    with pytest.raises(SiteError, match="already registered"):
        live_site.add_user(RESEARCHER[0].upper(), "another-password-1")
    with pytest.raises(SiteError, match="not a researcher registered"):
        live_site.set_budget("breast_cancer", 1.0, researcher="ghost@uni.edu")
    # an account created behind the owner's tools (raw PySyft admin call) is not an identity
    admin = live_site.client
    admin.users.create(email="ghost@uni.edu", name="ghost", password="ghost-password-1",
                       password_verify="ghost-password-1")
    site = researcher.connect(live_site.url, "ghost@uni.edu", "ghost-password-1")
    req = _submit(site, seed=13)
    info = next(i for i in live_site.review() if i["request_id"] == req.id)
    assert not info["registered"] and "UNREGISTERED" in info["researcher"]
    assert "cost" not in info and "did not register" in info["validation"]
    with pytest.raises(SiteError, match="not a researcher registered"):
        live_site.run(req.id, progress=False)
    assert live_site.executions(req.id) == 0
    live_site.deny(req.id, reason="unknown sender")


# -- one request the tools do not understand must not disable them ---------------------------
def test_a_request_without_code_is_listed_and_can_be_denied(live_site):
    """Attack: leave a request that carries no code (a worker-pool request; the server now
    refuses those from researchers, but one may predate the hardening). `review`, `run`,
    `deny` and the federated round server used to crash on `raw_code` of a SyftError."""
    from syft.custom_worker.config import DockerWorkerConfig

    from datasite import rounds

    admin = live_site.client
    admin.api.services.worker_pool.create_image_and_pool_request(
        pool_name="evil", num_workers=1, tag="evil:1",
        config=DockerWorkerConfig(dockerfile="FROM python:3.11\nRUN echo hi\n"))
    rid, req = next((k, r) for k, r in live_site.syft_requests().items()
                    if "CreateCustomWorkerPoolChange" in str([type(c).__name__ for c in r.changes]))
    items = {i["request_id"]: i for i in live_site.review()}
    assert items[rid]["kind"] == "not_code" and "WorkerPool" in items[rid]["request_type"]
    assert rounds._round_for(req, "any-schedule") is None  # the round server skips it
    with pytest.raises(SiteError, match="not a code request"):
        live_site.run(rid, progress=False)
    live_site.deny(rid, reason="dp-datasite does not create worker pools")
    assert rid not in live_site.syft_requests()  # deleted, never applied
    assert rid not in {i["request_id"] for i in live_site.review()}


def test_one_request_that_cannot_be_priced_does_not_stop_the_review(live_site, monkeypatch):
    """Attack: a request whose pricing fails (or runs out of time/memory in the bounded
    worker). The review reports it, per request, and goes on; each request is priced once."""
    from datasite import pricing_worker

    site = researcher.connect(live_site.url, *RESEARCHER)
    bad, good = _submit(site, epochs=3, seed=14), _submit(site, seed=15)
    calls = []
    real = pricing_worker.price_bounded

    def flaky(spec, meta_json, **kw):
        calls.append(spec["epochs"])
        if spec["epochs"] == 3:
            raise pricing_worker.PricingError("went past its time limit")
        return real(spec, meta_json, **kw)

    monkeypatch.setattr(pricing_worker, "price_bounded", flaky)
    for _ in range(2):
        items = {i["request_id"]: i for i in live_site.review()}
        assert "time limit" in items[bad.id]["cost_error"] and "cost" not in items[bad.id]
        assert items[good.id]["cost"]["epsilon"] > 0
    assert sorted(calls) == [2, 3]  # priced once each, not once per review
    for r in (bad, good):
        live_site.deny(r.id, reason="test")


# -- one execution per request, enforced by the database --------------------------------------
@pytest.mark.parametrize("delay", [0.0, 0.5, 2.0])
@pytest.mark.backends("sqlite", "postgres")
def test_concurrent_runs_execute_a_request_once(live_site, delay):
    """Attack (on the owner's own tools): two `datasite run` of the same request, the second
    started `delay` seconds after the first. The second used to take the first's live run for
    a crashed one, refund its reservation and run again (executions = 2)."""
    import threading
    import time

    from datasite.owner import OwnerSite

    site = researcher.connect(live_site.url, *RESEARCHER)
    req = _submit(site, epochs=1, seed=20 + int(10 * delay))
    live_site.describe_request(req.id)  # priced before the race, as after a review
    outcomes = []

    def run(wait):
        time.sleep(wait)
        try:
            OwnerSite(live_site.home).run(req.id, progress=False)
            outcomes.append("ran")
        except SiteError as e:
            outcomes.append(str(e))

    threads = [threading.Thread(target=run, args=(w,)) for w in (0.0, delay)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert outcomes.count("ran") == 1, outcomes
    assert any("another owner process" in o or "already ran" in o for o in outcomes), outcomes
    assert live_site.executions(req.id) == 1
    assert live_site.ledger.entry(req.id)["state"] == "running"  # the live run kept its reservation
    live_site.deny(req.id, reason="test")


def test_a_failed_round_tells_the_researcher_no_log(tmp_path, monkeypatch):
    """Attack: make a federated round fail so that the job's stderr (a traceback can quote
    private values) comes back in the deny reasons. The researcher learns the round failed;
    the log goes to the owner's audit record only."""
    from types import SimpleNamespace

    from datasite import rounds

    secret = "Traceback ... ValueError: record 17 has mean_area=2501.0"

    def failing_job(*a, **k):
        raise SiteError(f"The job failed (exit 1):\n{secret}")

    told, logged = [], []
    monkeypatch.setattr(rounds, "run_claimed_job", failing_job)
    monkeypatch.setattr(rounds, "_refuse", lambda site, rid, req, who, reason: told.append(reason))
    monkeypatch.setattr(rounds, "finish", lambda site, sid, reason: told.append(reason))
    state = SimpleNamespace(dataset=lambda name: {"path": str(tmp_path)},
                            claim_for_run=lambda *a, **k: True,
                            start_execution=lambda *a: 1, finish_execution=lambda *a: None)
    site = SimpleNamespace(state=state, home=SimpleNamespace(results=tmp_path),
                           ledger=SimpleNamespace(log=lambda *a: logged.append(a)))
    req = SimpleNamespace(code=SimpleNamespace(service_func_name="round_fn"))
    rounds._run_round(site, "schedule-1", {"dataset": "bc", "rounds": 3}, "alice@uni.edu",
                      "round-req", req, {"init_state": ""}, 0)
    assert len(told) == 2 and all("round 0 failed" in r for r in told)
    assert not any(secret in r or "Traceback" in r for r in told)
    assert any(secret in str(entry) for entry in logged)  # the owner keeps the details
