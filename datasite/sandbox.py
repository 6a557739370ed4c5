"""Running untrusted code (custom syft functions) on the owner's machine, isolated.

:func:`run_sandboxed` runs ``python -m shared.custom.child`` under bubblewrap (``bwrap``):

* namespaces: a new mount namespace whose root is an empty tmpfs with, read-only, ``/usr`` (and
  the ``/bin``, ``/lib`` links), the site's Python (``sys.prefix`` and ``sys.base_prefix``) and
  the ``shared`` package; the job directory (the function's code, a copy of the ONE data file it
  was granted, its output directory) read-write at ``/job``; a private ``/tmp`` (tmpfs), a
  fresh ``/proc`` and a minimal ``/dev``. Nothing else of the host's files exists inside: not
  the site home, its keys, its database, other datasets, ``/etc`` or ``/home``. New network
  (only a loopback that is down: no connection reaches anything), pid, ipc and uts namespaces;
  an empty environment; ``--die-with-parent`` and ``--new-session``.
* identity: run by root, the process drops to uid/gid 65534 (nobody) with no capabilities, an
  empty bounding set and ``no_new_privs`` (``setpriv``), so even a file that were bound in
  would be read only by its world permissions; run by another owner, bwrap maps that user into
  a user namespace with all capabilities dropped.
* limits (setrlimit, inherited): address space (memory), CPU seconds, file size (output),
  process count (fork bombs: counted for uid 65534 when run by root), no core dumps; and a
  wall-time limit after which the whole process group (and so the pid namespace) is killed.

What it does not isolate: the kernel (a kernel exploit escapes any namespace sandbox; use a VM
for adversaries of that class), CPU caches and timing side channels, and the GPU (none is
passed in). The job's data file is readable inside by design.
"""
from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import shared

SANDBOX_UID = 65534  # nobody: what the sandboxed process runs as when the owner runs as root
ENABLE_HINT = ("Custom code runs only in a sandbox, and none works on this host: install "
               "bubblewrap (`apt-get install bubblewrap`; Debian/Ubuntu package `bubblewrap`) "
               "and allow user namespaces (`sysctl kernel.unprivileged_userns_clone=1` where "
               "it is 0), or, if you accept running researcher code with only resource limits "
               "and no isolation, pass --unsandboxed (recorded in the audit log).")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed run."""

    wall_s: float = 600.0
    memory_mb: int = 8192
    nproc: int = 256
    output_mb: int = 512

    @property
    def cpu_s(self) -> int:
        return int(self.wall_s) + 5  # a hard backstop; the wall-time kill comes first


@dataclass
class Outcome:
    """How a sandboxed run ended: ``ok``, or ``reason`` (what the owner is told)."""

    ok: bool
    reason: str
    stderr_tail: str = ""
    sandboxed: bool = True


def _probe(bwrap: str) -> str | None:
    """None if bwrap can build our sandbox here, else why not."""
    try:
        cmd = [bwrap, *_isolation_args(as_root=os.geteuid() == 0), "--", "/bin/true"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{bwrap} could not start: {e}"
    if r.returncode != 0:
        return f"{bwrap} failed here: {r.stderr.strip()[-300:]}"
    return None


@functools.lru_cache(maxsize=1)
def _availability() -> tuple[str | None, str]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None, "bubblewrap (bwrap) is not installed"
    why = _probe(bwrap)
    return (bwrap, "bubblewrap") if why is None else (None, why)


def available() -> tuple[bool, str]:
    """(True, "bubblewrap") when custom code can be sandboxed here, else (False, why not)."""
    path, why = _availability()
    return path is not None, why


def _isolation_args(as_root: bool) -> list[str]:
    """bwrap's namespace and filesystem arguments (the job-specific binds come after)."""
    args = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv",
            "--ro-bind", "/usr", "/usr"]
    if not as_root:  # an unprivileged owner: a user namespace, no capabilities inside
        args[:0] = ["--unshare-user", "--cap-drop", "ALL"]
    for link in ("bin", "sbin", "lib", "lib32", "lib64"):
        p = Path("/") / link
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            args += ["--ro-bind", str(p), str(p)]
    # explicit modes: the owner's process runs under a private umask (0077), which bwrap
    # would apply to the directories it creates, leaving them unreadable to the sandbox's uid
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp",
             "--perms", "1777", "--tmpfs", "/dev/shm"]
    return args


def _dirs_for(dest: str) -> list[str]:
    """``--dir`` (mode 0755) for each missing ancestor of a bind destination."""
    out = []
    parts = Path(dest).parts
    for i in range(2, len(parts)):
        out += ["--perms", "0755", "--dir", str(Path(*parts[:i]))]
    return out


def _python_binds() -> list[str]:
    """The site's Python environment, read-only at its own paths, and ``shared``."""
    out = []
    for prefix in dict.fromkeys([sys.base_prefix, sys.prefix]):
        if not prefix.startswith("/usr"):
            out += [*_dirs_for(prefix), "--ro-bind", prefix, prefix]
    out += [*_dirs_for("/opt/dpds/shared"),
            "--ro-bind", str(Path(shared.__file__).resolve().parent), "/opt/dpds/shared"]
    return out


def _limit(limits: Limits, nproc: bool = True):
    def cap(which: int, soft: int, hard: int) -> None:
        """Set a limit, never above the host's hard limit (raising it would fail)."""
        host = resource.getrlimit(which)[1]
        if host != resource.RLIM_INFINITY:
            soft, hard = min(soft, host), min(hard, host)
        resource.setrlimit(which, (soft, hard))

    def apply() -> None:
        mem = limits.memory_mb * 2**20
        cap(resource.RLIMIT_AS, mem, mem)
        cap(resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 5)
        out = limits.output_mb * 2**20
        cap(resource.RLIMIT_FSIZE, out, out)
        cap(resource.RLIMIT_CORE, 0, 0)
        if nproc:
            cap(resource.RLIMIT_NPROC, limits.nproc, limits.nproc)
    return apply


