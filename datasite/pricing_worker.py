"""Pricing a researcher's spec in a child process with a memory cap and a deadline.

The spec bounds (``shared.jobs.bounds``) keep pricing to seconds, but pricing runs before the
owner has looked at anything, on the owner's machine, through third-party numerics (PLD FFTs):
this is the second wall. ``price_bounded`` sends the spec to a pricing server (``python -m
datasite.pricing_worker``, started once, with torch and the accountants imported) which forks
one child per spec; the child caps its address space (``RLIMIT_AS``) and CPU time and runs
``shared.privacy.pricing.planned_event``; the server kills it at the deadline. The owner's process never
forks (it has threads) and pays no per-call import.

    from datasite.pricing_worker import price_bounded
    event_json, record_events = price_bounded(spec, meta.to_json(), timeout_s=30, memory_mb=2048)
"""
from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

from shared.jobs import SpecError
from shared.privacy.accounting import AccountingError, remember_epsilon

from .job_process import keep_job_epsilons
from .launch import LAUNCHER_ENV, Launched, start_server

# How long the server may take to start and import the pricing modules (first call only).
STARTUP_TIMEOUT_S = 300.0
# Modules every pricing needs, imported once by the server (never per call).
_PRELOAD = ("shared.privacy.pricing", "shared.training", "shared.privacy.accounting",
            "shared.privacy.private_metrics", "shared.dpal.planner", "shared.stats",
            "shared.privacy.reporting", "shared.removal",
            "opendp.prelude")
_CACHE: "OrderedDict[tuple, tuple[str, list[str] | None]]" = OrderedDict()
_CACHE_SIZE = 64
_LEARNED = 64  # epsilons a pricing child hands back to its server, at most
_LOCK = threading.Lock()  # one request at a time on the server's pipe
_SERVER: subprocess.Popen | Launched | None = None
# Test-only: the child first allocates this many MiB (no spec the bounds allow needs enough
# memory to show the cap working). Nothing outside tests sets it.
_ALLOCATE_MB_FOR_TESTS = 0


class PricingError(ValueError):
    """A spec could not be priced within the limits; the message says what happened."""


class PricingTimeout(PricingError):
    """Pricing ran past its deadline and was killed."""


class PricingMemoryError(PricingError):
    """Pricing needed more memory than allowed and was stopped."""


class PricingSpecError(PricingError, SpecError):
    """The spec is not valid for the dataset (also a ``SpecError``)."""


class PricingAccountingError(PricingError, AccountingError):
    """The spec's privacy target cannot be met (also an ``AccountingError``)."""


# -- the owner's side --------------------------------------------------------------------------
def price_bounded(spec: dict, meta_json: str, timeout_s: float = 30.0,
                  memory_mb: int = 2048, delta: float | None = None
                  ) -> tuple[str, list[str] | None]:
    """``(event_json, record_events)``: the JSON of ``shared.privacy.pricing.planned_event(spec, meta)``
    and ``shared.privacy.pricing.record_events(spec, meta)`` (None: every record gets the planned
    event), computed in a child process that is killed after ``timeout_s`` seconds of wall time
    and may allocate ``memory_mb`` MiB of address space beyond the preloaded modules it starts
    with.

    Every failure is a :class:`PricingError`: :class:`PricingTimeout`,
    :class:`PricingMemoryError`, :class:`PricingSpecError` (also a ``SpecError``: the spec is
    invalid), :class:`PricingAccountingError` (also an ``AccountingError``: the target cannot
    be met), or a plain :class:`PricingError` (a crash). Successful prices are cached per
    (spec, metadata).
    The child may also reuse free heap the server already holds, so the cap stops large
    allocations (a PLD of gigabytes), not the last few megabytes.
    The first call starts the server (imports torch once: seconds, not counted in
    ``timeout_s``); :func:`warm_up` does that ahead of time. ``delta`` (the dataset's): the
    child also computes the event's epsilon there, as the ledger would, and this process keeps
    it (``shared.privacy.accounting.epsilon_of_json``): the reservation and the commit of the
    request then compose no PLD of their own."""
    if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s and math.isfinite(timeout_s)):
        raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
    if not (isinstance(memory_mb, int) and memory_mb >= 1):
        raise ValueError(f"memory_mb must be an integer >= 1, got {memory_mb!r}")
    key = (json.dumps(spec, sort_keys=True, default=repr), meta_json, _ALLOCATE_MB_FOR_TESTS)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        request = {"spec": spec, "meta_json": meta_json, "timeout_s": float(timeout_s),
                   "memory_mb": memory_mb, "allocate_mb": int(_ALLOCATE_MB_FOR_TESTS),
                   "delta": delta}
        # the server enforces timeout_s; this outer wait only catches a wedged server
        reply = _ask(request, timeout_s + 30.0)
        priced = _result(reply, timeout_s, memory_mb)
        if reply.get("epsilon") is not None:
            remember_epsilon(priced[0], delta, reply["epsilon"])
        # the job this prices checks the same cached sigmas when it runs: give it these
        keep_job_epsilons(reply.get("learned") or [])
        _CACHE[key] = priced
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return priced


