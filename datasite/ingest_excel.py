"""Reading one sheet of an Excel ``.xlsx`` workbook with openpyxl, after checking the archive.

An ``.xlsx`` is a zip of XML files. Before openpyxl opens it, the members' sizes are read from
the zip's central directory, nothing inflated, and checked against the import limit and the
compression ratio (:func:`datasite.ingest_limits.check_zip_sizes`; zipfile stops inflating a
member at its declared size). Then the start of each XML member (at most 64 KiB) is read to refuse
a DTD: workbooks written by Excel, LibreOffice or openpyxl have none, and entity definitions are
how an XML "billion laughs" bomb turns a few KB into gigabytes. Old binary (``.xls``),
macro-enabled (``.xlsm``, ``.xlsb``) and OpenDocument (``.ods``) workbooks are refused with
advice: save them as ``.xlsx`` or export the sheet as CSV.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pandas as pd

from .ingest_checks import IngestError, listing
from .ingest_limits import check_zip_sizes

REFUSED_WORKBOOKS = {".xls": "an Excel 97-2003 workbook (.xls)",
                     ".xlsm": "a macro-enabled Excel workbook (.xlsm)",
                     ".xlsb": "a binary Excel workbook (.xlsb, may hold macros)",
                     ".ods": "an OpenDocument spreadsheet (.ods)"}
PROLOG_BYTES = 64 * 1024
_XML_MEMBER = (".xml", ".rels", ".vml")
_ROOT = re.compile(rb"<[A-Za-z_]")  # the root element's start tag ends the prolog
_DTD = tuple(w.encode(enc) for w in ("<!DOCTYPE", "<!ENTITY") for enc in ("utf-8", "utf-16-le",
                                                                           "utf-16-be"))
_RESAVE = ("open it in Excel or LibreOffice and save it as an Excel Workbook (.xlsx), or "
           "export the sheet as .csv or .parquet")


def refuse_workbook(p: Path) -> None:
    """Refuse a workbook format that is not read, saying how to convert it."""
    kind = REFUSED_WORKBOOKS[p.suffix.lower()]
    raise IngestError(f"{p.name} is {kind}, which is not read here (such workbooks can carry "
                      f"macros or need other readers): {_RESAVE}.")


def _check_prologs(zf: zipfile.ZipFile, where: str) -> None:
    """Refuse XML members that declare a DTD (entities), reading a bounded head of each."""
    for info in zf.infolist():
        if not info.filename.lower().endswith(_XML_MEMBER):
            continue
        with zf.open(info) as fh:
            head = fh.read(PROLOG_BYTES)
        root = _ROOT.search(head)
        prolog = head[:root.start()] if root else head
        if any(d in prolog.upper() for d in _DTD):
            raise IngestError(f"{where}: member {info.filename!r} declares a DTD (<!DOCTYPE> or "
                              "<!ENTITY>), which real workbooks never do and XML bombs use: do "
                              f"not import it; if the data is genuine, {_RESAVE}.")


def read_xlsx(p: Path, sheet: str | None, max_bytes: int) -> tuple[pd.DataFrame, str]:
    """The table on sheet ``sheet`` (default: the first) of workbook ``p``, its first row the
    header, and a note naming the sheet read; the archive is checked before it is opened."""
    try:
        with zipfile.ZipFile(p) as zf:
            check_zip_sizes(zf, p.name, max_bytes)
            _check_prologs(zf, p.name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise IngestError(f"{p.name}: not a valid .xlsx workbook ({type(e).__name__}: "
                          f"{str(e)[:200]}); {_RESAVE}.") from None
    try:
        import openpyxl  # noqa: F401  (pandas' reader for .xlsx)
    except ImportError:
        raise IngestError("Reading .xlsx needs openpyxl: run `pip install openpyxl`, or export "
                          "the sheet as .csv.") from None
    try:
        with pd.ExcelFile(p, engine="openpyxl") as xf:
            names = list(xf.sheet_names)
            chosen = names[0] if sheet is None and names else sheet
            if chosen not in names:
                raise IngestError(f"{p.name}: no sheet named {sheet!r}; its sheets are "
                                  f"{listing(map(repr, names), 20)}: give one with --sheet.")
            df = xf.parse(chosen)
    except IngestError:
        raise
    except Exception as e:  # corrupt or unusual workbooks
        raise IngestError(f"{p.name}: cannot read the file as an Excel workbook "
                          f"({type(e).__name__}: {str(e)[:200]}); {_RESAVE}.") from None
    more = f", the first of {len(names)} sheets" if sheet is None and len(names) > 1 else ""
    return df, f"sheet {chosen!r}{more}"
