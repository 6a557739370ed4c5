"""A datasite's home: configuration, identity and secrets on the owner's disk.

Layout of ``~/.dp-datasite/NAME`` (or ``--home`` / ``$DATASITE_HOME``)::

    config.json          0600; name, server id, port, database URL
    secrets/             0700; signing_key and root_password, each a 0600 file
    syft/                PySyft's SQLite database and blob files (low side: mock data only)
    private/             0700; real datasets, never given to the PySyft server
    results/             0700; job results waiting for the owner's release
    calibration.sqlite   0600; calibrated noise multipliers (a cache, safe to delete)
    server.pid, server.log

The whole home is the owner's alone: the home and ``~/.dp-datasite`` are 0700, and every
datasite process writes with umask 077 (``private_umask``); ``secure_home`` tightens a home
written by an older version. syft/syft.db holds PySyft's copy of the signing key and every
user's keys, so nothing under the home may be readable by another local user.
"""
from __future__ import annotations

import json
import os
import secrets
import stat
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.privacy.calibration_cache import ENV_VAR as CALIBRATION_CACHE_ENV  # stdlib only

# Every environment variable the datasite reads (compose/ sets each of them).
ENV_VARS = (
    "DATASITE_NAME",
    "DATASITE_HOME",
    "DATASITE_DB_URL",
    "DATASITE_PORT",
    "DATASITE_ROOT_PASSWORD_FILE",
    "DATASITE_KEY_FILE",
)

DEFAULT_PORT = 8080
ROOT_EMAIL = "owner@dp-datasite.org"
# What a datasite process masks off every file and folder it creates: nothing for group/other.
PRIVATE_UMASK = 0o077


class SiteError(RuntimeError):
    """An owner-side operation failed; the message says what to do."""


@dataclass
class SiteConfig:
    name: str
    server_uid: str
    port: int = DEFAULT_PORT
    db_url: str | None = None  # None: SQLite files under the home
    root_email: str = ROOT_EMAIL

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def default_home(name: str) -> Path:
    base = os.environ.get("DATASITE_HOME")
    if base:
        return Path(base)
    return Path.home() / ".dp-datasite" / name


def private_umask() -> int:
    """Set this process's umask to 077 (kept stricter if it already was); return the old one.

    Every datasite process calls it (the CLI, ``init_site``, whoever opens a home, the job
    runner) and passes it to the processes it spawns, so nothing it writes is readable by
    another local user even for the moment before a chmod.
    """
    old = os.umask(PRIVATE_UMASK)
    os.umask(old | PRIVATE_UMASK)
    return old


def _sites_base() -> Path | None:
    try:
        return (Path.home() / ".dp-datasite").absolute()
    except RuntimeError:  # no $HOME and no passwd entry: there is no default base
        return None


