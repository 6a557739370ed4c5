"""The owner's public schema file (YAML): reading it, drafting one from the data, checking the
data against it at upload.

A draft is written *from the data* (bounds are the data's range rounded outwards, classes are
those found), so it is marked twice (a header comment and ``drafted_from_data: true``) and
upload refuses it until the owner has reviewed it and removed the marker: publishing data
ranges as found would be exactly the non-DP disclosure the schema exists to prevent.

The draft never writes the optional rates (``missing_rate``, a category's or the label's
``rates``, a bool's ``rate``): they would be the data's own shares, private unless the owner
chooses to publish them. They are left out (its header says they may be declared), so a
reviewed draft gives a uniform mock until the owner declares them.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from shared.data import TABLE, DatasetMeta, formula_like
from shared.schema import DRAFT_KEY, SchemaError, feature_columns, meta_from_schema, normalise

from .ingest_checks import MIN_RECORDS
from .ingest_checks import check_count as check_min_records
from .typed_columns import (coerce_column, draft_date_column, draft_text_column, has_label,
                            label_codes, plain_columns, refuse_comma_numbers)

DRAFT_HEADER = """\
# DRAFTED FROM THE DATA by `datasite schema draft`: NOT YET SAFE TO PUBLISH.
# Everything below is published to researchers. Replace every bound with what the domain allows
# (e.g. age [0, 120]), not what this data happens to hold; check types, units and the label
# classes; confirm that the record count may be public. Then delete the line
# `drafted_from_data: true` and upload with --schema.
# Optional, to make the mock more realistic: missing_rate, rates (categories, label), rate
# (bool). They are published; this draft never fills them in from the data.
"""


def read_schema(path) -> dict:
    """The normalised schema in YAML file ``path``; a SchemaError names what to fix."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise SchemaError(f"Schema file {str(p)!r} does not exist; write a draft with "
                          "`datasite schema draft DATA_FILE -o schema.yaml` and review it.")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SchemaError(f"{p.name}: not valid YAML ({str(e)[:200]}).") from None
    if isinstance(raw, dict) and raw.get(DRAFT_KEY):
        raise SchemaError(f"{p.name} is still marked as drafted from the data "
                          f"({DRAFT_KEY}: true): nothing drafted from the records may be "
                          "published unreviewed. Replace its bounds with domain-knowledge bounds, "
                          f"check classes and the record count, then delete the {DRAFT_KEY} line.")
    try:
        return normalise(raw)
    except SchemaError as e:
        raise SchemaError(f"{p.name}: {e}") from None


def to_yaml(schema: dict) -> str:
    """``schema`` as YAML, keys in declaration order."""
    import yaml

    return yaml.safe_dump(schema, sort_keys=False, default_flow_style=None, width=100)


# -- drafting ----------------------------------------------------------------------------------
def _outward(x: float, up: bool) -> float | int:
    """``x`` rounded away from zero to one significant digit (0 stays 0)."""
    if x == 0 or not math.isfinite(x):
        return 0
    p = 10.0 ** math.floor(math.log10(abs(x)))
    v = (math.ceil(x / p) if up else math.floor(x / p)) * p
    v = float(f"{v:.12g}")
    return int(v) if v == int(v) else v


def _draft_column(col: pd.Series) -> dict | None:
    """A draft declaration of ``col`` (None for free text: the caller warns)."""
    if pd.api.types.is_bool_dtype(col):
        return {"type": "bool", **({"missing": True} if col.isna().any() else {})}
    if pd.api.types.is_datetime64_any_dtype(col):
        return draft_date_column(col)
    if not pd.api.types.is_numeric_dtype(col):
        return draft_text_column(col)
    x = col.to_numpy(dtype=float, na_value=np.nan)
    present = x[np.isfinite(x)]
    if not len(present):
        return None
    t = ("int" if pd.api.types.is_integer_dtype(col)
         or (np.isnan(x).any() and np.all(present == np.round(present))) else "float")
    lo, hi = _outward(float(present.min()), False), _outward(float(present.max()), True)
    if lo == hi:
        hi = lo + 1
    if t == "int":
        lo, hi = int(math.floor(lo)), int(math.ceil(hi))
    out = {"type": t, "unit": "", "bounds": [lo, hi]}
    if np.isnan(x).any():
        out["missing"] = True
    return out


