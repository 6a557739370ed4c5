"""Synthetic mock data: the real dataset's schema and shapes, and no real record.

The mock is what researchers see and run their code on before submitting it, so it must have
exactly the real payload's structure (columns and their order, dtypes, image shape and dtype,
label set) and must not reveal real records. It is *not* meant to be statistically faithful:
a model trained on it learns nothing about the real data (labels are drawn independently of the
features).

What the mock depends on (the only real-data information it publishes):

* tables: the column names and dtypes, the label set (both published in the metadata anyway)
  and, per feature column, two coarse facts: the order of magnitude of the column's median
  absolute value (rounded to a power of ten) and whether the column has negative values. No
  mean, standard deviation, minimum or maximum is copied. Floats are drawn from N(0, 1) (or its
  absolute value, for non-negative columns) times that power of ten; integers uniformly from
  ``[0, 10**k]`` (``[-10**k, 10**k]`` with negatives); booleans uniformly. Columns are sampled
  independently, so no correlation is published either. The power of ten is a deliberately
  coarse, non-DP summary; it keeps the mock usable (features on a plausible scale) at the cost
  of that one coarse number per column.
* images: only the shape, dtype and label set: each label gets smooth random "blob" templates
  drawn from the seed, and each mock image is a template plus smooth noise and random shifts.
  No pixel statistic of the real images is used.

Labels are uniform over the label set and every label appears at least once. Any mock record
that happens to equal a real record (possible for tables with a few small integer columns) is
re-drawn, with a widening range, until none does.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from shared.data import TABLE, DatasetMeta


class MockError(ValueError):
    """No mock without real records can be built (e.g. every possible row occurs in the data)."""


def default_mock_size(n_real: int, n_labels: int) -> int:
    """``min(max(50, n_real // 10), 500)``, and at least one record per label."""
    return max(min(max(50, n_real // 10), 500), n_labels)


def synthetic_mock(payload, meta: DatasetMeta, n: int | None = None, seed: int = 0):
    """A mock payload with the same structure as ``payload`` and no real record in it.

    ``n`` is the number of mock records (default :func:`default_mock_size`; raised to the number
    of labels if smaller). The same inputs and ``seed`` give the same mock.
    """
    labels = list(meta.labels)
    if not labels:
        raise MockError("The label set is empty; cannot build a mock.")
    n_real = len(payload) if meta.kind == TABLE else len(payload["labels"])
    n = default_mock_size(n_real, len(labels)) if n is None else max(int(n), len(labels))
    rng = np.random.default_rng(seed)
    if meta.kind == TABLE:
        return _table_mock(payload, meta, n, rng)
    return _images_mock(payload, meta, n, rng)


def _mock_labels(labels: list, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels uniform over ``labels``, each label at least once, shuffled."""
    idx = np.concatenate([np.arange(len(labels)), rng.integers(0, len(labels), n - len(labels))])
    rng.shuffle(idx)
    return np.asarray(labels)[idx]


# -- tables ----------------------------------------------------------------------------------
def _magnitude(values: np.ndarray) -> float:
    """Median absolute value rounded to a power of ten (1 for an all-zero column)."""
    med = float(np.median(np.abs(values))) if len(values) else 0.0
    if not np.isfinite(med) or med <= 0:
        return 1.0
    return float(10.0 ** np.round(np.log10(med)))


def _column_sampler(col: pd.Series):
    """A function ``(size, rng, widen) -> values`` drawing mock values for one real column."""
    dtype = col.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return lambda size, rng, widen: rng.integers(0, 2, size).astype(bool)
    values = col.to_numpy(dtype=float)
    scale = _magnitude(values)
    negative = bool((values < 0).any())
    if pd.api.types.is_integer_dtype(dtype):
        info = np.iinfo(np.dtype(str(dtype).lower()))  # Int64 -> int64 for bounds

        def ints(size, rng, widen):
            hi = min(max(1, int(scale)) * widen, info.max, np.iinfo(np.int64).max)
            lo = max(-hi if negative else 0, info.min)
            return rng.integers(lo, hi, size, endpoint=True)
        return ints

    def floats(size, rng, widen):
        x = rng.standard_normal(size) * scale * widen
        x = np.abs(x) if not negative else x
        return x + 0.0  # no -0.0

    return floats


def _row_hashes(df: pd.DataFrame) -> np.ndarray:
    return pd.util.hash_pandas_object(df, index=False).to_numpy()


def _table_mock(real: pd.DataFrame, meta: DatasetMeta, n: int,
                rng: np.random.Generator) -> pd.DataFrame:
    label = meta.label
    features = [c for c in real.columns if c != label]
    samplers = {c: _column_sampler(real[c]) for c in features}

    def draw(size: int, widen: int) -> dict:
        return {c: pd.Series(samplers[c](size, rng, widen)).astype(real[c].dtype)
                for c in features}

    cols = draw(n, 1)
    cols[label] = pd.Series(_mock_labels(meta.labels, n, rng)).astype(real[label].dtype)
    mock = pd.DataFrame(cols, columns=list(real.columns))
    real_hashes = set(_row_hashes(real).tolist())
    widen = 1
    for attempt in range(64):
        clash = np.fromiter((h in real_hashes for h in _row_hashes(mock).tolist()), bool, n)
        if not clash.any():
            return mock
        # re-draw the clashing rows' features (labels stay, so every label stays present),
        # over a widening range if clashes persist (few small integer columns)
        if attempt >= 3:
            widen *= 2
        fresh = draw(int(clash.sum()), widen)
        for c in features:
            mock.loc[clash, c] = fresh[c].to_numpy()
    raise MockError("Could not draw a mock table without real rows: the real data seems to "
                    "contain every possible row of its (boolean) columns.")


# -- images ----------------------------------------------------------------------------------
def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
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
    return _upsample(rng.standard_normal(shape + (cells, cells)), h, w)


def _images_mock(real: dict, meta: DatasetMeta, n: int, rng: np.random.Generator) -> dict:
    images = real["images"]
    shape = images.shape[1:]
    h, w = shape[0], shape[1]
    c = shape[2] if len(shape) == 3 else None
    channels = (c,) if c else ()
    labels = _mock_labels(meta.labels, n, rng).astype(real["labels"].dtype)
    # one smooth template per label; each image = randomly shifted template + smooth noise
    templates = _smooth_noise((len(meta.labels),) + channels, h + 4, w + 4, 5, rng)
    which = np.searchsorted(np.asarray(meta.labels), labels)
    out = np.empty((n,) + tuple(shape), dtype=images.dtype)
    for start in range(0, n, 64):  # chunks keep float memory small for large images
        k = which[start:start + 64]
        m = len(k)
        dy, dx = rng.integers(0, 5, m), rng.integers(0, 5, m)
        base = np.stack([templates[j][..., y:y + h, x:x + w] for j, y, x in zip(k, dy, dx)])
        x = (0.8 * base + 0.4 * _smooth_noise((m,) + channels, h, w, 8, rng)
             + 0.05 * rng.standard_normal(base.shape))
        if c:
            x = np.moveaxis(x, 1, -1)  # (m, C, H, W) -> (m, H, W, C)
        out[start:start + m] = _to_dtype(x, images.dtype)
    _redraw_real_images(out, images, rng)
    return {"images": out, "labels": labels}


def _redraw_real_images(out: np.ndarray, images: np.ndarray, rng: np.random.Generator) -> None:
    """Replace any mock image equal to a real one (practically impossible; checked anyway).

    A fingerprint of up to 256 fixed pixels selects candidates, so the real images are not read
    in full.
    """
    flat_real = images.reshape(len(images), -1)
    size = flat_real.shape[1]
    idx = np.unique(np.linspace(0, size - 1, min(size, 256)).astype(int))
    prints: dict[bytes, list[int]] = {}
    for i, fp in enumerate(flat_real[:, idx]):
        prints.setdefault(fp.tobytes(), []).append(i)
    for i in range(len(out)):
        for _ in range(100):
            cands = prints.get(out[i].reshape(-1)[idx].tobytes(), [])
            if not any(np.array_equal(out[i], images[j]) for j in cands):
                break
            out[i] = _to_dtype(rng.standard_normal(out[i].shape) * 2, images.dtype)
        else:
            raise MockError("Could not draw mock images different from the real ones.")


def _to_dtype(x: np.ndarray, dtype) -> np.ndarray:
    """Map roughly standard-normal values to the image dtype's range (uint8: 0..255)."""
    dtype = np.dtype(dtype)
    u = np.clip(0.5 + 0.2 * x, 0.0, 1.0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.round(info.min + u * (info.max - info.min)).astype(dtype)
    return u.astype(dtype)
