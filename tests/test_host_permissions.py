"""A second local user on the data owner's machine can read nothing in a datasite home.

syft/syft.db holds the server's signing key and every researcher's key (PySyft keeps its own
copy; reading it let a local user log in as the owner), state.db the ledger, private/ the real
records. The attacker is uid 65534 (``nobody``) with no supplementary groups, run through
``subprocess.run(user=..., group=..., extra_groups=[])``; that needs root, which these tests run
as. Without root only the mode-bit checks (which always run) stand in for the attack.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from datasite import config, lifecycle
from datasite.config import SiteHome, init_site
from datasite.owner import OwnerSite
from researcher import jobs

SECOND_USER = 65534  # nobody
CAN_SWITCH_USER = os.geteuid() == 0

# The attacker: stdlib only, so a system python the second user can execute will do. It gets an
# open handle on the folder that holds the datasite's folders and works relative to it, as if
# every folder above were open to it (a 0755 /home/USER is common). Opening pytest's 0700 tmp
# root to others instead would race: every pytest start resets it to 0700.
ATTACK = r"""
import json, os, sys
top = int(sys.argv[1])
home, entry, targets = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
out = {}
try:  # control: we get as far as the datasite's folders, so any refusal is theirs
    os.stat(entry, dir_fd=top)
    out["reach"] = "ok"
except OSError as e:
    out["reach"] = type(e).__name__
for p in targets:
    try:
        with os.fdopen(os.open(p, os.O_RDONLY, dir_fd=top), "rb") as f:
            out[p] = "read %d bytes" % len(f.read())
    except OSError as e:
        out[p] = type(e).__name__
try:
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY, dir_fd=top)
    try:
        out["list"] = "listed %s" % sorted(os.listdir(fd))
    finally:
        os.close(fd)
except OSError as e:
    out["list"] = type(e).__name__
