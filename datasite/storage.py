"""Real datasets on the owner's disk (the private side). Written atomically, read by jobs."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data import IMAGES, TABLE, DatasetMeta

RECORD_IDS = "record_ids.npy"
REMOVED_IDS = "removed_ids.json"


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
        # record ids: row numbers of the uploaded file; they stay fixed when records are removed
        np.save(tmp / RECORD_IDS, np.arange(meta.n_records, dtype=np.int64))
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


def record_ids(path: Path) -> np.ndarray:
    """The stable id of each stored record, in storage order."""
    path = Path(path)
    if (path / RECORD_IDS).exists():
        return np.load(path / RECORD_IDS)
    meta = DatasetMeta.from_json((path / "meta.json").read_text())
    return np.arange(meta.n_records, dtype=np.int64)  # datasets stored before ids existed


def removed_ids(path: Path) -> set[int]:
    f = Path(path) / REMOVED_IDS
    return set(json.loads(f.read_text())) if f.exists() else set()


def delete_records(path: Path, ids: list[int]) -> DatasetMeta:
    """Remove the records with ``ids`` from the stored data, for good; returns the new metadata.

    Each file is replaced atomically (write, fsync, rename); the ids file is written last, so an
    interruption leaves the data already without the record and a retry finds it removed.
    """
    path = Path(path)
    payload, meta = read_private(path)
    current = record_ids(path)
    keep = ~np.isin(current, np.asarray(ids, dtype=np.int64))
    if meta.kind == TABLE:
        payload = payload.iloc[np.flatnonzero(keep)].reset_index(drop=True)
        _atomic(path / "data.parquet", lambda f: payload.to_parquet(f, index=False))
    else:
        payload = {"images": payload["images"][keep], "labels": payload["labels"][keep]}
        _atomic(path / "data.npz", lambda f: np.savez_compressed(
            f, images=payload["images"], labels=payload["labels"]))
    meta.n_records = int(keep.sum())
    _atomic(path / "meta.json", lambda f: f.write(meta.to_json().encode()))
    _atomic(path / REMOVED_IDS, lambda f: f.write(json.dumps(
        sorted(removed_ids(path) | {int(i) for i in ids})).encode()))
    _atomic(path / RECORD_IDS, lambda f: np.save(f, current[keep]))
    return meta


def _atomic(target: Path, write) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    # 0600 whatever the caller's umask: these are the real records
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def remove_private(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
