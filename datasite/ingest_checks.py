"""Checks every importer shares: the error type, dataset names and paths, labels and counts.

Messages name what is wrong and how to fix it; they list at most a few offending items.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

MIN_RECORDS = 10  # fewer records than this cannot support any useful DP analysis
MAX_CLASSES = 20  # a label with more distinct values than this looks like a regression target
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_SHOW = 5  # how many offending items an error message lists


class IngestError(ValueError):
    """The data cannot be imported as given; the message says what to fix."""


def listing(items, show: int = _SHOW) -> str:
    """The first ``show`` items and how many more: error messages stay short on big data."""
    items = [str(x) for x in items]
    head = ", ".join(items[:show])
    more = f" and {len(items) - show} more" if len(items) > show else ""
    return head + more


def dataset_name(name: str | None, path: Path) -> str:
    """``name``, or one made from the file's name; research specs name datasets by it, so it
    must match :data:`NAME_RE` (the same rule as ``shared.jobs.bounds.DATASET_RE``)."""
    name = name if name is not None else re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)
    if not NAME_RE.match(name):
        raise IngestError(f"Invalid dataset name {name!r}: use up to 64 letters, digits, '-' and "
                          "'_', starting with a letter or digit.")
    return name


def existing_file(path, what: str) -> Path:
    """``path`` as a Path, or an IngestError that tells the owner which path is wrong."""
    p = Path(path).expanduser()
    if not p.exists():
        raise IngestError(f"{what} {str(p)!r} does not exist: check the path.")
    if not p.is_file():
        raise IngestError(f"{what} {str(p)!r} is not a file.")
    return p


def _py(x):
    """A numpy scalar as a plain (JSON-serialisable) Python scalar."""
    return x.item() if hasattr(x, "item") else x


def integer_labels(values: np.ndarray, where: str) -> np.ndarray:
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
    sample = listing(sorted({str(v) for v in values.tolist()}), 8)
    raise IngestError(f"{where}: labels must be integer class ids (0, 1, ...), found "
                      f"{values.dtype} values such as {sample}; map each class to an integer "
                      "first (e.g. 0 = normal, 1 = pneumonia).")


def check_classes(labels: np.ndarray, where: str, max_classes: int | None) -> list:
    """The distinct classes as plain Python scalars, refusing labels a classifier cannot use
    (a single class, or so many that the label looks continuous)."""
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


def check_count(n: int, where: str, min_records: int) -> None:
    """Refuse datasets too small to support any useful DP analysis."""
    if n == 0:
        raise IngestError(f"{where}: the dataset is empty (0 records).")
    if n < min_records:
        raise IngestError(f"{where}: only {n} records; at least {min_records} are needed.")