print(json.dumps(out))
"""


def _as_second_user(cmd: list[str], pass_fds=()) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, user=SECOND_USER, group=SECOND_USER, extra_groups=[], cwd="/",
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, capture_output=True,
                          text=True, timeout=60, pass_fds=pass_fds)


def _attacker_python() -> str:
    for exe in (sys.executable, "/usr/bin/python3", shutil.which("python3", path=os.defpath)):
        try:
            if exe and _as_second_user([exe, "-I", "-c", "pass"]).returncode == 0:
                return exe
        except PermissionError:  # e.g. a venv inside /root
            continue
    pytest.fail(f"uid {SECOND_USER} can execute no python (tried {sys.executable} and "
                "/usr/bin/python3); install python3 system-wide to run the attack")


def _attack_as_second_local_user(home: Path, targets: list[Path], outside: Path) -> dict:
    """What uid 65534 gets trying to read each of ``targets`` and to list ``home`` (keys: paths
    relative to ``outside``, the folder holding the datasite's outermost folder)."""
    rel = lambda p: str(p.relative_to(outside))  # noqa: E731
    mode = stat.S_IMODE(outside.stat().st_mode)
    outside.chmod(mode | stat.S_IXOTH)  # pytest makes it 0700; it is not the datasite's
    top = os.open(outside, os.O_RDONLY | os.O_DIRECTORY)
    try:
        r = _as_second_user([_attacker_python(), "-I", "-c", ATTACK, str(top), rel(home),
                             home.relative_to(outside).parts[0],
                             json.dumps([rel(t) for t in targets])], pass_fds=(top,))
    finally:
        os.close(top)
        outside.chmod(mode)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out.pop("reach") == "ok", "test setup: the second user cannot reach the home at all"
    return out


def _refused(targets: list[Path], outside: Path) -> dict:
    """The attack's result when every read and the listing are refused."""
    return {**{str(t.relative_to(outside)): "PermissionError" for t in targets},
            "list": "PermissionError"}


def _loose_paths(home: Path) -> list[str]:
    """Every path under ``home`` (itself included) that grants anything to group or others."""
    loose = []
    for dirpath, dirnames, filenames in os.walk(home):
        for p in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                loose.append(f"{oct(stat.S_IMODE(st.st_mode))} {p}")
    return loose


def _files(home: Path) -> list[Path]:
    return sorted(p for p in home.rglob("*") if p.is_file() and not p.is_symlink())


def _make_old(base: Path) -> None:
    """Loosen homes by hand the way older versions left them: folders 0755 and files 0644,
    except secrets/, private/, results/ (0700) and config.json, secrets/* (0600)."""
    for dirpath, dirnames, filenames in os.walk(base):
        d = Path(dirpath)
        os.chmod(d, 0o700 if d.name in ("secrets", "private", "results") else 0o755)
        for n in filenames:
            if not (d / n).is_symlink():
                os.chmod(d / n, 0o600 if d.name == "secrets" or n == "config.json" else 0o644)


# -- a live site --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.backends("sqlite")  # the backend that keeps syft.db
def test_second_user_can_read_nothing_in_a_live_home(live_site):
    home = live_site.home.root
    # a result waiting for release, written by the job runner (as the owner runs it) started
    # with the usual umask 022: the runner makes its own files private
    spec = jobs.DPSGD(dataset="breast_cancer", label="diagnosis", epsilon=1.0, delta=1e-5,
                      epochs=1, batch_size=64).spec.to_dict()
    result = live_site.home.results / "attack-test.pkl"
    r = subprocess.run([sys.executable, "-m", "datasite.runner", json.dumps(spec),
                        str(live_site.home.private / "breast_cancer"), str(result)],
                       umask=0o022, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    targets = _files(home)
    names = {str(p.relative_to(home)) for p in targets}
    for must in ("syft/syft.db", "state.db", "server.log", "config.json", "secrets/signing_key",
                 "secrets/root_password", "results/attack-test.pkl"):
        assert must in names, f"{must} missing: the test would not cover it"
    assert any(n.startswith("syft/blob/") for n in names)
    assert any(n.startswith("private/breast_cancer/") for n in names)

    assert _loose_paths(home) == []  # always: nothing grants group/other any access
    if CAN_SWITCH_USER:
        out = _attack_as_second_local_user(home, targets, outside=home.parent)
        assert out == _refused(targets, home.parent)


# -- a home written by an older version ---------------------------------------------------------
def _old_home(tmp_path: Path, monkeypatch, name: str = "old") -> OwnerSite:
    """A site in ~/.dp-datasite/NAME with the files a server run leaves, loosened to 0755/0644."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DATASITE_HOME", raising=False)
    site = OwnerSite(init_site(name))
    root = site.home.root
    assert root == tmp_path / ".dp-datasite" / name
    assert _loose_paths(tmp_path / ".dp-datasite") == []  # init itself writes a private home
    key = root / "secrets" / "signing_key"
    # what PySyft leaves: its own copy of the signing key in syft.db, blobs, the server log
    (root / "syft" / "syft.db").write_text(f"server signing key {key.read_text()}")
    (root / "syft" / "blob").mkdir()
    (root / "syft" / "blob" / "0a1b").write_bytes(b"mock data")
    (root / "server.log").write_text("dp-datasite serving\n")
    (root / "private" / "records.csv").write_text("patient,diagnosis\n1,M\n")
    # links out of the home: tightening must not follow them
    (tmp_path / "outside.txt").write_text("not the datasite's")
    (tmp_path / "outside").mkdir()
    os.chmod(tmp_path / "outside.txt", 0o644)
    os.chmod(tmp_path / "outside", 0o755)
    (root / "syft" / "link.txt").symlink_to(tmp_path / "outside.txt")
    (root / "private" / "linkdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    _make_old(tmp_path / ".dp-datasite")
    return site


def _assert_fixed(tmp_path: Path, root: Path, err: str) -> None:
    assert _loose_paths(tmp_path / ".dp-datasite") == []
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "syft" / "syft.db").stat().st_mode) == 0o600
    assert err.count("tightened permissions of") == 1
    assert str(root) in err and "readable by other users" in err
    # symlinks were not followed out of the home
    assert stat.S_IMODE(os.stat(tmp_path / "outside.txt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "outside").st_mode) == 0o755


def test_old_home_is_readable_then_tightened_when_opened(tmp_path, monkeypatch, capsys):
    site = _old_home(tmp_path, monkeypatch)
    root = site.home.root
    targets = _files(root)
    assert len(_loose_paths(tmp_path / ".dp-datasite")) > len(targets)  # dirs and files
    if CAN_SWITCH_USER:  # the attack works on an old home: it reads the key PySyft stores
        before = _attack_as_second_local_user(root, targets, outside=tmp_path)
        for readable in ("syft/syft.db", "syft/blob/0a1b", "state.db", "server.log"):
            assert before[f".dp-datasite/old/{readable}"].startswith("read"), readable
        assert before[".dp-datasite/old/secrets/signing_key"] == "PermissionError"  # was 0600
        assert before["list"].startswith("listed")
    capsys.readouterr()

    monkeypatch.setattr(config, "_SECURED", set())  # a new process, after the upgrade
    OwnerSite.open("old")
    _assert_fixed(tmp_path, root, capsys.readouterr().err)
    if CAN_SWITCH_USER:
        after = _attack_as_second_local_user(root, targets, outside=tmp_path)
        assert after == _refused(targets, tmp_path)
    # a private home is left alone, silently
    assert config.secure_home(site.home) == 0
    assert capsys.readouterr().err == ""


def test_old_home_is_tightened_by_datasite_up(tmp_path, monkeypatch, capsys):
    site = _old_home(tmp_path, monkeypatch)
    root = site.home.root
    capsys.readouterr()
    # `up` checks the home before anything else; a port another server holds stops it right
    # after, which keeps this test from starting a PySyft server
    busy = lifecycle.free_port()
    import http.server
    import threading

    class Metadata(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", busy), Metadata)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(config.SiteError, match="already used"):
            lifecycle.up(SiteHome(root), port=busy)
    finally:
        srv.shutdown()
        srv.server_close()
    _assert_fixed(tmp_path, root, capsys.readouterr().err)


def test_home_that_cannot_be_made_private_is_refused(tmp_path, monkeypatch):
    site = init_site("h", home=tmp_path / "h")
    os.chmod(site.root, 0o755)

    def refuse(path, mode):
        raise PermissionError(1, "Operation not permitted", path)

    monkeypatch.setattr(config.os, "chmod", refuse)
    with pytest.raises(config.SiteError, match=r"chmod 700 .*owner of the home"):
        config.secure_home(site)
