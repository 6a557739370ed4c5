"""Fixtures: real datasites (HTTP servers on 127.0.0.1) with SQLite or PostgreSQL storage."""
from __future__ import annotations

import json
import os
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("DPDS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

# One intra-op thread per process (tests, the servers, workers and job processes they start all
# inherit it): several test processes share the cores, and a torch/BLAS thread pool per process
# then spins waiting on descheduled siblings (a table step up to 10x slower). Set before any
# import of torch; a caller's own setting wins.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


from datasite.lifecycle import free_port  # noqa: E402  (re-exported for the tests)


_CREATED: list[str] = []

# ``DPDS_RECORD_DURATIONS=FILE ./test.sh`` writes the seconds spent per test file to FILE (the
# per-file view --durations does not give; for finding what makes the suite long).
_SPENT: dict[str, float] = defaultdict(float)


# Seconds each test file took in a recorded run (``DPDS_RECORD_DURATIONS=tests/file_seconds.json
# ./test.sh``; refresh it when files are added or grow). Files are collected longest first, so
# pytest-xdist's --dist loadfile --no-loadscope-reorder (test.sh) hands them out longest first:
# the run does not end with one process in a long file while the others sit idle. (xdist's
# default order, by number of tests, left the one-test notebook files of 90-160 s for last:
# in a recorded 2-process run the files summed to 3,461 s against 2 x 1,892 s of wall time.)
FILE_SECONDS = Path(__file__).with_name("file_seconds.json")
UNKNOWN_FILE_SECONDS = 30.0  # a new file: somewhere in the middle


def pytest_collection_modifyitems(session, config, items):
    try:
        seconds = json.loads(FILE_SECONDS.read_text())
    except (OSError, ValueError):
        return  # no record: collection order
    order = {}
    for item in items:  # stable: a file's tests keep their order, and stay together
        f = item.nodeid.split("::")[0]
        order.setdefault(f, (-seconds.get(f, UNKNOWN_FILE_SECONDS), len(order)))
    items.sort(key=lambda item: order[item.nodeid.split("::")[0]])


def pytest_runtest_logreport(report):
    if os.environ.get("DPDS_RECORD_DURATIONS"):
        _SPENT[report.nodeid.split("::")[0]] += report.duration


def pytest_sessionfinish(session):
    out = os.environ.get("DPDS_RECORD_DURATIONS")
    if out and _SPENT and not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller has all
        Path(out).write_text(json.dumps(
            {f: round(s, 1) for f, s in sorted(_SPENT.items(), key=lambda x: -x[1])},
            indent=1) + "\n")


def _pg_admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_URL)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


@pytest.fixture(scope="session", autouse=True)
def calibration_cache_file(tmp_path_factory):
    """One calibration cache file for the whole run, in the environment, so the servers, pricing
    workers and job runners the tests start (they inherit it) reuse the sigmas calibrated
    before instead of each calibrating the same request again."""
    from shared.privacy.calibration_cache import ENV_VAR

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one file for all the run's workers (WAL-safe)
        root = root.parent
    path = root / "calibration.sqlite"
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(path)
    yield path
    if old is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = old


@pytest.fixture(scope="session", autouse=True)
def warm_server_launcher(tmp_path_factory):
    """Site servers and round servers this run starts -- from this process or from processes it
    starts, notebook kernels included -- fork from one process with syft imported
    (tests/server_zygote.py, named by ``DPDS_WARM_LAUNCHER``): seconds of CPU less per start;
    so do the job fork servers of the processes that run jobs, with torch and the job code
    imported, and the notebook tests' kernels (tests/kernel_shim.py).
    ``DPDS_TEST_FRESH_SERVERS=1`` starts each with a fresh interpreter, as ``datasite up`` and a
    worker do in a deployment."""
    from datasite.launch import LAUNCHER_ENV
    from server_zygote import Launcher

    if os.environ.get("DPDS_TEST_FRESH_SERVERS") == "1":
        yield None
        return
    launcher = Launcher(tmp_path_factory.getbasetemp())
    old = os.environ.get(LAUNCHER_ENV)
    os.environ[LAUNCHER_ENV] = launcher.socket
    try:
        yield launcher
    finally:
        if old is None:
            os.environ.pop(LAUNCHER_ENV, None)
        else:
            os.environ[LAUNCHER_ENV] = old
        launcher.close()


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases():
    yield
    for name in _CREATED:  # servers are down by now; FORCE ends stray connections
        try:
            _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception:
            pass


def _pg_database() -> str:
    """A fresh PostgreSQL database for one site; skipped nowhere: PostgreSQL must be there."""
    import psycopg2

    name = f"dpds_{uuid.uuid4().hex[:10]}"
    _CREATED.append(name)
    conn = psycopg2.connect(PG_ADMIN_URL)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def make_site(root: Path, name: str, backend: str = "sqlite"):
    from datasite.config import init_site
    from datasite.owner import OwnerSite

    db = _pg_database() if backend == "postgres" else None
    home = init_site(name, home=root / name, db_url=db, port=free_port())
    site = OwnerSite(home)
    site.up()
    return site


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory):
    from datasite.demo_data import write_breast_cancer_csv, write_synthetic_cxr_npz

    d = tmp_path_factory.mktemp("demo")
    write_breast_cancer_csv(d / "breast_cancer.csv")
    write_synthetic_cxr_npz(d / "cxr.npz", n_train=300, n_val=50, n_test=50, size=28, seed=0)
    return d


RESEARCHER = ("alice@uni.edu", "alice-password-1")


def pytest_generate_tests(metafunc):
    """``live_site`` runs on both backends unless a ``backends(...)`` mark (on the test or its
    module) names fewer: where the behaviour under test is the same on either database, one
    site start is enough; ledger, queue and concurrency tests keep both."""
    if "live_site" in metafunc.fixturenames:
        mark = metafunc.definition.get_closest_marker("backends")
        backends = mark.args if mark else ("sqlite", "postgres")
        metafunc.parametrize("live_site", backends, indirect=True, scope="module")


@pytest.fixture(scope="module")
def live_site(request, tmp_path_factory, demo_files):
    """A running datasite with the breast-cancer table and one registered researcher, on the
    backend the test is parametrized with (``pytest_generate_tests``)."""
    site = make_site(tmp_path_factory.mktemp("site"), f"hosp-{request.param}", request.param)
    try:
        site.upload("breast_cancer", table=str(demo_files / "breast_cancer.csv"), label="diagnosis",
                    schema=demo_files / "breast_cancer.schema.yaml", budget_epsilon=50.0,
                    delta=1e-5)
        site.add_user(*RESEARCHER, name="Alice")
        yield site
    finally:
        site.down()


class NoLogin(Exception):
    """Raised by :func:`no_login`: the site was logged into."""


def _no_login(self):
    raise NoLogin("the site was logged into before the input was checked")


@pytest.fixture()
def no_login(monkeypatch):
    """Logging into any OwnerSite raises NoLogin: checks that must come before the (slow)
    login are shown to."""
    from datasite.owner import OwnerSite

    monkeypatch.setattr(OwnerSite, "client", property(_no_login))
