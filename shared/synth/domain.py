"""The public domain of each table column, cut into histogram bins (the owner's declared schema
alone: no record decides a bin).

* ``bool``, ``category``, the label, and an ``int`` with at most :data:`MAX_BINS` values: one bin
  per declared value;
* ``float``, ``date`` and wider ``int``: :data:`NUMERIC_BINS` equal-width bins over the declared
  bounds (values are within them: upload checks every record against the schema);
* a column declared ``missing: true`` has one more bin, last, for its missing values.

A record falls in exactly one bin of every column, so adding or removing it changes each
column's histogram by 1 in one bin: sensitivity 1 per histogram (add/remove).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data import DatasetMeta

NUMERIC_BINS = 16
MAX_BINS = 32


@dataclass(frozen=True)
class Column:
    """One column's bins: ``values`` (discrete) or ``edges`` (numeric), plus a missing bin."""

    name: str
    type: str  # the declared type, or "label"
    values: tuple | None = None
    edges: tuple | None = None
    missing: bool = False

    @property
    def n_values(self) -> int:
        """Bins holding values (the missing bin, if any, comes after them)."""
        return len(self.values) if self.values is not None else len(self.edges) - 1

    @property
    def n_bins(self) -> int:
        return self.n_values + int(self.missing)

    def encode(self, x) -> tuple[np.ndarray, np.ndarray]:
        """(bin of each value, its position in [0, 1) inside a numeric bin, 0.5 for a discrete
        one); a missing value is in the missing bin."""
        x = np.asarray(x, dtype=np.float64)
        nan = np.isnan(x)
        if self.values is not None:
            vals = np.asarray(self.values, dtype=np.float64)
            bins = np.searchsorted(vals, np.where(nan, vals[0], x))
            bins = np.clip(bins, 0, len(vals) - 1)
            if not np.all(nan | (vals[bins] == x)):
                raise ValueError(f"column {self.name!r} holds a value outside its declared set")
            within = np.full(len(x), 0.5)
        else:
            e = np.asarray(self.edges)
            pos = (np.clip(np.where(nan, e[0], x), e[0], e[-1]) - e[0]) / (e[-1] - e[0])
            scaled = pos * self.n_values
            bins = np.minimum(scaled.astype(np.int64), self.n_values - 1)
            within = np.clip(scaled - bins, 0.0, 1.0)
        return np.where(nan, self.n_values, bins).astype(np.int64), within

    def decode(self, bins: np.ndarray, within: np.ndarray) -> np.ndarray:
        """Values back from value bins and positions inside them (whole numbers for ints and
        dates, as most exports hold)."""
        if self.values is not None:
            return np.asarray(self.values)[bins]
        e = np.asarray(self.edges)
        x = e[bins] + within * (e[bins + 1] - e[bins])
        if self.type in ("int", "date"):
            x = np.clip(np.round(x), np.ceil(e[0]), np.floor(e[-1]))
        return x


def columns_of(meta: DatasetMeta) -> list[Column]:
    """The feature columns in declared order, then the label."""
    out = [_column(name, spec) for name, spec in meta.columns.items()]
    return out + [Column(meta.label, "label", values=tuple(int(v) for v in meta.labels))]


def _column(name: str, spec: dict) -> Column:
    t, missing = spec["type"], bool(spec.get("missing"))
    if t == "bool":
        return Column(name, t, values=(0, 1), missing=missing)
    if t == "category":
        return Column(name, t, values=tuple(sorted(int(v) for v in spec["categories"])),
                      missing=missing)
    lo, hi = (float(b) for b in spec["bounds"])
    if t == "int" and hi - lo + 1 <= MAX_BINS:
        return Column(name, t, values=tuple(range(int(lo), int(hi) + 1)), missing=missing)
    if not hi > lo:
        return Column(name, t, values=(lo,), missing=missing)  # a constant column
    return Column(name, t, edges=tuple(np.linspace(lo, hi, NUMERIC_BINS + 1)), missing=missing)


def frame(cols: list[Column], values: dict[str, np.ndarray], label: str) -> pd.DataFrame:
    """A mock DataFrame with the dtypes of the schema-only mock (:mod:`datasite.mock`)."""
    out = {}
    for col in cols:
        x = values[col.name]
        if col.missing:
            out[col.name] = x.astype(np.float64)
        elif col.type == "bool":
            out[col.name] = x.astype(bool)
        elif col.type in ("int", "category", "label"):
            out[col.name] = x.astype(np.int64)
        else:
            out[col.name] = x.astype(np.float64) + 0.0  # + 0.0: no -0.0
    return pd.DataFrame(out, columns=[c.name for c in cols if c.name != label] + [label])
