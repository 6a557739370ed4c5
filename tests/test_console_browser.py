"""The owner's web console in a real browser (Playwright driving Debian's chromium) against a
live datasite: a researcher submits from Python, the steward decides in the browser.

Every page visited is saved as a screenshot under tests/output/console/ (always, so they can be
looked at after a green run too). The tests run in file order and share one site and one
browser page (one live site per module keeps the file well under two minutes)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import syft as sy

import researcher
from datasite import workers as W
from datasite.console import accounts, app, pages_requests
from researcher import jobs

from conftest import RESEARCHER, free_port, make_site

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).parent / "output" / "console"
STEWARD = ("steward@hospital.org", "steward-password-123")


@pytest.fixture(scope="module")
def live(tmp_path_factory, demo_files):
    """A running datasite (breast-cancer table, budget 60 at delta 1e-4; Alice registered), a
    warm job worker and pricing server (started first: they import torch while the site is set
    up) and the console served by uvicorn in a thread."""
    import uvicorn

    site = make_site(tmp_path_factory.mktemp("console"), "hosp-console")
    server, worker = None, W.spawn_worker(site.home, "w-console")
    pricing = app.warm_pricing()  # as `datasite console` does
    try:
        site.upload("breast_cancer", table=str(demo_files / "breast_cancer.csv"),
                    label="diagnosis", schema=demo_files / "breast_cancer.schema.yaml",
                    budget_epsilon=60.0, delta=1e-4)
        site.add_user(*RESEARCHER, name="Alice")
        accounts.add_owner(site, *STEWARD)
        W.wait_ready(site.state, [worker], timeout_s=180)
        pricing.join()
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app.create_app(site.home), host="127.0.0.1",
                                               port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        yield site, f"http://127.0.0.1:{port}"
    finally:
        if server is not None:
            server.should_exit = True
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        site.down()


@pytest.fixture(scope="module")
def page(live):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        ctx = browser.new_context(base_url=live[1], viewport={"width": 1366, "height": 800})
        pg = ctx.new_page()
        pg.set_default_timeout(20_000)
        pg.dialogs = []
        pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
        yield pg
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True, animations="disabled")


def log_in(page, account: str, password: str) -> None:
    page.goto("/login")
    page.get_by_label("Account (e-mail)").fill(account)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_failed_login_and_researcher_refused(live, page):
    site, _ = live
    log_in(page, site.config.root_email, "not-the-root-password")
    assert page.get_by_role("alert").inner_text().startswith("Wrong account or password")
    shot(page, "01-login-failed")
    log_in(page, *RESEARCHER)  # a researcher's real PySyft credentials
    assert "Wrong account or password" in page.get_by_role("alert").inner_text()
    assert page.url.endswith("/login")


def test_lockout_after_repeated_failures(live, page):
    for _ in range(accounts.MAX_FAILURES):
        log_in(page, STEWARD[0], "wrong-password-here")
    log_in(page, *STEWARD)  # right password, locked
    assert "locked" in page.get_by_role("alert").inner_text()
    shot(page, "02-login-locked")


def test_request_appears_approve_run_release(live, page, monkeypatch):
    site, _ = live
    # a result page that takes seconds, as on a busy host: the end of the progress poll must
    # load it once (a refresh sent by every poll restarted the reload: on CI it never arrived)
    figures, result_pages = pages_requests._result_figures, []

    def slow_figures(summary, *args):
        if summary:  # a finished run's page
            result_pages.append(1)
            time.sleep(3)
        return figures(summary, *args)
    monkeypatch.setattr(pages_requests, "_result_figures", slow_figures)
    log_in(page, site.config.root_email, site.home.root_password())
    client = researcher.connect(site.url, *RESEARCHER)
    req = client.submit(jobs.DPSGD(dataset="breast_cancer", label="diagnosis", epsilon=1.0,
                                   delta=1e-5, epochs=2, batch_size=64))
    page.goto("/requests?show=pending")
    page.get_by_role("link", name=req.id[:8]).click()
    assert page.get_by_role("heading", name=re.compile(f"Request {req.id[:8]}")).is_visible()
    body = page.inner_text("main")
    assert "dpsgd_table" in body and "privacy loss asked for" in body and "Passed" in body
    assert "at FPR 0.1 % / 1 % / 10 %" in body and "Fits the budgets." in body
    assert page.get_by_role("img", name=re.compile("Trade-off curve")).is_visible()
    assert page.get_by_role("img", name=re.compile("Dataset budget")).is_visible()
    shot(page, "03-request-pending")

    page.get_by_role("button", name="Approve & run").click()
    shot(page, "04a-request-starting")  # whatever it shows now: starting, queued or a step
    assert page.inner_text("#pill") != "pending"
    seen = page.wait_for_function("""() => {
        const p = document.querySelector('#progress');
        if (p && /step \\d+ \\/ \\d+/.test(p.innerText)) return 'training';
        return document.querySelector('#result') ? 'done' : null; }""",
                                  timeout=120_000).json_value()
    if seen == "training":  # the poll moved the title's pill along (a fast run may skip this)
        assert page.inner_text("#pill") == "running"
        shot(page, "04b-request-training")
    page.get_by_role("heading", name="Result summary (what you see before release)").wait_for(
        timeout=120_000)  # the progress poll reloads the page once the run finished
    assert len(result_pages) == 1  # once: with a refresh per poll, 4 to 35 loads were seen
    assert "awaiting release" in page.inner_text("h1")
    assert "test_accuracy" in page.inner_text("main")
    body = page.inner_text("main")
    assert "test accuracy" in body and "the dataset budget's delta" in body
    assert "with DP noise added" in body
    # the owner's plots: the exact training loss per epoch (owner only) and per-class bars
    assert page.get_by_role("img", name=re.compile(r"^Training loss per epoch")).is_visible()
    assert page.get_by_role("img", name=re.compile("^Per-class accuracy")).is_visible()
    loss = site.state.request(req.id)  # the curve the site kept for the owner
    loss = json.loads(loss["summary_json"])["curves"][0]["y"]
    assert len(loss) == 2  # epochs=2
    shot(page, "04-request-ran")

    page.get_by_role("button", name="Release to the researcher").click()
    assert f"Released request {req.id[:8]}" in page.get_by_role("status").first.inner_text()
    body = page.inner_text("main")
    assert "Result summary (released to the researcher)" in body
    assert "before release" not in body and "Go to the decision" not in body
    shot(page, "05-request-released")
    res = client.request(req.id).wait(timeout=60, progress=False)
    assert res.kind == "dpsgd_table"
    # attack: the researcher looks for the owner-only loss curve in what they received
    assert not [k for k in res.raw if str(k).startswith("_owner")]
    assert loss not in list(res.raw.values()) and "curves" not in res.raw
    root = site.config.root_email
    with site.ledger.engine.connect() as c:  # the decisions name the owner account
        rows = c.exec_driver_sql("SELECT actor, action FROM dpds_audit WHERE request_id = ?",
                                 (req.id,)).fetchall()
    assert {("console:" + root, "reserve"), ("console:" + root, "released")} <= set(rows)


def test_ledger_datasets_researchers_show_the_spend(live, page):
    page.goto("/ledger")
    body = page.inner_text("main")
    assert "Audit chain: verified" in body and "released" in body
    spent = float(re.search(r"spent (\d+\.\d+) composed", body).group(1))
    assert spent > 0.5
    assert "computed" in page.locator("tbody tr").first.inner_text()  # cost source column
    shot(page, "06-ledger")
    page.get_by_role("link", name="Export CSV").focus()  # the focus ring on the white page
    shot(page, "06b-focus-ring")
    page.goto("/datasets/breast_cancer")
    assert "Records by epsilon spent" in page.inner_text("main")
    assert page.get_by_role("img", name=re.compile("Histogram of records by epsilon")).is_visible()
    assert page.get_by_role("img", name=re.compile("Spend on breast_cancer")).is_visible()
    shot(page, "07-dataset")
    page.goto("/researchers")
    assert RESEARCHER[0] in page.inner_text("main")
    shot(page, "08-researchers")


def test_owner_only_curve_reaches_the_researcher_only_with_the_strip_off(live, monkeypatch):
    """The negative control of the attack above, live: with the release gate's strip switched
    off (no key counts as the owner's), the researcher's wait() does get the exact training
    loss; so the check above fails if the strip is gone."""
    from shared import protocol

    site, _ = live
    client = researcher.connect(site.url, *RESEARCHER)
    req = client.submit(jobs.DPSGD(dataset="breast_cancer", label="diagnosis", epsilon=1.0,
                                   delta=1e-5, epochs=1, batch_size=64))
    site.run(req.id, progress=False)
    monkeypatch.setattr(protocol, "OWNER_PREFIX", "_no_such_prefix_")  # the strip off
    site.release(req.id)
    res = client.request(req.id).wait(timeout=60, progress=False)
    assert len(res.raw["_owner_train_loss"]) == 1


def test_deny_custom_code_with_script_shown_escaped(live, page):
    site, _ = live
    client = researcher.connect(site.url, *RESEARCHER)
    asset = client.datasets["breast_cancer"]._asset

    @sy.syft_function_single_use(data=asset)
    def exfiltrate(data):
        return "<script>alert('owner pwned')</script>"

    rid = client.client.code.request_code_execution(exfiltrate).id.to_string()
    page.goto(f"/requests/{rid}")
    code = page.get_by_label("custom code").inner_text()
    assert "<script>alert('owner pwned')</script>" in code  # shown as text, not run
    assert page.dialogs == [] and page.locator("main script").count() == 0
    page.get_by_role("button", name="Deny").click()  # no reason: refused, nothing done
    assert "Say why you deny it" in page.get_by_role("alert").inner_text()
    assert re.search(r"Imports\s+none", page.inner_text("main"))
    assert site.state.request(rid) is None
    shot(page, "09-deny-without-reason")
    page.get_by_label("Reason for denying").fill("custom code is not run on this site")
    page.get_by_role("button", name="Deny").click()
    assert f"Denied request {rid[:8]}" in page.get_by_role("status").first.inner_text()
    assert site.state.request(rid)["state"] == "denied"
    shot(page, "10-denied")


def test_post_without_csrf_token_refused(live, page):
    site, base = live
    client = researcher.connect(site.url, *RESEARCHER)
    req = client.submit(jobs.DPSGD(dataset="breast_cancer", label="diagnosis", epsilon=1.0,
                                   delta=1e-5, epochs=1, batch_size=64))
    r = page.request.post(f"{base}/requests/{req.id}/deny",
                          form={"reason": "forged", "state": "pending"})
    assert r.status == 403 and "security token" in r.text()
    assert site.state.request(req.id) is None  # not denied


def test_forget_flow(live, page):
    site, _ = live
    client = researcher.connect(site.url, *RESEARCHER)
    req = client.submit(jobs.RemovableLogReg("breast_cancer", delta=1e-6, label="diagnosis",
                                             lam=1e-3, perturbation=10.0, removal_epsilon=1.0,
                                             removal_delta=1e-9))
    site.run(req.id, progress=False)  # through the owner API: this test is about forgetting
    site.release(req.id)
    page.goto("/forget")
    page.get_by_label("Record: patient id (or row number)").fill("99999")
    page.get_by_role("button", name="Show what will happen").click()
    assert "has no record 99999" in page.get_by_role("alert").inner_text()
    shot(page, "11-forget-unknown")
    page.get_by_label("Record: patient id (or row number)").fill("0")
    page.get_by_role("button", name="Show what will happen").click()
    body = page.inner_text("main")
    assert "updated (fresh DP release)" in body and "DP only: unchanged" in body
    shot(page, "12-forget-confirm")
    page.get_by_label(re.compile("I confirm")).check()
    page.get_by_role("button", name="Forget the record").click()
    assert "Record 0 removed from breast_cancer" in page.inner_text("h1")
    assert "fresh DP release" in page.inner_text("main")
    shot(page, "13-forget-done")
    root = site.config.root_email
    with site.ledger.engine.connect() as c:
        actors = {r[0] for r in c.exec_driver_sql(
            "SELECT actor FROM dpds_audit WHERE action = 'forget'").fetchall()}
    assert actors == {"console:" + root}
    page.goto("/requests")
    shot(page, "14-requests")


def test_custom_code_runs_in_the_sandbox_at_the_stated_cost(live, page):
    """A raw syft function: the console shows its static summary and the researcher's declared
    cost, runs it at the cost the owner states, previews the output, releases it; the
    researcher gets it through PySyft's own call."""
    site, _ = live
    log_in(page, site.config.root_email, site.home.root_password())
    client = researcher.connect(site.url, *RESEARCHER)
    asset = client.datasets["breast_cancer"]._asset

    @sy.syft_function_single_use(data=asset)
    def count_rows(data):
        """declared privacy cost: epsilon=0.5, delta=0"""
        return {"rows": 1000}  # a constant: no private information in it

    rid = client.client.code.request_code_execution(count_rows).id.to_string()
    page.goto(f"/requests/{rid}")
    body = page.inner_text("main")
    assert "Cost the researcher declared" in body and "eps=0.5" in body
    assert page.get_by_label("Epsilon you charge for it").input_value() == ""  # not pre-filled
    assert page.get_by_role("img", name=re.compile("declared cost")).first.is_visible()
    shot(page, "15-custom-pending")
    page.get_by_label("Delta").fill("0")
    page.get_by_label("Epsilon you charge for it").fill("-1")  # refused: nothing done
    page.get_by_label("Epsilon you charge for it").evaluate("e => e.removeAttribute('min')")
    page.get_by_role("button", name=re.compile("Approve & run in the sandbox")).click()
    assert "State the cost as numbers" in page.get_by_role("alert").inner_text()
    assert site.state.request(rid) is None
    page.get_by_label("Epsilon you charge for it").fill("0.6")
    page.get_by_label("Delta").fill("0")
    page.get_by_role("button", name=re.compile("Approve & run in the sandbox")).click()
    page.get_by_role("heading", name="Result summary (what you see before release)").wait_for(
        timeout=120_000)
    body = page.inner_text("main")
    assert "'rows': 1000" in body and "(declared, not computed)" in body and "eps=0.6" in body
    assert "declared by the owner, not computed" in body and "below)" not in body
    shot(page, "16-custom-ran")
    page.get_by_role("button", name="Release to the researcher").click()
    assert f"Released request {rid[:8]}" in page.get_by_role("status").first.inner_text()
    assert site.ledger.entry(rid)["epsilon"] == pytest.approx(0.6, abs=1e-3)  # at the site delta
    client.client.refresh()
    out = client.client.code.count_rows(data=asset)
    assert (out.get() if hasattr(out, "get") else out) == {"rows": 1000}
    page.goto("/ledger")
    row = page.locator("tbody tr", has_text=rid[:8]).inner_text()
    assert "declared" in row
    shot(page, "17-ledger-declared")
