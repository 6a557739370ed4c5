"""The two notebooks, executed as an owner and a researcher would, against a live datasite."""
from __future__ import annotations

import ast
import os
import threading
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import free_port

pytestmark = pytest.mark.slow
NB = Path(__file__).resolve().parent.parent / "notebooks"


def _execute(name: str, env: dict):
    nb = nbformat.read(NB / name, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NB.parent)}})
    client.execute(env=dict(os.environ, **env))  # the kernel gets its own environment
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") or str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def test_owner_and_researcher_notebooks(tmp_path):
    from datasite.config import open_site
    from datasite import lifecycle

    port = free_port()
    env = {"DPDS_NB_HOME": str(tmp_path), "DPDS_NB_PORT": str(port),
           "DPDS_NB_URL": f"http://127.0.0.1:{port}", "DPDS_NB_PASSWORD": "alice-notebook-pw",
           "DPDS_NB_TIMEOUT": "300", "DPDS_NB_WAIT": "0"}
    try:
        _execute("owner.ipynb", env)  # set up: site, data, researcher
        errors = []

        def researcher_side():
            try:
                _execute("researcher.ipynb", env)
            except Exception as e:  # reported below
                errors.append(e)

        t = threading.Thread(target=researcher_side)
        t.start()
        _execute("owner.ipynb", dict(env, DPDS_NB_WAIT="300"))  # review, run, release
        t.join(timeout=400)
        assert not t.is_alive() and not errors, errors
    finally:
        lifecycle.down(open_site("hospital-a", tmp_path / "hospital-a"))


def test_federation_notebook(tmp_path):
    """Two datasites: DP statistics, then federated DP training, then both owners' ledgers."""
    from datasite import lifecycle
    from datasite.config import SiteHome

    try:
        nb = _execute("federation.ipynb", {"DPDS_NB_HOME": str(tmp_path),
                                           "DPDS_NB_TIMEOUT": "300",
                                           "DPDS_NB_PASSWORD": "alice-notebook-pw"})
        text = _text(nb)
        assert "federated training: 3 round(s), sites hospital-a, hospital-b" in text
        acc = float(text.split("union test accuracy:")[1].split()[0])
        assert 0.6 < acc <= 1.0
        assert "=== hospital-a" in text and "=== hospital-b" in text
    finally:
        for name in ("hospital-a", "hospital-b"):
            if (tmp_path / name / "config.json").exists():
                lifecycle.down(SiteHome(tmp_path / name))


def test_finetune_notebook(tmp_path):
    """Register the package backbone, fine-tune it at eps 1, 2, 8, plot accuracy against eps."""
    from datasite import lifecycle
    from datasite.config import SiteHome

    try:
        nb = _execute("finetune.ipynb", {"DPDS_NB_HOME": str(tmp_path), "DPDS_NB_TIMEOUT": "300",
                                         "DPDS_NB_PASSWORD": "alice-notebook-pw"})
        text = _text(nb)
        assert "registered lite0: efficientnet_lite0" in text
        acc = ast.literal_eval(text.split("accuracy by epsilon:")[1].splitlines()[0].strip())
        assert sorted(acc) == [1.0, 2.0, 8.0]
        assert acc[8.0] > 0.6  # a pretrained head beats the balanced majority class at eps 8
        assert (tmp_path / "accuracy_vs_epsilon.png").stat().st_size > 10_000
        assert any(o.get("data", {}).get("image/png") for c in nb.cells
                   for o in c.get("outputs", []))
    finally:
        if (tmp_path / "hospital-a" / "config.json").exists():
            lifecycle.down(SiteHome(tmp_path / "hospital-a"))
