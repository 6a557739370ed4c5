"""A warm launcher for the datasite servers the tests start in-process (``make_site``,
``live_site``, restarts).

Every ``python -m datasite.server`` spends seconds of CPU importing syft (4-8 s; with about 25
starts per run, minutes of the suite's CPU) before it builds its server in under a second. This
process imports syft and the server module once; each start is then a ``fork`` of it that runs
``datasite.server.main`` with the caller's arguments, environment, working directory and
umask, its output appended to the site's log, in its own session (``datasite down`` kills the
group) -- the server code a fresh interpreter runs, without the interpreter start.

Only the pytest process that starts it uses it (:func:`install` swaps
``datasite.lifecycle.spawn_server``); the CLI, notebook and demo tests start servers the real
way, and ``test_server_launch_paths`` checks both paths give a working server.

Protocol: one JSON line per start on stdin ({"args", "log", "env", "cwd", "umask"}); one JSON
line back ({"pid"} or {"error"}) on the reply pipe, which is the original stdout (stdout itself
goes to stderr, so that nothing syft prints can corrupt a reply).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path


def _child(req: dict, reply_fd: int) -> None:
    """In the forked child: become the server process and run it; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server may wait on its own children
        os.close(reply_fd)
        os.setsid()
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.umask(req["umask"])
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        from datasite.server import main

        main(req["args"])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # pylint: disable=broad-except
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """The launcher's loop: import once, then fork one server per request line."""
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed from here on goes to stderr, never into a reply
    import syft  # noqa: F401  (the seconds each server start would pay)
    from syft.server.routes import make_routes  # noqa: F401
    import uvicorn  # noqa: F401

    import datasite.server  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # servers are reaped as they exit
    reply.write(json.dumps({"ready": os.getpid()}) + "\n")
    reply.flush()
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as e:
            reply.write(json.dumps({"error": str(e)}) + "\n")
            reply.flush()
            continue
        if pid == 0:
            _child(req, reply.fileno())
        reply.write(json.dumps({"pid": pid}) + "\n")
        reply.flush()


class ForkedServer:
    """The Popen-like handle ``datasite.lifecycle.up`` polls: the launcher reaps its children,
    so a gone pid is an exited server."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode = None

    def poll(self):
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            self.returncode = -1
        return self.returncode


class Launcher:
    """The launcher process, started at the first server start of this pytest process."""

    def __init__(self, log: Path):
        self._log = log
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()  # one request/reply at a time (tests start sites in threads)

    def _start(self) -> subprocess.Popen:
        err = open(self._log, "ab")  # noqa: SIM115  (the child holds its own copy)
        proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                                cwd=str(Path(__file__).resolve().parents[1]))
        err.close()
        hello = proc.stdout.readline()
        if not hello:
            raise RuntimeError(f"the server launcher did not start; see {self._log}")
        return proc

    def spawn(self, args: list[str], log_file: Path):
        from datasite.config import PRIVATE_UMASK

        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            self._proc.stdin.write(json.dumps({
                "args": [str(a) for a in args], "log": str(log_file), "env": dict(os.environ),
                "cwd": str(Path.cwd()), "umask": PRIVATE_UMASK}) + "\n")
            self._proc.stdin.flush()
            answer = json.loads(self._proc.stdout.readline() or '{"error": "launcher gone"}')
        if "pid" not in answer:
            raise RuntimeError(f"the server launcher could not fork: {answer['error']}")
        return ForkedServer(answer["pid"])

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.stdin.close()  # its loop ends; servers still up stay up until their down()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    serve()
