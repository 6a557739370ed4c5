"""Executing the notebooks in notebooks/ as a user would, for the notebook tests."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NB = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, env: dict):
    """Run every cell of notebooks/NAME in a fresh kernel with ``env`` added to its environment."""
    nb = nbformat.read(NB / name, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NB.parent)}})
    client.execute(env=dict(os.environ, **env))  # the kernel gets its own environment
    return nb


def printed(nb) -> str:
    """Everything the notebook's cells printed."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") or str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)
