"""Helpers shared by the custom-code tests: a live site and raw-syft submissions."""
from __future__ import annotations

import contextlib
import hashlib
import linecache
import os
import shutil
import tempfile
from pathlib import Path

RESEARCHER = ("alice@uni.edu", "alice-password-1")


def live_custom_site(root, demo_files, name: str, second_dataset: bool = False):
    """A running sqlite datasite with the breast-cancer table (budget eps 50, delta 1e-5) and
    one researcher; ``second_dataset``: the same table again as ``other_table``."""
    from conftest import make_site

    site = make_site(root, name)
    for ds in ["breast_cancer"] + (["other_table"] if second_dataset else []):
        site.upload(ds, table=str(demo_files / "breast_cancer.csv"), label="diagnosis",
                    schema=demo_files / "breast_cancer.schema.yaml", budget_epsilon=50.0,
                    delta=1e-5)
    site.add_user(*RESEARCHER, name="Alice")
    return site


@contextlib.contextmanager
def running_custom_site(root, demo_files, name: str, second_dataset: bool = False):
    """``live_custom_site``, taken down on exit (for a module fixture)."""
    site = live_custom_site(root, demo_files, name, second_dataset)
    try:
        yield site
    finally:
        site.down()


@contextlib.contextmanager
def dir_outside_tmp(prefix: str = "dpds-test-"):
    """A fresh directory NOT under ``/tmp`` (the sandbox gives custom code a private ``/tmp``,
    so a secret under the host's ``/tmp`` is hidden from it whatever else the sandbox does):
    under ``/var/tmp`` (present on Debian/Ubuntu and writable by root), else under the repo's
    ``tests/output/``. Removed on exit."""
    candidates = [Path("/var/tmp"), Path(__file__).resolve().parent / "output"]
    for base in candidates:
        if str(base.resolve()).startswith("/tmp/"):
            continue
        try:
            base.mkdir(parents=True, exist_ok=True)
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
            break
        except OSError:
            continue
    else:
        raise RuntimeError(f"no writable directory outside /tmp among {candidates}")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def plant_world_readable(directory: Path, text: str) -> Path:
    """A file any local user may read (mode 0644, parents 0755): only the sandbox's mount
    isolation, not file permissions, keeps it from custom code."""
    d = Path(directory) / "planted"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    f = d / "secret.txt"
    f.write_text(text)
    os.chmod(f, 0o644)
    return f


def unsandboxed_run(site, rid: str, monkeypatch, **kw):
    """The defence off: run request ``rid`` as on a host with no sandbox, with the owner's
    ``unsandboxed`` flag (resource limits only); returns what the code returned on the real
    data (the run is then denied, so its reservation is refunded)."""
    from datasite import sandbox
    from shared.custom.output import decode

    with monkeypatch.context() as m:
        m.setattr(sandbox, "available", lambda: (False, "defence off for this test"))
        summary = site.run(rid, progress=False, epsilon=1.0, delta=1e-6, unsandboxed=True, **kw)
    assert summary["sandbox"].startswith("none")
    value = decode(Path(site.state.request(rid)["result_path"]) / "out")
    site.deny(rid, reason="defence-off check")
    return value


def syft_login(site):
    """The researcher's raw syft client (no dp-datasite import on this side)."""
    import syft as sy

    return sy.login(url=site.url, email=RESEARCHER[0], password=RESEARCHER[1])


def syft_function(source: str, asset):
    """A syft function from source text (so a test can put runtime paths in an attack's code),
    as if written in a notebook cell: ``@sy.syft_function_single_use(df=asset)`` on top."""
    import syft as sy

    text = "@sy.syft_function_single_use(df=asset)\n" + source
    filename = f"<custom-test-{hashlib.sha256(text.encode()).hexdigest()[:12]}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    namespace = {"sy": sy, "asset": asset}
    exec(compile(text, filename, "exec"), namespace)  # noqa: S102 (test code)
    import ast

    return namespace[ast.parse(text).body[0].name]


def submit_source(client, source: str, dataset: str = "breast_cancer") -> str:
    """Submit custom code through raw syft; returns the request id."""
    asset = client.datasets[dataset].assets[0]
    req = client.code.request_code_execution(syft_function(source, asset))
    return req.id.to_string()


def call_released(client, func_name: str, dataset: str = "breast_cancer"):
    """PySyft's usual call for a released result: ``client.code.<name>(df=asset)``."""
    asset = client.datasets[dataset].assets[0]
    client.refresh()
    out = getattr(client.code, func_name)(df=asset)
    return out.get() if hasattr(out, "get") else out
