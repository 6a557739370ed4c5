"""Starting a site's detached processes: the HTTP server (``datasite.server``) and the round
servers of federated schedules (``datasite.round_server``).

Each is ``python -m MODULE ARGS`` in a session of its own (``datasite down`` kills the group),
output appended to a log, owner-only umask. When the environment names a *warm launcher*
(``DPDS_WARM_LAUNCHER``: its Unix socket), the process is instead forked from that launcher,
which has syft imported already: the same module's ``main`` with this process's arguments,
environment, working directory and umask, seconds of CPU less per start. The test suite runs
one (tests/server_zygote.py); a deployment has no reason to. The same launcher also forks the
helper servers a process keeps for itself, with torch imported (:func:`start_server`): a job
fork server (``datasite.job_process``) and a pricing server (``datasite.pricing_worker``).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .config import PRIVATE_UMASK

LAUNCHER_ENV = "DPDS_WARM_LAUNCHER"
# what a launcher may start (it runs ``main(args)`` of one of these)
MODULES = ("datasite.server", "datasite.round_server")
# the helper servers a launcher may fork for a caller (it runs ``serve_launched`` of one of these)
SERVERS = ("datasite.job_process", "datasite.pricing_worker")


def process_alive(pid: int) -> bool:
    """True if a process with this pid exists (also one owned by another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Launched:
    """A launcher's child, handled like a ``Popen`` (``poll``, ``kill``, ``wait``): the
    launcher reaps it, so a gone pid is an exited process (its exit code is in its log)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not process_alive(self.pid):
            self.returncode = -1
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode


def spawn_module(module: str, args: list[str], log_file: Path,
                 env: dict | None = None) -> subprocess.Popen | Launched:
    """Start ``python -m module args`` detached (see the module docstring); returns a handle
    with ``pid`` and ``poll()``."""
    if module not in MODULES:
        raise ValueError(f"not a site process: {module}")
    env = dict(os.environ if env is None else env)
    launcher = env.get(LAUNCHER_ENV)
    if launcher:
        return _via_launcher(launcher, module, args, log_file, env)
    log = os.fdopen(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
    try:
        # servers write syft.db (which holds the signing key) and blob files: owner-only
        return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=str(Path.cwd()), env=env,
                                umask=PRIVATE_UMASK)
    finally:
        log.close()  # the child has its own copy


def _via_launcher(path: str, module: str, args: list[str], log_file: Path,
                  env: dict) -> Launched:
    request = {"module": module, "args": [str(a) for a in args], "log": str(log_file),
               "env": env, "cwd": str(Path.cwd()), "umask": PRIVATE_UMASK}
    return Launched(_ask(path, request, [], module))


def start_server(path: str, module: str, fds: list[int], preload: list[str]) -> Launched:
    """Ask the warm launcher at ``path`` to fork one of :data:`SERVERS` for this process:
    ``module.serve_launched(fds[3:], preload)`` with ``fds[:3]`` as its stdin, stdout and
    stderr, ``preload`` imported (by the launcher, once for all such servers), and this
    process's environment, working directory, umask and ``sys.path``."""
    if module not in SERVERS:
        raise ValueError(f"not a helper server: {module}")
    request = {"serve": module, "preload": list(preload), "env": dict(os.environ),
               "cwd": str(Path.cwd()), "umask": _umask(), "sys_path": list(sys.path)}
    return Launched(_ask(path, request, fds, module))


def _umask() -> int:
    """This process's umask, read without setting it (``os.umask`` would change it for every
    thread for a moment: a file another thread creates then could get the wrong mode)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return PRIVATE_UMASK


def _ask(path: str, request: dict, fds: list[int], what: str) -> int:
    """One request to the launcher, ``fds`` passed with its first bytes; the started pid."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(300)  # the launcher answers once its imports are done
            s.connect(path)
            data = json.dumps(request).encode() + b"\n"
            sent = socket.send_fds(s, [data], fds) if fds else 0
            s.sendall(data[sent:])
            answer = json.loads(s.makefile("rb").readline() or b'{"error": "no answer"}')
    except OSError as e:
        raise RuntimeError(f"the warm launcher at {path} ({LAUNCHER_ENV}) did not answer: {e}; "
                           f"unset {LAUNCHER_ENV} to start processes directly") from None
    if "pid" not in answer:
        raise RuntimeError(f"the warm launcher could not start {what}: {answer.get('error')}")
    return answer["pid"]
