"""Importing a MedMNIST-style ``.npz`` file: uint8 images and integer labels.

MedMNIST layout (``train_images``, ``train_labels``, ``val_images``, ``val_labels``,
``test_images``, ``test_labels``; labels of shape ``(N, 1)`` or ``(N,)``): the present splits are
concatenated in the order train, val, test. Plain ``images``/``labels`` keys are accepted too.
The archive is sized from its zip and ``.npy`` headers before any array is read, and a member
that inflates implausibly (:data:`MAX_COMPRESSION_RATIO`) is refused as a decompression bomb.
"""
from __future__ import annotations

import math
import zipfile

import numpy as np

from shared.data import IMAGES, DatasetMeta

from .ingest_checks import (MIN_RECORDS, IngestError, check_classes, check_count, dataset_name,
                            existing_file, integer_labels, listing)
from .ingest_limits import (MAX_COMPRESSION_RATIO, RATIO_FLOOR_BYTES, check_inflated, human_size,
                            max_import_bytes)

SPLITS = ("train", "val", "test")


def _check_image_array(a: np.ndarray, key: str, where: str) -> None:
    if a.dtype != np.uint8:
        hint = (" (floats in 0..1: multiply by 255, round and cast)"
                if np.issubdtype(a.dtype, np.floating) else "")
        raise IngestError(f"{where}: {key} has dtype {a.dtype}; images must be uint8 (0..255)"
                          f"{hint}.")
    if a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[-1] not in (1, 3, 4)):
        raise IngestError(f"{where}: {key} has shape {a.shape}; expected (N, H, W) or "
                          "(N, H, W, C) with C in 1, 3, 4.")


def _flat_labels(a: np.ndarray, key: str, where: str) -> np.ndarray:
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise IngestError(f"{where}: {key} has shape {a.shape}; expected (N,) or (N, 1) (one "
                          "class per image; multi-label data is not supported).")
    return integer_labels(a, f"{where}, {key}")


def _npz_sizes(zf: zipfile.ZipFile, keys: list, where: str, max_bytes: int) -> None:
    """Refuse, from the zip and ``.npy`` headers alone, members that would inflate too far.

    Only a bounded few KB of each member is decompressed (the ``.npy`` header); the member's
    declared size (zipfile stops there) and the array's shape x itemsize bound the rest."""
    fmt = np.lib.format
    names = set(zf.namelist())
    sizes = {}
    for key in keys:
        info = zf.getinfo(key + ".npy" if key + ".npy" in names else key)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # zipfile inflates bzip2/LZMA without an output bound: 4 KB can become gigabytes
            raise IngestError(f"{where}: {key} uses a compression other than deflate "
                              f"(zip method {info.compress_type}); re-save the arrays with "
                              "np.savez or np.savez_compressed.")
        with zf.open(info) as f:
            try:
                version = fmt.read_magic(f)
            except ValueError:
                raise IngestError(f"{where}: {key} is not a numpy array (.npy); save the arrays "
                                  "with np.savez(path, images=..., labels=...).") from None
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise IngestError(f"{where}: {key} uses .npy format {version}; images and labels "
                                  "must be plain numeric arrays (np.savez writes format 1.0).")
        if dtype.hasobject:
            raise IngestError(f"{where}: cannot read {key}: it holds Python objects (object "
                              "arrays are not accepted); save plain numeric arrays.")
        n = max(info.file_size, math.prod(shape) * dtype.itemsize)
        check_inflated(n, f"{key} (shape {tuple(shape)}, {dtype})", where, max_bytes)
        if n > RATIO_FLOOR_BYTES and n > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise IngestError(
                f"{where}: {key} inflates from {human_size(info.compress_size)} to "
                f"{human_size(n)} (more than {MAX_COMPRESSION_RATIO}x): real images do not "
                "compress that well, so the file looks like a decompression bomb; do not import "
                "it. If the data is genuine (e.g. mostly blank images), save it uncompressed with "
                "np.savez.")
        sizes[key] = n
    check_inflated(sum(sizes.values()), "the arrays (" + ", ".join(
        f"{k}: {human_size(v)}" for k, v in sizes.items()) + ")", where, max_bytes)


