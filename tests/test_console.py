"""The owner's web console without a browser (FastAPI's TestClient, no PySyft server): who may
log in, sessions and CSRF, the persisted lockout, escaping of researcher-chosen text, bad input
refused with a message and nothing changed, and audit entries naming the owner account."""
from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from datasite.audit_log import audit
from datasite.config import init_site
from datasite.console import accounts
from datasite.console.app import create_app
from datasite.owner import OwnerSite
from datasite.state import State

from conftest import free_port

RESEARCHER = "alice@uni.edu"
ATTACK = "<script>alert('pwned')</script>"


@pytest.fixture
def home(tmp_path):
    return init_site("cons", home=tmp_path / "cons", port=free_port())


def client(home, **kw) -> TestClient:
    return TestClient(create_app(home, **kw), base_url="http://127.0.0.1", follow_redirects=False)


def csrf(c: TestClient, path: str = "/login") -> str:
    return re.search(r'name="csrf" value="([^"]+)"', c.get(path).text).group(1)


def login(c: TestClient, home, account: str | None = None, password: str | None = None):
    return c.post("/login", data={"csrf": csrf(c), "account": account or home.load().root_email,
                                  "password": password or home.root_password()})


def actors(home) -> list[tuple[str, str]]:
    site = OwnerSite(home)
    with site.ledger.engine.connect() as conn:
        return [(r.actor, r.action) for r in conn.execute(select(audit).order_by(audit.c.seq))]


def test_root_logs_in_with_secure_session_cookie(home):
    c = client(home)
    r = c.get("/requests")
    assert r.status_code == 303 and r.headers["location"] == "/login"  # pages need a login
    r = login(c, home)
    assert r.status_code == 303 and r.headers["location"] == "/requests"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    assert "default-src 'self'" in r.headers["content-security-policy"]
    root = home.load().root_email
    assert ("console:" + root, "console_login") in actors(home)
    assert c.get("/ledger").status_code == 200
    assert c.post("/logout", data={"csrf": csrf(c, "/ledger")}).status_code == 303
    assert c.get("/ledger").status_code == 303  # logged out
    # served with TLS, the same cookie is Secure
    r = login(client(home, https=True), home)
    assert "secure" in r.headers["set-cookie"].lower()


def test_wrong_password_and_unknown_account_refused(home):
    c = client(home)
    r = login(c, home, password="not-the-root-password")
    assert r.status_code == 401 and "Wrong account or password" in r.text
    r = login(c, home, account="nobody@x.org", password=home.root_password())
    assert r.status_code == 401
    assert c.get("/requests").status_code == 303  # still not logged in
    assert accounts.locked_for(OwnerSite(home).state, "nobody@x.org") == 0  # counted, not locked
    assert "nobody@x.org" in json.loads(OwnerSite(home).state.setting(accounts.FAILURES_KEY))


def test_owner_accounts_log_in_and_researchers_never(home, monkeypatch):
    site = OwnerSite(home)
    accounts.add_owner(site, "steward@hospital.org", "a-long-steward-password")
    assert login(client(home), home, "steward@hospital.org",
                 "a-long-steward-password").status_code == 303
    assert login(client(home), home, "steward@hospital.org", "wrong-password-x").status_code == 401
    # a researcher: not an owner account, whatever the password (root's included)
    site.state.add_researcher(RESEARCHER, "ab" * 32)
    with pytest.raises(Exception, match="is a researcher"):
        accounts.add_owner(site, RESEARCHER, "researcher-password-1")
    r = login(client(home), home, RESEARCHER, home.root_password())
    assert r.status_code == 401
    # an owner account whose address later became a researcher's is refused too
    site.state.add_researcher("steward@hospital.org", "cd" * 32)
    assert login(client(home), home, "steward@hospital.org",
                 "a-long-steward-password").status_code == 401
    # the defence off (no researcher is known to the login check): the same login goes through,
    # so the refusal above comes from that check
    monkeypatch.setattr(State, "researcher_keys", lambda self: {})
    assert login(client(home), home, "steward@hospital.org",
                 "a-long-steward-password").status_code == 303


