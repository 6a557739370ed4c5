"""The one DP-SGD engine (tables, images, DP active learning): Opacus per-sample clipping and
noise, with true Poisson sampling at a per-record rate.

Every step, record i enters the batch independently with probability ``sample_rates[i]``
(our own seeded Bernoulli sampler); Opacus computes per-sample gradients, clips each to C,
adds N(0, (sigma C)^2) to their sum and divides by the EXPECTED batch size sum_i q_i, a
constant: dividing by the realised size would make the scale depend on who was sampled.

With all rates equal to q, T steps are exactly
``shared.privacy.accounting.dpsgd_event(q, sigma, T)`` (the table and image jobs). With per-group
rates, group g's records see ``dpsgd_event(q_g, sigma, T)`` each (the caller accounts per group,
as DP active learning does).

``grad_sample_mode``:
* ``"hooks"``: Opacus' GradSampleModule + DPOptimizer (per-sample gradients materialised).
* ``"ghost"``: Opacus' ghost clipping (GradSampleModuleFastGradientClipping +
  DPOptimizerFastGradientClipping, double backward via DPTensorFastGradientClipping): per-sample
  gradient *norms* only, so memory does not grow with batch x parameters. Per-record rates fit it
  unchanged: the batch is whatever our sampler drew, and the division by the expected batch size
  is the optimizer's ``scale_grad``. (We build the loss tensor directly instead of
  ``PrivacyEngine.make_private(..., grad_sample_mode="ghost")``'s criterion wrapper: that wrapper
  insists on one loss_reduction everywhere, while we need "sum" for the per-sample losses and
  "mean over the expected batch size" in the optimizer, and it takes a DataLoader, not our sampler.)

``data_parallel=True`` (inside a ``torch.distributed`` process group, see
:mod:`shared.training.distributed`): Opacus' DDP pattern, as ``make_private`` sets it up for a
``DPDDP`` module. Each rank holds a shard of the records and Poisson-samples it at the SAME
per-record rates (so every record's inclusion probability, and the event, are unchanged); the
module is wrapped in Opacus' ``DifferentiallyPrivateDistributedDataParallel`` (broadcasts rank
0's weights) and the optimizer is Opacus' distributed one: clipped sums are all-reduced and the
noise N(0, (sigma C)^2) is drawn on rank 0 only, so the update equals one process's.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
from opacus.optimizers import (DistributedDPOptimizer,
                               DistributedDPOptimizerFastGradientClipping, DPOptimizer,
                               DPOptimizerFastGradientClipping)
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn

from ..randomness import secret_seed
from .device import default_device

GRAD_SAMPLE_MODES = ("hooks", "ghost")

# TEST-ONLY hook: True makes every DP-SGD optimizer (all built by DPTrainer below) add
# NO noise while the job still reports its calibrated sigma -- the bug an empirical privacy
# audit must catch (tests/test_audit.py, benchmarks/audit.py). Product code never sets it.
TEST_ONLY_DISABLE_NOISE = False


def noise_in_optimizer(noise_multiplier: float) -> float:
    """The noise multiplier handed to Opacus: ``noise_multiplier``, or 0 under the test hook."""
    return 0.0 if TEST_ONLY_DISABLE_NOISE else float(noise_multiplier)

Progress = Callable[[int, int], None]


def poisson_schedule(n_train: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate, total steps) of ``epochs`` epochs over ``n_train`` records (the planned,
    public count) at batch size ``batch_size``: what the owner prices and the job then runs.

    The arithmetic of Opacus' Poisson DataLoader, which the table job used to run and whose
    priced plans stay valid: q = 1 / ceil(n / B) -- not B / n -- and int(1 / q) steps per epoch
    (float rounding makes that ceil(n / B) - 1 for some n, e.g. 93).
    """
    if n_train < 1 or batch_size < 1:
        raise ValueError(f"need n_train >= 1 and batch_size >= 1, got {n_train}, {batch_size}")
    q = 1 / ((int(n_train) + int(batch_size) - 1) // int(batch_size))
    return q, int(epochs) * int(1 / q)


def per_sample_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One loss per record (the engine sums them; the optimizer divides by the expected batch)."""
    return F.cross_entropy(logits, y, reduction="none")


def poisson_batch(rng: np.random.Generator, sample_rates: np.ndarray) -> np.ndarray:
    """Indices of one Poisson batch: i is in it independently with probability rates[i]."""
    return np.flatnonzero(rng.random(len(sample_rates)) < sample_rates)


def _seeds(seed: int, rank: int = 0,
           world_size: int = 1) -> tuple[np.random.SeedSequence, int]:
    """Independent secret streams for sampling and noise (see :mod:`shared.randomness`). Data
    parallel ranks get independent sampling streams (the same stream on every shard would
    include record j of each shard together, not independently); noise is rank 0's alone."""
    sampling, noise = np.random.SeedSequence(secret_seed(int(seed))).spawn(2)
    if world_size > 1:
        sampling = sampling.spawn(world_size)[rank]
    return sampling, int(noise.generate_state(1, dtype=np.uint64)[0]) >> 1


def _world(data_parallel: bool) -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless ``data_parallel``."""
    if not data_parallel:
        return 0, 1
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError("data_parallel=True needs an initialised torch.distributed process "
                           "group (shared.training.distributed.launch or torchrun)")
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


class DPTrainer:
    """DP-SGD on ``model`` (trained in place; warm start across calls to :meth:`run`).

    Sampling and noise are secret (fresh OS seeds); under ``pinned_randomness`` the same
    seed, inputs and device give the same model. ``max_physical_batch_size`` splits a large
    logical batch into chunks whose clipped gradients are summed before the single noise draw
    (Opacus' skip-step mechanism, as in its BatchMemoryManager); it changes memory, not the
    mechanism.
    ``loss_fn(logits, y)`` returns one loss per record (default cross entropy).
    ``data_parallel``: this process is one rank of a data-parallel job (module docstring);
    :meth:`run` then gets this rank's shard and the GLOBAL expected batch size.
    """

    def __init__(self, model: nn.Module, *, clip_norm: float, noise_multiplier: float,
                 learning_rate: float, seed: int, device=None, grad_sample_mode: str = "hooks",
                 momentum: float = 0.0, max_physical_batch_size: int | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 data_parallel: bool = False):
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, "
                             f"got {grad_sample_mode!r}")
        if not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
        if not noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        if max_physical_batch_size is not None and max_physical_batch_size < 1:
            raise ValueError("max_physical_batch_size must be >= 1 or None")
        self.device = default_device(device)
        self.module = model.to(self.device)
        self.clip_norm = float(clip_norm)
        self.grad_sample_mode = grad_sample_mode
        self.max_physical_batch_size = max_physical_batch_size
        self.loss_fn = loss_fn or per_sample_cross_entropy
        self.rank, self.world_size = _world(data_parallel)
        sampling_seed, noise_seed = _seeds(seed, self.rank, self.world_size)
        self._rng = np.random.default_rng(sampling_seed)
        self._noise = torch.Generator(device=self.device).manual_seed(noise_seed)
        self._params = [p for p in self.module.parameters() if p.requires_grad]
        sgd = torch.optim.SGD(self._params, lr=learning_rate, momentum=momentum)
        # Per-sample losses are summed ("sum" in the module); the optimizer divides the noisy
        # sum by expected_batch_size ("mean"), which run() sets to sum(sample_rates).
        wrapped = DPDDP(self.module) if data_parallel else self.module
        ghost_opt, hooks_opt = ((DistributedDPOptimizerFastGradientClipping,
                                 DistributedDPOptimizer) if data_parallel else
                                (DPOptimizerFastGradientClipping, DPOptimizer))
        if grad_sample_mode == "ghost":
            self._gsm = GradSampleModuleFastGradientClipping(
                wrapped, loss_reduction="sum", max_grad_norm=self.clip_norm,
                use_ghost_clipping=True)
            self._opt = ghost_opt(
                sgd, noise_multiplier=noise_in_optimizer(noise_multiplier),
                max_grad_norm=self.clip_norm, expected_batch_size=1.0, loss_reduction="mean",
                generator=self._noise)
        else:
            self._gsm = GradSampleModule(wrapped, loss_reduction="sum")
            self._opt = hooks_opt(
                sgd, noise_multiplier=noise_in_optimizer(noise_multiplier),
                max_grad_norm=self.clip_norm, expected_batch_size=1.0, loss_reduction="mean",
                generator=self._noise)
        self.last_batch_sizes: list[int] = []  # realised batch sizes of the last run
        # summed training loss of each step's sampled records, before its update (last run;
        # this rank's records): exact on the private records, so owner-only (loss_per_epoch)
        self.last_losses = np.zeros(0)
        self._loss_sums: torch.Tensor | None = None

    @property
    def noise_multiplier(self) -> float:
        """Sigma of the optimizer (settable between runs: a schedule may change it)."""
        return float(self._opt.noise_multiplier)

    @noise_multiplier.setter
    def noise_multiplier(self, value: float) -> None:
        if not value >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {value}")
        self._opt.noise_multiplier = noise_in_optimizer(value)

    @property
    def optimizer(self) -> DPOptimizer:
        """The Opacus optimizer: what clips, noises and scales (tests inspect it)."""
        return self._opt

    def run(self, X: torch.Tensor, y: torch.Tensor, sample_rates: np.ndarray, steps: int,
            progress: Progress | None = None, expected_batch_size: float | None = None) -> int:
        """``steps`` DP-SGD steps; record i is in each batch independently with probability
        ``sample_rates[i]``. Clipping to clip_norm, Gaussian noise of std
        noise_multiplier * clip_norm on the summed clipped gradients, division by the expected
        batch size (``expected_batch_size``, default sum(sample_rates); a job passes the planned,
        public one when the realised record count is private); empty batches still take the
        noise-only step. Returns the number of steps done.

        Data parallel: ``X``, ``y``, ``sample_rates`` are this rank's shard; the default expected
        batch size is the sum of the rates over all shards. Every rank runs the same ``steps``.
        """
        rates = np.asarray(sample_rates, dtype=np.float64)
        if rates.shape != (len(X),) or len(y) != len(X):
            raise ValueError(f"need one sample rate and one label per record: X {len(X)}, "
                             f"y {len(y)}, rates {rates.shape}")
        if not np.all((rates >= 0) & (rates <= 1)):
            raise ValueError("sample rates must lie in [0, 1]")
        expected = float(self._total(rates.sum()) if expected_batch_size is None
                         else expected_batch_size)
        if steps > 0 and expected <= 0:
            raise ValueError("all sample rates are 0: the expected batch size must be > 0")
        if int(steps) != steps or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps}")
        # Opacus' DDP optimizers divide by the PER-RANK expected batch, then average the
        # ranks' gradients (make_private: expected_batch_size /= world_size): overall / expected
        self._opt.expected_batch_size = expected / self.world_size
        was_training = self.module.training
        self.module.train()
        self.last_batch_sizes = []
        # on the device, read once at the end: no host sync per step
        self._loss_sums = torch.zeros(int(steps), dtype=torch.float32, device=self.device)
        try:
            for done in range(1, int(steps) + 1):
                idx = poisson_batch(self._rng, rates)
                self.last_batch_sizes.append(len(idx))
                self._step(X, y, idx, done - 1)
                if progress is not None:
                    progress(done, int(steps))
        finally:
            self.module.train(was_training)
            self.last_losses = self._loss_sums.cpu().numpy().astype(np.float64)
            self._loss_sums = None
        return int(steps)

    def loss_per_epoch(self, epochs: float) -> list[float | None]:
        """The last :meth:`run`'s mean training loss in each of ``round(epochs)`` (at least 1)
        equal runs of its steps: the loss of the records sampled at a step, before that step's
        update, averaged over the records sampled in the epoch (None: none was). This rank's
        records only. Exact, on the private training records: for the owner's review only (a
        job returns it under an ``_owner_`` key, which is never released)."""
        n = min(len(self.last_losses), len(self.last_batch_sizes))  # an interrupted run: done
        if n == 0:
            return []
        k = max(1, min(n, int(round(epochs))))
        part = np.arange(n) * k // n
        loss = np.bincount(part, weights=self.last_losses[:n], minlength=k)
        count = np.bincount(part, weights=np.asarray(self.last_batch_sizes[:n], float),
                            minlength=k)
        return [float(a / b) if b > 0 else None for a, b in zip(loss, count)]

    def _total(self, value: float) -> float:
        """``value`` summed over the ranks (itself in one process)."""
        if self.world_size == 1:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64)
        if torch.distributed.get_backend() == "nccl":
            t = t.to(self.device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    # -- one logical step ----------------------------------------------------------------------
    def _step(self, X: torch.Tensor, y: torch.Tensor, idx: np.ndarray, step: int) -> None:
        opt = self._opt
        opt.zero_grad(set_to_none=True)
        if len(idx) == 0:
            # Noise-only step: skipping it would make the release depend on the sampling
            # outcome outside the accounted mechanism. Zero clipped gradients go through the
            # same Opacus optimizer (noise + scaling), no forward pass needed.
            for p in self._params:
                if self.grad_sample_mode == "ghost":
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return
        chunk = self.max_physical_batch_size or len(idx)
        parts = [idx[i:i + chunk] for i in range(0, len(idx), chunk)]
        index = torch.from_numpy(idx)
        for j, part in enumerate(parts):
            sel = index[j * chunk:j * chunk + len(part)].to(X.device)
            xb = X.index_select(0, sel).to(self.device, non_blocking=True)
            yb = y.index_select(0, sel.to(y.device)).to(self.device, non_blocking=True)
            losses = self.loss_fn(self._gsm(xb), yb)
            self._loss_sums[step] += losses.detach().sum().float()
            with warnings.catch_warnings():
                # Opacus' full backward hook fires on module outputs when inputs need no grad:
                # exactly the case Opacus handles, so torch's warning is noise.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                if self.grad_sample_mode == "ghost":
                    DPTensorFastGradientClipping(self._gsm, opt, losses, "sum").backward()
                else:
                    losses.sum().backward()
            # all but the last chunk only accumulate clipped gradients (no noise, no update)
            opt.signal_skip_step(do_skip=j < len(parts) - 1)
            opt.step()
            opt.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Remove Opacus' hooks from the module (it stays trained)."""
        self._gsm._close()  # pylint: disable=protected-access