def prepare_job_dir(job_dir: Path, code: str, data_file: Path, function: str,
                    asset_param: str, takes_handle: bool, sandboxed: bool) -> Path:
    """Lay out ``job_dir``: the code, a copy of the one data file the job may read, the job
    description and an empty output directory, owned by the sandbox's uid when root runs it."""
    job_dir.mkdir(parents=True, mode=0o700)
    (job_dir / "out").mkdir(mode=0o700)
    (job_dir / "code.py").write_text(code)
    data_name = "data" + "".join(Path(data_file).suffixes[-1:])
    shutil.copyfile(data_file, job_dir / data_name)
    root = Path("/job") if sandboxed else job_dir
    (job_dir / "job.json").write_text(json.dumps({
        "code_file": str(root / "code.py"), "data_file": str(root / data_name),
        "out_dir": str(root / "out"), "function": function, "asset_param": asset_param,
        "takes_handle": takes_handle}))
    if sandboxed and os.geteuid() == 0:
        for p in [job_dir, *job_dir.rglob("*")]:
            os.chown(p, SANDBOX_UID, SANDBOX_UID)
    return job_dir


def command(job_dir: Path, sandboxed: bool = True) -> list[str]:
    """The command that runs the job in ``job_dir`` (in the sandbox, or without one)."""
    child = ["-s", "-m", "shared.custom.child"]
    if not sandboxed:
        return [sys.executable, *child, str(job_dir / "job.json")]
    bwrap, why = _availability()
    if bwrap is None:
        raise RuntimeError(f"{why}. {ENABLE_HINT}")
    as_root = os.geteuid() == 0
    env = ["--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
           "--setenv", "PYTHONPATH", "/opt/dpds", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
           "--setenv", "MPLCONFIGDIR", "/tmp", "--setenv", "OMP_NUM_THREADS", "1"]
    cmd = [bwrap, *_isolation_args(as_root), *_python_binds(),
           "--bind", str(job_dir), "/job", *env, "--chdir", "/tmp", "--"]
    if as_root:  # drop to nobody, no capabilities at all, before any researcher code runs
        cmd += ["/usr/bin/setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    return cmd + [sys.executable, *child, "/job/job.json"]


def run_sandboxed(job_dir: Path, limits: Limits, sandboxed: bool = True,
                  on_start=None) -> Outcome:
    """Run the job laid out in ``job_dir`` under ``limits``; the outcome says why it failed."""
    cmd = command(job_dir, sandboxed)
    env = None
    if not sandboxed:  # no namespaces: at least an environment of our choosing
        env = {"PATH": "/usr/bin:/bin", "HOME": str(job_dir), "MPLCONFIGDIR": str(job_dir),
               "PYTHONPATH": str(Path(shared.__file__).resolve().parent.parent),
               "OMP_NUM_THREADS": "1"}  # as in the sandbox: one thread pool, not one per core
    errfile = tempfile.TemporaryFile(mode="w+b")
    # RLIMIT_NPROC counts the sandbox uid's processes (root itself is exempt from it)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=errfile, stderr=errfile,
                            env=env, start_new_session=True,
                            preexec_fn=_limit(limits, nproc=sandboxed or os.geteuid() != 0))
    if on_start is not None:
        on_start(proc.pid)
    timed_out = False
    try:
        code = proc.wait(timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill(proc)
        code = proc.wait()
    except BaseException:
        _kill(proc)
        proc.wait()
        raise
    _kill(proc)  # anything the job left behind in its process group
    errfile.seek(0)
    tail = errfile.read()[-4000:].decode("utf-8", "replace")
    return _outcome(job_dir / "out", code, timed_out, limits, tail, sandboxed)


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _outcome(out: Path, code: int, timed_out: bool, limits: Limits, tail: str,
             sandboxed: bool) -> Outcome:
    def fail(reason: str) -> Outcome:
        return Outcome(False, reason, tail, sandboxed)

    if timed_out:
        return fail(f"killed: ran past its wall-time limit of {limits.wall_s:g} s")
    if code in (-signal.SIGXCPU, -signal.SIGKILL) and not (out / "error.json").exists():
        return fail(f"killed by signal {-code}: CPU-time limit ({limits.cpu_s} s) or killed")
    if code == -signal.SIGXFSZ:
        return fail(f"killed: its output passed the {limits.output_mb} MB file-size limit")
    err = _read_json(out / "error.json")
    if code != 0 or err is not None:
        if err is None:
            last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
            return fail(f"the sandboxed process exited with status {code}"
                        + (f" ({last[-300:]})" if last else ""))
        kind, msg = err.get("type", "Error"), err.get("message", "")
        if kind == "MemoryError":
            return fail(f"MemoryError: passed its memory limit of {limits.memory_mb} MB")
        if (kind == "BlockingIOError" and "fork" in err.get("traceback", "")) or (
                kind == "RuntimeError" and "can't start new thread" in msg):
            return fail(f"{kind}: passed its limit of {limits.nproc} processes (RLIMIT_NPROC; "
                        f"fork refused): {msg}")
        return fail(f"{kind}: {msg}")
    if not (out / "output.json").exists():
        return fail("the sandboxed process wrote no output")
    return Outcome(True, "ok", tail, sandboxed)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
