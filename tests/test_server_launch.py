"""Both ways a site process starts (datasite/launch.py): a fresh ``python -m datasite.server``,
as ``datasite up`` does on a deployment, and a fork of the suite's warm launcher
(tests/server_zygote.py); each gives a working server that ``down`` stops."""
from __future__ import annotations

import json
import os
import socket
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
