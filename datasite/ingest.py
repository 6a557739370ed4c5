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

* ``load_table(path, label)``: delimited text with a header row (``.csv``, ``.tsv``, ``.tab``,
  ``.txt``; separator, decimal comma and encoding sniffed or given as ``sep``, ``decimal``,
  ``encoding``), the same gzip-compressed (``.csv.gz``), ``.parquet``, or one sheet of an Excel
  ``.xlsx`` (``sheet``; ``.xls``/``.xlsm`` are refused with advice). Every
  column other than ``label`` must be numeric (int, float or bool) without missing or infinite
  values; the label column must hold integer class ids (floats such as ``1.0`` are accepted and
  converted). With ``raw=True`` the columns come as read (text, missing values): an upload
  normalises them from the declared schema (:mod:`datasite.typed_columns`).
  ``load_table_with_ids(path, label, id_column)`` also splits off a patient-id column first and
  returns its ids as text (:mod:`datasite.ingest_ids`): never a feature, never published.
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
(:data:`MAX_COMPRESSION_RATIO`). A ``.csv.gz`` is streamed once, counting what it inflates, before
it is parsed; an ``.xlsx`` is sized from its zip directory, and refused if its XML declares a DTD;
other compressed text is refused rather than inflated.

This module is the entry point (``datasite.schema`` and the tests import the loaders from here);
the work is done by one module per job:

* :mod:`datasite.ingest_checks`: the error type, dataset names, paths, labels and record counts;
* :mod:`datasite.ingest_ids`: the patient-id column, split off and checked;
* :mod:`datasite.ingest_limits`: size limits and decompression-bomb checks;
* :mod:`datasite.ingest_table`, :mod:`datasite.ingest_images`, :mod:`datasite.ingest_npz`: one
  reader per input format; :mod:`datasite.ingest_csv` and :mod:`datasite.ingest_excel` read the
  table formats.
"""
from __future__ import annotations

from .ingest_checks import IngestError
from .ingest_images import load_images
from .ingest_limits import (DEFAULT_MAX_IMPORT_BYTES, MAX_COMPRESSION_RATIO, MAX_IMPORT_BYTES_ENV,
                            max_import_bytes)
from .ingest_npz import load_npz
from .ingest_table import load_table, load_table_with_ids

__all__ = ["DEFAULT_MAX_IMPORT_BYTES", "MAX_COMPRESSION_RATIO", "MAX_IMPORT_BYTES_ENV",
           "IngestError", "load_images", "load_npz", "load_table", "load_table_with_ids",
           "max_import_bytes"]
