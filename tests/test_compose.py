"""compose/: structure of the two-site GPU deployment (no Docker engine runs here)."""
from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from datasite.config import ENV_VARS

COMPOSE = Path(__file__).resolve().parent.parent / "compose"
SITES = ("hospital-a", "hospital-b")


@pytest.fixture(scope="module")
def spec():
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def test_each_site_has_gpu_postgres_volumes_and_secrets(spec):
    services = spec["services"]
    ports = []
    for site, pg in zip(SITES, ("postgres-a", "postgres-b")):
        svc = services[site]
        assert svc["build"]["dockerfile"] == "compose/Dockerfile"
        assert (COMPOSE / svc["build"]["context"] / svc["build"]["dockerfile"]).exists()
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
        assert svc["depends_on"][pg]["condition"] == "service_healthy"
        assert "healthcheck" in services[pg]
        for vol in svc["volumes"] + services[pg]["volumes"]:
            assert vol.split(":")[0] in spec["volumes"]
        for s in svc["secrets"]:
            assert spec["secrets"][s["source"]]["file"].startswith("./secrets/")
        ports.append(svc["ports"][0].split(":")[0])
    assert len(set(ports)) == len(ports)


def test_every_variable_the_datasite_reads_is_set(spec):
    entry = (COMPOSE / "entrypoint.sh").read_text()
    exported = set(re.findall(r"export (\w+)=", entry))
    for site in SITES:
        env = spec["services"][site]["environment"]
        for var in ENV_VARS:
            assert var in env or var in exported, f"{site}: {var} not set"
        # every variable the entrypoint requires is given
        for var in re.findall(r"\$\{(\w+):\?\}", entry):
            assert var in env, f"{site}: entrypoint needs {var}"


def test_no_default_passwords_and_scripts_are_executable():
    text = "".join(p.read_text() for p in COMPOSE.rglob("*") if p.is_file() and p.suffix != ".pyc")
    assert "changethis" not in text
    for script in ("entrypoint.sh", "make-secrets.sh"):
        path = COMPOSE / script
        assert path.stat().st_mode & stat.S_IXUSR
        subprocess.run(["bash", "-n", str(path)], check=True)
    assert "entrypoint.sh" in (COMPOSE / "Dockerfile").read_text()


def test_make_secrets(tmp_path):
    subprocess.run([str(COMPOSE / "make-secrets.sh"), str(tmp_path)], check=True,
                   capture_output=True)
    for site in SITES:
        key = tmp_path / site / "signing_key"
        assert len(key.read_text().strip()) == 64
        assert len((tmp_path / site / "root_password").read_text().strip()) == 32
        for f in (tmp_path / site).iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert (tmp_path / SITES[0] / "signing_key").read_text() != (tmp_path / SITES[1] / "signing_key").read_text()
    # the key is what `datasite init --key-file` accepts
    from datasite.config import init_site

    site = init_site("x", home=tmp_path / "home", key_file=tmp_path / SITES[0] / "signing_key",
                     root_password_file=tmp_path / SITES[0] / "root_password")
    assert site.signing_key_hex() == (tmp_path / SITES[0] / "signing_key").read_text().strip()