def secure_home(site: "SiteHome | Path") -> int:
    """Make a datasite home the owner's alone; return how many paths had to be tightened.

    Sets umask 077 for this process, then makes the home (and ``~/.dp-datasite`` when the home
    lies in it) 0700, every folder under it 0700 and every file owner-only (0644 -> 0600).
    Symlinks are neither followed nor changed. A home written by an older version (0755 folders,
    0644 files, syft/syft.db with the signing key among them) is fixed with one message on
    stderr; nothing is printed when nothing changed.
    """
    private_umask()
    root = Path(site.root if isinstance(site, SiteHome) else site).absolute()
    tightened = 0
    failed: list[str] = []

    def tighten(path: str, st: os.stat_result, is_dir: bool) -> None:
        nonlocal tightened
        if not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            return
        try:
            os.chmod(path, 0o700 if is_dir else stat.S_IMODE(st.st_mode) & 0o700)
            tightened += 1
        except FileNotFoundError:  # the running server replaced it meanwhile
            pass
        except OSError as e:
            failed.append(f"{path} ({e.strerror})")

    tops = [root]
    if root.parent == _sites_base():
        tops.insert(0, root.parent)
    for top in tops:
        tighten(str(top), top.stat(), True)
    if failed:
        raise SiteError(f"Cannot make the datasite home private: {'; '.join(failed)}. Other users "
                        f"of this machine could read its keys; run `chmod 700 {root}` as the "
                        "owner of the home (the user who ran `datasite init`).")
    def unreadable(e: OSError) -> None:
        failed.append(f"{e.filename} ({e.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=unreadable):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):  # never through a symlink
                tighten(path, st, stat.S_ISDIR(st.st_mode))
    if tightened:
        print(f"dp-datasite: tightened permissions of {tightened} files and folders under {root} "
              "(they were readable by other users); a datasite home is now 0700 and its files "
              "0600.", file=sys.stderr)
    if failed:  # the home itself is 0700 by now, so these are reachable by its owner only
        print(f"dp-datasite: could not make these private: {'; '.join(failed)}; run "
              f"`chmod -R go-rwx {root}` as the owner of those files.", file=sys.stderr)
    _SECURED.add(str(root))
    return tightened


_SECURED: set[str] = set()  # homes this process has secured already (``SiteHome.load``)


@dataclass
class SiteHome:
    """Paths inside one datasite's home directory."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config.json"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def key_file(self) -> Path:
        return self.secrets / "signing_key"

    @property
    def password_file(self) -> Path:
        return self.secrets / "root_password"

    @property
    def syft_dir(self) -> Path:
        return self.root / "syft"

    @property
    def private(self) -> Path:
        return self.root / "private"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def calibration_cache(self) -> Path:
        return self.root / "calibration.sqlite"

    @property
    def pid_file(self) -> Path:
        return self.root / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def exists(self) -> bool:
        return self.config_file.exists()

    def load(self) -> SiteConfig:
        if not self.exists():
            raise SiteError(
                f"No datasite at {self.root}. Create it with `datasite init NAME` "
                "(or pass the right --home)."
            )
        if str(self.root.absolute()) not in _SECURED:  # once per process: whoever opens a home
            secure_home(self)
        # Pricing, `run` and the job subprocess inherit it, so a sigma is calibrated once per
        # request, not once per process (shared.privacy.calibration_cache). Kept if already set.
        os.environ.setdefault(CALIBRATION_CACHE_ENV, str(self.calibration_cache.absolute()))
        cfg = SiteConfig(**json.loads(self.config_file.read_text()))
        if os.environ.get("DATASITE_DB_URL"):
            cfg.db_url = os.environ["DATASITE_DB_URL"]
        if os.environ.get("DATASITE_PORT"):
            cfg.port = int(os.environ["DATASITE_PORT"])
        return cfg

    def save(self, cfg: SiteConfig) -> None:
        # 0600: a PostgreSQL URL may carry its password
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cfg.to_json())

    def signing_key_hex(self) -> str:
        return _read_secret(self.key_file)

    def root_password(self) -> str:
        return _read_secret(self.password_file)


def _read_secret(path: Path) -> str:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SiteError(f"Secret file {path} is missing; re-create the site with `datasite init`.")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SiteError(f"{path} is readable by other users; run `chmod 600 {path}`.")
    return path.read_text().strip()


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)


def _read_given_secret(path: Path, flag: str) -> str:
    if not path.exists():
        raise SiteError(f"{flag} {path}: no such file.")
    return path.read_text().strip()


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def init_site(
    name: str,
    home: Path | None = None,
    db_url: str | None = None,
    port: int = DEFAULT_PORT,
    root_password_file: Path | None = None,
    key_file: Path | None = None,
    exist_ok: bool = False,
) -> SiteHome:
    """Create a datasite's home: identity, signing key, root password, config."""
    from nacl.signing import SigningKey  # PyNaCl comes with syft; no syft import needed here
    from uuid import uuid4

    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SiteError(f"Invalid site name {name!r}: use letters, digits, '-' and '_'.")
    if db_url and not db_url.startswith(("postgresql://", "postgresql+psycopg2://", "sqlite://")):
        raise SiteError(f"--db must be a postgresql:// URL, got {db_url!r}.")
    site = SiteHome(Path(home) if home else default_home(name))
    if site.exists():
        if exist_ok:
            return site
        raise SiteError(f"A datasite already exists at {site.root}; pick another name or --home.")
    if key_file:
        key_hex = _read_given_secret(Path(key_file), "--key-file")
        if len(key_hex) != 64:
            raise SiteError(f"{key_file} must hold a hex-encoded 32-byte ed25519 seed.")
    else:
        key_hex = SigningKey.generate().encode().hex()
    if root_password_file:
        password = _read_given_secret(Path(root_password_file), "--root-password-file")
        if len(password) < 12 or password == "changethis":
            raise SiteError("The root password must have at least 12 characters.")
    else:
        password = secrets.token_urlsafe(24)
    private_umask()  # also makes the parents mkdir creates (~/.dp-datasite) 0700
    site.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    secure_home(site)  # the folder may have existed (a volume's mount point, an empty dir)
    for d in (site.secrets, site.private, site.results, site.syft_dir):
        _private_dir(d)
    _write_secret(site.key_file, key_hex)
    _write_secret(site.password_file, password)
    site.save(SiteConfig(name=name, server_uid=uuid4().hex, port=port, db_url=db_url))
    return site


def open_site(name: str, home: Path | None = None) -> SiteHome:
    site = SiteHome(Path(home) if home else default_home(name))
    cfg = site.load()
    if cfg.name != name:
        raise SiteError(f"The datasite at {site.root} is named {cfg.name!r}, not {name!r}.")
    return site
