"""The owner and researcher notebooks, executed side by side against a live datasite."""
from __future__ import annotations

import pytest

from conftest import free_port
from notebook_runner import execute, finish, start

pytestmark = pytest.mark.slow


def test_owner_and_researcher_notebooks(tmp_path):
    from datasite.config import open_site
    from datasite import lifecycle

    port = free_port()
    env = {"DPDS_NB_HOME": str(tmp_path), "DPDS_NB_PORT": str(port),
           "DPDS_NB_URL": f"http://127.0.0.1:{port}", "DPDS_NB_PASSWORD": "alice-notebook-pw",
           "DPDS_NB_TIMEOUT": "300", "DPDS_NB_WAIT": "0"}
    try:
        execute("owner.ipynb", env)  # set up: site, data, researcher
        researcher_side = start("researcher.ipynb", env)
        try:
            execute("owner.ipynb", dict(env, DPDS_NB_WAIT="300"))  # review, run, release
        finally:
            finish(researcher_side, timeout=400)
    finally:
        lifecycle.down(open_site("hospital-a", tmp_path / "hospital-a"))
