"""The notebook tests' kernel: ``python -m ipykernel_launcher``, forked from the warm launcher.

A notebook kernel's first cells import syft, torch and the product (5-8 s of CPU per kernel on
the test host, five kernels per run). jupyter_client starts this script as the kernel process;
it asks the warm launcher (tests/server_zygote.py, named by ``DPDS_WARM_LAUNCHER``) to fork a
kernel with those modules imported, passing this process's standard streams, arguments,
environment and working directory; the cells then run as in a fresh kernel. This process
stands in for the kernel toward jupyter_client: it forwards the signals it gets (interrupt,
terminate) and exits when the kernel does; the kernel exits when this process dies (even by
SIGKILL), so nothing outlives the notebook. Without a launcher (``DPDS_TEST_FRESH_SERVERS=1``)
it becomes the stock kernel (exec).
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)


def main(argv: list[str]) -> int:
    launcher = os.environ.get("DPDS_WARM_LAUNCHER")
    if not launcher:
        os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *argv])
    cwd = os.getcwd()
    path = [cwd, *sys.path[1:]]  # the notebook's folder first, where this script's was
    req = {"kernel": argv, "env": dict(os.environ), "cwd": cwd, "umask": _umask(),
           "sys_path": path, "watch": os.getpid()}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(launcher)
        socket.send_fds(conn, [json.dumps(req).encode() + b"\n"], [0, 1, 2])
        reply = json.loads(conn.makefile().readline())
    if "pid" not in reply:
        print(f"kernel_shim: the warm launcher refused: {reply}", file=sys.stderr)
        return 1
    pid = reply["pid"]
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f: _forward(pid, s))
    # not our child, so no wait(): its pidfd turns readable when it is gone (select resumes
    # after each forwarded signal)
    select.select([os.pidfd_open(pid)], [], [])
    return 0


def _forward(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
