"""The train/test split of a job: per record, by a keyed hash of the record's own content.

Adding or removing one record never moves another across the split, so neighbouring datasets
keep neighbouring training sets (what the DP-SGD guarantee needs).
"""
from __future__ import annotations

import hashlib

import numpy as np

# Test-only switch: True restores the old stratified sklearn split (a function of the whole
# dataset), so the neighbouring-datasets test can show that it catches it. Never set it elsewhere.
_STRATIFIED_SPLIT_FOR_TESTS = False


def record_side(content: bytes, test_fraction: float, seed: int) -> bool:
    """True iff the record whose bytes are ``content`` goes to the test split: a keyed hash
    (BLAKE2b, key = the spec's seed) of its own content, read as a number in [0, 1), below
    ``test_fraction``. A function of that record alone, so adding or removing one record never
    moves another one across the split (neighbouring datasets keep neighbouring training sets)."""
    h = hashlib.blake2b(content, digest_size=8, key=str(int(seed)).encode(), person=b"dp-split")
    return int.from_bytes(h.digest(), "big") / 2.0 ** 64 < test_fraction


def record_bytes(rows: np.ndarray, y: np.ndarray) -> list[bytes]:
    """Each record's content as bytes: its row (features, or image pixels) and its label."""
    rows, y = np.ascontiguousarray(rows), np.asarray(y)
    if len(rows) != len(y):
        raise ValueError(f"{len(rows)} rows but {len(y)} labels")
    return [rows[i].tobytes() + b"|" + str(y[i].item()).encode() for i in range(len(y))]


def split_indices(rows: np.ndarray, y: np.ndarray, test_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions: each record independently by :func:`record_side` of its own row
    and label. The only place a job's split is decided.

    The sizes are therefore random (Binomial(n, test_fraction) test records) and not public:
    everything privacy-relevant (sampling rate, steps, regulariser, released counts) uses the
    planned count ``shared.data.n_train_records(n_records, test_fraction)`` instead.
    """
    y = np.asarray(y)
    n = len(y)
    idx = np.arange(n)
    if test_fraction <= 0:
        return idx, idx[:0]
    if _STRATIFIED_SPLIT_FOR_TESTS:
        return _stratified_split(y, test_fraction, seed)
    test = np.fromiter((record_side(b, test_fraction, seed) for b in record_bytes(rows, y)),
                       dtype=bool, count=n)
    return idx[~test], idx[test]


def _stratified_split(y, test_fraction, seed):
    """The old split (tests only): sklearn's stratified split, a function of all the labels."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    except ValueError:  # a class too small to stratify: fall back to a plain random split
        tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed)
    return np.sort(tr), np.sort(te)
