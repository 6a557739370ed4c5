"""The `datasite` command line: the owner journey through the real entry point (subprocesses, real
server); the ledger test (and the journey's one error of `run`) calls the same `main()` in this
process to skip interpreter starts and PySyft imports."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from conftest import free_port


def run(*args, home, check=True, env=None):
    """``datasite ARGS`` as a real subprocess; its servers start a fresh interpreter too (not
    the suite's warm launcher)."""
    from datasite.launch import LAUNCHER_ENV

    cmd = [sys.executable, "-m", "datasite.cli", *args, "--home", str(home)]
    env = dict(env or os.environ)
    env.pop(LAUNCHER_ENV, None)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def run_here(*args, home, check=True):
    """The same command through ``datasite.cli.main`` in this process: no interpreter start and
    syft import per call (the journey test above covers the real entry point)."""
    import contextlib
    import io
    import types

    from datasite.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--home", str(home)])
    p = types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{args} failed ({code}):\n{p.stdout}\n{p.stderr}")
    return p


def test_init_creates_identity_and_secrets(tmp_path):
    home = tmp_path / "h"
    out = run("init", "hosp", home=home).stdout
    assert "ready" in out
    key = home / "secrets" / "signing_key"
    pw = home / "secrets" / "root_password"
    for f in (key, pw):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "private").stat().st_mode) == 0o700
    password = pw.read_text()
    assert password != "changethis" and len(password) >= 24
    assert len(key.read_text()) == 64 and int(key.read_text(), 16) >= 0
    cfg = json.loads((home / "config.json").read_text())
    assert len(cfg["server_uid"]) == 32 and cfg["db_url"] is None
    # a second site gets different secrets
    run("init", "hosp", home=tmp_path / "h2")
    assert (tmp_path / "h2/secrets/signing_key").read_text() != key.read_text()
    # same home twice: clear error, nothing overwritten
    p = run("init", "hosp", home=home, check=False)
    assert p.returncode == 2 and "already exists" in p.stderr
    assert key.read_text() == (home / "secrets" / "signing_key").read_text()


def test_init_rejects_bad_db_and_weak_password(tmp_path):
    p = run("init", "hosp", "--db", "mysql://x", home=tmp_path / "a", check=False)
    assert p.returncode == 2 and "postgresql" in p.stderr
    weak = tmp_path / "pw"
    weak.write_text("changethis")
    p = run("init", "hosp", "--root-password-file", str(weak), home=tmp_path / "b", check=False)
    assert p.returncode == 2 and "12 characters" in p.stderr
    assert not (tmp_path / "b").exists()


def test_commands_start_without_torch():
    """`datasite init`, `up`, `down` and the checks before a login import neither torch nor
    opacus (seconds per command); the commands that log in pay for PySyft alone."""
    code = ("import sys, datasite.cli; a = 'torch' in sys.modules; import datasite.owner; "
            "print(a, 'opacus' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out


def test_secret_readable_by_others_is_refused(tmp_path):
    from datasite.config import SiteError, SiteHome, init_site

    site = init_site("hosp", home=tmp_path / "h")
    site.password_file.chmod(0o644)
    with pytest.raises(SiteError, match="chmod 600"):
        SiteHome(site.root).root_password()


@pytest.mark.slow
def test_owner_cli_journey(tmp_path, demo_files):
    home = tmp_path / "site"
    port = free_port()
    run("init", "clinic", "--port", str(port), home=home)
    try:
        assert "is up" in run("up", "clinic", home=home).stdout
        # bad uploads: clear error, nothing half-uploaded
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b,y\n1,2,0\n3,,1\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(20)))
        p = run("upload", "clinic", "bad", "--table", str(bad), "--label", "y", home=home,
                check=False)  # no schema: refused, and told which command drafts one
        assert p.returncode == 2 and "datasite schema draft" in p.stderr and "--schema" in p.stderr
        schema = tmp_path / "bad.schema.yaml"
        schema.write_text("kind: table\nrecords: 22\nlabel: {column: y, classes: [0, 1]}\n"
                          "columns: {a: {type: int, bounds: [0, 100]}, b: {type: int, bounds: "
                          "[0, 100]}}\n")
        p = run("upload", "clinic", "bad", "--table", str(bad), "--schema", str(schema),
                home=home, check=False)
        assert p.returncode == 2 and "b" in p.stderr and ("NaN" in p.stderr or "missing" in p.stderr)
        p = run("upload", "clinic", "nofile", "--table", str(tmp_path / "nope.csv"),
                "--schema", str(schema), home=home, check=False)
        assert p.returncode == 2 and "nope.csv" in p.stderr
        assert not any((home / "private").iterdir())
        out = run("upload", "clinic", "cxr", "--npz", str(demo_files / "cxr.npz"), "--schema",
                  str(demo_files / "cxr.schema.yaml"), home=home).stdout
        assert "400 records" in out
        pw = tmp_path / "pw.txt"
        pw.write_text("researcher-password")
        run("users", "add", "clinic", "bob@uni.edu", "--password-file", str(pw), home=home)
        p = run_here("users", "add", "clinic", "bob@uni.edu", "--password-file", str(pw),
                     home=home, check=False)
        assert p.returncode == 2 and "already registered" in p.stderr
        assert json.loads(run_here("review", "clinic", "--json", home=home).stdout) == []
        p = run_here("run", "clinic", "abc123", home=home, check=False)  # `run`'s own error
        assert p.returncode == 2 and "No request" in p.stderr
        assert "stopped" in run("down", "clinic", home=home).stdout
        p = run("review", "clinic", home=home, check=False)
        assert p.returncode == 2 and "not running" in p.stderr and "datasite up" in p.stderr
        # state survives a restart (this `up` forks from the warm launcher; the first was real)
        run_here("up", "clinic", home=home)
        from datasite.owner import OwnerSite
        from datasite.config import open_site

        owner = OwnerSite(open_site("clinic", home))
        assert "cxr" in owner.datasets()
        assert "bob@uni.edu" in [u.email for u in owner.client.users.get_all()]
    finally:
        run("down", "clinic", home=home, check=False)