def test_post_without_csrf_token_is_refused(home):
    c = client(home)
    assert c.post("/login", data={"account": home.load().root_email,
                                  "password": home.root_password()}).status_code == 403
    login(c, home)
    before = len(actors(home))
    for data in ({"reason": "no"}, {"reason": "no", "csrf": "forged-token"}):
        r = c.post("/requests/abcdef12/deny", data={**data, "state": "pending"})
        assert r.status_code == 403 and "security token" in r.text
    r = c.post("/datasets/bc/budget", data={"epsilon": "1", "current": ""})
    assert r.status_code == 403
    assert len(actors(home)) == before  # nothing happened


def test_forged_posts_refused_and_they_would_pass_with_the_check_off(home, monkeypatch):
    """A forged form (no token, or a wrong one) gets 403 and changes nothing: a budget, a
    deny, a login. With the CSRF check switched off the same forged POSTs are processed (303,
    budget changed, request denied, logged in), so this test fails if the check is gone."""
    from datasite.console import web

    monkeypatch.setattr(OwnerSite, "publish_budgets", lambda self, researchers=None: None)
    site = _with_spend(home)
    rid, denied = "ef" * 16, []
    monkeypatch.setattr(OwnerSite, "describe_request", lambda self, r, *a, **k: _fake_request(rid))
    monkeypatch.setattr(OwnerSite, "deny", lambda self, r, why: denied.append((r, why)))
    c = client(home)
    login(c, home)
    root = {"account": home.load().root_email, "password": home.root_password()}

    def forge(token: str | None) -> tuple[int, int, int]:
        tok = {} if token is None else {"csrf": token}
        return (c.post("/datasets/bc/budget", data={**tok, "epsilon": "50", "current": "5.0"}),
                c.post(f"/requests/{rid}/deny", data={**tok, "reason": "forged",
                                                      "state": "pending"}),
                client(home).post("/login", data={**tok, **root}))

    for token in (None, "forged-token", "f\u00f6rged"):  # a non-ASCII token is refused too
        assert [r.status_code for r in forge(token)] == [403, 403, 403], token
    assert site.ledger.budget("bc")["epsilon"] == 5.0 and denied == []
    monkeypatch.setattr(web, "token_matches", lambda sent, want: True)  # the defence off
    budget, deny, login_r = forge("forged-token")
    assert (budget.status_code, deny.status_code, login_r.status_code) == (303, 303, 303)
    assert site.ledger.budget("bc")["epsilon"] == 50.0 and denied == [(rid, "forged")]
    assert login_r.headers["location"] == "/requests"


def test_lockout_stops_guessing_and_without_it_guessing_goes_on(home, monkeypatch):
    """After MAX_FAILURES wrong guesses the right password is refused; with the lockout check
    switched off, guessing goes on and the right guess logs in (so the lockout is what stops
    it)."""
    c = client(home)
    for _ in range(accounts.MAX_FAILURES):
        assert login(c, home, password="wrong-password").status_code == 401
    assert login(c, home).status_code == 401  # the right password, locked
    monkeypatch.setattr(accounts, "locked_for", lambda *a, **k: 0.0)  # the defence off
    for _ in range(2 * accounts.MAX_FAILURES):
        r = login(c, home, password="wrong-password")
        assert r.status_code == 401 and "locked" not in r.text
    assert login(c, home).status_code == 303


def test_lockout_after_failures_survives_a_restart(home, monkeypatch):
    c = client(home)
    for _ in range(accounts.MAX_FAILURES):
        assert login(c, home, password="wrong-password").status_code == 401
    r = login(c, home)  # the right password, but locked
    assert r.status_code == 401 and "locked" in r.text
    r = login(client(home), home)  # a new console app: still locked
    assert r.status_code == 401 and "locked" in r.text
    assert _login_in_a_new_process(home) == 401  # a restarted console: still locked
    now = accounts.time.time()
    monkeypatch.setattr(accounts.time, "time", lambda: now + accounts.LOCK_S + 1)
    assert login(client(home), home).status_code == 303


