"""Custom code runs in a sandbox: escapes tried as an attacker would are refused or killed,
the job refunded and the owner told why; without a sandbox it is refused unless the owner
says --unsandboxed (audit-logged); and ``researcher.jobs.Custom`` runs on the mock first.

The site's home (its keys, its database, the other dataset) lives under a directory outside
``/tmp`` (``/var/tmp/dpds-test-*``): the sandbox's private ``/tmp`` would hide anything under the
host's ``/tmp`` whatever else it did, so a home there would not test the isolation. Each attack
that a defence stops is also run with that defence off (no sandbox, the owner's
``unsandboxed`` flag; or the process limit raised) and shown to succeed there."""
from __future__ import annotations

import textwrap
import time

import pytest

from custom_helpers import (RESEARCHER, dir_outside_tmp, plant_world_readable,
                            running_custom_site, submit_source, syft_login, unsandboxed_run)


@pytest.fixture(scope="module")
def outside():
    with dir_outside_tmp() as d:
        yield d


@pytest.fixture(scope="module")
def site(outside, demo_files):
    with running_custom_site(outside, demo_files, "hosp-sandbox", second_dataset=True) as s:
        assert not str(s.home.root.resolve()).startswith("/tmp/")
        yield s


@pytest.fixture(scope="module")
def planted(outside):
    """A world-readable secret outside /tmp: only mount isolation keeps it from the code."""
    return plant_world_readable(outside, "the owner's planted secret")


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


def _attack(body: str, name: str = "attack") -> str:
    return f"def {name}(df):\n" + textwrap.indent(textwrap.dedent(body), "    ")


def test_no_network(site, client, monkeypatch):
    port = site.config.port
    body = f"""
        import socket
        socket.create_connection(("127.0.0.1", {port}), timeout=5)  # the datasite itself
        return "connected"
        """
    _escape(site, client, body, match="ConnectionRefusedError|Network is unreachable|OSError")
    # defence off: the same code, unsandboxed, reaches the datasite
    rid = submit_source(client, _attack(body, "attack_off_net"))
    assert unsandboxed_run(site, rid, monkeypatch) == "connected"


def test_cannot_read_the_site_home_or_keys(site, client, monkeypatch):
    home = site.home.root
    body = f"""
        import os
        out = {{}}
        for p in [{str(home / "secrets")!r}, {str(home)!r}]:
            out[p] = os.listdir(p)
        return out
        """
    msg = _escape(site, client, body, match="FileNotFoundError|PermissionError")
    assert "secrets" in msg or str(home) in msg
    # the home is not under /tmp: it is the mount namespace that hides it (not the private /tmp,
    # and not only file permissions, which would say PermissionError)
    assert "FileNotFoundError" in msg
    # defence off: the same code, unsandboxed, lists the keys
    rid = submit_source(client, _attack(body, "attack_off_home"))
    listed = unsandboxed_run(site, rid, monkeypatch)
    assert listed[str(home / "secrets")] and "secrets" in listed[str(home)]


def test_cannot_read_a_world_readable_file_outside_the_job(site, client, planted,
                                                           monkeypatch):
    body = f"""
        return open({str(planted)!r}).read()
        """
    msg = _escape(site, client, body, match="FileNotFoundError")
    assert str(planted) in msg
    rid = submit_source(client, _attack(body, "attack_off_planted"))
    assert unsandboxed_run(site, rid, monkeypatch) == "the owner's planted secret"


def test_cannot_read_another_datasets_file(site, client, monkeypatch):
    other = site.state.dataset("other_table")["path"]
    assert not other.startswith("/tmp/")
    body = f"""
        return len(open({other + "/data.parquet"!r}, "rb").read())
        """
    msg = _escape(site, client, body, match="FileNotFoundError|PermissionError")
    assert "FileNotFoundError" in msg
    rid = submit_source(client, _attack(body, "attack_off_other"))
    assert unsandboxed_run(site, rid, monkeypatch) > 1000  # the other table's bytes


