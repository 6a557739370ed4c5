"""Helpers shared by the custom-code tests: a live site and raw-syft submissions."""
from __future__ import annotations

import contextlib
import hashlib
import linecache

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
