"""Start, stop and probe a datasite's HTTP server process."""
from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request

from .config import SiteError, SiteHome, secure_home
from .launch import spawn_module


def free_port() -> int:
    """A TCP port nobody listens on right now (for demos and tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url_for(port: int, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}"


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/metadata", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def running_pid(site: SiteHome) -> int | None:
    try:
        pid = int(site.pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)  # a dead child of ours is a zombie until reaped
    except ChildProcessError:
        reaped = 0
    try:
        if reaped:
            raise ProcessLookupError
        os.kill(pid, 0)
    except ProcessLookupError:
        site.pid_file.unlink(missing_ok=True)
        return None
    return pid


def up(site: SiteHome, port: int | None = None, host: str = "127.0.0.1",
       foreground: bool = False, timeout: float = 180.0) -> str:
    """Start the server (detached unless ``foreground``); return its URL once it answers."""
    cfg = site.load()
    secure_home(site)  # a home from an older version (0755/0644) is fixed before the server runs
    port = port or cfg.port
    if port != cfg.port:
        cfg.port = port
        site.save(cfg)
    url = url_for(port)
    if running_pid(site):
        if is_healthy(url):
            return url
        raise SiteError(f"{cfg.name} has a server process but it does not answer on {url}; "
                        f"run `datasite down {cfg.name}` and start it again.")
    if is_healthy(url):
        raise SiteError(f"Port {port} is already used by another server; choose --port.")
    args = ["--home", str(site.root), "--host", host, "--port", str(port)]
    if foreground:
        os.execv(sys.executable, [sys.executable, "-m", "datasite.server", *args])
    proc = spawn_module("datasite.server", args, site.log_file)
    site.pid_file.write_text(f"{proc.pid} {port}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            site.pid_file.unlink(missing_ok=True)
            tail = site.log_file.read_text(errors="replace")[-2000:]
            raise SiteError(f"The datasite server exited during start-up; log {site.log_file}:\n{tail}")
        if is_healthy(url):
            return url
        time.sleep(0.1)  # a start takes seconds; answer as soon as it is up
    down(site)
    raise SiteError(f"The datasite did not answer on {url} within {timeout:.0f}s; see {site.log_file}.")


def down(site: SiteHome, timeout: float = 20.0) -> bool:
    """Stop the server; return False if it was not running."""
    pid = running_pid(site)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            # reap if it is our child (tests start servers from the same process)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    site.pid_file.unlink(missing_ok=True)
    return True
