"""Importing an owner's real data: tables, image folders and MedMNIST-style ``.npz`` files.

Each loader reads and validates everything in memory and returns ``(payload, DatasetMeta)``; it
writes nothing anywhere. That metadata describes the data as found and stays with the owner (it
feeds ``datasite schema draft``); what is published is built from the owner's declared schema
(``datasite.schema.prepare``). The caller stores the data only after every check has passed;
a problem raises :class:`IngestError` whose message says what is wrong and how to fix it.

Payload formats are those of :mod:`shared.data`:

* table: a pandas DataFrame of numeric feature columns plus one integer label column, in the
  file's column order, with a fresh ``RangeIndex``;
* images: ``{"images": uint8 (N, H, W) or (N, H, W, C), "labels": int64 (N,)}``.

Accepted inputs:

* ``load_table(path, label)``: ``.csv`` (comma separated, header row) or ``.parquet``. Every
  column other than ``label`` must be numeric (int, float or bool) without missing or infinite
  values; the label column must hold integer class ids (floats such as ``1.0`` are accepted and
  converted; text labels must be mapped to integers first).
* ``load_images(folder, labels_csv)``: a folder of PNG/JPEG files (subfolders allowed) and a CSV
  with a header row and the two columns ``filename,label``; ``filename`` is the image's path
  relative to the folder (e.g. ``img_001.png`` or ``pneumonia/img_001.png``), ``label`` an
  integer class id. Every image listed must exist and every PNG/JPEG in the folder must be listed.
  All images must have the same size and mode (``L`` grayscale or ``RGB``).
* ``load_npz(path)``: MedMNIST layout (``train_images``, ``train_labels``, ``val_images``,
  ``val_labels``, ``test_images``, ``test_labels``; labels of shape ``(N, 1)`` or ``(N,)``), the
  present splits concatenated in the order train, val, test; or plain ``images``/``labels`` keys.
  Images must be uint8.

Decompression bombs: every loader sizes what it will hold in memory from the file's headers
before decompressing anything (zip member sizes and ``.npy`` headers, Parquet metadata, image
headers) and refuses an import larger than :func:`max_import_bytes` (default 2 GiB, set
``DATASITE_MAX_IMPORT_BYTES`` for more) or an ``.npz`` member that inflates implausibly
(:data:`MAX_COMPRESSION_RATIO`). Compressed CSV files are refused rather than inflated.
"""
from __future__ import annotations

import math
import os
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data import IMAGES, TABLE, DatasetMeta

MIN_RECORDS = 10  # fewer records than this cannot support any useful DP analysis
MAX_CLASSES = 20  # a label with more distinct values than this looks like a regression target
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
IMAGE_MODES = {"L", "RGB"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SPLITS = ("train", "val", "test")
_SHOW = 5  # how many offending items an error message lists

MAX_IMPORT_BYTES_ENV = "DATASITE_MAX_IMPORT_BYTES"
# What one import may hold in memory once decompressed. 2 GiB holds every MedMNIST v2 dataset at
# 28 and 64 pixels (the largest, PathMNIST at 64x64x3, is 1.3 GB) or a table of 250 million
# numbers, while the import's peak (about twice the payload, while splits are concatenated)
# stays within an ordinary 8 GB machine. Larger real data: set DATASITE_MAX_IMPORT_BYTES.
DEFAULT_MAX_IMPORT_BYTES = 2 * 1024 ** 3
# Image arrays deflate 1-10x; only near-constant data (a bomb's zeros) comes near deflate's
# ~1030x. Members below the floor are too small to matter whatever their ratio.
MAX_COMPRESSION_RATIO = 100
RATIO_FLOOR_BYTES = 16 * 1024 ** 2
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
# Magic bytes of compressed files that pandas would otherwise inflate without a limit.
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz",
                     b"PK\x03\x04": "zip", b"(\xb5/\xfd": "zstd"}


class IngestError(ValueError):
    """The data cannot be imported as given; the message says what to fix."""


# -- helpers ---------------------------------------------------------------------------------
def _listing(items, show: int = _SHOW) -> str:
    items = [str(x) for x in items]
    head = ", ".join(items[:show])
    more = f" and {len(items) - show} more" if len(items) > show else ""
    return head + more