def test_fork_bomb_is_stopped(site, client):
    t0 = time.monotonic()
    msg = _escape(site, client, """
        import os, time
        while True:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)
        """, match="processes|BlockingIOError|killed", wall_s=60)
    # the process limit stopped it, not the wall-time kill (60 s) nor the CPU limit
    assert "passed its limit of 256 processes (RLIMIT_NPROC" in msg, msg
    assert time.monotonic() - t0 < 30
    assert site.client is not None and site.describe_request is not None  # host still serves


def test_process_limit_is_what_stops_forking(site, client):
    """The same bounded fork loop (100 sleeping children) is refused under a limit of 64
    processes, and runs to its end with the process limit raised (the defence off)."""
    from datasite.sandbox import Limits

    body = """
        import os, time
        for i in range(100):
            if os.fork() == 0:
                time.sleep(5)
                os._exit(0)
        return 100
        """
    t0 = time.monotonic()
    msg = _escape(site, client, body, match="passed its limit of 64 processes \\(RLIMIT_NPROC",
                  nproc=64, wall_s=60)
    assert "BlockingIOError" in msg and time.monotonic() - t0 < 30
    rid = submit_source(client, _attack(body, "forks_limit_off"))
    summary = site.run(rid, progress=False, epsilon=1.0, delta=1e-6,
                       limits=Limits(nproc=100_000, wall_s=60))
    assert summary["output"]["preview"] == "100"
    site.deny(rid, reason="defence-off check")


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


def noisy_mean_texture(df, dp=None):
    """Like noisy_mean_radius, submitted without an explicit run_on_mock."""
    clipped = df["mean_texture"].clip(0, 100)
    return {"mean_texture": dp.laplace(clipped.sum(), 100.0, 1.0) / len(df)}


def uses_a_missing_column(df):
    return float(df["no_such_column"].mean())


def returns_an_object(df):
    return object()


def spends_three(df, dp=None):
    return sum(dp.laplace(df[c].clip(0, 100).sum(), 100.0, 1.0)
               for c in ["mean_radius", "mean_texture", "mean_area"])


def test_jobs_custom_submit_runs_on_the_mock_first(site):
    """``site.submit(jobs.Custom(...))`` runs the function on the mock first and submits
    nothing when it fails there, returns what cannot leave the sandbox, or overspends its
    declaration; ``run_on_mock_first=False`` submits without trying."""
    import researcher
    from researcher import jobs
    from researcher.errors import ResearcherError

    rsite = researcher.connect(site.url, *RESEARCHER)

    def n_requests():
        return len(site.client.requests.get_all())

    before = n_requests()
    job = jobs.Custom(noisy_mean_texture, dataset="breast_cancer", declared_epsilon=1.0)
    assert job.mock_result is None and job.last_handle is None
    req = rsite.submit(job)
    assert set(job.mock_result) == {"mean_texture"} and job.last_handle.measurements == 1
    assert n_requests() == before + 1
    site.deny(req.id, reason="test: submitted only")

    for func, match in [(uses_a_missing_column, "failed on the mock of breast_cancer"),
                        (returns_an_object, "cannot leave the owner's sandbox as data"),
                        (spends_three, "spent eps=3.* more than the declared eps=1")]:
        with pytest.raises(ResearcherError, match=match) as err:
            rsite.submit(jobs.Custom(func, dataset="breast_cancer", declared_epsilon=1.0))
        assert "nothing was submitted" in str(err.value)
    assert n_requests() == before + 1

    # the opt-out: submitted untried (and it would fail on the real data: the owner denies it)
    job = jobs.Custom(uses_a_missing_column, dataset="breast_cancer", declared_epsilon=1.0,
                      run_on_mock_first=False)
    req = rsite.submit(job)
    assert job.mock_result is None and n_requests() == before + 2
    site.deny(req.id, reason="test: submitted untried")
