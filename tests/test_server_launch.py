"""Both ways a site process starts (datasite/launch.py): a fresh ``python -m datasite.server``,
as ``datasite up`` does on a deployment, and a fork of the suite's warm launcher
(tests/server_zygote.py); each gives a working server that ``down`` stops."""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from datasite import lifecycle
from datasite.config import init_site
from datasite.launch import LAUNCHER_ENV, spawn_module

from conftest import free_port


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.parametrize("path", ["fresh", "launcher"])
def test_server_launch_paths(tmp_path, monkeypatch, path):
    if path == "fresh":
        monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    else:
        assert os.environ.get(LAUNCHER_ENV), "the conftest runs a warm launcher"
    home = init_site("lp", home=tmp_path / "lp", port=free_port())
    url = lifecycle.up(home)
    try:
        pid = lifecycle.running_pid(home)
        assert pid and lifecycle.is_healthy(url)
        cmd = _cmdline(pid)
        if path == "fresh":
            assert "-m datasite.server" in cmd
        else:
            assert "server_zygote.py" in cmd  # a fork: the launcher's command line
        assert os.getpgid(pid) == pid  # its own session: down() kills the group
    finally:
        lifecycle.down(home)
    assert lifecycle.running_pid(home) is None and not lifecycle.is_healthy(url)


def test_the_launcher_starts_only_site_processes(tmp_path):
    with pytest.raises(ValueError, match="not a site process"):
        spawn_module("os", [], tmp_path / "x.log")
    # and the launcher itself refuses any other module, whoever asks
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(os.environ[LAUNCHER_ENV])
        s.sendall(json.dumps({"module": "http.server", "args": [], "log": str(tmp_path / "l"),
                              "env": {}, "cwd": str(tmp_path), "umask": 0o77}).encode() + b"\n")
        answer = json.loads(s.makefile("rb").readline())
    assert "not a site process" in answer["error"]


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("end", ["shutdown", "kill -9 the shim"])
def test_a_warm_notebook_kernel_runs_cells_and_never_outlives_its_shim(end):
    """The notebook tests' kernels fork from the launcher (tests/kernel_shim.py): the cells
    run there, with the product already imported; a shutdown ends both processes, and so does
    killing the shim jupyter_client holds (no kernel is left behind)."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from notebook_runner import KERNELS

    km = KernelManager(kernel_name="dpds-warm",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(KERNELS)]))
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        sent = kc.execute("import os, sys", user_expressions={"pid": "os.getpid()",
                                                              "warm": "'syft' in sys.modules"})
        reply = kc.get_shell_msg(timeout=60)
        while reply["parent_header"].get("msg_id") != sent:
            reply = kc.get_shell_msg(timeout=60)
        answer = reply["content"]["user_expressions"]
        pid, warm = (answer[k]["data"]["text/plain"] for k in ("pid", "warm"))
        pid, shim = int(pid), km.provisioner.process.pid
        assert pid != shim and "server_zygote.py" in _cmdline(pid) and warm == "True"
        assert "kernel_shim.py" in _cmdline(shim)
        if end == "shutdown":
            km.shutdown_kernel()
        else:
            os.kill(shim, signal.SIGKILL)
        assert _gone(pid, within=10), "the kernel outlived its shim"
    finally:
        kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)
