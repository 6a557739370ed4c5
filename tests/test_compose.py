"""compose/: the two-site GPU deployment. No Docker engine runs here, so these tests check the
compose file's structure, the Dockerfile, and run the scripts (make-secrets.sh for real;
entrypoint.sh with a stand-in `datasite up` and the real `datasite init`)."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
DOCKERFILE = COMPOSE / "Dockerfile"
ENTRYPOINT = COMPOSE / "entrypoint.sh"
MAKE_SECRETS = COMPOSE / "make-secrets.sh"
SITES = {"hospital-a": "postgres-a", "hospital-b": "postgres-b"}
HOST_PORTS = {"hospital-a": 8081, "hospital-b": 8082}
SECRET_FILES = {"root_password": 32, "signing_key": 64, "db_password": 32}


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_of(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE list form
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def mounts(svc: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume entry, short or long syntax."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, dict):
            out.append((v.get("source", ""), v["target"]))
        else:
            parts = v.split(":")
            out.append((parts[0], parts[1]))
    return out


def secret_targets(svc: dict) -> dict[str, str]:
    """/run/secrets/<target> path -> top-level secret name, for each secret the service gets."""
    out = {}
    for s in svc.get("secrets", []):
        source = s if isinstance(s, str) else s["source"]
        target = source if isinstance(s, str) else s.get("target", source)
        path = target if target.startswith("/") else f"/run/secrets/{target}"
        out[path] = source
    return out


def run_make_secrets(out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = env if env is not None else dict(os.environ, PYTHON=sys.executable)
    return subprocess.run([str(MAKE_SECRETS), str(out), *args], env=env, check=True,
                          capture_output=True, text=True)


# -- compose file -----------------------------------------------------------------------------
def test_services_build_our_image_from_the_repo_root(spec):
    assert set(spec["services"]) == set(SITES) | set(SITES.values()) | \
        {f"{site}-worker" for site in SITES}
    for site in SITES:
        build = spec["services"][site]["build"]
        context = (COMPOSE / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        assert DOCKERFILE.exists()
    # one definition (YAML anchor) for both sites: same build, image and GPU reservation
    a, b = (spec["services"][s] for s in SITES)
    for key in ("build", "image", "deploy", "restart"):
        assert a[key] == b[key], key
    assert "<<: *datasite" in COMPOSE_FILE.read_text()


def test_each_site_has_gpu_workers_on_its_own_home_and_database(spec):
    services = spec["services"]
    for site in SITES:
        w, srv = services[f"{site}-worker"], services[site]
        assert w["command"][:3] == ["datasite", "workers", site] and "--gpus" in w["command"]
        assert w["network_mode"] == f"service:{site}"  # its db network; the server on localhost
        assert w["volumes"] == srv["volumes"] and w["image"] == srv["image"]
        assert secret_targets(w) == secret_targets(srv)
        assert env_of(w)["DATASITE_HOME"] == env_of(srv)["DATASITE_HOME"]
        assert "ports" not in w


def test_each_site_reserves_a_gpu(spec):
    for site in SITES:
        devices = spec["services"][site]["deploy"]["resources"]["reservations"]["devices"]
        gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
        assert gpus, f"{site}: no nvidia GPU reservation"
        assert all(d.get("count") in (1, "all") or d.get("device_ids") for d in gpus)


def test_each_site_waits_for_its_own_healthy_postgres(spec):
    services = spec["services"]
    for site, pg in SITES.items():
        deps = services[site]["depends_on"]
        assert deps[pg]["condition"] == "service_healthy"
        assert not set(deps) & (set(SITES.values()) - {pg}), f"{site} depends on another site's db"
        db = services[pg]
        assert str(db["image"]).startswith("postgres:16")
        test = db["healthcheck"]["test"]
        assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))


def test_each_site_reaches_only_its_own_database(spec):
    services, networks = spec["services"], spec["networks"]
    for site, pg in SITES.items():
        own = set(services[pg]["networks"])
        assert own & set(services[site]["networks"]), f"{site} cannot reach {pg}"
        assert all(networks[n].get("internal") for n in own), f"{pg} is on a non-internal network"
        assert "ports" not in services[pg]
        for other in SITES:
            if other != site:
                assert not own & set(services[other]["networks"]), f"{other} can reach {pg}"


def test_volumes_are_named_declared_and_not_shared(spec):
    declared = set(spec["volumes"])
    seen: list[str] = []
    for site, pg in SITES.items():
        svc, db = spec["services"][site], spec["services"][pg]
        for name, svc_ in ((site, svc), (pg, db)):
            for source, _ in mounts(svc_):
                assert source in declared, f"{name}: {source!r} is not a declared named volume"
                seen.append(source)
        home = env_of(svc)["DATASITE_HOME"]
        assert any(PurePosixPath(home).is_relative_to(t) for _, t in mounts(svc)), \
            f"{site}: DATASITE_HOME {home} is not on a volume"
        assert "/var/lib/postgresql/data" in [t for _, t in mounts(db)]
    assert len(seen) == len(set(seen)), "a volume is shared between services"


def test_secrets_come_from_files_under_compose_secrets(spec):
    top = spec["secrets"]
    for name, decl in top.items():
        path = (COMPOSE / decl["file"]).resolve()
        assert path.is_relative_to(COMPOSE / "secrets"), f"secret {name}: {decl['file']}"
    per_site: dict[str, set[str]] = {}
    for site, pg in SITES.items():
        svc, db = spec["services"][site], spec["services"][pg]
        env, db_env = env_of(svc), env_of(db)
        mounted, db_mounted = secret_targets(svc), secret_targets(db)
        for source in list(mounted.values()) + list(db_mounted.values()):
            assert source in top, f"{site}: secret {source} is not declared"
        for var in ("DATASITE_ROOT_PASSWORD_FILE", "DATASITE_KEY_FILE", "DATASITE_DB_PASSWORD_FILE"):
            assert env[var] in mounted, f"{site}: {var}={env[var]} is not a mounted secret"
        assert "POSTGRES_PASSWORD" not in db_env
        assert db_env["POSTGRES_PASSWORD_FILE"] in db_mounted
        # the datasite and its database share one password secret
        assert mounted[env["DATASITE_DB_PASSWORD_FILE"]] == db_mounted[db_env["POSTGRES_PASSWORD_FILE"]]
        assert db_env["POSTGRES_USER"] == env["DATASITE_DB_USER"]
        assert db_env["POSTGRES_DB"] == env["DATASITE_DB_NAME"]
        assert env["DATASITE_DB_HOST"] == pg
        per_site[site] = set(mounted.values()) | set(db_mounted.values())
    a, b = per_site.values()
    assert not a & b, "the two sites share a secret"


def test_secret_files_are_what_make_secrets_writes(spec, tmp_path):
    run_make_secrets(tmp_path)
    for name, decl in spec["secrets"].items():
        rel = (COMPOSE / decl["file"]).resolve().relative_to(COMPOSE / "secrets")
        assert (tmp_path / rel).is_file(), f"make-secrets.sh does not write {rel} ({name})"


def test_every_variable_the_datasite_reads_is_set(spec):
    from datasite.config import ENV_VARS

    entry = ENTRYPOINT.read_text()
    assigned = set(re.findall(r"^\s*(?:export\s+)?([A-Z_][A-Z0-9_]*)=", entry, re.M))
    for site in SITES:
        env = env_of(spec["services"][site])
        for var in ENV_VARS:
            assert var in env or var in assigned, f"{site}: {var} is not set"
        # every variable the entrypoint insists on (${VAR:?...}) is given by compose
        for var in re.findall(r"\$\{(\w+):\?", entry):
            assert var in env, f"{site}: entrypoint.sh needs {var}"


def test_ports_are_distinct_and_reach_the_datasite_port(spec):
    host_ports = []
    for site in SITES:
        svc = spec["services"][site]
        (port,) = svc["ports"]
        if isinstance(port, dict):
            published, target = int(port["published"]), int(port["target"])
        else:
            published, target = (int(p) for p in str(port).split(":")[-2:])
        assert published == HOST_PORTS[site]
        assert target == int(env_of(svc)["DATASITE_PORT"]) == 8080
        host_ports.append(published)
    assert len(set(host_ports)) == len(host_ports)


def test_no_plaintext_passwords_in_compose(spec):
    for path in COMPOSE.rglob("*"):
        if path.is_file() and "secrets" not in path.relative_to(COMPOSE).parts[:-1]:
            text = path.read_text(errors="replace").lower()
            assert "changethis" not in text, path
    for name, svc in spec["services"].items():
        for key, value in env_of(svc).items():
            if "PASSWORD" in key or key in ("DATASITE_DB_URL", "SERVER_PRIVATE_KEY"):
                assert key.endswith("_FILE"), f"{name}: {key} set in plain text"
            if value and "postgresql://" in value:
                assert "@" not in value.split("//", 1)[1].split("/")[0], f"{name}: {key} has credentials"


# -- Dockerfile -------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_base_user_healthcheck_entrypoint():
    ins = dockerfile_instructions()
    froms = [a for op, a in ins if op == "FROM"]
    assert froms and (froms[-1].startswith("python:3.11") or froms[-1].startswith("nvidia/cuda"))
    users = [a for op, a in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the container runs as root"
    (health,) = [a for op, a in ins if op == "HEALTHCHECK"]
    assert "http://127.0.0.1:" in health and "/api/v2/metadata" in health
    assert any(op == "RUN" and "pip install" in a and " ." in a for op, a in ins)
    (entry,) = [a for op, a in ins if op == "ENTRYPOINT"]
    (script,) = json.loads(entry)
    workdir = [a for op, a in ins if op == "WORKDIR"][0]
    repo_path = REPO / PurePosixPath(script).relative_to(workdir)
    assert repo_path == ENTRYPOINT and ENTRYPOINT.exists()
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    copies = [a.split() for op, a in ins if op == "COPY"]
    assert any(c[0] == "compose/entrypoint.sh" for c in copies)


def test_image_gets_every_package_and_no_secret():
    ins = dockerfile_instructions()
    sources = [src for op, a in ins if op == "COPY" for src in a.split()[:-1]
               if not src.startswith("--")]
    assert all(not s.startswith(("compose/secrets", ".venv", ".")) for s in sources), sources
    includes = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in includes:
        assert pattern.rstrip("*") in sources, f"package {pattern} is not copied into the image"
    # BuildKit's per-Dockerfile ignore file: everything out except what is copied
    ignore = (COMPOSE / "Dockerfile.dockerignore").read_text().split()
    assert "**" in ignore
    for s in sources:
        assert f"!{s}" in ignore or f"!{s.rstrip('/')}/" in ignore, s


# -- scripts ----------------------------------------------------------------------------------
@pytest.mark.parametrize("script", [ENTRYPOINT, MAKE_SECRETS], ids=lambda p: p.name)
def test_scripts_are_executable_bash(script):
    assert script.stat().st_mode & stat.S_IXUSR
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_secrets_are_git_ignored():
    lines = (COMPOSE / "secrets" / ".gitignore").read_text().split()
    assert lines == ["*", "!.gitignore"]
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("no git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "compose/secrets/hospital-a/root_password"],
                             cwd=REPO)
    assert ignored.returncode == 0
    kept = subprocess.run(["git", "check-ignore", "-q", "compose/secrets/.gitignore"], cwd=REPO)
    assert kept.returncode == 1


def check_secret_dir(d: Path) -> dict[str, str]:
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    values = {}
    assert sorted(p.name for p in d.iterdir()) == sorted(SECRET_FILES)
    for name, length in SECRET_FILES.items():
        f = d / name
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        values[name] = f.read_text()
        assert len(values[name]) == length, f"{f}: {len(values[name])} characters"
    assert values["root_password"].isalnum()
    assert re.fullmatch(r"[0-9a-f]{64}", values["signing_key"])
    assert re.fullmatch(r"[0-9a-f]{32}", values["db_password"])
    return values


def test_make_secrets_writes_private_files(tmp_path):
    from nacl.signing import SigningKey

    out = tmp_path / "secrets"
    run_make_secrets(out)
    values = {site: check_secret_dir(out / site) for site in SITES}
    for v in values.values():
        SigningKey(bytes.fromhex(v["signing_key"]))  # a valid ed25519 seed
    a, b = values.values()
    assert all(a[k] != b[k] for k in SECRET_FILES)
    # a second run keeps every existing secret
    run_make_secrets(out)
    assert {site: check_secret_dir(out / site) for site in SITES} == values
    # other site names
    run_make_secrets(tmp_path / "other", "clinic-c")
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["clinic-c"]


def test_make_secrets_with_openssl_only(tmp_path):
    """Without any Python on PATH, openssl makes the same files."""
    needed = ["bash", "openssl", "tr", "mkdir", "chmod", "id", "dirname"]
    if not all(shutil.which(c) for c in needed):
        pytest.skip("missing tools")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for c in needed:
        (bin_dir / c).symlink_to(shutil.which(c))
    out = tmp_path / "secrets"
    subprocess.run([shutil.which("bash"), str(MAKE_SECRETS), str(out)], check=True,
                   capture_output=True, env={"PATH": str(bin_dir)})
    for site in SITES:
        check_secret_dir(out / site)


# -- entrypoint.sh, run with the compose environment ------------------------------------------
@pytest.fixture
def entry_env(spec, tmp_path):
    """hospital-a's compose environment, with /run/secrets and the home moved to tmp_path, and
    a `datasite` on PATH that runs the real `init` but only records `up`."""
    secrets_dir = tmp_path / "secrets"
    run_make_secrets(secrets_dir)
    site_secrets = secrets_dir / "hospital-a"
    mounted = {p: spec["secrets"][s]["file"] for p, s in secret_targets(spec["services"]["hospital-a"]).items()}
    env = {}
    for k, v in env_of(spec["services"]["hospital-a"]).items():
        if v in mounted:
            v = str(site_secrets / Path(mounted[v]).name)
        env[k] = v
    env["DATASITE_HOME"] = str(tmp_path / "data" / "hospital-a")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "datasite"
    fake.write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        f'if [[ $1 == init ]]; then exec "{sys.executable}" -m datasite.cli "$@"; fi\n'
        f'"{sys.executable}" -c \'import json, os, sys; json.dump({{"argv": sys.argv[1:], '
        f'"env": dict(os.environ)}}, open(os.environ["RECORD"], "w"))\' "$@"\n')
    fake.chmod(0o755)
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", RECORD=str(tmp_path / "up.json"),
               HOME=str(tmp_path), PYTHONPATH=str(REPO))
    return env, site_secrets, tmp_path


def test_entrypoint_inits_once_then_serves_on_all_interfaces(entry_env):
    from datasite.config import ENV_VARS, SiteHome

    env, site_secrets, tmp = entry_env
    for _ in range(2):  # the second start finds the site and keeps it (--exist-ok)
        r = subprocess.run([str(ENTRYPOINT)], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        up = json.loads((tmp / "up.json").read_text())
        assert up["argv"] == ["up", "hospital-a", "--home", env["DATASITE_HOME"], "--host", "0.0.0.0",
                              "--port", "8080", "--foreground"]
        for var in ENV_VARS:
            assert up["env"].get(var), f"{var} is not set when the server starts"
        db_password = (site_secrets / "db_password").read_text()
        assert up["env"]["DATASITE_DB_URL"] == f"postgresql://datasite:{db_password}@postgres-a:5432/datasite"
    home = SiteHome(Path(env["DATASITE_HOME"]))
    cfg = home.load()
    assert cfg.name == "hospital-a" and cfg.db_url == up["env"]["DATASITE_DB_URL"]
    assert home.signing_key_hex() == (site_secrets / "signing_key").read_text()
    assert home.root_password() == (site_secrets / "root_password").read_text()
    # the config holds the database password: not readable by others
    assert stat.S_IMODE(home.config_file.stat().st_mode) & 0o077 == 0


def test_entrypoint_explains_missing_secrets(entry_env):
    env, site_secrets, tmp = entry_env
    (site_secrets / "signing_key").unlink()
    r = subprocess.run([str(ENTRYPOINT)], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "make-secrets.sh" in r.stderr
    assert not (tmp / "up.json").exists()


def test_entrypoint_rejects_a_db_password_that_breaks_the_url(entry_env):
    env, site_secrets, tmp = entry_env
    (site_secrets / "db_password").write_text("p@ss/word")
    r = subprocess.run([str(ENTRYPOINT)], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "db_password" in r.stderr
    assert not (tmp / "up.json").exists()


def test_entrypoint_runs_a_given_command_with_the_environment(entry_env):
    env, _, tmp = entry_env
    r = subprocess.run([str(ENTRYPOINT), "bash", "-c", 'echo "$DATASITE_DB_URL"'], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("postgresql://datasite:") and "@postgres-a:5432/datasite" in r.stdout
    assert not Path(env["DATASITE_HOME"]).exists()  # no init for one-off commands
