"""What each rank of the data-parallel DP-SGD tests runs (module level: torch.multiprocessing
pickles functions by reference). Rank 0 returns the measurements; every rank must call the same
collectives in the same order."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from opacus.optimizers import (DistributedDPOptimizer,
                               DistributedDPOptimizerFastGradientClipping, DPOptimizer,
                               DPOptimizerFastGradientClipping)
from torch import nn

from shared.training.distributed import shard, world
from shared.training.engine import DPTrainer


def zero_loss(logits, y):
    """Per-record loss with exactly zero gradient: the update is the noise alone."""
    return logits.sum(1) * 0.0


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return out


def pure_noise_updates(n: int, q: float, sigma: float, clip: float, lr: float, steps: int,
                       mode: str, data_parallel: bool) -> dict:
    """``steps`` DP-SGD steps of a zero-gradient loss on a 1025-parameter model: the parameter
    updates, the realised batch sizes (over all ranks) and whether the ranks agree."""
    rank, world_size = world() if data_parallel else (0, 1)
    torch.manual_seed(0)  # same init on every rank (DPDDP broadcasts rank 0's anyway)
    model = nn.Sequential(nn.Linear(40, 25))
    X, y = torch.randn(n, 40), torch.zeros(n, dtype=torch.long)
    mine = shard(np.arange(n), rank, world_size)
    tr = DPTrainer(model, clip_norm=clip, noise_multiplier=sigma, learning_rate=lr, seed=rank,
                   grad_sample_mode=mode, loss_fn=zero_loss, device="cpu",
                   data_parallel=data_parallel)
    deltas, sizes = [], []
    for _ in range(steps):
        before = flat(model)
        tr.run(X[mine], y[mine], np.full(len(mine), q), 1, expected_batch_size=q * n)
        deltas.append(flat(model) - before)
        sizes.append(tr.last_batch_sizes[0])
    tr.close()
    out = {"deltas": torch.cat(deltas).double(), "batch": torch.tensor(sizes, dtype=torch.float64),
           "per_rank_expected": tr.optimizer.expected_batch_size, "same_on_all_ranks": True}
    if data_parallel:
        out["same_on_all_ranks"] = all(torch.equal(p, flat(model)) for p in gather(flat(model)))
        out["batch"] = torch.stack(gather(out["batch"])).sum(0)  # the global batch per step
    return out


def noise_measurements(device, n, q, sigma, clip, lr, steps) -> dict:
    """Pure-noise updates for both modes, as the engine runs them, then with noise added on
    EVERY rank (Opacus' single-process add_noise patched in: the bug the std check must catch)."""
    out = {}
    for mode in ("hooks", "ghost"):
        out[mode] = pure_noise_updates(n, q, sigma, clip, lr, steps, mode, True)
    saved = (DistributedDPOptimizer.add_noise, DistributedDPOptimizerFastGradientClipping.add_noise)
    DistributedDPOptimizer.add_noise = DPOptimizer.add_noise
    DistributedDPOptimizerFastGradientClipping.add_noise = DPOptimizerFastGradientClipping.add_noise
    try:
        for mode in ("hooks", "ghost"):
            out[f"{mode}_noise_every_rank"] = pure_noise_updates(n, q, sigma, clip, lr, steps,
                                                                 mode, True)
    finally:
        DistributedDPOptimizer.add_noise, DistributedDPOptimizerFastGradientClipping.add_noise = \
            saved
    return out


def table_job_seen(device, df, spec) -> dict:
    """The table job on this rank with a spy on its trainer: the report, and per rank whether it
    trained data-parallel and on how many records (its shard)."""
    from shared.training import table

    seen = {}

    class Spy(DPTrainer):
        def run(self, X, y, sample_rates, steps, **kw):
            seen.update(world=self.world_size, n=len(X), rates=sorted(set(sample_rates.tolist())))
            return super().run(X, y, sample_rates, steps, **kw)

    table.DPTrainer = Spy
    result = table.train_dpsgd_table(df, spec, device=device)
    ranks = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, seen)
    return {"privacy": result["privacy"], "ranks": ranks}