def _draft_classes(labels: pd.Series) -> list:
    """The classes found: integer codes sorted, or text names sorted (missing labels left out)."""
    found = labels.dropna()
    if pd.api.types.is_numeric_dtype(found) and np.all(found == np.round(found)):
        return sorted(int(v) for v in found.unique())
    return sorted({str(v).strip() for v in found.tolist() if str(v).strip()})


def draft(path, label: str | None = None, labels: str | None = None,
          id_column: str | None = None, **read_options) -> dict:
    """A schema drafted from the data at ``path`` (table, .npz or image folder), marked as such.
    ``id_column``: a table's patient-id column, left out (never published).
    ``read_options``: ``sep``, ``decimal``, ``encoding``, ``sheet`` of a table file."""
    from . import ingest

    p = Path(path).expanduser()
    if id_column and (p.is_dir() or p.suffix.lower() == ".npz"):
        raise SchemaError("--id-column applies to tables only; drop it.")
    if p.is_dir():
        payload, meta = ingest.load_images(p, labels)
    elif p.suffix.lower() == ".npz":
        payload, meta = ingest.load_npz(p)
    else:
        if not label:
            raise SchemaError("A table draft needs --label COLUMN (the column to predict).")
        payload, meta, _ = ingest.load_table_with_ids(p, label, id_column, raw=True,
                                                      **read_options)
        payload = plain_columns(payload)
    out = {DRAFT_KEY: True, "kind": meta.kind, "records": meta.n_records, "description": "",
           "label": ({"column": label} if meta.kind == TABLE else {})}
    if meta.kind == TABLE:
        # records without a label are dropped at upload: the declared count leaves them out
        out["records"] = int(payload[label].map(has_label).sum())
        out["label"]["classes"] = _draft_classes(payload[label])
        refuse_comma_numbers(payload, p.name)
        cols = {c: _draft_column(payload[c]) for c in payload.columns if c != label}
        out["columns"] = {c: d or {"type": "category", "categories": []}
                          for c, d in cols.items()}
    else:
        out["label"]["classes"] = [int(c) for c in meta.labels]
        shape = list(payload["images"].shape[1:])
        out["image"] = {"height": shape[0], "width": shape[1],
                        "channels": shape[2] if len(shape) == 3 else 1}
    return out


def formula_notes(columns, label: str | None = None, class_names: dict | None = None,
                  category_names: dict | None = None) -> list:
    """Owner notes on published names a spreadsheet would run as a formula (OWASP CSV
    injection): researchers may export the mock or results and open them in Excel.
    ``category_names``: column -> its declared category names."""
    named = [("column", c) for c in columns] + [("label column", label)] + [
        (f"name of class {k}", v) for k, v in (class_names or {}).items()] + [
        (f"category of column {c!r}", v) for c, names in (category_names or {}).items()
        for v in names]
    return [f"{what} {name!r} starts with {name[:1]!r}, which spreadsheets run as a formula "
            "when a CSV holding it is opened; it is published as is (dp-datasite's own CSV "
            "exports quote it, other tools will not): rename it in the data and the schema "
            "unless it must stay" for what, name in named if formula_like(name)]


def draft_text(path, label: str | None = None, labels: str | None = None,
               id_column: str | None = None, **read_options) -> str:
    """The draft schema as YAML with its warning header; formula-like names are flagged in the
    header and on stderr. ``id_column``: a table's patient-id column, left out."""
    schema = draft(path, label, labels, id_column, **read_options)
    notes = draft_notes(schema) + formula_notes(schema.get("columns", {}), label)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    # ASCII only: a line break inside a name (even U+2028) must not end the comment early
    flags = "".join(f"# WARNING: {n.encode('ascii', 'backslashreplace').decode()}\n"
                    for n in notes)
    return DRAFT_HEADER + flags + to_yaml(schema)


# -- checking the data at upload -----------------------------------------------------------------
def _listing(values, show: int = 5) -> str:
    values = [str(v) for v in values]
    return ", ".join(values[:show]) + (f" and {len(values) - show} more" if len(values) > show
                                       else "")


def draft_notes(schema: dict) -> list[str]:
    """Owner notes on a table draft: free-text columns left undeclared, date layouts to check."""
    cols = (schema.get("columns") or {}).items()
    return [f"column {c!r} holds free text (many distinct values, or none): it cannot be a "
            "feature; declare it {type: drop} (ids are never published), or list its "
            "categories" for c, d in cols
            if d.get("type") == "category" and not d.get("categories")] + [
        f"column {c!r} is drafted as dates written {d['format']!r}: check that the export "
        "writes them that way (when every day is 12 or less, day-first and month-first both "
        "read)" for c, d in cols if "%d" in d.get("format", "") and "%m" in d.get("format", "")]


