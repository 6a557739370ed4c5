"""Real datasets on the owner's disk (the private side). Written atomically, read by jobs.

A dataset directory holds the records (``data.parquet`` or ``data.npz``), their metadata, the
record ids (row numbers of the uploaded file, fixed when records are removed), the ids removed
so far and, for a table uploaded with ``--id-column``, the patient-id map (patient id as text ->
record id). Jobs read the records and the metadata only (:func:`read_private`).
"""
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
PATIENT_IDS = "patient_ids.json"


def write_private(root: Path, meta: DatasetMeta, payload, patient_ids: list | None = None) -> Path:
    """Store ``payload`` under ``root/NAME`` all at once (temp dir + rename); ``patient_ids``:
    each record's patient id (text, in payload order), kept as the map patient id -> record
    id beside the records."""
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
        if patient_ids is not None:
            if len(patient_ids) != meta.n_records or len(set(patient_ids)) != len(patient_ids):
                raise ValueError("patient ids must be distinct, one per record")
            (tmp / PATIENT_IDS).write_text(json.dumps({str(p): i for i, p in
                                                       enumerate(patient_ids)}))
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


def has_patient_ids(path: Path) -> bool:
    """Whether the dataset was uploaded with a patient-id column."""
    return (Path(path) / PATIENT_IDS).exists()


def patient_record(path: Path, patient_id: str) -> int | None:
    """The record id of ``patient_id`` (text); None when it is not in the dataset (never was,
    or was forgotten)."""
    found = _patient_map(Path(path)).get(str(patient_id))
    return None if found is None else int(found)


def _patient_map(path: Path) -> dict:
    f = path / PATIENT_IDS
    return json.loads(f.read_text()) if f.exists() else {}


def delete_records(path: Path, ids: list[int]) -> DatasetMeta:
    """Remove the records with ``ids`` from the stored data, for good; returns the new metadata.

    Each file is replaced atomically (write, fsync, rename); the ids file is written last, so an
    interruption leaves the data already without the record and a retry finds it removed. The
    removed records' patient ids leave the patient-id map too: nothing names them any more.
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
    if has_patient_ids(path):
        gone = {int(i) for i in ids}
        kept = {p: r for p, r in _patient_map(path).items() if r not in gone}
        _atomic(path / PATIENT_IDS, lambda f: f.write(json.dumps(kept).encode()))
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