def warm_up() -> None:
    """Start the pricing server now (it imports torch and the accountants: seconds), so that
    the first review does not wait for it."""
    with _LOCK:
        _server()


def shutdown() -> None:
    """Stop the pricing server (it also exits on its own when this process does)."""
    global _SERVER
    with _LOCK:
        if _SERVER is not None:
            _stop(_SERVER)
            _SERVER = None


def _server() -> subprocess.Popen | Launched:
    global _SERVER
    if _SERVER is not None and _SERVER.poll() is None:
        return _SERVER
    launcher = os.environ.get(LAUNCHER_ENV)
    if launcher:
        proc = _launched_server(launcher)
    else:
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen([sys.executable, "-m", "datasite.pricing_worker"], env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, close_fds=True)
    if _read_line(proc, STARTUP_TIMEOUT_S) != {"ready": True}:
        _stop(proc)
        raise PricingError("the pricing server did not start (run `python -m "
                           "datasite.pricing_worker` to see why)")
    _SERVER = proc
    return proc


def _launched_server(launcher: str) -> Launched:
    """The pricing server forked from the warm launcher (``datasite.launch``), with pipes
    like a ``Popen``'s: it exits when this process closes its stdin, as the fresh one does."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        proc = start_server(launcher, __name__, [in_r, out_w, null], list(_PRELOAD))
    except BaseException:
        os.close(in_w)
        os.close(out_r)
        raise
    finally:
        for fd in (in_r, out_w, null):
            os.close(fd)
    proc.stdin, proc.stdout = os.fdopen(in_w, "wb"), os.fdopen(out_r, "rb")
    return proc


def _stop(proc: subprocess.Popen | Launched) -> None:
    try:
        proc.kill()
        proc.wait(5)
    except Exception:
        pass
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def _read_line(proc: subprocess.Popen | Launched, timeout_s: float) -> dict | None:
    """The server's next JSON line, or None if none came within ``timeout_s`` (or it died)."""
    fd = proc.stdout.fileno()
    ready, _, _ = select.select([fd], [], [], timeout_s)
    if not ready:
        return None
    line = proc.stdout.readline()
    return json.loads(line) if line else None


def _ask(request: dict, timeout_s: float) -> dict:
    global _SERVER
    proc = _server()
    try:
        proc.stdin.write((json.dumps(request) + "\n").encode())
        proc.stdin.flush()
        reply = _read_line(proc, timeout_s)
    except (OSError, ValueError):
        reply = None
    if reply is None:  # dead or wedged: start a fresh one next time
        _stop(proc)
        _SERVER = None
        raise PricingError("the pricing server stopped answering; try again")
    return reply


def _result(reply: dict, timeout_s: float, memory_mb: int) -> tuple[str, list[str] | None]:
    kind = reply.get("kind")
    if kind == "ok":
        return reply["event"], reply["record_events"]
    if kind == "timeout":
        raise PricingTimeout(
            f"pricing this spec took longer than {timeout_s:g} s and was stopped: it is too "
            "expensive to price here. Deny the request (ask for fewer steps, a larger batch or "
            "a smaller epsilon), or price it with a longer timeout.")
    if kind == "memory":
        raise PricingMemoryError(
            f"pricing this spec needed more than {memory_mb} MiB and was stopped: deny the "
            "request (ask for a smaller epsilon or fewer steps), or price it with a larger "
            "memory_mb.")
    if kind == "error":
        if reply["type"] == "SpecError":
            raise PricingSpecError(reply["message"])
        if reply["type"] == "AccountingError":
            raise PricingAccountingError(reply["message"])
        raise PricingError(f"pricing this spec failed: {reply['type']}: {reply['message']}")
    raise PricingError(f"pricing this spec crashed ({reply.get('detail', 'no detail')}), "
                       f"most likely out of memory (limit {memory_mb} MiB): deny the request, "
                       "or price it with a larger memory_mb")