@pytest.mark.slow
def test_ledger_command_shows_plots_and_verifies(tmp_path, demo_files):
    """`datasite budget` / `ledger` on a site with spend: JSON, plot, tamper detection."""
    from sqlalchemy import text

    import researcher
    from datasite.config import open_site
    from datasite.owner import OwnerSite
    from researcher import jobs

    home = tmp_path / "site"
    run_here("init", "lab", "--port", str(free_port()), home=home)
    run_here("up", "lab", home=home)  # the warm launcher's fork (the journey starts it for real)
    try:
        run_here("upload", "lab", "bc", "--table", str(demo_files / "breast_cancer.csv"), "--label",
            "diagnosis", "--schema", str(demo_files / "breast_cancer.schema.yaml"), home=home)
        p = run_here("ledger", "lab", "--dataset", "bc", home=home, check=False)
        assert p.returncode == 2 and "No budget" in p.stderr
        p = run_here("budget", "lab", "bc", "--epsilon", "4", "--delta", "0.5", home=home, check=False)
        assert p.returncode == 2 and "1/n" in p.stderr
        run_here("budget", "lab", "bc", "--epsilon", "4", "--delta", "1e-5", home=home)
        pw = tmp_path / "pw"
        pw.write_text("carol-password")
        run_here("users", "add", "lab", "carol@uni.edu", "--password-file", str(pw), "--dataset", "bc",
            "--budget-eps", "3", home=home)
        owner = OwnerSite(open_site("lab", home))
        site = researcher.connect(owner.url, "carol@uni.edu", "carol-password")
        assert site.datasets["bc"].budget["researcher_left"] == pytest.approx(3.0)
        req = site.submit(jobs.DPSGD(dataset="bc", label="diagnosis", epsilon=1.0, delta=1e-5,
                                     epochs=2))
        review = run_here("review", "lab", home=home).stdout
        assert "privacy cost" in review and "fits the budgets" in review
        run_here("run", "lab", req.id[:8], "--quiet", home=home)
        run_here("release", "lab", req.id[:8], home=home)
        rep = json.loads(run_here("ledger", "lab", "--json", "--plot", str(tmp_path / "l.png"),
                             home=home).stdout)
        ds = rep["datasets"][0]
        # eps 1 of training + the default metrics_epsilon 0.5, composed
        assert ds["jobs"] == 1 and 1.0 < ds["spent"] <= 1.5 + 1e-9 and rep["audit"]["intact"]
        assert (tmp_path / "l.png").stat().st_size > 1000
        with owner.ledger.engine.begin() as c:
            c.execute(text("UPDATE dpds_audit SET actor = 'mallory' WHERE seq = 1"))
        p = run_here("ledger", "lab", "--verify", home=home, check=False)
        assert p.returncode == 2 and "tampered" in p.stderr
    finally:
        run_here("down", "lab", home=home, check=False)
