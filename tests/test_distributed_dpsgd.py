"""Data-parallel DP-SGD (shared.training.distributed, DPTrainer(data_parallel=True)): 2 CPU
processes over gloo on loopback give the single process's noise scale, sampling rate, steps and
reported event; the noise actually added over both ranks has one process's total std."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ddp_ranks
from shared.privacy.accounting import event_to_json
from shared.privacy.pricing import planned_event
from shared.training import table
from shared.training.distributed import launch
from test_shared_training import bc_frame, bc_meta, bc_spec

torch.set_num_threads(1)
N, Q, SIGMA, CLIP, LR, STEPS = 200, 0.1, 1.5, 2.0, 0.7, 30
TOL = 0.05  # 30 x 1025 draws: the sample std is within ~0.4% (1 s.e.) of the truth


@pytest.fixture(scope="module")
def noise():
    return launch(ddp_ranks.noise_measurements, 2, N, Q, SIGMA, CLIP, LR, STEPS,
                  device_type="cpu")


def std_ratio(run: dict) -> float:
    """Measured std of the update over one process's sigma C lr / E[B]."""
    return run["deltas"].std().item() / (SIGMA * CLIP * LR / (Q * N))


def test_single_process_reference_meets_the_std_check():
    run = ddp_ranks.pure_noise_updates(N, Q, SIGMA, CLIP, LR, STEPS, "hooks", False)
    assert abs(std_ratio(run) - 1) < TOL


@pytest.mark.parametrize("mode", ("hooks", "ghost"))
def test_two_ranks_add_one_process_total_noise(noise, mode):
    run = noise[mode]
    assert abs(std_ratio(run) - 1) < TOL, std_ratio(run)
    d = run["deltas"]
    assert abs(d.mean().item()) < 4 * d.std().item() / len(d) ** .5
    assert run["same_on_all_ranks"]  # one model: the ranks applied the same all-reduced update
    assert run["per_rank_expected"] == Q * N / 2  # Opacus' per-worker batch, then / world


@pytest.mark.parametrize("mode", ("hooks", "ghost"))
def test_std_check_catches_noise_added_on_every_rank(noise, mode):
    """Each rank drawing the full sigma C (the classic DDP mistake) gives sqrt(2) x the std:
    the check above fails on it."""
    ratio = std_ratio(noise[f"{mode}_noise_every_rank"])
    assert not abs(ratio - 1) < TOL
    assert abs(ratio - 2 ** .5) < 2 * TOL, ratio


def test_global_batch_is_poisson_at_the_single_process_rate(noise):
    """Each rank samples its shard at q: the global batch has mean q N (over 2 modes x 30
    steps), the single process's."""
    sizes = torch.cat([noise["hooks"]["batch"], noise["ghost"]["batch"]]).numpy()
    se = np.sqrt(N * Q * (1 - Q) / len(sizes))
    assert abs(sizes.mean() - Q * N) < 4 * se, sizes.mean()
    assert sizes.std() > 0  # realised sizes vary: Poisson, not fixed batches


def test_table_job_on_two_ranks_reports_the_single_process_event():
    df = bc_frame().sample(200, random_state=0)
    spec = bc_spec(epochs=2, delta=1e-4)
    one = table.train_dpsgd_table(df, spec, device="cpu")["privacy"]
    two = table.train_dpsgd_table_parallel(df, spec, 2, device_type="cpu")["privacy"]
    for key in ("noise_multiplier", "sample_rate", "steps", "expected_batch_size", "clip_norm"):
        assert two[key] == one[key], key
    assert json.dumps(two["training_event"], sort_keys=True) == \
        json.dumps(one["training_event"], sort_keys=True)
    assert two == one  # the whole report: epsilon, metrics part, shares
    # and exactly what the owner priced (shared.privacy.pricing)
    assert two["event"] == event_to_json(planned_event(spec.to_dict(), bc_meta(df)))


def test_table_job_ranks_train_disjoint_shards_at_the_planned_rate():
    df = bc_frame().sample(200, random_state=0)
    spec = bc_spec(epochs=2, delta=1e-4)
    seen = launch(ddp_ranks.table_job_seen, 2, df, spec, device_type="cpu")
    ranks, q = seen["ranks"], seen["privacy"]["sample_rate"]
    assert [r["world"] for r in ranks] == [2, 2]
    assert all(r["rates"] == [q] for r in ranks)  # each shard at the single-process q
    n_train = seen["privacy"]["expected_batch_size"] / q
    total = sum(r["n"] for r in ranks)  # the realised split: about n_train, not 2 n_train
    assert abs(total - n_train) < 0.2 * n_train and abs(ranks[0]["n"] - ranks[1]["n"]) <= 1
