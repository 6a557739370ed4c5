"""Runs one approved job on private data, in its own process (CUDA never touches the server).

``python -m datasite.runner SPEC_JSON DATASET_DIR RESULT_FILE [--context JSON] [--backbones
JSON]`` prints progress as JSON lines and writes the result (a pickle the owner's own process
produced and alone reads). Both options come from the owner (``datasite.execution.
runner_command``), never from the researcher: ``--context``, context key -> result file of a
released job a new job builds on (``JobSpec.context_sources``); ``--backbones``, name ->
{"info": the registered public facts, "path": the weights file} of the backbones the job names
(``JobSpec.backbones_needed``). The job re-hashes each weights file and refuses one whose
sha256 is not the registered one.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

from shared.pretrained.info import BackboneInfo, LocalBackbone
from shared.runner import run_job

from .config import private_umask
from .storage import read_private


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m datasite.runner")
    p.add_argument("spec_json")
    p.add_argument("dataset_dir")
    p.add_argument("result_file")
    p.add_argument("--context", default=None, help="JSON: context key -> result file")
    p.add_argument("--backbones", default=None, help='JSON: name -> {"info", "path"}')
    return p.parse_args(argv)


def backbones_from_json(text: str | None) -> dict[str, LocalBackbone] | None:
    """The ``--backbones`` argument as the LocalBackbones ``run_job`` takes."""
    if not text:
        return None
    return {name: LocalBackbone(BackboneInfo.from_dict(b["info"]), b["path"])
            for name, b in json.loads(text).items()}


def run_to_file(spec_json: str, dataset_dir: str, result_file: str, context_json: str | None,
                backbones_json: str | None, progress) -> None:
    """Run one job on ``dataset_dir`` and write its result to ``result_file`` (atomically)."""
    private_umask()  # the result is the owner's alone until released, whoever spawned us
    context = None
    if context_json:  # context key -> result file of an earlier release
        context = {}
        for key, path in json.loads(context_json).items():
            with open(path, "rb") as f:
                context[key] = pickle.load(f)
    data, meta = read_private(Path(dataset_dir))
    result = run_job(json.loads(spec_json), data, meta, progress=progress, context=context,
                     backbones=backbones_from_json(backbones_json))
    tmp = Path(result_file).with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    tmp.rename(result_file)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def progress(done: int, total: int) -> None:
        print(json.dumps({"progress": [done, total]}), flush=True)

    run_to_file(args.spec_json, args.dataset_dir, args.result_file, args.context,
                args.backbones, progress)
    print(json.dumps({"done": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
