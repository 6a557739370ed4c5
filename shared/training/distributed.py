"""Running a DP-SGD job data-parallel over several processes: one per GPU (NCCL), or CPU ranks
(gloo, for tests and CPU-only hosts).

The mechanism is :class:`shared.training.engine.DPTrainer` with ``data_parallel=True`` (Opacus'
DPDDP + distributed optimizer, noise on rank 0 only); this module only starts the processes and
splits the records. Two ways in:

* :func:`launch` starts ``world_size`` local processes (forked from a warm multiprocessing fork
  server, :data:`RANK_PRELOAD`) on a free loopback port and returns rank 0's result;
* under ``torchrun`` (several hosts), call :func:`init_from_env` in each process.

Only rank 0's return value leaves :func:`launch`: every rank ends with the same model, but
anything else a rank draws (e.g. noisy metrics from a secret seed) is released once, by rank 0.
"""
from __future__ import annotations

import os
import pickle
import socket
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's records among ``indices``: every world_size-th one (the shards partition
    them, sizes differ by at most one, as in Opacus' distributed Poisson sampler)."""
    return np.asarray(indices)[rank::world_size]


def backend_for(device_type: str) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device_type == "cuda" else "gloo"


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_from_env(device_type: str | None = None, timeout_s: float = 300) -> torch.device:
    """Join the process group ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT); returns this process's device (the GPU of its LOCAL_RANK, or the CPU)."""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device("cpu")
    if device_type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device_type), timeout=timedelta(seconds=timeout_s))
    return device


DATA_PARALLEL_ENV = "DP_DATASITE_DATA_PARALLEL"


def data_parallel_ranks() -> int:
    """How many local ranks a DP-SGD table job trains on: the owner's worker sets
    ``DP_DATASITE_DATA_PARALLEL`` (``datasite workers --gpus 0,1 --data-parallel``); 1 without."""
    try:
        return max(1, int(os.environ.get(DATA_PARALLEL_ENV, "1")))
    except ValueError:
        return 1


# Imported once by the fork server the ranks fork from (multiprocessing's, started by the first
# launch of this process), not by every rank: spawned, each rank imported torch and Opacus
# afresh (seconds per rank, per job). The server never touches a GPU; each rank initialises
# CUDA itself, after the fork.
RANK_PRELOAD = ["torch", "torch.distributed", "opacus", "shared.training.table",
                "shared.training.engine", "shared.training.distributed"]


def launch(fn: Callable[..., Any], world_size: int, *args, device_type: str | None = None,
           timeout_s: float = 300) -> Any:
    """Run ``fn(device, *args)`` in ``world_size`` new local processes joined in one process
    group (loopback, a free port); return rank 0's return value. ``fn`` must be picklable (a
    module-level function); a failing rank raises here. ``device_type`` "cuda": rank r on GPU r
    (of those CUDA_VISIBLE_DEVICES shows), NCCL; "cpu": gloo."""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and torch.cuda.device_count() < world_size:
        raise ValueError(f"{world_size} ranks need {world_size} GPUs, "
                         f"{torch.cuda.device_count()} visible")
    with tempfile.TemporaryDirectory(prefix="dpds-ddp-") as tmp:
        out = Path(tmp) / "rank0.pkl"
        mp.get_context("forkserver").set_forkserver_preload(RANK_PRELOAD)
        mp.start_processes(_rank_main, nprocs=world_size, join=True, start_method="forkserver",
                           args=(fn, world_size, free_port(), device_type, timeout_s, str(out),
                                 args))
        with open(out, "rb") as f:
            return pickle.load(f)


def _rank_main(rank: int, fn, world_size: int, port: int, device_type: str, timeout_s: float,
               out: str, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    device = init_from_env(device_type, timeout_s)
    if device_type == "cpu":  # the ranks share the cores: no oversubscription
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        result = fn(device, *args)
        if rank == 0:
            with open(out, "wb") as f:
                pickle.dump(result, f)
    finally:
        dist.destroy_process_group()
