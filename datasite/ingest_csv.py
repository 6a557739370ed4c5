"""Reading a delimited text table as hospitals export it: CSV, TSV, ``.txt``, gzip-compressed.

What is not given is sniffed from the file:

* the encoding: a UTF-16 byte-order mark means UTF-16 (Excel's "Unicode text"); else UTF-8 (a
  UTF-8 BOM is dropped) if the whole file decodes as UTF-8, else Windows-1252 (Latin-1 and the
  Euro sign), read by every Western-European Excel; anything else needs ``encoding``;
* the separator: of ``,`` ``;`` tab ``|``, the one that splits the header and the first rows into
  the same number (>= 2) of fields, the widest such; tab first for ``.tsv``;
* the decimal mark: ``,`` when the separator is not ``,`` and the first rows hold numbers such as
  ``12,5`` and none such as ``12.5``.

A gzip file is streamed once (:func:`datasite.ingest_limits.gzip_chunks`: the import limit and the
ratio check stop a bomb while nothing is held) before pandas parses it; a plain file is read once
to check its encoding unless ``encoding`` is given.
"""
from __future__ import annotations

import codecs
import csv
import io
import re
from pathlib import Path

import pandas as pd

from .ingest_checks import IngestError
from .ingest_limits import gzip_chunks

SEPARATORS = (",", ";", "\t", "|")
SEPARATOR_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
DECIMALS = (".", ",")
HEAD_BYTES = 64 * 1024  # what the separator and decimal mark are sniffed from
HEAD_ROWS = 200
_CP1252_UNDEFINED = re.compile(rb"[\x81\x8d\x8f\x90\x9d]")  # bytes Windows-1252 leaves unassigned
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
COMMA_NUMBER = re.compile(r"\s*[-+]?\d+,\d+\s*")
_DOT_NUMBER = re.compile(r"\s*[-+]?\d*\.\d+(?:[eE][-+]?\d+)?\s*")
_FIX = "give the format with --sep, --decimal and --encoding"


def text_options(sep: str | None, decimal: str | None, encoding: str | None) -> tuple:
    """The owner's ``--sep/--decimal/--encoding`` checked and normalised (``tab`` or ``\\t`` for
    a tab); ``None`` stays None (sniffed)."""
    if sep is not None:
        sep = SEPARATOR_NAMES.get(sep.lower(), sep)
        if len(sep) != 1 or sep in "\"\r\n" or sep.isalnum():
            raise IngestError(f"--sep {sep!r}: give one character such as ',' ';' '|' or 'tab'.")
    if decimal is not None and decimal not in DECIMALS:
        raise IngestError(f"--decimal {decimal!r}: give '.' or ','.")
    if sep is not None and sep == decimal:
        raise IngestError(f"--sep and --decimal are both {sep!r}; a comma-decimal file is "
                          "separated by ';' (or tabs): give --sep ';' --decimal ','.")
    if encoding is not None:
        try:
            encoding = codecs.lookup(encoding).name
        except LookupError:
            raise IngestError(f"--encoding {encoding!r} is not an encoding Python knows; give "
                              "e.g. utf-8, cp1252 (Windows Latin-1), latin-1 or utf-16.") from None
    return sep, decimal, encoding


def _chunks(p: Path, compressed: bool, max_bytes: int, chunk: int = 1024 ** 2):
    if compressed:
        yield from gzip_chunks(p, max_bytes, chunk)
        return
    with open(p, "rb") as fh:
        while data := fh.read(chunk):
            yield data


def _scan(p: Path, compressed: bool, max_bytes: int, encoding: str | None) -> tuple[bytes, bool,
                                                                                    str | None]:
    """(the first HEAD_BYTES bytes of the text, whether that is all of it, its encoding or None
    when it is neither UTF-8 nor Windows-1252). Reads everything once unless nothing is left to
    learn (a plain file whose encoding is given)."""
    head, total = bytearray(), 0
    utf8, utf8_ok, cp1252_ok, utf16 = codecs.getincrementaldecoder("utf-8")(), True, True, False
    for data in _chunks(p, compressed, max_bytes):
        if not total:
            utf16 = data.startswith(_UTF16_BOMS)
        total += len(data)
        if len(head) < HEAD_BYTES:
            head += data[:HEAD_BYTES - len(head)]
        if encoding or utf16:
            if not compressed and len(head) >= HEAD_BYTES:
                break  # nothing else to learn, no limit to enforce
            continue
        if utf8_ok:
            try:
                utf8.decode(data)
            except UnicodeDecodeError:
                utf8_ok = False
        cp1252_ok = cp1252_ok and not _CP1252_UNDEFINED.search(data)
    if utf8_ok and not (encoding or utf16):
        try:
            utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8_ok = False
    found = (encoding or ("utf-16" if utf16 else "utf-8-sig" if utf8_ok
                          else "cp1252" if cp1252_ok else None))
    return bytes(head), len(head) >= total, found