def _login_in_a_new_process(home) -> int:
    """The status of a root login to a console started in a fresh Python process."""
    import subprocess
    import sys

    code = ("import sys, re; from fastapi.testclient import TestClient; "
            "from datasite.config import SiteHome; from datasite.console.app import create_app; "
            "from pathlib import Path; h = SiteHome(Path(sys.argv[1])); "
            "c = TestClient(create_app(h), base_url='http://127.0.0.1'); "
            "tok = re.search(r'name=\"csrf\" value=\"([^\"]+)\"', c.get('/login').text)[1]; "
            "print(c.post('/login', follow_redirects=False, data={'csrf': tok, "
            "'account': h.load().root_email, 'password': h.root_password()}).status_code)")
    out = subprocess.run([sys.executable, "-c", code, str(home.root)], capture_output=True,
                         text=True, timeout=60, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def _fake_request(rid: str) -> dict:
    return {"request_id": rid, "researcher": f"{ATTACK}@evil.org", "registered": True,
            "submitted": ATTACK, "function": "f", "template": False, "kind": "custom",
            "dataset": ATTACK, "spec": None, "server_status": "pending", "state": "pending",
            "validation": ATTACK,
            "code": f"def f(data):\n    return '{ATTACK}'  # \u202e hidden \x1b[2J\n"}


def test_researcher_text_is_shown_escaped(home, monkeypatch):
    rid = "ab" * 16
    monkeypatch.setattr(OwnerSite, "describe_request", lambda self, r, *a, **k: _fake_request(rid))
    monkeypatch.setattr(OwnerSite, "review", lambda self, include_done=False: [_fake_request(rid)])
    c = client(home)
    login(c, home)
    for page in ("/requests", f"/requests/{rid}"):
        text = c.get(page).text
        assert "<script>alert" not in text and "&lt;script&gt;" in text, page
    text = c.get(f"/requests/{rid}").text
    assert "\u202e" not in text and "\\u202e" in text  # bidi override shown, not applied
    assert "\x1b" not in text and "\\x1b" in text
    # the defence off (Jinja2's HTML escaping): the same page carries the researcher's <script>
    from datasite.console import web

    env = web.templates.env
    monkeypatch.setattr(env, "autoescape", False)
    env.cache.clear()
    try:
        assert "<script>alert" in c.get(f"/requests/{rid}").text
    finally:
        env.cache.clear()  # compiled without escaping: not kept for the next test


def _with_spend(home) -> OwnerSite:
    """A dataset row with a budget of 5 and eps=1 reserved under it (no PySyft server)."""
    import dp_accounting

    from shared.data import DatasetMeta
    from shared.privacy.accounting import event_to_json

    site = OwnerSite(home)
    meta = DatasetMeta(name="bc", kind="table", n_records=500, label="y", labels=[0, 1])
    site.state.add_dataset("bc", "table", meta.to_json(), str(home.root / "nowhere"))
    site.ledger.set_budget("bc", 5.0, 1e-5)
    site.ledger.reserve("r1", "bc", RESEARCHER, event_to_json(dp_accounting.GaussianDpEvent(3.0)))
    return site


def test_bad_input_is_refused_with_a_message_and_changes_nothing(home, monkeypatch):
    monkeypatch.setattr(OwnerSite, "publish_budgets", lambda self, researchers=None: None)
    site = _with_spend(home)
    spent = site.ledger.spent("bc")["epsilon"]
    c = client(home)
    login(c, home)
    tok = csrf(c, "/forget")

    def budget(eps: str, current: str) -> str:
        r = c.post("/datasets/bc/budget", data={"csrf": tok, "epsilon": eps, "current": current})
        assert r.status_code == 303
        return c.get(r.headers["location"]).text

    assert "must be a number" in budget("lots", "5.0")
    assert "already spent" in budget(f"{spent / 2:g}", "5.0")  # below what was spent
    assert "changed since the page was shown" in budget("6", "4.0")  # a stale form
    assert site.ledger.budget("bc")["epsilon"] == 5.0
    assert "is now eps=7" in budget("7", "5.0")
    assert site.ledger.budget("bc")["epsilon"] == 7.0
    root = home.load().root_email
    assert ("console:" + root, "budget") in actors(home)  # the owner account, in the chain

    r = c.post(f"/requests/{'ab' * 16}/deny", data={"csrf": tok, "reason": "  ",
                                                   "state": "pending"})
    assert "Say why you deny it" in c.get(r.headers["location"]).text
    r = c.post("/forget/confirm", data={"csrf": tok, "dataset": "nope", "record": "3"})
    assert "No dataset &#39;nope&#39;" in c.get(r.headers["location"]).text
    r = c.post("/forget/confirm", data={"csrf": tok, "dataset": "bc", "record": "x",
                                        "by": "row"})
    assert "whole number" in c.get(r.headers["location"]).text
    assert c.get("/requests/not-an-id").status_code == 404


def test_ledger_export_and_csv_formula_cells(home):
    site = _with_spend(home)
    site.ledger.estimate("=HYPERLINK(1)", "bc", RESEARCHER, site.ledger.entry("r1")["event_json"])
    c = client(home)
    login(c, home)
    rep = json.loads(c.get("/ledger/export.json").text)
    assert {h["request_id"] for h in rep["history"]} == {"r1", "=HYPERLINK(1)"}
    text = c.get("/ledger/export.csv?state=estimated").text
    assert "'=HYPERLINK(1)" in text and "r1" not in text  # filtered; a formula made text
    assert "verified" in c.get("/ledger").text


def test_stale_form_after_someone_else_acted_changes_nothing(home, monkeypatch):
    rid = "cd" * 16
    acted = []
    monkeypatch.setattr(OwnerSite, "describe_request",
                        lambda self, r, *a, **k: {**_fake_request(rid), "state": "denied"})
    monkeypatch.setattr(OwnerSite, "release", lambda self, r: acted.append(r))
    monkeypatch.setattr(OwnerSite, "deny", lambda self, r, why: acted.append(r))
    c = client(home)
    login(c, home)
    tok = csrf(c, "/forget")
    for action in ("release", "deny", "run"):  # the page was shown while it was pending / ran
        r = c.post(f"/requests/{rid}/{action}", data={"csrf": tok, "state": "ran",
                                                     "reason": "late"})
        assert "someone acted in between" in c.get(r.headers["location"]).text, action
    assert acted == []


def test_console_command_warns_off_loopback_and_adds_owners(home, monkeypatch, capsys, tmp_path):
    from datasite import cli
    from datasite.console import app

    served = []
    monkeypatch.setattr(app, "serve", lambda *a, **k: served.append(k))
    args = ["console", "cons", "--home", str(home.root)]
    assert cli.main(args) == 0 and served[-1]["host"] == "127.0.0.1"
    assert "warning" not in capsys.readouterr().err
    assert cli.main(args + ["--host", "0.0.0.0", "--port", "9443"]) == 0
    assert served[-1]["port"] == 9443 and "plain HTTP" in capsys.readouterr().err
    pw = tmp_path / "pw"
    pw.write_text("steward-password-1\n")
    assert cli.main(args + ["--add-owner", "Steward@Hospital.org", "--password-file", str(pw)]) == 0
    assert login(client(home), home, "steward@hospital.org",
                 "steward-password-1").status_code == 303
    assert len(served) == 2  # adding an owner serves nothing


def test_mock_is_shown_as_rows_or_images():
    import numpy as np
    import pandas as pd

    from datasite.console.pages_datasets import _mock

    class Site:
        def __init__(self, mock):
            self._published_mock = lambda meta: mock

    rows = _mock(Site(pd.DataFrame({"age": [61.123456, 70.0], ATTACK: [0, 1]})), None)
    assert rows["columns"] == ["age", ATTACK] and rows["rows"][0] == ["61.12", "0"]
    imgs = _mock(Site({"images": np.zeros((12, 28, 28), np.uint8), "labels": np.arange(12)}), None)
    assert len(imgs["images"]) == 8 and imgs["images"][0].startswith("data:image/png;base64,")


def _rows(html: str) -> list[str]:
    """The table rows of a page, tags removed (one string per row)."""
    return [re.sub(r"<[^>]+>", " ", r) for r in re.findall(r"<tr>(.*?)</tr>", html, re.S)]


def test_declared_and_computed_cost_shown_everywhere(home):
    """A cost the owner declared for custom code is marked "declared" (a computed one
    "computed") on the ledger page, in its CSV export and in the researcher's history."""
    import csv
    import io

    from shared.privacy.accounting import declared_event, event_to_json

    site = _with_spend(home)  # r1: computed from an event
    site.state.add_researcher(RESEARCHER, "ab" * 32)
    site.ledger.reserve("r2", "bc", RESEARCHER, event_to_json(declared_event(0.5, 0.0)))
    c = client(home)
    login(c, home)
    for page in ("/ledger", "/researchers"):
        rows = _rows(c.get(page).text)
        r1 = next(r for r in rows if re.search(r"\br1\b", r))
        r2 = next(r for r in rows if re.search(r"\br2\b", r))
        assert "computed" in r1 and "declared" not in r1, page
        assert "declared" in r2 and "computed" not in r2, page
    cells = {r["request_id"]: r for r in csv.DictReader(io.StringIO(
        c.get("/ledger/export.csv").text))}
    assert (cells["r1"]["cost"], cells["r2"]["cost"]) == ("computed", "declared")
    assert cells["r2"]["delta"] == "1e-05"  # charged at the dataset budget's delta
    rep = json.loads(c.get("/ledger/export.json").text)
    assert {h["request_id"]: h["cost"] for h in rep["history"]} == {"r1": "computed",
                                                                  "r2": "declared"}


def _ran_request(rid: str, state: str) -> dict:
    return {"request_id": rid, "researcher": RESEARCHER, "registered": True, "submitted": "x",
            "function": "f", "template": True, "kind": "dpsgd_table", "dataset": "bc",
            "spec": {"kind": "dpsgd_table", "dataset": "bc", "epsilon": 1.0, "delta": 1e-6,
                     "clip_norm": 1.0, "tuning_trials": 0},
            "server_status": "approved", "state": state, "validation": "ok"}


def test_request_page_words_after_the_run_and_after_release(home, monkeypatch):
    """After a run: metrics in words (the key beside them), noisy counts explained, both deltas
    named, the ledger's charge marked computed, mu and attack TPRs still shown; after release no "before release" heading and
    no "Go to the decision". Custom code after a run: empty rows say "none", no "state the cost
    below"."""
    site = _with_spend(home)
    rid = "ab" * 16
    site.ledger.reserve(rid, "bc", RESEARCHER, site.ledger.entry("r1")["event_json"])
    summary = {"metrics": {"test_accuracy": 1.0, "per_class_accuracy": {"0": 0.98},
                           "evaluated_on": "private test split, with DP noise",
                           "noisy_counts": {"0": {"correct": 40.2, "wrong": -2.87}}},
               "privacy": {"epsilon": 1.1, "delta": 1e-6}}
    shown = {}
    monkeypatch.setattr(OwnerSite, "describe_request",
                        lambda self, r, *a, **k: _ran_request(rid, shown["state"]))
    real_request = State.request
    monkeypatch.setattr(State, "request", lambda self, r: {
        "state": shown["state"], "summary_json": json.dumps(summary)} if r == rid
        else real_request(self, r))
    c = client(home)
    login(c, home)
    shown["state"] = "ran"
    text = c.get(f"/requests/{rid}").text
    assert "Result summary (what you see before release)" in text and "Go to the decision" in text
    assert "accuracy on class 0" in text and "<code>per_class_accuracy.0</code>" in text
    assert "test records of class 0 predicted wrong (with noise)" in text
    assert "(below 0: noise)" in text and "with DP noise added" in text
    assert "at delta=1e-06 (the delta the researcher asked for)" in text
    assert "at delta=1e-05, the dataset budget's delta" in text
    assert "computed from the spec" in text and ">awaiting release</span>" in text
    assert "Gaussian DP (mu)" in text and "at FPR 0.1 % / 1 % / 10 %" in text  # still shown
    shown["state"] = "released"
    text = c.get(f"/requests/{rid}").text
    assert "Result summary (released to the researcher)" in text
    assert "before release" not in text and "Go to the decision" not in text
    assert "No decision is open" in text

    custom = {**_fake_request(rid), "state": "ran", "custom": {
        "summary": {"imports": [], "returns": ["dict"]}, "declared_by_researcher": None,
        "priced_by": "declared", "sandbox": "bubblewrap"}}
    monkeypatch.setattr(OwnerSite, "describe_request", lambda self, r, *a, **k: custom)
    text = c.get(f"/requests/{rid}").text
    assert re.search(r"Imports</th><td><code>none</code>", text)
    assert "below)" not in text and "state the cost below" not in text


def test_progress_shows_step_phase_eta_and_moves_the_state_pill(home, monkeypatch):
    """The progress poll: phase, step / steps and an ETA from the steps seen between polls, and
    the title's state pill swapped out of band (not left at "pending"); a finished run makes
    the page reload."""
    from datasite.console import ops as ops_mod

    c = client(home)
    login(c, home)
    rid = "cd" * 16
    row = {"state": "running", "queued_at": 1.0, "started_at": None, "progress_json": None}
    monkeypatch.setattr(State, "request", lambda self, r: dict(row) if r == rid else None)
    clock = [ops_mod.time.time()]  # the real time, moved on by hand (sessions check it too)
    monkeypatch.setattr(ops_mod.time, "time", lambda: clock[0])

    def poll() -> str:
        r = c.get(f"/requests/{rid}/progress")
        assert r.status_code == 200
        return r.text

    c.app.state.console.runs[rid] = {"error": None, "started": 0, "seen": None,
                                     "thread_alive": True}
    row["state"] = "pending"
    text = poll()
    assert "Starting…" in text and re.search(r'id="pill"[^>]*hx-swap-oob="true"[^>]*>starting<',
                                              text)
    row["state"] = "running"
    assert "queued for a worker" in poll()
    row.update(started_at=2.0, progress_json=json.dumps({"done": 10, "total": 100}))
    text = poll()
    assert "training: step 10 / 100" in text and "left" not in text
    assert re.search(r'id="pill"[^>]*hx-swap-oob="true"[^>]*>running<', text)
    clock[0] += 10  # 20 steps in 10 s: 70 steps left take about 35 s
    row["progress_json"] = json.dumps({"done": 30, "total": 100})
    assert "training: step 30 / 100, about 35 s left" in poll()
    c.app.state.console.runs[rid]["thread_alive"] = False
    row["state"] = "ran"
    r = c.get(f"/requests/{rid}/progress")
    # finished: the poll stops (286) and the page reloads once (console.js); no refresh
    # header, which every poll in flight during the reload would repeat
    assert r.status_code == 286 and r.headers.get("HX-Trigger") == "run-finished"
    assert "HX-Refresh" not in r.headers and ">awaiting release<" in r.text
    js = c.get("/static/console.js")
    assert js.status_code == 200 and '"run-finished"' in js.text and "reload()" in js.text


def test_broken_audit_chain_names_the_first_bad_entry_on_the_ledger(home):
    """An audit entry altered in the database: the ledger page says BROKEN (an alert) and
    names the first bad entry."""
    site = _with_spend(home)
    c = client(home)
    login(c, home)
    assert "Audit chain: verified" in c.get("/ledger").text
    with site.ledger.engine.begin() as conn:
        seq = conn.execute(select(audit.c.seq).where(audit.c.action == "reserve")).scalar()
        conn.execute(audit.update().where(audit.c.seq == seq).values(
            payload=json.dumps({"epsilon": 0.001})))
    text = c.get("/ledger").text
    assert re.search(r'role="alert"><strong>Audit chain: BROKEN</strong>', text)
    assert f"entry {seq} (reserve) was altered" in text


# -- plots of a finished run and of the per-record spend ----------------------------------------
@pytest.fixture(scope="module")
def table_run():
    """A small DP-SGD table job run for real (3 epochs, CPU, pinned randomness): the owner-side
    result, as the job runner writes it."""
    import numpy as np
    import pandas as pd

    from shared.runner import run_job
    from shared.schema import meta_from_schema

    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.4).astype(np.int64)
    df = pd.DataFrame({"a": np.clip(rng.normal(2.0 * y, 1.0), -4, 4),
                       "b": np.clip(rng.normal(0.0, 1.0, 400), -4, 4), "y": y})
    meta = meta_from_schema({"kind": "table", "records": 400, "label": {"column": "y",
                             "classes": [0, 1]}, "columns": {
                                 "a": {"type": "float", "bounds": [-4, 4]},
                                 "b": {"type": "float", "bounds": [-4, 4]}}}, "bc")
    return run_job(dict(kind="dpsgd_table", dataset="bc", label="y", epsilon=8.0, delta=1e-5,
                        epochs=3, batch_size=64), df, meta, pin_randomness=0)


