"""Real datasets on the owner's disk (the private side). Written atomically, read by jobs."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data import IMAGES, TABLE, DatasetMeta


def write_private(root: Path, meta: DatasetMeta, payload) -> Path:
    """Store ``payload`` under ``root/NAME`` all at once (temp dir + rename)."""
    final = root / meta.name
    if final.exists():
        raise FileExistsError(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{meta.name}.", dir=root))
    try:
        if meta.kind == TABLE:
            payload.to_parquet(tmp / "data.parquet", index=False)
        else:
            np.savez_compressed(tmp / "data.npz", images=payload["images"], labels=payload["labels"])
        (tmp / "meta.json").write_text(meta.to_json())
        tmp.chmod(0o700)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_private(path: Path):
    """Return (payload, meta) for a dataset directory written by ``write_private``."""
    path = Path(path)
    meta = DatasetMeta.from_json((path / "meta.json").read_text())
    if meta.kind == TABLE:
        return pd.read_parquet(path / "data.parquet"), meta
    if meta.kind == IMAGES:
        with np.load(path / "data.npz") as z:
            return {"images": z["images"], "labels": z["labels"]}, meta
    raise ValueError(f"unknown dataset kind {meta.kind!r}")


def remove_private(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
