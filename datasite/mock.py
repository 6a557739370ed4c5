"""Synthetic mock data: drawn from the owner's declared public schema alone.

The mock is what researchers see and run their code on before submitting it, so it has exactly
the published structure (columns in the declared order, dtypes, image shape, label set). It is a
function of the metadata (itself a function of the declared schema, see ``shared/schema.py``),
the mock size and the seed, and of nothing else: no real value, no statistic of the records,
and no comparison against real rows. A drawn row can equal a real row only by chance, and that
chance does not depend on the records, so it tells nobody anything about them. It is not meant
to be statistically faithful: labels are drawn independently of the features.

* tables: floats uniform over the declared bounds, ints uniform over the declared integer range,
  dates uniform whole days over their bounds (days since the origin), booleans and categories
  uniform (category codes, their names are in the metadata); columns independent. A column
  declared ``missing: true`` is float64 with a fixed public share (:data:`MOCK_MISSING_SHARE`)
  of NaN, so code tried on the mock meets missing values.
* declared rates replace the uniform shares: a category's ``rates``, a bool's ``rate`` (share
  true), a column's ``missing_rate``, the label's ``rates`` (``meta.label_rates``). The owner
  declares them public in the schema, so following them costs no privacy; without them the mock
  is drawn exactly as before.
* images: the declared shape, uint8: each label gets smooth random "blob" templates drawn from the
  seed, and each mock image is a template plus smooth noise and random shifts.

Labels are uniform over the declared classes (or follow their declared rates) and every class
appears at least once.

That is the default mock (``synthetic``). An owner may choose instead, for a table, a DP
synthetic mock (``upload --mock dp``, :func:`dp_mock`): measured from the records with noise, so
it keeps correlations and some label signal, and its privacy cost is charged to the dataset's
budget (:mod:`datasite.mock_release`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from shared.data import TABLE, DatasetMeta


# a public constant, not the real missing rate (that is published only if the owner declares
# it: missing_rate)
MOCK_MISSING_SHARE = 0.1


class MockError(ValueError):
    """No mock can be built from the metadata (e.g. no declared classes)."""


def default_mock_size(n_records: int, n_labels: int) -> int:
    """``min(max(50, n_records // 10), 500)``, and at least one record per label."""
    return max(min(max(50, n_records // 10), 500), n_labels)


def synthetic_mock(meta: DatasetMeta, n: int | None = None, seed: int = 0):
    """A mock payload with the published structure of ``meta``, drawn from ``meta`` alone.

    ``n`` is the number of mock records (default :func:`default_mock_size` of the declared
    count; raised to the number of classes if smaller). Same inputs and seed, same mock.
    """
    labels = list(meta.labels)
    if not labels:
        raise MockError("The label set is empty; declare the classes in the schema.")
    n = default_mock_size(meta.n_records, len(labels)) if n is None else max(int(n), len(labels))
    rng = np.random.default_rng(seed)
    rates = list(getattr(meta, "label_rates", None) or []) or None
    if meta.kind == TABLE:
        return _table_mock(meta, n, rng, rates)
    return _images_mock(meta, n, rng, rates)


def dp_mock(meta: DatasetMeta, table: pd.DataFrame, epsilon: float, delta: float, n: int):
    """(a DP synthetic mock of the real ``table``, the JSON of the DP event it spends): NOT a
    function of the schema alone; see :mod:`shared.synth.copula`."""
    from shared.synth import dp_copula_mock

    return dp_copula_mock(table, meta, epsilon, delta, max(int(n), len(meta.labels)))


def _shares(rates) -> np.ndarray:
    p = np.asarray(rates, dtype=np.float64)
    return p / p.sum()  # declared within a tolerance of 1 (shared.schema)


def _mock_labels(labels: list, n: int, rng: np.random.Generator,
                 rates: list | None = None) -> np.ndarray:
    """``n`` labels uniform over ``labels`` (or drawn with the declared ``rates``), each label
    at least once, shuffled."""
    k = len(labels)
    rest = (rng.integers(0, k, n - k) if rates is None
            else rng.choice(k, n - k, p=_shares(rates)))
    idx = np.concatenate([np.arange(k), rest])
    rng.shuffle(idx)
    return np.asarray(labels)[idx]


# -- tables ----------------------------------------------------------------------------------
def _draw_column(col: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    t = col["type"]
    if t == "bool":
        if "rate" in col:
            return rng.random(n) < col["rate"]
        return rng.integers(0, 2, n).astype(bool)
    if t == "category":
        cats = np.asarray(col["categories"], dtype=np.int64)
        return rng.choice(cats, n, p=_shares(col["rates"]) if "rates" in col else None)
    lo, hi = col["bounds"]
    if t == "int":
        return rng.integers(int(lo), int(hi), n, endpoint=True).astype(np.int64)
    if t == "date" and np.ceil(lo) < np.floor(hi):  # whole days, as most exports hold
        return rng.integers(int(np.ceil(lo)), int(np.floor(hi)), n, endpoint=True) + 0.0
    return rng.uniform(float(lo), float(hi), n) + 0.0  # + 0.0: no -0.0


def _table_mock(meta: DatasetMeta, n: int, rng: np.random.Generator,
                rates: list | None) -> pd.DataFrame:
    if not meta.columns:
        raise MockError(f"Dataset {meta.name!r} has no declared columns; upload it with a "
                        "schema (datasite upload ... --schema schema.yaml).")
    cols = {c: _draw_column(v, n, rng) for c, v in meta.columns.items()}
    for c, v in meta.columns.items():
        if v.get("missing"):
            x = cols[c].astype(np.float64)
            x[rng.random(n) < v.get("missing_rate", MOCK_MISSING_SHARE)] = np.nan
            cols[c] = x
    cols[meta.label] = _mock_labels(meta.labels, n, rng, rates).astype(np.int64)
    return pd.DataFrame(cols, columns=[*meta.columns, meta.label])


# -- images ----------------------------------------------------------------------------------
def upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of ``grid[..., gh, gw]`` to ``[..., h, w]``."""
    gh, gw = grid.shape[-2:]
    ys = np.linspace(0, gh - 1, h)
    xs = np.linspace(0, gw - 1, w)
    y0 = np.clip(np.floor(ys).astype(int), 0, gh - 2)
    x0 = np.clip(np.floor(xs).astype(int), 0, gw - 2)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    g00 = grid[..., y0[:, None], x0[None, :]]
    g01 = grid[..., y0[:, None], x0[None, :] + 1]
    g10 = grid[..., y0[:, None] + 1, x0[None, :]]
    g11 = grid[..., y0[:, None] + 1, x0[None, :] + 1]
    return (g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx)
            + g11 * fy * fx)


def _smooth_noise(shape: tuple, h: int, w: int, cells: int, rng: np.random.Generator):
    return upsample(rng.standard_normal(shape + (cells, cells)), h, w)


def _images_mock(meta: DatasetMeta, n: int, rng: np.random.Generator,
                 rates: list | None) -> dict:
    shape = tuple(meta.image_shape)
    h, w = shape[0], shape[1]
    c = shape[2] if len(shape) == 3 else None
    channels = (c,) if c else ()
    labels = _mock_labels(meta.labels, n, rng, rates).astype(np.int64)
    # one smooth template per label; each image = randomly shifted template + smooth noise
    templates = _smooth_noise((len(meta.labels),) + channels, h + 4, w + 4, 5, rng)
    which = np.searchsorted(np.asarray(meta.labels), labels)
    out = np.empty((n,) + shape, dtype=np.uint8)
    for start in range(0, n, 64):  # chunks keep float memory small for large images
        k = which[start:start + 64]
        m = len(k)
        dy, dx = rng.integers(0, 5, m), rng.integers(0, 5, m)
        base = np.stack([templates[j][..., y:y + h, x:x + w] for j, y, x in zip(k, dy, dx)])
        x = (0.8 * base + 0.4 * _smooth_noise((m,) + channels, h, w, 8, rng)
             + 0.05 * rng.standard_normal(base.shape))
        if c:
            x = np.moveaxis(x, 1, -1)  # (m, C, H, W) -> (m, H, W, C)
        out[start:start + m] = _to_dtype(x, np.uint8)
    return {"images": out, "labels": labels}


def _to_dtype(x: np.ndarray, dtype) -> np.ndarray:
    """Map roughly standard-normal values to the image dtype's range (uint8: 0..255)."""
    dtype = np.dtype(dtype)
    u = np.clip(0.5 + 0.2 * x, 0.0, 1.0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.round(info.min + u * (info.max - info.min)).astype(dtype)
    return u.astype(dtype)
