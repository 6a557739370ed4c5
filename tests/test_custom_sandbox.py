"""Custom code runs in a sandbox: escapes tried as an attacker would are refused or killed,
the job refunded and the owner told why; without a sandbox it is refused unless the owner
says --unsandboxed (audit-logged); and ``researcher.jobs.Custom`` runs on the mock first.

Defence off (checked by hand, see the report): with ``unsandboxed=True`` the socket, key, and
other-dataset attacks succeed and these tests fail."""
from __future__ import annotations

import textwrap

import pytest

from custom_helpers import RESEARCHER, running_custom_site, submit_source, syft_login


@pytest.fixture(scope="module")
def site(tmp_path_factory, demo_files):
    with running_custom_site(tmp_path_factory.mktemp("sandbox"), demo_files, "hosp-sandbox",
                             second_dataset=True) as s:
        yield s


@pytest.fixture(scope="module")
def client(site):
    return syft_login(site)


def _escape(site, client, body: str, match: str, **limits):
    """Submit ``def attack(df): <body>``, run it, and check it fails with ``match`` in what the
    owner is told, refunded, counted as one (failed) execution."""
    from datasite.config import SiteError
    from datasite.sandbox import Limits

    source = "def attack(df):\n" + textwrap.indent(textwrap.dedent(body), "    ")
    rid = submit_source(client, source)
    with pytest.raises(SiteError, match=match) as err:
        site.run(rid, progress=False, epsilon=1.0, delta=1e-6,
                 limits=Limits(**limits) if limits else None)
    assert "refunded" in str(err.value)
    own = site.state.request(rid)
    assert own["state"] == "failed" and own["reason"].startswith("custom code:")
    assert site.ledger.entry(rid)["state"] == "refunded"
    assert site.executions(rid) == 1
    return str(err.value)


def test_no_network(site, client):
    port = site.config.port
    _escape(site, client, f"""
        import socket
        socket.create_connection(("127.0.0.1", {port}), timeout=5)  # the datasite itself
        return "connected"
        """, match="ConnectionRefusedError|Network is unreachable|OSError")


def test_cannot_read_the_site_home_or_keys(site, client):
    home = site.home.root
    msg = _escape(site, client, f"""
        import os
        out = {{}}
        for p in [{str(home / "secrets")!r}, {str(home)!r}]:
            out[p] = os.listdir(p)
        return out
        """, match="FileNotFoundError|PermissionError")
    assert "secrets" in msg or str(home) in msg


def test_cannot_read_another_datasets_file(site, client):
    other = site.state.dataset("other_table")["path"]
    _escape(site, client, f"""
        return open({other + "/data.parquet"!r}, "rb").read()
        """, match="FileNotFoundError|PermissionError")


def test_fork_bomb_is_stopped(site, client):
    _escape(site, client, """
        import os, time
        while True:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
        """, match="processes|BlockingIOError|killed", wall_s=60)
    assert site.client is not None and site.describe_request is not None  # host still serves


def test_allocating_100_gb_is_refused(site, client):
    _escape(site, client, """
        blocks = []
        for _ in range(400):  # 100 GB in 256 MB blocks, each written (bytearray zero-fills)
            blocks.append(bytearray(256 * 2**20))
        return len(blocks)
        """, match="MemoryError: passed its memory limit of 2048 MB", memory_mb=2048)


def test_running_forever_is_killed(site, client):
    import time

    t0 = time.monotonic()
    _escape(site, client, """
        while True:
            pass
        """, match="wall-time limit of 4 s", wall_s=4)
    assert time.monotonic() - t0 < 60


def test_without_a_sandbox_custom_code_is_refused_unless_the_owner_says_so(site, client,
                                                                           monkeypatch):
    from datasite import sandbox
    from datasite.config import SiteError

    rid = submit_source(client, "def mean_radius(df):\n    return 1.0\n")
    monkeypatch.setattr(sandbox, "available", lambda: (False, "bubblewrap (bwrap) is not "
                                                       "installed"))
    with pytest.raises(SiteError, match="apt-get install bubblewrap.*--unsandboxed"):
        site.run(rid, progress=False, epsilon=1.0, delta=1e-6)
    assert site.executions(rid) == 0
    summary = site.run(rid, progress=False, epsilon=1.0, delta=1e-6, unsandboxed=True)
    assert summary["sandbox"].startswith("none")
    from sqlalchemy import select

    from datasite.audit_log import audit

    with site.ledger.engine.connect() as c:
        actions = [r.action for r in c.execute(select(audit).where(audit.c.request_id == rid))]
    assert "unsandboxed" in actions and "custom_run" in actions


def noisy_mean_radius(df, dp=None):
    """A custom function for jobs.Custom: one Laplace release through the handle."""
    clipped = df["mean_radius"].clip(0, 50)
    return {"mean_radius": dp.laplace(clipped.sum(), 50.0, 1.0) / len(df)}


def test_researcher_jobs_custom_runs_on_mock_then_submits(site):
    import researcher
    from researcher import jobs

    rsite = researcher.connect(site.url, *RESEARCHER)
    job = jobs.Custom(noisy_mean_radius, dataset="breast_cancer", declared_epsilon=1.0,
                      declared_delta=0.0)
    local = job.run_on_mock(rsite)
    assert set(local) == {"mean_radius"} and job.last_handle.measurements == 1
    req = rsite.submit(job)
    info = site.describe_request(req.id)
    assert info["custom"]["declared_by_researcher"] == {"epsilon": 1.0, "delta": 0.0}
    assert "@sy.syft_function_single_use(df=asset)" in info["code"]
    site.run(req.id, progress=False, epsilon=1.0, delta=1e-6)
    site.release(req.id)
    value = req.wait(timeout=60, poll=0.5, progress=False)
    assert set(value) == {"mean_radius"} and 5 < value["mean_radius"] < 30