# -- the server --------------------------------------------------------------------------------
def _address_space_bytes() -> int:
    """This process's virtual size (VmSize): the base the memory cap is added to."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _price_in_child(request: dict, out_fd: int) -> None:
    """In the forked child: cap memory and CPU, price, write one JSON reply, exit."""
    import resource

    try:
        limit = _address_space_bytes() + int(request["memory_mb"]) * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        # a backstop to the server's kill (should the server itself be stuck)
        cpu = int(math.ceil(2 * request["timeout_s"])) + 5
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        if request.get("allocate_mb"):
            ballast = bytearray(int(request["allocate_mb"]) * 2**20)  # noqa: F841
        from shared.privacy.accounting import epsilon_of_json, event_to_json, kept_keys, kept_since
        from shared.data import DatasetMeta
        from shared.privacy.pricing import planned_event, record_events

        mark = kept_keys()
        meta = DatasetMeta.from_json(request["meta_json"])
        event_json = event_to_json(planned_event(request["spec"], meta))
        reply = {"kind": "ok", "event": event_json,
                 "record_events": record_events(request["spec"], meta)}
        if request.get("delta") is not None:  # the ledger's number, while the PLDs are warm
            try:
                reply["epsilon"] = epsilon_of_json(event_json, request["delta"])
            except AccountingError:  # the ledger says why, with its own message
                pass
        # what this child computed, for the server to keep: the next child forked from it
        # (the same job again, with another seed) checks its cached sigma without a PLD
        reply["learned"] = kept_since(mark, _LEARNED)
    except MemoryError:
        reply = {"kind": "memory"}
    except Exception as e:
        reply = {"kind": "error", "type": type(e).__name__, "message": str(e)[:4000]}
    data = (json.dumps(reply) + "\n").encode()
    while data:
        data = data[os.write(out_fd, data):]


def _serve_one(request: dict) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            os.close(r)
            _price_in_child(request, w)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + float(request["timeout_s"])
    chunks, timed_out = [], False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], left)
        if ready:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if timed_out or (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU):
        return {"kind": "timeout"}
    text = b"".join(chunks).decode(errors="replace").strip()
    try:
        reply = json.loads(text)
    except ValueError:
        reply = None
    if isinstance(reply, dict):
        for event_json, delta, eps in reply.get("learned") or []:
            remember_epsilon(event_json, delta, eps)
        return reply
    how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
           else f"exit code {os.WEXITSTATUS(status)}")
    return {"kind": "crash", "detail": how}


def serve() -> None:
    """The pricing server: preload, then one JSON request per stdin line, one JSON reply per
    line on the original stdout (everything else printed goes to stderr)."""
    import importlib

    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # library chatter must not corrupt the protocol
    for name in _PRELOAD:
        importlib.import_module(name)
    proto.write(json.dumps({"ready": True}) + "\n")
    proto.flush()
    for line in sys.stdin:
        try:
            reply = _serve_one(json.loads(line))
        except Exception as e:  # a malformed request: answer, keep serving
            reply = {"kind": "error", "type": type(e).__name__, "message": str(e)[:4000]}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


def serve_launched(fds: list[int], preload: list[str]) -> None:
    """:func:`serve` in a process forked from the warm launcher
    (:func:`datasite.launch.start_server`), which imported ``preload`` already, with its own
    environment: the site's job kinds (``DP_DATASITE_JOB_MODULES``) are read again from this
    one's, as a fresh server would (a spec of such a kind could not be priced otherwise)."""
    from shared.jobs import load_job_modules

    del fds, preload
    load_job_modules()
    sys.stdin = open(0, closefd=False)  # noqa: SIM115  (the launcher's own was another file)
    serve()


if __name__ == "__main__":
    serve()