def check_labels(labels: np.ndarray, schema: dict, where: str) -> None:
    """Refuse records whose label is not a declared class (nothing is dropped silently)."""
    classes = schema["label"]["classes"]
    bad = ~np.isin(labels, classes)
    if bad.any():
        found = sorted({int(v) for v in labels[bad]})
        raise SchemaError(f"{where}: {int(bad.sum())} records have a label that is not a declared "
                          f"class ({_listing(found)}; declared: {classes}). Fix those records, or "
                          "add the class to label.classes in the schema if it is a real class.")


def apply_table(df: pd.DataFrame, schema: dict, where: str) -> tuple[pd.DataFrame, list[str]]:
    """The table checked against ``schema`` and normalised from it (text categories and labels to
    their declared codes, yes/no to bool, allowed missing values to NaN, records without a label
    dropped: :mod:`datasite.typed_columns`), cast to the declared dtypes, in declared column
    order (label last); and notes for the owner only (e.g. how many values lie outside the
    bounds, how many records had no label). Every problem with the columns is named at once."""
    label = schema["label"]["column"]
    missing = [c for c in schema["columns"] if c not in df.columns]
    extra = [c for c in df.columns if c not in schema["columns"] and c != label]
    if missing or extra:
        raise SchemaError(f"{where}: the columns differ from the schema: "
                          + "; ".join(x for x in (
                              f"declared but not in the data: {_listing(missing)}" if missing else "",
                              f"in the data but not declared: {_listing(extra)} (declare or drop "
                              "them)" if extra else "") if x) + ".")
    df = plain_columns(df)  # Parquet/Excel dtypes read as the same CSV text would be
    codes, bad = label_codes(df[label], schema["label"])
    if bad:
        raise SchemaError(f"{where}, label column {label!r}: {len(bad)} records have a label that "
                          f"is not a declared class ({_listing(sorted({str(v) for v in bad}))}; "
                          f"declared: {schema['label']['classes']}"
                          + (f" = {list(schema['label']['names'].values())}"
                             if schema["label"]["names"] else "")
                          + "). Fix those records, or add the class to label.classes in the "
                          "schema if it is a real class.")
    keep = ~np.isnan(codes)
    notes = ([] if keep.all() else [
        f"{int((~keep).sum())} records have no label {label!r}: dropped, never imputed (the "
        "schema's records count only the records with a label)"])
    df = df[keep]  # the file's row index is kept: problems name its rows
    declared = list(feature_columns(schema))  # columns declared {type: drop} are left out
    out, problems = {}, []
    for c in declared:
        col, bad, found = coerce_column(df[c], schema["columns"][c], c)
        problems += bad
        notes += found
        out[c] = col
    if problems:
        raise SchemaError(f"{where}: " + "; ".join(problems) + ".")
    out[label] = codes[keep].astype("int64")
    return pd.DataFrame(out, columns=[*declared, label]), notes


def apply_images(payload: dict, schema: dict, where: str) -> dict:
    """The images payload checked against the declared shape and classes."""
    im = schema["image"]
    want = [im["height"], im["width"]] + ([im["channels"]] if im["channels"] == 3 else [])
    images = payload["images"]
    if images.ndim == 4 and images.shape[-1] == 1 and im["channels"] == 1:
        images = images[..., 0]
    if list(images.shape[1:]) != want:
        raise SchemaError(f"{where}: images have shape {list(images.shape[1:])}, the schema "
                          f"declares {want} (height, width[, channels]); resize them or fix the "
                          "schema.")
    check_labels(payload["labels"], schema, f"{where}, labels")
    return {"images": images, "labels": payload["labels"]}


def check_count(n: int, schema: dict, where: str, dropped: int = 0) -> None:
    """The published count is the declared one, so the data must hold exactly that many
    (records with a label: ``dropped`` records without one do not count)."""
    if n != schema["records"]:
        held = (f"{n} records with a label ({dropped} more without a label are dropped)"
                if dropped else f"{n} records")
        raise SchemaError(f"{where}: the data holds {held} but the schema declares "
                          f"records: {schema['records']}. The record count is published as "
                          "declared: set records to the true count if it may be public.")