def _rows(text: str, sep: str) -> list[list[str]]:
    """The first rows of ``text`` split at ``sep`` (quotes respected), blank lines left out."""
    rows = []
    try:
        for row in csv.reader(io.StringIO(text), delimiter=sep):
            if any(f.strip() for f in row):
                rows.append(row)
            if len(rows) >= HEAD_ROWS:
                break
    except csv.Error:
        return []
    return rows


def sniff_separator(text: str, tsv: bool = False) -> str:
    """The separator that splits the header and the first rows into the same number (>= 2) of
    fields, the widest such (ties: tab first for a .tsv, else in :data:`SEPARATORS` order); a comma
    when none does (the parser then says what is wrong)."""
    order = ("\t", ",", ";", "|") if tsv else SEPARATORS
    best, best_key = order[0], None
    for rank, sep in enumerate(order):
        rows = _rows(text, sep)
        if not rows or len(rows[0]) < 2:
            continue
        agree = sum(len(r) == len(rows[0]) for r in rows) / len(rows)
        key = (len(rows[0]), -rank)
        if agree >= 0.9 and (best_key is None or key > best_key):
            best, best_key = sep, key
    return best


def sniff_decimal(text: str, sep: str) -> str:
    """``,`` when the separator is not a comma and the first rows hold numbers written like
    ``12,5`` but none like ``12.5``; else ``.``."""
    if sep == ",":
        return "."
    fields = [f for row in _rows(text, sep)[1:] for f in row]
    comma = any(COMMA_NUMBER.fullmatch(f) for f in fields)
    return "," if comma and not any(_DOT_NUMBER.fullmatch(f) for f in fields) else "."


def read_text_table(p: Path, *, compressed: bool, max_bytes: int, sep: str | None = None,
                    decimal: str | None = None, encoding: str | None = None,
                    text_columns: tuple = ()) -> tuple[pd.DataFrame, str]:
    """The table in delimited text file ``p`` (gzip-compressed if ``compressed``) and a note of
    the format it was read with. Each of ``sep``, ``decimal``, ``encoding`` that is None is
    sniffed (see the module); an IngestError says what failed and which option fixes it.
    ``text_columns``: columns read as text, never as numbers (an id ``00123`` keeps its zeros)."""
    sep, decimal, encoding = text_options(sep, decimal, encoding)
    head, complete, encoding = _scan(p, compressed, max_bytes, encoding)
    if encoding is None:
        raise IngestError(f"{p.name}: cannot read the file as CSV: it is neither UTF-8 nor "
                          "Windows-1252 (Latin-1) text; give its encoding with --encoding (e.g. "
                          "utf-16, latin-1, cp850), or save it from Excel as CSV UTF-8.")
    text = head.decode(encoding, errors="ignore")
    if not complete:  # the last line may be cut
        text = text[:text.rfind("\n") + 1] or text
    tabbed = bool({".tsv", ".tab"} & {x.lower() for x in p.suffixes[-2:]})
    sep = sep or sniff_separator(text, tsv=tabbed)
    decimal = decimal or sniff_decimal(text, sep)
    if sep == decimal:
        raise IngestError(f"{p.name}: the separator sniffed is {sep!r}, the decimal mark given "
                          "too; give the separator with --sep (e.g. --sep ';').")
    fmt = f"separator {sep!r}, decimal {decimal!r}, encoding {encoding}"
    try:
        df = pd.read_csv(p, sep=sep, decimal=decimal, encoding=encoding,
                         compression="gzip" if compressed else None,
                         dtype={c: str for c in text_columns} or None)
    except pd.errors.EmptyDataError:
        raise IngestError(f"{p.name}: the file is empty (no header, no records).") from None
    except Exception as e:  # parser and decoding errors
        raise IngestError(f"{p.name}: cannot read the file as CSV with {fmt} "
                          f"({type(e).__name__}: {str(e)[:200]}); check that it is a valid CSV "
                          f"file, or {_FIX}.") from None
    return df, fmt
