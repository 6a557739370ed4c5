"""The process that runs one custom function inside the sandbox.

``python -m shared.custom.child JOB_JSON`` where the job file names the code file, the function,
its asset parameter, the data file and the output directory. It loads the data, calls the
function (with the accounted handle as ``dp`` when it takes one), and writes the result as data
(:mod:`.output`), the handle's report (``privacy.json``), or the error (``error.json``: the
exception type and message, for the owner). Exit status 0 only when the result was written.
"""
from __future__ import annotations

import ast
import json
import linecache
import sys
import traceback
from pathlib import Path

PRIVACY_FILE = "privacy.json"
ERROR_FILE = "error.json"
FILENAME = "<custom function>"


def load_function(source: str, name: str):
    """The function ``name`` from the submitted source, without its decorators (the syft
    decorator is the researcher's submission, not part of the computation)."""
    from .summary import function_node

    fn = function_node(source, name)
    fn.decorator_list = []
    module = ast.Module(body=[fn], type_ignores=[])
    namespace = {"__name__": "custom_function", "__builtins__": __builtins__}
    # tracebacks show the submitted lines (the owner reads them; the sandbox tells a refused
    # fork by them): the node keeps its line numbers in the submitted source
    linecache.cache[FILENAME] = (len(source), None, source.splitlines(True), FILENAME)
    exec(compile(module, FILENAME, "exec"), namespace)  # noqa: S102 (sandboxed)
    return namespace[name]


def load_data(path: str):
    """The asset as the function receives it: a DataFrame for a table, a dict of arrays for
    images (the same types as the mock)."""
    if path.endswith(".parquet"):
        import pandas as pd

        return pd.read_parquet(path)
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def run(job: dict) -> None:
    from .handle import DP
    from .output import encode

    out = Path(job["out_dir"])
    fn = load_function(Path(job["code_file"]).read_text(), job["function"])
    kwargs = {job["asset_param"]: load_data(job["data_file"])}
    handle = DP()
    if job.get("takes_handle"):
        kwargs["dp"] = handle
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # the function's prints are for the owner's log, not the protocol
    try:
        value = fn(**kwargs)
    finally:
        sys.stdout = real_stdout
    (out / PRIVACY_FILE).write_text(json.dumps(handle.report()))
    encode(value, out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    try:
        run(job)
    except BaseException as e:  # noqa: BLE001  (reported to the owner, then exit 1)
        tb = traceback.format_exc(limit=8)
        try:
            (Path(job["out_dir"]) / ERROR_FILE).write_text(json.dumps(
                {"type": type(e).__name__, "message": str(e)[:2000], "traceback": tb[-4000:]}))
        except OSError:
            pass
        print(tb, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
