"""Checks of an upload made before anything slow: the options given, and the input files
(there, readable, a known format, the schema parses). ``datasite upload`` runs them before it
opens or logs into the site, so a wrong path fails at once rather than after a login.

The format is recognised by the file's suffix and first bytes only; reading and checking the
data itself is :mod:`datasite.ingest`'s job.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from .config import SiteError
from .ingest_checks import IngestError, existing_file
from .ingest_ids import check_id_column
from .mock_release import check_mock_options

# as datasite.ingest_table reads them (not imported from there: pandas would slow this down)
TEXT_TABLES = (".csv", ".tsv", ".tab", ".txt")  # also gzip-compressed: .csv.gz, ...
BINARY_TABLES = {".parquet": (b"PAR1", "Parquet"), ".pq": (b"PAR1", "Parquet"),
                 ".xlsx": (b"PK\x03\x04", "Excel (.xlsx)")}
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def check_inputs(*, table=None, images=None, labels=None, npz=None, schema=None) -> None:
    """Cheap checks of an upload's files (there, readable, a known format, the schema parses),
    made before the site is logged into or the data read, so a wrong path fails at once."""
    if table:
        _check_table_file(existing_file(table, "Table file"))
    if npz:
        p = existing_file(npz, "The .npz file")
        if not _head(p).startswith(ZIP_MAGIC):
            raise IngestError(f"{p.name} is not an .npz file (an .npz is a zip archive of "
                              "arrays): check the file.")
    if images:
        d = Path(images).expanduser()
        if not d.is_dir():
            raise IngestError(f"Image folder {str(d)!r} does not exist or is not a folder: "
                              "check the path.")
        if not os.access(d, os.R_OK | os.X_OK):
            raise IngestError(f"Image folder {str(d)!r} is not readable: check its permissions.")
    if labels:
        _head(existing_file(labels, "Labels file"))
    if schema is not None and not isinstance(schema, dict):
        from .schema import SchemaError, read_schema

        try:
            read_schema(schema)
        except SchemaError as e:
            raise SiteError(str(e)) from None


def _head(p: Path, n: int = 8) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise IngestError(f"{str(p)!r} cannot be read ({e.strerror}): check its "
                          "permissions.") from None


def _check_table_file(p: Path) -> None:
    name, head = p.name.lower(), _head(p)
    gz = name.endswith(".gz")
    suffix = Path(name[:-3] if gz else name).suffix
    if gz and suffix in TEXT_TABLES:
        if not head.startswith(b"\x1f\x8b"):
            raise IngestError(f"{p.name} is named .gz but is not gzip-compressed: rename it.")
    elif suffix in BINARY_TABLES:
        magic, kind = BINARY_TABLES[suffix]
        if not head.startswith(magic):
            raise IngestError(f"{p.name} is not a {kind} file (it does not start like one): "
                              "check the file, or give it the suffix of its real format.")
    elif suffix in TEXT_TABLES:
        if head.startswith((b"PAR1", *ZIP_MAGIC)):
            kind = "Parquet" if head.startswith(b"PAR1") else "zip (Excel .xlsx?)"
            raise IngestError(f"{p.name} is a {kind} file, not text: give it the suffix of its "
                              "format (.parquet, .xlsx).")
    # other suffixes: datasite.ingest refuses them, with advice, before any login too


def check_options(table, images, labels, npz, mock, budget_epsilon, delta, *,
                  id_column=None, label=None, mock_epsilon=None) -> None:
    """The upload's options fit together (one source, a known mock, a whole budget, an id
    column only for a table and not its label)."""
    if len([x for x in (table, images, npz) if x]) != 1:
        raise SiteError("Give exactly one of --table FILE, --images DIR or --npz FILE.")
    if id_column is not None and not table:
        raise SiteError("--id-column applies to tables only (--table FILE); drop it.")
    check_id_column(id_column, label)
    check_mock_options(mock, mock_epsilon, bool(table))
    if (budget_epsilon is None) != (delta is None):
        raise SiteError("Give both --budget-eps and --delta (or neither, and set the budget "
                        "later with `datasite budget`).")
    if budget_epsilon is not None and not (math.isfinite(budget_epsilon) and budget_epsilon > 0):
        raise SiteError(f"--budget-eps must be a number above 0, got {budget_epsilon}.")
    if images and not labels:
        raise SiteError("An image folder needs --labels labels.csv (filename,label).")
