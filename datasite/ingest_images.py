"""Importing an image folder: PNG/JPEG files (subfolders allowed) and a ``filename,label`` CSV.

``filename`` is the image's path relative to the folder (e.g. ``img_001.png`` or
``pneumonia/img_001.png``), ``label`` an integer class id. Every image listed must exist and
every PNG/JPEG in the folder must be listed. All images must have the same size and mode (``L``
grayscale or ``RGB``). The payload is ``{"images": uint8 (N, H, W) or (N, H, W, C),
"labels": int64 (N,)}`` in the CSV's row order; the images are sized from their headers before
any pixel is decoded.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data import IMAGES, DatasetMeta

from .ingest_checks import (MIN_RECORDS, IngestError, check_classes, check_count, dataset_name,
                            existing_file, integer_labels, listing)
from .ingest_limits import check_inflated, max_import_bytes, refuse_compressed

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
IMAGE_MODES = {"L", "RGB"}


def load_images(folder, labels_csv=None, name: str | None = None, *,
                min_records: int = MIN_RECORDS,
                max_bytes: int | None = None) -> tuple[dict, DatasetMeta]:
    """Read a folder of PNG/JPEG images with a ``filename,label`` CSV.

    ``labels_csv`` is a path (if it does not exist as given and is relative, it is looked up
    inside ``folder``; default ``folder/labels.csv``). Images are returned in the CSV's row order.
    ``max_bytes``: see :func:`max_import_bytes`; the images are sized from their headers first.
    """
    max_bytes = max_import_bytes(max_bytes)

    d = Path(folder).expanduser()
    if not d.exists():
        raise IngestError(f"Image folder {str(d)!r} does not exist: check the path.")
    if not d.is_dir():
        raise IngestError(f"{str(d)!r} is not a folder; give the folder holding the images "
                          "(or use --npz for an .npz file).")
    name = dataset_name(name, d)
    lp = _labels_file(d, labels_csv)
    names, labels = _read_labels(lp)
    classes = check_classes(labels, f"{lp.name}, column 'label'", None)
    check_count(len(labels), lp.name, min_records)
    _check_listed(d, lp, names)
    images = _decode_images(d, names, lp.name, max_bytes)

    meta = DatasetMeta(name=name, kind=IMAGES, n_records=len(labels), label="label",
                       labels=classes, image_shape=list(images.shape[1:]),
                       description=f"{len(labels)} images imported from folder {d.name}/.")
    return {"images": images, "labels": labels}, meta


def _labels_file(folder: Path, labels_csv) -> Path:
    if labels_csv is None:
        labels_csv = "labels.csv"
    p = Path(labels_csv).expanduser()
    if not p.exists() and not p.is_absolute() and (folder / p).exists():
        p = folder / p
    return existing_file(p, "Labels file")


def _read_labels(lp: Path) -> tuple[list[str], np.ndarray]:
    """The labels file's filenames (as posix paths) and int64 labels, in row order."""
    refuse_compressed(lp, "labels file")
    try:
        table = pd.read_csv(lp, dtype={"filename": str}, compression=None)
    except pd.errors.EmptyDataError:
        raise IngestError(f"{lp.name}: the labels file is empty; it needs a header row "
                          "'filename,label' and one row per image.") from None
    except Exception as e:
        raise IngestError(f"{lp.name}: cannot read the labels file as CSV ({type(e).__name__}: "
                          f"{str(e)[:200]}).") from None
    table.columns = [str(c).strip() for c in table.columns]
    if "filename" not in table.columns or "label" not in table.columns:
        raise IngestError(f"{lp.name}: the labels file needs the columns 'filename' and 'label' "
                          f"(header row 'filename,label'); found columns "
                          f"{listing(table.columns, 20)}.")
    if len(table) == 0:
        raise IngestError(f"{lp.name}: the dataset is empty (0 records in the labels file).")
    if table["filename"].isna().any():
        raise IngestError(f"{lp.name}: {int(table['filename'].isna().sum())} rows have no "
                          "filename.")
    names = [Path(str(f).strip()).as_posix() for f in table["filename"]]
    dup = sorted(f for f, k in Counter(names).items() if k > 1)  # list.count: quadratic
    if dup:
        raise IngestError(f"{lp.name}: {len(dup)} filenames are listed more than once: "
                          f"{listing(dup)}; give each image one label.")
    return names, integer_labels(table["label"].to_numpy(), f"{lp.name}, column 'label'")


def _image_files(folder: Path) -> set[str]:
    out = set()
    for f in folder.rglob("*"):
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
            out.add(rel.as_posix())
    return out


def _check_listed(d: Path, lp: Path, names: list[str]) -> None:
    """Refuse labelled images without a file (or outside the folder) and files without a label."""
    root = d.resolve()
    on_disk = _image_files(d)
    listed = set(names)
    missing = [f for f in names if not (d / f).is_file()
               or not (d / f).resolve().is_relative_to(root)]
    unlisted = sorted(on_disk - listed)
    problems = []
    if missing:
        problems.append(f"{len(missing)} labelled images have no file in {d.name}/: "
                        f"{listing(missing)}")
    if unlisted:
        problems.append(f"{len(unlisted)} image files have no label in {lp.name}: "
                        f"{listing(unlisted)}")
    if problems:
        raise IngestError("; ".join(problems) + ". Every image needs exactly one row in the "
                          "labels file and every row an image file.")


def _decode_images(d: Path, names: list[str], where: str, max_bytes: int) -> np.ndarray:
    """The images as one uint8 array, sized from the first header before any pixel is decoded;
    images of another size or mode than the first are never decoded."""
    from PIL import Image

    images = None
    expected = None  # (size, mode, path) of the first image
    mismatched = []
    for i, f in enumerate(names):
        path = d / f
        try:
            with Image.open(path) as im:  # reads the header only: size and mode, no pixels
                fmt, mode, size = im.format, im.mode, im.size
                if fmt not in ("PNG", "JPEG"):
                    raise IngestError(f"Image {f!r} is {fmt}, not PNG or JPEG: convert it.")
                if mode not in IMAGE_MODES:
                    raise IngestError(f"Image {f!r} has mode {mode!r}; use 8-bit grayscale ('L') "
                                      "or RGB images (convert e.g. 16-bit or RGBA images first).")
                if expected is None:
                    expected = (size, mode, f)
                    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
                    check_inflated(len(names) * math.prod(shape),
                                   f"{len(names)} images of {size[0]}x{size[1]} {mode}",
                                   where, max_bytes)
                    images = np.empty((len(names),) + shape, dtype=np.uint8)
                if (size, mode) != expected[:2]:
                    mismatched.append((f, size, mode))  # never decoded: refused below
                    continue
                im.load()
                images[i] = np.asarray(im)
        except IngestError:
            raise
        except Exception as e:  # corrupt files, and PIL's own DecompressionBombError
            raise IngestError(f"Cannot read image {f!r} ({type(e).__name__}: {str(e)[:200]}); "
                              "replace or remove it (and its row in the labels file).") from None
    if mismatched:
        f, size, mode = mismatched[0]
        others = (f" (others: {listing([m[0] for m in mismatched[1:]])})"
                  if len(mismatched) > 1 else "")
        (w0, h0), m0, f0 = expected
        raise IngestError(f"All images must have the same size and mode; {len(mismatched)} differ "
                          f"from {f0!r} ({w0}x{h0}, {m0}), e.g. {f!r} is {size[0]}x{size[1]}, "
                          f"{mode}{others}. Resize or convert them first.")
    return images
