"""Executing the notebooks in notebooks/ as a user would, for the notebook tests."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from traitlets import default

NB = Path(__file__).resolve().parent.parent / "notebooks"
KERNELS = Path(__file__).resolve().parent / "kernels"


class WarmKernelManager(AsyncKernelManager):
    """Starts the ``dpds-warm`` kernel (tests/kernels): the stock kernel, forked from the
    tests' warm launcher with the product imported (tests/kernel_shim.py)."""

    @default("kernel_spec_manager")
    def _warm_specs(self):
        return KernelSpecManager(kernel_dirs=[str(KERNELS)])


def kernel(env: dict) -> dict:
    """How NotebookClient starts a notebook's kernel: the stock python3 kernel, or, with the
    tests' warm launcher, the same kernel forked from it (the cells run alike)."""
    if not dict(os.environ, **env).get("DPDS_WARM_LAUNCHER"):
        return {"kernel_name": "python3"}
    return {"kernel_name": "dpds-warm", "kernel_manager_class": WarmKernelManager}


def execute(name: str, env: dict):
    """Run every cell of notebooks/NAME in a fresh kernel with ``env`` added to its environment."""
    nb = nbformat.read(NB / name, as_version=4)
    client = NotebookClient(nb, timeout=600, **kernel(env),
                            resources={"metadata": {"path": str(NB.parent)}})
    client.execute(env=dict(os.environ, **env))  # the kernel gets its own environment
    return nb


def start(name: str, env: dict) -> subprocess.Popen:
    """Run notebooks/NAME in a separate process (a kernel's client needs its own main thread:
    nbclient installs signal handlers, which a thread cannot). Wait on it with ``finish``."""
    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a full pipe would stall the kernel
    proc = subprocess.Popen([sys.executable, __file__, name], env=dict(os.environ, **env),
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def finish(proc: subprocess.Popen, timeout: float) -> None:
    """Wait for a notebook started with ``start``; raise with its output if it failed."""
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        proc.wait()
    proc.log.seek(0)
    out = proc.log.read()
    assert not timed_out, f"notebook still running after {timeout:.0f} s:\n{out[-4000:]}"
    assert proc.returncode == 0, f"notebook failed (exit {proc.returncode}):\n{out[-4000:]}"


def printed(nb) -> str:
    """Everything the notebook's cells printed."""
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") or str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


if __name__ == "__main__":
    execute(sys.argv[1], {})