def _npz_parts(z, where: str, max_bytes: int) -> tuple[list, list]:
    """``[(split, images, labels), ...]`` from an open NpzFile, validated; and the split keys."""
    try:
        keys = list(z.files)
        split_keys = [k for k in keys if k.split("_", 1)[0] in SPLITS
                      and k.split("_", 1)[-1] in ("images", "labels")]
        plain = [k for k in keys if k in ("images", "labels")]
        if split_keys and plain:
            raise IngestError(f"{where}: holds both split arrays ({listing(split_keys)}) and "
                              "plain 'images'/'labels'; keep one layout.")
        if not split_keys and not plain:
            raise IngestError(f"{where}: no image arrays found (keys: {listing(keys, 20)}); "
                              "expected MedMNIST keys train_images, train_labels, val_images, "
                              "val_labels, test_images, test_labels, or 'images' and 'labels'.")
        prefixes = ([s + "_" for s in SPLITS if f"{s}_images" in keys or f"{s}_labels" in keys]
                    if split_keys else [""])
        _npz_sizes(z.zip, [k for pre in prefixes for k in (pre + "images", pre + "labels")
                           if k in keys], where, max_bytes)
        parts = []
        for pre in prefixes:
            ik, lk = pre + "images", pre + "labels"
            if ik not in keys or lk not in keys:
                have, lack = (ik, lk) if ik in keys else (lk, ik)
                raise IngestError(f"{where}: has {have!r} but no {lack!r}; each split needs "
                                  "both images and labels.")
            imgs, labs = z[ik], z[lk]
            _check_image_array(imgs, ik, where)
            labs = _flat_labels(labs, lk, where)
            if len(imgs) != len(labs):
                raise IngestError(f"{where}: {ik} holds {len(imgs)} images but {lk} holds "
                                  f"{len(labs)} labels; the counts must match.")
            parts.append((pre.rstrip("_") or "all", imgs, labs))
    except IngestError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, RuntimeError) as e:
        raise IngestError(f"{where}: cannot read the file as .npz ({type(e).__name__}: "
                          f"{str(e)[:200]}); check that it is a numpy .npz archive (object "
                          "arrays are not accepted).") from None
    return parts, split_keys


def load_npz(path, name: str | None = None, *, min_records: int = MIN_RECORDS,
             max_bytes: int | None = None) -> tuple[dict, DatasetMeta]:
    """Read a MedMNIST-layout (or plain ``images``/``labels``) ``.npz`` file.

    MedMNIST splits present are concatenated (train, val, test); ``meta.description`` records the
    split sizes, in that order, so the owner can tell where each split starts. The archive is
    sized from its headers before any array is read (``max_bytes``: see
    :func:`max_import_bytes`).
    """
    p = existing_file(path, "NPZ file")
    name = dataset_name(name, p)
    where = p.name
    max_bytes = max_import_bytes(max_bytes)
    with open(p, "rb") as fh:  # our own handle: np.load leaks its own on a corrupt zip
        magic = fh.read(6)
        fh.seek(0)
        if magic == b"\x93NUMPY":  # refused unread: np.load would load the whole array
            raise IngestError(f"{where}: is a single .npy array, not an .npz archive; save "
                              "images and labels together with np.savez(path, images=..., "
                              "labels=...).")
        if magic[:2] != b"PK":
            raise IngestError(f"{where}: not an .npz archive (not a zip file); save the arrays "
                              "with np.savez(path, images=..., labels=...) or use MedMNIST's "
                              "file.")
        try:
            z = np.load(fh, allow_pickle=False)
        except Exception as e:  # truncated or corrupt zip, pickled data
            raise IngestError(f"{where}: cannot read the file as .npz ({type(e).__name__}: "
                              f"{str(e)[:200]}); check that it is a numpy .npz archive.") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise IngestError(f"{where}: is a single .npy array, not an .npz archive; save "
                              "images and labels together with np.savez(path, images=..., "
                              "labels=...).")
        with z:
            parts, split_keys = _npz_parts(z, where, max_bytes)

    shapes = {s: imgs.shape[1:] for s, imgs, _ in parts}
    if len(set(shapes.values())) > 1:
        raise IngestError(f"{where}: the splits have different image shapes "
                          f"({', '.join(f'{s}: {tuple(v)}' for s, v in shapes.items())}); all "
                          "images must have the same shape.")
    images = np.concatenate([imgs for _, imgs, _ in parts]) if len(parts) > 1 else parts[0][1]
    labels = np.concatenate([labs for _, _, labs in parts]) if len(parts) > 1 else parts[0][2]
    images = np.ascontiguousarray(images)
    check_count(len(labels), where, min_records)
    classes = check_classes(labels, f"{where}, labels", None)
    if split_keys:
        desc = (f"Images imported from {where}; splits concatenated in this order: "
                + ", ".join(f"{s} ({len(l)})" for s, _, l in parts) + ".")
    else:
        desc = f"Images imported from {where}."
    meta = DatasetMeta(name=name, kind=IMAGES, n_records=int(len(labels)), label="label",
                       labels=classes, image_shape=[int(x) for x in images.shape[1:]],
                       description=desc)
    return {"images": images, "labels": labels.astype(np.int64)}, meta
