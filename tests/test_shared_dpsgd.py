"""The DP-SGD engine (shared.training.engine): noise scale, per-record Poisson rates, clipping,
determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shared.training.engine import DPTrainer

torch.set_num_threads(1)
MODES = ("hooks", "ghost")


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def _zero_loss(logits, y):
    """Per-record loss with exactly zero gradient (but a real forward/backward through Opacus)."""
    return logits.sum(1) * 0.0


@pytest.mark.parametrize("mode", MODES)
def test_noise_std_is_sigma_times_clip_times_lr_over_expected_batch(mode):
    sigma, clip, lr = 1.5, 2.0, 0.7  # sigma/C = 0.75 vs sigma*C = 3: a confusion is 4x off
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 25))  # 1025 parameters
    n = 200
    rates = np.r_[np.full(100, 0.05), np.full(100, 0.15)]  # E[B] = 20, realised size varies
    X, y = torch.randn(n, 40), torch.zeros(n, dtype=torch.long)
    tr = DPTrainer(model, clip_norm=clip, noise_multiplier=sigma, learning_rate=lr, seed=3,
                   grad_sample_mode=mode, loss_fn=_zero_loss, device="cpu")
    deltas = []
    for _ in range(6):
        before = _flat(model)
        tr.run(X, y, rates, 1)
        deltas.append(_flat(model) - before)
    d = torch.cat(deltas).double()
    want = sigma * clip * lr / rates.sum()
    # 6150 draws: the sample std is within ~1% (1 s.e.) of the truth
    assert abs(d.std().item() / want - 1) < 0.04, (d.std().item(), want)
    assert abs(d.mean().item()) < 4 * want / np.sqrt(len(d))
    assert min(tr.last_batch_sizes) >= 0 and len(set(tr.last_batch_sizes)) >= 1


def test_empty_batch_takes_noise_only_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 30))
    tr = DPTrainer(model, clip_norm=1.0, noise_multiplier=2.0, learning_rate=1.0, seed=0,
                   device="cpu")
    rates = np.full(10, 1e-9)  # E[B] = 1e-8: the noise is huge, and it must be there
    before = _flat(model)
    assert tr.run(torch.randn(10, 30), torch.zeros(10, dtype=torch.long), rates, 1) == 1
    assert tr.last_batch_sizes == [0]
    d = _flat(model) - before
    want = 2.0 * 1.0 / rates.sum()
    assert abs(d.std().item() / want - 1) < 0.1


@pytest.mark.parametrize("mode", MODES)
def test_per_record_inclusion_frequencies_match_group_rates(mode):
    n_a, n_b, q_a, q_b, steps = 150, 150, 0.05, 0.3, 150
    rates = np.r_[np.full(n_a, q_a), np.full(n_b, q_b)]
    counts = np.zeros(n_a + n_b)
    sizes = []

    def spy(logits, ids):  # the "labels" are record ids: see who was sampled
        counts[ids.numpy()] += 1
        sizes.append(len(ids))
        return logits.sum(1) * 0.0

    model = nn.Sequential(nn.Linear(3, 2))
    tr = DPTrainer(model, clip_norm=1.0, noise_multiplier=1.0, learning_rate=0.1, seed=11,
                   grad_sample_mode=mode, loss_fn=spy, device="cpu")
    tr.run(torch.randn(n_a + n_b, 3), torch.arange(n_a + n_b), rates, steps)
    for sl, q, n in ((slice(0, n_a), q_a, n_a), (slice(n_a, None), q_b, n_b)):
        freq = counts[sl].sum() / (n * steps)
        se = np.sqrt(q * (1 - q) / (n * steps))
        assert abs(freq - q) < 4 * se, (freq, q)
    # Poisson sampling: batch size varies with variance sum q(1-q) (fixed-size batches: 0)
    var = float(np.sum(rates * (1 - rates)))
    assert 0.6 * var < np.var(sizes) < 1.5 * var
    assert abs(np.mean(sizes) - rates.sum()) < 4 * np.sqrt(var / steps)
    # each record's count is Binomial(steps, q): its spread matches too (no per-record bias)
    assert counts[n_a:].std() == pytest.approx(np.sqrt(steps * q_b * (1 - q_b)), rel=0.25)


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_model_other_seed_differs(mode):
    X = torch.randn(80, 6)
    y = (X[:, 0] > 0).long()
    rates = np.full(80, 0.2)

    from shared.randomness import pinned_randomness

    def train(seed, pin=0):
        torch.manual_seed(0)  # same init: only the trainer's seed varies
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
        trainer = DPTrainer(model, clip_norm=1.0, noise_multiplier=1.0, learning_rate=0.2,
                            seed=seed, grad_sample_mode=mode, device="cpu")
        trainer.run(X, y, rates, 5)
        return _flat(model)

    with pinned_randomness(0):
        a, b, c = train(4), train(4), train(5)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # unpinned (as on a datasite) the researcher's seed fixes neither sampling nor noise
    assert not torch.allclose(train(4), train(4))


@pytest.mark.parametrize("mode", MODES)
def test_per_sample_clipping_bounds_each_record(mode):
    """No noise: the update is exactly lr * sum_i clip(g_i) / E[B] over the sampled records."""
    d, n, clip, lr = 4, 40, 0.5, 1.0
    torch.manual_seed(1)
    X = torch.randn(n, d)
    X[:5] *= 1e-3  # a few records with gradients below the clip norm: left unclipped
    scale = torch.ones(n)
    seen = []

    def linear_loss(out, ids):  # loss_i = -100 * w.x_i => gradient -100 x_i (norm >> clip)
        seen.append(ids.clone())
        return -100.0 * out[:, 0]

    model = nn.Linear(d, 1, bias=False)
    rates = np.full(n, 0.5)
    tr = DPTrainer(model, clip_norm=clip, noise_multiplier=0.0, learning_rate=lr, seed=2,
                   grad_sample_mode=mode, loss_fn=linear_loss, device="cpu",
                   max_physical_batch_size=7)  # chunks must add up to one step
    before = _flat(model)
    tr.run(X, torch.arange(n), rates, 1)
    ids = torch.cat(seen)
    g = -100.0 * X[ids] * scale[ids, None]
    norms = g.norm(dim=1, keepdim=True)
    clipped = g * torch.clamp(clip / (norms + 1e-6), max=1.0)
    want = -lr * clipped.sum(0) / rates.sum()
    got = _flat(model) - before
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    # and the one-record bound: no single record moves the weights by more than lr * C / E[B]
    assert (clipped.norm(dim=1) <= clip + 1e-5).all()
    assert len(ids) == tr.last_batch_sizes[0] and len(set(ids.tolist())) == len(ids)


def test_rejects_bad_rates():
    tr = DPTrainer(nn.Linear(2, 2), clip_norm=1.0, noise_multiplier=1.0, learning_rate=0.1,
                   seed=0, device="cpu")
    X, y = torch.randn(3, 2), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="one sample rate"):
        tr.run(X, y, np.full(4, 0.1), 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tr.run(X, y, np.array([0.1, 1.5, 0.1]), 1)
    with pytest.raises(ValueError, match="all sample rates are 0"):
        tr.run(X, y, np.zeros(3), 1)
    with pytest.raises(ValueError, match="grad_sample_mode"):
        DPTrainer(nn.Linear(2, 2), clip_norm=1.0, noise_multiplier=1.0, learning_rate=0.1,
                  seed=0, grad_sample_mode="magic")