def test_finished_dpsgd_run_shows_its_loss_curve_and_per_class_bars(home, monkeypatch,
                                                                    table_run):
    """A finished DP-SGD run's page draws the training loss per epoch (the owner-only curve
    the job kept, as the site records it after the run) and the per-class accuracy as bars,
    each a PNG with its words as alt text."""
    import math

    from datasite.execution import record_ran
    from shared.protocol import ResultPayload

    result = ResultPayload.from_dict(table_run)
    loss = result.owner["_owner_train_loss"]
    assert len(loss) == 3 and all(math.isfinite(v) and v > 0 for v in loss)
    assert loss[-1] < loss[0]  # it learns: a learning curve, not noise

    class Rows:  # what record_ran stores on the request's row
        def set_state(self, rid, state, **kw):
            self.row = {"state": state, **kw}

    rows = Rows()
    summary = record_ran(rows, "ab" * 16, result, home.root / "r.pkl")
    (curve,) = summary["curves"]
    assert curve["y"] == loss and curve["x"] == [1, 2, 3] and curve["xlabel"] == "epoch"
    site = _with_spend(home)
    rid = "ab" * 16
    site.ledger.reserve(rid, "bc", RESEARCHER, site.ledger.entry("r1")["event_json"])
    monkeypatch.setattr(OwnerSite, "describe_request",
                        lambda self, r, *a, **k: _ran_request(rid, "ran"))
    real_request = State.request
    monkeypatch.setattr(State, "request", lambda self, r: rows.row if r == rid
                        else real_request(self, r))
    c = client(home)
    login(c, home)
    text = c.get(f"/requests/{rid}").text
    assert "Result summary (what you see before release)" in text
    imgs = dict((alt, src) for src, alt in re.findall(r'<img src="([^"]+)" alt="([^"]+)"', text))
    loss_alt = next(a for a in imgs if a.startswith("Training loss per epoch"))
    assert "owner only: never released" in loss_alt and "against epoch" in loss_alt
    assert "Per-class accuracy on the test split, one bar per class" in imgs
    assert all(imgs[a].startswith("data:image/png;base64,") for a in imgs)
    # without the curve in the summary (a run recorded before) no loss chart, the page works
    rows.row["summary_json"] = json.dumps({k: v for k, v in summary.items() if k != "curves"})
    text = c.get(f"/requests/{rid}").text
    assert "Training loss per epoch" not in text and "Per-class accuracy on the test" in text