def _dataset_name(name: str | None, path: Path) -> str:
    name = name if name is not None else re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)
    if not NAME_RE.match(name):
        raise IngestError(f"Invalid dataset name {name!r}: use up to 64 letters, digits, '-' and "
                          "'_', starting with a letter or digit.")
    return name


def _existing_file(path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise IngestError(f"{what} {str(p)!r} does not exist: check the path.")
    if not p.is_file():
        raise IngestError(f"{what} {str(p)!r} is not a file.")
    return p


def _py(x):
    """A numpy scalar as a plain (JSON-serialisable) Python scalar."""
    return x.item() if hasattr(x, "item") else x


def _integer_labels(values: np.ndarray, where: str) -> np.ndarray:
    """``values`` as int64 class ids, or an IngestError saying why they are not."""
    values = np.asarray(values)
    if values.dtype == bool:
        return values.astype(np.int64)
    if np.issubdtype(values.dtype, np.integer):
        if values.dtype == np.uint64 and values.size and values.max() > np.iinfo(np.int64).max:
            raise IngestError(f"{where}: label values are too large for int64.")
        return values.astype(np.int64)
    if np.issubdtype(values.dtype, np.floating):
        if not np.all(np.isfinite(values)):
            bad = int((~np.isfinite(values)).sum())
            raise IngestError(f"{where}: {bad} labels are missing (NaN) or infinite; every record "
                              "needs a label: fix or drop those records.")
        if not np.all(values == np.round(values)):
            example = values[values != np.round(values)][0]
            raise IngestError(f"{where}: labels must be integer class ids, found non-integer value "
                              f"{example!r}; the label looks continuous (a regression target), "
                              "not a class.")
        return values.astype(np.int64)
    sample = _listing(sorted({str(v) for v in values.tolist()}), 8)
    raise IngestError(f"{where}: labels must be integer class ids (0, 1, ...), found "
                      f"{values.dtype} values such as {sample}; map each class to an integer "
                      "first (e.g. 0 = normal, 1 = pneumonia).")


def _check_classes(labels: np.ndarray, where: str, max_classes: int | None) -> list:
    classes = np.unique(labels)
    if len(classes) < 2:
        raise IngestError(f"{where}: all records have the same label "
                          f"{_py(classes[0]) if len(classes) else None!r}: a classifier needs at "
                          "least two classes.")
    if max_classes is not None and len(classes) > max_classes:
        raise IngestError(f"{where}: the label has {len(classes)} distinct values (more than "
                          f"{max_classes}); it looks continuous (a regression target), not a "
                          "class label. Choose a categorical label column or bin the values.")
    return [_py(c) for c in classes]


def _check_count(n: int, where: str, min_records: int) -> None:
    if n == 0:
        raise IngestError(f"{where}: the dataset is empty (0 records).")
    if n < min_records:
        raise IngestError(f"{where}: only {n} records; at least {min_records} are needed.")


# -- size limits (decompression bombs) -------------------------------------------------------
def max_import_bytes(override: int | None = None) -> int:
    """The most bytes one import may hold in memory once decompressed: ``override``, else the
    ``DATASITE_MAX_IMPORT_BYTES`` environment variable (bytes, or e.g. ``8G``), else 2 GiB."""
    if override is not None:
        return int(override)
    raw = os.environ.get(MAX_IMPORT_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMPORT_BYTES
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", raw, re.IGNORECASE)
    if not m or int(m[1]) <= 0:
        raise IngestError(f"{MAX_IMPORT_BYTES_ENV}={raw!r} is not a size: give a number of bytes "
                          "or a number with K, M, G or T (e.g. 8G), or unset it for the default "
                          "2G.")
    return int(m[1]) * _UNITS[m[2].upper()]


def _human(n: int) -> str:
    for unit, size in (("TiB", 1024 ** 4), ("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _check_inflated(n: int, what: str, where: str, max_bytes: int) -> None:
    """Refuse, before anything is allocated, an import that would hold more than ``max_bytes``."""
    if n > max_bytes:
        gib = max(1, 2 ** math.ceil(math.log2(n / 1024 ** 3)))  # the next power of two
        raise IngestError(
            f"{where}: {what} would take {_human(n)} in memory once decompressed, more than the "
            f"import limit of {_human(max_bytes)}. If the data is genuine, raise the limit (e.g. "
            f"{MAX_IMPORT_BYTES_ENV}={gib}G) on a machine "
            "with about twice that much free memory; if you did not expect data this large, the "
            "file may be a decompression bomb: do not import it.")


def _refuse_compressed(p: Path, what: str) -> None:
    """Refuse a compressed text file: pandas would inflate it whole, with no size limit."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(6)
    except OSError:
        return  # the read that follows reports it
    for magic, kind in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise IngestError(f"{p.name}: the {what} is {kind}-compressed; decompress it first "
                              "and give the plain CSV file.")


# -- tables ----------------------------------------------------------------------------------
def _parquet_size(p: Path, max_bytes: int) -> None:
    """Size a Parquet file from its metadata (no column read): dictionary and run-length
    encoding let a few KB stand for billions of values."""
    import pyarrow.parquet as pq

    md = pq.ParquetFile(p).metadata
    schema = md.schema
    text = [schema.column(j).name for j in range(md.num_columns)
            if schema.column(j).physical_type == "BYTE_ARRAY"]
    if text:  # variable-length values: no header bounds their decoded size
        raise IngestError(f"{p.name}: columns {_listing(map(repr, text), 10)} hold text or "
                          "bytes; every column must be numeric: encode features as numbers "
                          "(one-hot columns for categories, numeric codes) and map label classes "
                          "to integers (e.g. 0 = normal, 1 = pneumonia) first.")
    width = [max(8, schema.column(j).length or 0) for j in range(md.num_columns)]
    values = sum(max(md.row_group(g).column(j).num_values, md.row_group(g).num_rows) * width[j]
                 for g in range(md.num_row_groups) for j in range(md.num_columns))
    _check_inflated(values, f"the table ({md.num_rows} rows, {md.num_columns} columns)", p.name,
                    max_bytes)


def _read_table(p: Path, max_bytes: int) -> pd.DataFrame:
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise IngestError(f"Unsupported table file {p.name!r}: use a .csv or .parquet file.")
    try:
        if suffix == ".csv":
            _refuse_compressed(p, "table")
            return pd.read_csv(p, compression=None)
        _parquet_size(p, max_bytes)
        return pd.read_parquet(p)
    except IngestError:
        raise
    except pd.errors.EmptyDataError:
        raise IngestError(f"{p.name}: the file is empty (no header, no records).") from None
    except Exception as e:  # parser errors, decoding errors, corrupt parquet, permissions
        kind = "CSV" if suffix == ".csv" else "Parquet"
        raise IngestError(f"{p.name}: cannot read the file as {kind} ({type(e).__name__}: "
                          f"{str(e)[:200]}); check that it is a valid {kind} file.") from None


def load_table(path, label: str, name: str | None = None, *, min_records: int = MIN_RECORDS,
               max_classes: int = MAX_CLASSES,
               max_bytes: int | None = None) -> tuple[pd.DataFrame, DatasetMeta]:
    """Read and validate a CSV/Parquet table with numeric features and a categorical label.

    Returns the table (label converted to int64, other columns unchanged, file column order) and
    its metadata; ``meta.features`` maps each feature column to its dtype. Raises
    :class:`IngestError` on any problem, before anything is written. ``max_bytes``: see
    :func:`max_import_bytes`.
    """
    p = _existing_file(path, "Table file")
    name = _dataset_name(name, p)
    df = _read_table(p, max_import_bytes(max_bytes))
    where = p.name
    df.columns = [str(c) for c in df.columns]
    df = df.reset_index(drop=True)
    if len(df) == 0:
        raise IngestError(f"{where}: the dataset is empty (0 records); columns: "
                          f"{_listing(df.columns, 50)}.")
    if label not in df.columns:
        raise IngestError(f"{where}: no label column {label!r}; available columns: "
                          f"{_listing(df.columns, 50)}.")
    dupes = sorted(c for c, k in Counter(df.columns).items() if k > 1)
    if dupes:
        raise IngestError(f"{where}: duplicate column names {_listing(dupes)}; rename them.")

    problems = []
    features = [c for c in df.columns if c != label]
    if not features:
        problems.append("there are no feature columns besides the label")
    types = pd.api.types
    non_numeric = [c for c in features
                   if not types.is_numeric_dtype(df[c]) or types.is_complex_dtype(df[c])]
    if non_numeric:
        shown = _listing([f"{c!r} ({df[c].dtype})" for c in non_numeric], 10)
        problems.append(f"non-numeric feature columns {shown}: encode them as numbers first "
                        "(one-hot columns for categories, numeric codes, dates as numbers), or "
                        "drop them")
    bad_values = []
    for c in df.columns:
        col = df[c]
        n_bad = int(col.isna().sum())
        if pd.api.types.is_float_dtype(col):
            n_bad += int(np.isinf(col.to_numpy(dtype=float, na_value=np.nan)).sum())
        if n_bad:
            bad_values.append(f"{c!r} ({n_bad})")
    if bad_values:
        problems.append(f"missing (NaN) or infinite values in columns {_listing(bad_values, 10)}: "
                        "impute or drop those records first")
    if problems:
        raise IngestError(f"{where}: " + "; ".join(problems) + ".")

    labels = _integer_labels(df[label].to_numpy(), f"{where}, label column {label!r}")
    classes = _check_classes(labels, f"{where}, label column {label!r}", max_classes)
    _check_count(len(df), where, min_records)
    df[label] = labels

    meta = DatasetMeta(name=name, kind=TABLE, n_records=int(len(df)), label=label, labels=classes,
                       features={c: str(df[c].dtype) for c in features},
                       description=f"Table imported from {p.name}.")
    return df, meta


# -- image folders ---------------------------------------------------------------------------
def _labels_file(folder: Path, labels_csv) -> Path:
    if labels_csv is None:
        labels_csv = "labels.csv"
    p = Path(labels_csv).expanduser()
    if not p.exists() and not p.is_absolute() and (folder / p).exists():
        p = folder / p
    return _existing_file(p, "Labels file")


def _image_files(folder: Path) -> set[str]:
    out = set()
    for f in folder.rglob("*"):
        rel = f.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
            out.add(rel.as_posix())
    return out


def load_images(folder, labels_csv=None, name: str | None = None, *,
                min_records: int = MIN_RECORDS,
                max_bytes: int | None = None) -> tuple[dict, DatasetMeta]:
    """Read a folder of PNG/JPEG images with a ``filename,label`` CSV.

    ``labels_csv`` is a path (if it does not exist as given and is relative, it is looked up
    inside ``folder``; default ``folder/labels.csv``). Images are returned in the CSV's row order.
    ``max_bytes``: see :func:`max_import_bytes`; the images are sized from their headers first.
    """
    from PIL import Image

    max_bytes = max_import_bytes(max_bytes)

    d = Path(folder).expanduser()
    if not d.exists():
        raise IngestError(f"Image folder {str(d)!r} does not exist: check the path.")
    if not d.is_dir():
        raise IngestError(f"{str(d)!r} is not a folder; give the folder holding the images "
                          "(or use --npz for an .npz file).")
    name = _dataset_name(name, d)
    lp = _labels_file(d, labels_csv)
    _refuse_compressed(lp, "labels file")
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
                          f"{_listing(table.columns, 20)}.")
    if len(table) == 0:
        raise IngestError(f"{lp.name}: the dataset is empty (0 records in the labels file).")
    if table["filename"].isna().any():
        raise IngestError(f"{lp.name}: {int(table['filename'].isna().sum())} rows have no "
                          "filename.")
    names = [Path(str(f).strip()).as_posix() for f in table["filename"]]
    dup = sorted(f for f, k in Counter(names).items() if k > 1)  # list.count: quadratic
    if dup:
        raise IngestError(f"{lp.name}: {len(dup)} filenames are listed more than once: "
                          f"{_listing(dup)}; give each image one label.")
    labels = _integer_labels(table["label"].to_numpy(), f"{lp.name}, column 'label'")
    classes = _check_classes(labels, f"{lp.name}, column 'label'", None)
    _check_count(len(labels), lp.name, min_records)

    root = d.resolve()
    on_disk = _image_files(d)
    listed = set(names)
    missing = [f for f in names if not (d / f).is_file()
               or not (d / f).resolve().is_relative_to(root)]
    unlisted = sorted(on_disk - listed)
    problems = []
    if missing:
        problems.append(f"{len(missing)} labelled images have no file in {d.name}/: "
                        f"{_listing(missing)}")
    if unlisted:
        problems.append(f"{len(unlisted)} image files have no label in {lp.name}: "
                        f"{_listing(unlisted)}")
    if problems:
        raise IngestError("; ".join(problems) + ". Every image needs exactly one row in the "
                          "labels file and every row an image file.")

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
                    _check_inflated(len(names) * math.prod(shape),
                                    f"{len(names)} images of {size[0]}x{size[1]} {mode}",
                                    lp.name, max_bytes)
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
        others = (f" (others: {_listing([m[0] for m in mismatched[1:]])})"
                  if len(mismatched) > 1 else "")
        (w0, h0), m0, f0 = expected
        raise IngestError(f"All images must have the same size and mode; {len(mismatched)} differ "
                          f"from {f0!r} ({w0}x{h0}, {m0}), e.g. {f!r} is {size[0]}x{size[1]}, "
                          f"{mode}{others}. Resize or convert them first.")

    meta = DatasetMeta(name=name, kind=IMAGES, n_records=len(labels), label="label",
                       labels=classes, image_shape=list(images.shape[1:]),
                       description=f"{len(labels)} images imported from folder {d.name}/.")
    return {"images": images, "labels": labels}, meta


# -- npz -------------------------------------------------------------------------------------
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
    return _integer_labels(a, f"{where}, {key}")


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
        _check_inflated(n, f"{key} (shape {tuple(shape)}, {dtype})", where, max_bytes)
        if n > RATIO_FLOOR_BYTES and n > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise IngestError(
                f"{where}: {key} inflates from {_human(info.compress_size)} to {_human(n)} (more "
                f"than {MAX_COMPRESSION_RATIO}x): real images do not compress that well, so the "
                "file looks like a decompression bomb; do not import it. If the data is genuine "
                "(e.g. mostly blank images), save it uncompressed with np.savez.")
        sizes[key] = n
    _check_inflated(sum(sizes.values()), "the arrays (" + ", ".join(
        f"{k}: {_human(v)}" for k, v in sizes.items()) + ")", where, max_bytes)


def _npz_parts(z, where: str, max_bytes: int) -> tuple[list, list]:
    """``[(split, images, labels), ...]`` from an open NpzFile, validated; and the split keys."""
    try:
        keys = list(z.files)
        split_keys = [k for k in keys if k.split("_", 1)[0] in SPLITS
                      and k.split("_", 1)[-1] in ("images", "labels")]
        plain = [k for k in keys if k in ("images", "labels")]
        if split_keys and plain:
            raise IngestError(f"{where}: holds both split arrays ({_listing(split_keys)}) and "
                              "plain 'images'/'labels'; keep one layout.")
        if not split_keys and not plain:
            raise IngestError(f"{where}: no image arrays found (keys: {_listing(keys, 20)}); "
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
    p = _existing_file(path, "NPZ file")
    name = _dataset_name(name, p)
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
    _check_count(len(labels), where, min_records)
    classes = _check_classes(labels, f"{where}, labels", None)
    if split_keys:
        desc = (f"Images imported from {where}; splits concatenated in this order: "
                + ", ".join(f"{s} ({len(l)})" for s, _, l in parts) + ".")
    else:
        desc = f"Images imported from {where}."
    meta = DatasetMeta(name=name, kind=IMAGES, n_records=int(len(labels)), label="label",
                       labels=classes, image_shape=[int(x) for x in images.shape[1:]],
                       description=desc)
    return {"images": images, "labels": labels.astype(np.int64)}, meta
