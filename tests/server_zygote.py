"""A warm launcher for the site processes the tests start: datasite servers (``make_site``,
``live_site``, restarts, the notebooks' ``site.up()``) and federated round servers.

Every ``python -m datasite.server`` or ``datasite.round_server`` spends seconds of CPU
importing syft (4-8 s; about 40 starts per run) before it does any work. This process imports
syft and those modules once; each start is then a ``fork`` of it that runs the module's
``main`` with the caller's arguments, environment, working directory and umask, its output
appended to the caller's log, in its own session (``datasite down`` kills the group) -- the
code a fresh interpreter runs, without the interpreter start.

The product asks a launcher when ``DPDS_WARM_LAUNCHER`` names its socket
(``datasite/launch.py``); the conftest sets it for the run, so processes the tests start
(notebook kernels included) inherit it. The CLI tests' real subprocesses drop it, and
``test_server_launch_paths`` checks that both paths give a working server.

It also forks the helper servers that processes keep for themselves (the pytest processes,
workers, notebook kernels, consoles, round servers): job fork servers
(``datasite/job_process.py``) and pricing servers (``datasite/pricing_worker.py``). A fresh one
imports torch, Opacus, sklearn, the accountants and the job code (about 10-16 s of CPU on the
test host, dozens per run); this process imports them once, on the first such request.

And it forks the notebook tests' kernels (tests/kernel_shim.py): an ipykernel with syft, torch
and the product imported, which a fresh kernel's first cells spend 5-8 s of CPU on.

Protocol: one connection per start on the Unix socket; one JSON line in, one back ({"pid"} or
{"error"}). A site process: {"module", "args", "log", "env", "cwd", "umask"}. A helper server:
{"serve": module, "preload", "env", "cwd", "umask", "sys_path"}, with its stdin, stdout and
stderr, then its own descriptors, passed along (SCM_RIGHTS). A kernel: {"kernel": its
arguments, "env", "cwd", "umask", "sys_path", "watch": the shim's pid}, with its stdin, stdout
and stderr.
"""
from __future__ import annotations

import gc
import importlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# not matplotlib: it reads MPLBACKEND, which the kernel sets, when it is imported
KERNEL_PRELOAD = ["ipykernel.kernelapp", "researcher", "researcher.jobs", "datasite.ledger_view",
                  "torch", "opacus"]


def _child(req: dict, fds: list[int]) -> None:
    """In the forked child: become the process asked for and run it; never returns. A site
    process gets a session of its own and its log as output; a helper server, the caller's
    stdin, stdout and stderr (``fds[:3]``) and its own descriptors (the rest)."""
    code = 1
    helper = "serve" in req
    kernel = "kernel" in req
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it may wait on its own children
        if helper or kernel:
            stdio = fds[:3]
            if kernel:
                os.setsid()  # as jupyter_client starts a kernel
        else:
            os.setsid()
            log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            stdio = [os.open(os.devnull, os.O_RDONLY), log, log]
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        for fd in set(stdio):
            os.close(fd)
        os.umask(req["umask"])
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        if helper:
            sys.path[:] = req["sys_path"]
            importlib.import_module(req["serve"]).serve_launched(fds[3:], req["preload"])
            code = 0
        elif kernel:
            sys.path[:] = req["sys_path"]
            sys.argv = ["ipykernel_launcher", *req["kernel"]]
            _exit_with(req["watch"])
            from ipykernel import kernelapp

            kernelapp.launch_new_instance()
            code = 0
        else:
            sys.argv = [req["module"], *req["args"]]
            result = importlib.import_module(req["module"]).main(req["args"])
            code = result if isinstance(result, int) else 0
    except SystemExit as e:  # as the interpreter reads it (a fork server ends with a bare one)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:  # pylint: disable=broad-except
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _exit_with(pid: int) -> None:
    """End this process when ``pid`` (the kernel's shim, which jupyter_client holds) ends."""
    def watch():
        try:
            select.select([os.pidfd_open(pid)], [], [])
        finally:
            os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-shim").start()


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """One JSON line and the descriptors passed with it."""
    data, fds = b"", []
    while not data.endswith(b"\n"):
        chunk, more, _flags, _addr = socket.recv_fds(conn, 1 << 16, 8)
        if not chunk:
            break
        data += chunk
        fds += more
    return json.loads(data), fds


def _preload(modules: list[str]) -> None:
    """Import a helper server's preload here, once for all of them (as multiprocessing's own
    fork server does, a module that fails to import is skipped)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    # what is imported here lives as long as every child: out of the collector's sight, a
    # child's collections no longer walk (and copy, page by page) the whole of syft and torch
    gc.freeze()


def serve(path: str) -> None:
    """The launcher's loop: listen at once (callers queue until the imports are done), import
    once, then fork one process per connection."""
    from datasite.launch import MODULES, SERVERS

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    print(json.dumps({"listening": os.getpid()}), flush=True)
    os.dup2(2, 1)  # nobody reads stdout from here on: what syft prints goes to the log
    import syft  # noqa: F401  (the seconds each start would pay)
    from syft.server.routes import make_routes  # noqa: F401
    import uvicorn  # noqa: F401

    for module in MODULES:
        importlib.import_module(module)
    import datasite.owner  # noqa: F401  (a round server's site)
    gc.freeze()  # see _preload

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped as they exit
    while True:
        conn, _ = listener.accept()
        fds: list[int] = []
        with conn:
            try:
                req, fds = _read_request(conn)
                helper = "serve" in req
                if helper:
                    if req["serve"] not in SERVERS or len(fds) < 3:
                        raise ValueError(f"not a helper server: {req['serve']} ({len(fds)} fds)")
                    _preload(req["preload"])
                elif "kernel" in req:
                    if len(fds) != 3:
                        raise ValueError(f"a kernel takes its 3 standard streams ({len(fds)})")
                    _preload(KERNEL_PRELOAD)
                elif req.get("module") not in MODULES:
                    raise ValueError(f"not a site process: {req.get('module')}")
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
            except (OSError, ValueError) as e:
                for fd in fds:
                    os.close(fd)
                conn.sendall(json.dumps({"error": str(e)}).encode() + b"\n")
                continue
            if pid == 0:
                listener.close()
                conn.close()
                _child(req, fds)
            for fd in fds:  # the child's now: a helper server ends when its client lets go
                os.close(fd)
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


class Launcher:
    """The launcher process of one pytest process; its socket goes in ``DPDS_WARM_LAUNCHER``."""

    def __init__(self, log_dir: Path):
        # a short private directory: a Unix socket's path has at most 107 bytes
        self.socket = os.path.join(tempfile.mkdtemp(prefix="dpds-launcher-"), "sock")
        err = open(log_dir / "launcher.log", "ab")  # noqa: SIM115  (the child holds a copy)
        self._proc = subprocess.Popen([sys.executable, __file__, self.socket],
                                      stdout=subprocess.PIPE, stderr=err, text=True,
                                      cwd=str(Path(__file__).resolve().parents[1]))
        err.close()
        if not self._proc.stdout.readline():  # bound and listening: callers may connect
            raise RuntimeError(f"the warm launcher did not start; see {log_dir}/launcher.log")

    def close(self) -> None:
        if self._proc.poll() is None:  # processes it started stay up until their down()
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(os.path.dirname(self.socket), ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    serve(sys.argv[1])