def test_the_owner_only_loss_curve_is_never_released(table_run, monkeypatch):
    """Attack: a researcher hoping to read the exact training loss (a private quantity) in
    what is deposited for them. The release gate deposits the public view, with no ``_owner_``
    key and none of the curve's values; with the strip switched off (no key counts as the
    owner's) the same deposit carries the curve, so this test fails if the strip is gone."""
    from datasite import release_gate
    from shared import protocol

    class Req:  # PySyft's request: what deposit_result is given is what the researcher gets
        def deposit_result(self, value):
            self.got = value
            return value

    loss = table_run["_owner_train_loss"]
    req = Req()
    release_gate.deposit(req, protocol.ResultPayload.from_dict(table_run))
    assert not [k for k in req.got if str(k).startswith("_owner")]
    assert loss not in list(req.got.values()) and "model_state" in req.got

    monkeypatch.setattr(protocol, "OWNER_PREFIX", "_no_such_prefix_")  # the strip off
    release_gate.deposit(req, protocol.ResultPayload.from_dict(table_run))
    assert req.got["_owner_train_loss"] == loss


def test_dataset_page_draws_the_per_record_spend_histogram(home):
    """The per-record spend histogram is a labelled chart (records by epsilon spent); its
    numbers stay in a table under <details>."""
    _with_spend(home)
    c = client(home)
    login(c, home)
    text = c.get("/datasets/bc").text
    assert re.search(r'<img src="data:image/png;base64,[^"]+" alt="Histogram of records by '
                     r'epsilon spent', text)
    assert re.search(r"<details><summary>The numbers[^<]*</summary>\s*<table>", text)
    assert re.search(r"<td>500</td>", text)  # all 500 records in one range (one job)


