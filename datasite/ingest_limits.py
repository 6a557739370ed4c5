"""Size limits on an import, checked before anything is decompressed (decompression bombs).

What one import may hold in memory is :func:`max_import_bytes`; each reader sizes its data from
the file's headers and calls :func:`check_inflated` before allocating. A compressed CSV named
``.csv`` is refused by its magic bytes (:func:`refuse_compressed`) rather than inflated without a
limit; a ``.csv.gz`` is streamed once through :func:`gzip_chunks`, which counts what it inflates
and stops at the cap or at an implausible ratio, before anything is parsed. Zip containers
(``.xlsx``) are sized from their central directory (:func:`check_zip_sizes`): zipfile stops
inflating a member at its declared size.
"""
from __future__ import annotations

import gzip
import math
import os
import re
import zipfile
import zlib
from pathlib import Path

from .ingest_checks import IngestError

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


def human_size(n: int) -> str:
    """A byte count as the owner reads it in an error message (e.g. ``1.5 GiB``)."""
    for unit, size in (("TiB", 1024 ** 4), ("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def check_inflated(n: int, what: str, where: str, max_bytes: int) -> None:
    """Refuse, before anything is allocated, an import that would hold more than ``max_bytes``."""
    if n > max_bytes:
        gib = max(1, 2 ** math.ceil(math.log2(n / 1024 ** 3)))  # the next power of two
        raise IngestError(
            f"{where}: {what} would take {human_size(n)} in memory once decompressed, more than "
            f"the import limit of {human_size(max_bytes)}. If the data is genuine, raise the limit "
            f"(e.g. {MAX_IMPORT_BYTES_ENV}={gib}G) on a machine "
            "with about twice that much free memory; if you did not expect data this large, the "
            "file may be a decompression bomb: do not import it.")


def refuse_compressed(p: Path, what: str) -> None:
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



def check_ratio(n: int, packed: int, what: str, where: str,
                advice: str = "decompress it yourself and give the plain file") -> None:
    """Refuse data that inflates implausibly (only near-constant data, a bomb's zeros, deflates
    more than :data:`MAX_COMPRESSION_RATIO` times); small data passes whatever its ratio.
    ``advice``: what to do if the data is genuine."""
    if n > RATIO_FLOOR_BYTES and n > MAX_COMPRESSION_RATIO * max(packed, 1):
        raise IngestError(
            f"{where}: {what} inflates from {human_size(packed)} to more than {human_size(n)} "
            f"(more than {MAX_COMPRESSION_RATIO}x); real tables do not compress that well, so "
            f"the file may be a decompression bomb: do not import it. If the data is genuine, "
            f"{advice}.")


def gzip_chunks(p: Path, max_bytes: int, chunk: int = 1024 ** 2):
    """The decompressed content of gzip file ``p``, in chunks of at most ``chunk`` bytes, never
    holding more than one: refused as soon as it passes ``max_bytes`` or inflates implausibly
    (:func:`check_ratio`, against the compressed bytes read so far, so a bomb is stopped within
    its first few MiB). Concatenated gzip members are read as one stream, as pandas does."""
    total = 0
    try:
        with open(p, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as fh:
            while True:
                data = fh.read(chunk)  # bounded: gzip inflates at most `chunk` bytes per call
                if not data:
                    return
                total += len(data)
                check_inflated(total, "the decompressed table", p.name, max_bytes)
                check_ratio(total, raw.tell(), "the table", p.name)
                yield data
    except (OSError, EOFError, zlib.error) as e:
        raise IngestError(f"{p.name}: not a valid gzip file ({type(e).__name__}: "
                          f"{str(e)[:200]}); compress the CSV again with gzip, or give the plain "
                          "CSV file.") from None


def check_zip_sizes(zf: zipfile.ZipFile, where: str, max_bytes: int) -> None:
    """Refuse, from the zip's central directory alone (nothing inflated), an archive whose
    members would hold more than ``max_bytes``, inflate implausibly, or use a compression that
    zipfile inflates without an output bound (bzip2, LZMA)."""
    infos = zf.infolist()
    check_inflated(sum(i.file_size for i in infos), f"the archive's {len(infos)} members",
                   where, max_bytes)
    for info in infos:
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise IngestError(f"{where}: member {info.filename!r} uses zip method "
                              f"{info.compress_type}, not deflate; save the file again from "
                              "Excel or LibreOffice, or export the sheet as CSV.")
        check_ratio(info.file_size, info.compress_size, f"member {info.filename!r}", where,
                    "export the sheet as CSV and give that")