# -- upload ------------------------------------------------------------------------------------
NO_SCHEMA = ("Upload needs the dataset's reviewed public schema (--schema schema.yaml): "
             "everything researchers see before a job runs is taken from it, never from the "
             "records. Write a draft with `datasite schema draft {src} -o schema.yaml`, "
             "review it (domain bounds, classes, record count), remove its drafted_from_data "
             "line, then upload with --schema schema.yaml.")


def prepare(name: str, schema, **upload) -> tuple[object, DatasetMeta, object, list]:
    """(private payload, published metadata, mock, owner-only notes) of
    :func:`prepare_upload`, for a caller that keeps no patient ids."""
    return tuple(prepare_upload(name, schema, **upload))[:4]


class Prepared(NamedTuple):
    payload: object  # the private records
    meta: DatasetMeta  # published
    mock: object  # published
    notes: list  # the owner's eyes only
    ids: list | None  # private: each record's patient id (text), None without --id-column


def prepare_upload(name: str, schema, *, table=None, label=None, images=None, labels=None,
                   npz=None, id_column=None, description: str = "", seed: int = 0, sep=None,
                   decimal=None, encoding=None, sheet=None) -> Prepared:
    """The private payload, published metadata and mock, owner-only notes and private patient
    ids of an upload. ``sep``, ``decimal``, ``encoding``, ``sheet``: how the table file is
    written (see :func:`datasite.ingest.load_table`; sniffed when not given). ``id_column``:
    the table's patient-id column, split off as the file is read: it is in none of the rest.

    The metadata and the mock are functions of ``schema``, ``name``, ``description`` and
    ``seed`` only; the data is read just to check it against the schema (any mismatch refuses
    the upload before anything is written or published).
    """
    from . import ingest
    from .mock import synthetic_mock

    if schema is None:
        src = (f"{table} --label {label or 'COLUMN'}" if table
               else f"{images} --labels {labels or 'labels.csv'}" if images else f"{npz}")
        raise SchemaError(NO_SCHEMA.format(src=src))
    schema = read_schema(schema) if not isinstance(schema, dict) else normalise(schema)
    if (schema["kind"] == TABLE) != bool(table):
        raise SchemaError(f"The schema declares kind {schema['kind']!r}, which does not match the "
                          "data given (--table for tables, --npz/--images for images).")
    if id_column and not table:
        raise SchemaError("--id-column applies to tables only; drop it.")
    ids = None
    if table:
        declared = schema["label"]["column"]
        if label and label != declared:
            raise SchemaError(f"--label {label!r} differs from the schema's label column "
                              f"{declared!r}; drop --label or fix the schema.")
        if id_column and id_column in schema["columns"]:
            raise SchemaError(f"The schema declares the id column {id_column!r}: delete it from "
                              "the schema's columns (the id column is never published; draft "
                              "the schema with --id-column to leave it out).")
        payload, loaded, ids = ingest.load_table_with_ids(
            table, declared, id_column, name=name, sep=sep, decimal=decimal, encoding=encoding,
            sheet=sheet, raw=True)
        if ids is not None:  # the records apply_table drops (no label) take their ids along
            ids = [i for i, kept in zip(ids, payload[declared].map(has_label)) if kept]
        payload, notes = apply_table(payload, schema, Path(table).name)
        if ids is not None and len(ids) != len(payload):
            raise AssertionError("patient ids out of step with the records")
        dropped = loaded.n_records - len(payload)
        check_count(len(payload), schema, Path(table).name, dropped)
        check_min_records(len(payload), Path(table).name, MIN_RECORDS)
        from .upload_warnings import table_warnings  # owner-only: leakage, ids, imbalance

        notes += table_warnings(payload, declared, schema)
    else:
        payload, loaded = (ingest.load_images(images, labels, name=name) if images
                           else ingest.load_npz(npz, name=name))
        payload, notes = apply_images(payload, schema, Path(images or npz).name), []
        check_count(loaded.n_records, schema, Path(images or npz).name)
    meta = meta_from_schema(schema, name, description)
    notes += formula_notes(meta.features, meta.label if table else None, meta.class_names,
                           {c: v.get("names", []) for c, v in meta.columns.items()})
    # as many mock records as declared (capped): a job's batch size must fit the mock too
    mock = synthetic_mock(meta, n=min(meta.n_records, 2000), seed=seed)
    return Prepared(payload, meta, mock, notes, ids)
