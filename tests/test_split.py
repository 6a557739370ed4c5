"""The train/test split is per record (shared.training.split.split_indices): adding or removing one
record never moves another across the split, so neighbouring datasets have neighbouring training
sets, and the DP-SGD event actually run is the planned one whatever the split's realised sizes."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from shared import training
from shared.training import split, table
from shared.training.engine import DPTrainer
from shared.privacy.accounting import event_to_json
from shared.data import DatasetMeta
from shared.jobs import DPSGDTableSpec, n_train_records


def _bc():
    df = load_breast_cancer(as_frame=True).frame.rename(columns={"target": "diagnosis"})
    return df, DatasetMeta(name="bc", kind="table", n_records=len(df), label="diagnosis",
                           labels=[0, 1])


def _test_side(X, y, seed=0) -> np.ndarray:
    _, te = training.split_indices(X, y, 0.2, seed)
    side = np.zeros(len(y), dtype=bool)
    side[te] = True
    return side


def _moved(rows=range(0, 569, 57)) -> list[int]:
    """For each removed record r: how many of the OTHER 568 records changed side."""
    df, _ = _bc()
    X, y, *_ = training.table_xy(df, "diagnosis", [0, 1])
    full = _test_side(X, y)
    out = []
    for r in rows:
        keep = np.arange(len(y)) != r
        out.append(int((_test_side(X[keep], y[keep]) != full[keep]).sum()))
    return out


def test_neighbours_keep_every_other_record_on_its_side():
    assert _moved() == [0] * 10


def test_attack_catches_the_old_dataset_wide_split(monkeypatch):
    # the old stratified sklearn split: one record removed reshuffles dozens of others
    monkeypatch.setattr(split, "_STRATIFIED_SPLIT_FOR_TESTS", True)
    moved = _moved()
    assert max(moved) > 50 and sum(m > 0 for m in moved) >= 8


def test_side_is_a_keyed_hash_of_the_record_alone():
    df, _ = _bc()
    X, y, *_ = training.table_xy(df, "diagnosis", [0, 1])
    side = _test_side(X, y)
    # reordering the records, or a duplicate, changes nobody's side
    perm = np.random.default_rng(0).permutation(len(y))
    assert np.array_equal(_test_side(X[perm], y[perm]), side[perm])
    X2, y2 = np.vstack([X, X[:1]]), np.concatenate([y, y[:1]])
    assert np.array_equal(_test_side(X2, y2), np.append(side, side[0]))
    # the seed is the key: another seed, another (independent) split of about the same size
    other = _test_side(X, y, seed=1)
    assert 0.1 < np.mean(other != side) < 0.5
    assert 0.15 < side.mean() < 0.25 and not training.split_indices(X, y, 0.0, 0)[1].size


def test_realised_dpsgd_event_is_the_planned_one_on_both_neighbours():
    df, meta = _bc()
    spec = DPSGDTableSpec(dataset="bc", label="diagnosis", epsilon=3.0, delta=1e-5, epochs=2,
                          batch_size=32, learning_rate=2.0, seed=0).validate(meta)
    for drop in (None, 0):  # the table and its neighbour without record 0
        d = df if drop is None else df.drop(index=drop).reset_index(drop=True)
        m = DatasetMeta(name="bc", kind="table", n_records=len(d), label="diagnosis",
                        labels=[0, 1])
        X, y, *_ = training.table_xy(d, "diagnosis", [0, 1])
        tr, _ = training.split_indices(X, y, 0.2, 0)
        planned = n_train_records(len(d), 0.2)
        assert len(tr) != planned  # the realised size differs from the planned one ...
        r = training.train_dpsgd_table(d, spec, classes=[0, 1], device="cpu")
        # ... and yet the event run, rate and scaling are exactly the planned, public ones
        assert r["privacy"]["event"] == event_to_json(spec.planned_event(m))
        q, steps = training.poisson_schedule(planned, 32, 2)
        assert r["privacy"]["sample_rate"] == q and r["privacy"]["steps"] == steps
        assert r["metrics"]["n_train"] == planned and r["metrics"]["n_test"] == len(d) - planned


def test_engine_samples_at_the_planned_rate_not_the_realised_one(monkeypatch):
    """The table job hands the engine the planned rate, steps and expected batch size, never
    functions of how many records the split happened to put in training."""
    df, meta = _bc()
    spec = DPSGDTableSpec(dataset="bc", label="diagnosis", epsilon=3.0, delta=1e-5, epochs=1,
                          batch_size=32, learning_rate=2.0, seed=0).validate(meta)
    seen = {}

    class Spy(DPTrainer):
        def run(self, X, y, sample_rates, steps, **kw):
            done = super().run(X, y, sample_rates, steps, **kw)
            seen.update(n=len(X), rates=set(np.asarray(sample_rates).tolist()), steps=steps,
                        expected=self.optimizer.expected_batch_size)
            return done

    monkeypatch.setattr(table, "DPTrainer", Spy)
    training.train_dpsgd_table(df, spec, classes=[0, 1], device="cpu")
    planned = n_train_records(len(df), 0.2)
    q, _ = training.poisson_schedule(planned, 32, 1)
    assert planned == 455 and seen["n"] != planned  # realised training records != planned
    assert seen["rates"] == {q} and seen["steps"] == int(1 / q)
    assert seen["expected"] == 455 * q and q == 1 / 15  # q = 1/ceil(455/32)
