"""Calibrated noise multipliers shared between processes, in one SQLite file.

A calibration (seconds of PLD compositions) is a pure function of its arguments, yet pricing, the
owner's ``run`` and the job subprocess each compute the same one. :func:`cached` keeps the
results in the file ``$DP_DATASITE_CALIBRATION_CACHE`` (the datasite sets it to a file in its
home, :meth:`datasite.config.SiteHome.load`); unset, every process calibrates for itself.

The file is a cache, never a source of truth:
* a value read from it is used only if the caller's check passes -- the very criterion the
  calibration bisects on, at the stored sigma (one accounting, ~5-10% of a calibration) -- so a
  stale, corrupted or tampered entry can cost a recomputation, never a guarantee;
* entries are keyed by the exact arguments (floats by repr) and :func:`cache_version`, which
  changes with dp_accounting, numpy, scipy or :data:`CALIBRATION_VERSION`;
* any SQLite error (corrupt, unreadable or locked file) is logged and the value recomputed.
"""
from __future__ import annotations

import functools
import importlib.metadata
import logging
import math
import os
import sqlite3
from typing import Callable

ENV_VAR = "DP_DATASITE_CALIBRATION_CACHE"
# Bump by hand whenever a change here could change a calibrated sigma (search, tolerances, the
# accountant's settings): entries of other versions are then never read.
CALIBRATION_VERSION = "1"
TIMEOUT_S = 2.0  # wait this long for another process's write; then do without the cache

_LOG = logging.getLogger(__name__)
_SCHEMA = ("CREATE TABLE IF NOT EXISTS sigmas (version TEXT NOT NULL, name TEXT NOT NULL, "
           "args TEXT NOT NULL, sigma REAL NOT NULL, PRIMARY KEY (version, name, args))")


@functools.lru_cache(maxsize=1)
def _library_versions() -> str:
    # The numerics a calibration runs through (dp_accounting's PLDs use scipy's FFTs).
    return ";".join(f"{d}={importlib.metadata.version(d)}"
                    for d in ("dp-accounting", "numpy", "scipy"))


def cache_version() -> str:
    """What a stored sigma is valid for: :data:`CALIBRATION_VERSION` and the numeric libraries'."""
    return f"calibration={CALIBRATION_VERSION};{_library_versions()}"


def args_key(args: tuple) -> str:
    """The exact arguments as text: repr keeps every bit of a float (no rounding)."""
    return repr(args)


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=TIMEOUT_S, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
        conn.execute(_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def _read(path: str, name: str, key: str, version: str):
    if not os.path.exists(path):  # reading never creates the file
        return None
    conn = _connect(path)
    try:
        row = conn.execute("SELECT sigma FROM sigmas WHERE version = ? AND name = ? AND args = ?",
                           (version, name, key)).fetchone()
    finally:
        conn.close()
    return None if row is None else row[0]


def _write(path: str, name: str, key: str, version: str, sigma: float) -> None:
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # owner-only, before SQLite opens it
    conn = _connect(path)
    try:
        with conn:  # one transaction: the row is there whole or not at all
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM sigmas WHERE version != ?", (version,))  # stale: never read
            conn.execute("INSERT OR REPLACE INTO sigmas VALUES (?, ?, ?, ?)",
                         (version, name, key, float(sigma)))
    finally:
        conn.close()


def _usable(value, meets: Callable[[float], bool]) -> bool:
    """The defence: a stored value is used only if it is a positive finite float that still
    meets the target by the calibration's own criterion."""
    if not (isinstance(value, float) and math.isfinite(value) and value > 0):
        return False
    try:
        return bool(meets(value))
    except Exception:  # e.g. an out-of-range sigma the accountant refuses: recompute
        return False


def cached(name: str, args: tuple, compute: Callable[[], float],
           meets: Callable[[float], bool]) -> float:
    """``compute()``, or the value stored for (``name``, ``args``) if ``meets`` it; a computed
    value is stored. Without ``$DP_DATASITE_CALIBRATION_CACHE``: ``compute()``."""
    path = os.environ.get(ENV_VAR)
    if not path:
        return compute()
    key, version = args_key(args), cache_version()
    try:
        stored = _read(path, name, key, version)
    except (sqlite3.Error, OSError) as e:
        _LOG.warning("calibration cache %s unreadable (%s): recalibrating; delete the file if "
                     "this persists (it is only a cache)", path, e)
        stored = None
    if stored is not None:
        if _usable(stored, meets):
            return stored
        _LOG.warning("calibration cache %s: stored sigma %r for %s%s fails its target; "
                     "recalibrating", path, stored, name, key)
    sigma = compute()
    try:
        _write(path, name, key, version, sigma)
    except (sqlite3.Error, OSError) as e:
        _LOG.warning("calibration cache %s not written (%s); delete the file if this persists",
                     path, e)
    return sigma
