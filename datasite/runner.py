"""Runs one approved job on private data, in its own process (CUDA never touches the server).

``python -m datasite.runner SPEC_JSON DATASET_DIR RESULT_FILE [CONTEXT_JSON]`` prints progress
as JSON lines and writes the result (a pickle the owner's own process produced and alone reads).
CONTEXT_JSON comes from the owner: context key -> result file of a released job a new job builds
on (``JobSpec.context_sources``).
"""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

from shared.runner import run_job

from .config import private_umask
from .storage import read_private


def main(argv: list[str] | None = None) -> int:
    private_umask()  # the result is the owner's alone until released, whoever spawned us
    args = argv or sys.argv[1:]
    spec_json, dataset_dir, result_file = args[:3]
    context = None
    if len(args) > 3:  # context key -> result file of an earlier release (JobSpec.context_sources)
        context = {}
        for key, path in json.loads(args[3]).items():
            with open(path, "rb") as f:
                context[key] = pickle.load(f)
    data, meta = read_private(Path(dataset_dir))

    def progress(done: int, total: int) -> None:
        print(json.dumps({"progress": [done, total]}), flush=True)

    result = run_job(json.loads(spec_json), data, meta, progress=progress, context=context)
    tmp = Path(result_file).with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    tmp.rename(result_file)
    print(json.dumps({"done": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