def _draw_from_threads(n_threads: int = 6, each: int = 4) -> list[BaseException]:
    """Log-scale trade-off charts drawn from several threads at once, as the console's thread
    pool does when pages and progress polls overlap; the exceptions raised."""
    import threading

    from datasite.console import charts
    from shared.privacy.accounting import dpsgd_event
    from shared.privacy.reporting import tradeoff_curve

    curve = tradeoff_curve(dpsgd_event(0.1, 1.0, 50))
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def draw():
        start.wait()
        try:
            for _ in range(each):
                charts._draw_tradeoff(curve)
        except BaseException as e:  # noqa: BLE001 (collected for the assertion)
            errors.append(e)

    threads = [threading.Thread(target=draw) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_charts_drawn_from_many_threads_at_once(monkeypatch):
    """matplotlib's mathtext parser (log-scale tick labels) is one shared object: two pages
    drawn at once failed with "Unknown symbol: \\mathdefault" (seen in the browser test). The
    charts are drawn one at a time; with that lock off, the same load fails."""
    assert _draw_from_threads(3, 2) == []
    import contextlib

    from datasite.console import charts

    # with the lock off, 4 threads of 3 charts: 2-4 of the 4 threads raised in each of 5 runs
    monkeypatch.setattr(charts, "_DRAWING", contextlib.nullcontext())
    assert any(isinstance(e, ValueError) for e in _draw_from_threads(4, 3))
    monkeypatch.undo()  # and the parser still works afterwards, for the tests after this one
    assert _draw_from_threads(2, 1) == []


def test_a_chart_is_drawn_once_per_inputs(monkeypatch):
    """Each visit of a request page (and the reload that ends its progress poll) asks for the
    same charts again: they are drawn once per inputs, and new inputs draw a new one."""
    from datasite.console import charts

    drawn = []
    png = charts._png
    monkeypatch.setattr(charts, "_png", lambda fig: (drawn.append(1), png(fig))[1])
    c = {"title": "loss", "x": [1, 2], "y": [0.7, 0.5], "xlabel": "epoch", "ylabel": "loss"}
    first = charts.curve(c)
    assert first.startswith("data:image/png;base64,") and charts.curve(dict(c)) == first
    assert len(drawn) == 1
    assert charts.curve({**c, "y": [0.7, 0.4]}) != first and len(drawn) == 2
    bars = charts.per_class({"a": 0.5, "b": 1.0}, True)
    assert charts.per_class({"a": 0.5, "b": 1.0}, True) == bars and len(drawn) == 3
    # the bars follow the result's order of classes: another order is another picture
    assert charts.per_class({"b": 1.0, "a": 0.5}, True) != bars and len(drawn) == 4


def test_a_forget_release_entry_links_to_its_request_and_names_the_model_version(home):
    """A forget's fresh release is charged under REQUEST:vN: the ledger page links the request
    and says which model version it paid for (it showed the id cut off, as plain text)."""
    from shared.privacy.accounting import dpsgd_event, event_to_json

    site = _with_spend(home)
    site.state.add_researcher(RESEARCHER, "ab" * 32)
    rid = "ef" * 16
    site.ledger.reserve(f"{rid}:v2", "bc", RESEARCHER, event_to_json(dpsgd_event(0.1, 2.0, 10)))
    c = client(home)
    login(c, home)
    page = c.get("/ledger").text
    assert f'<a href="/requests/{rid}">{rid[:8]}</a> · model v2 (after a forget)' in page
    assert f"{rid}:v2" not in page and "more chars" not in page
