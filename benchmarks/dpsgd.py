"""What DP-SGD costs per training step, against non-private SGD of the same model and batch.

    .venv/bin/python benchmarks/dpsgd.py [--quick] [--device cpu|cuda] [--steps 200]

Cases: the table MLP (30 features, B=256), the GroupNorm CNN (28x28, B=64), ResNet-9
(28x28, B=16), and a linear head on frozen scattering features (B=256; the one-off feature
extraction is timed separately). Every job kind (table, images, DP active learning) trains
through shared.training.engine.DPTrainer (Opacus clipping and noise, our Poisson sampling at
rate B/N, so the realised batch varies around B), timed with hooks and with ghost clipping.
Measured in the same run: plain torch SGD on fixed batches of B (the non-private baseline) and
stock Opacus as its tutorials run it (``PrivacyEngine.make_private``, hooks, its Poisson
DataLoader over a TensorDataset). Each column times ``--steps`` steps (default 200: a
sub-millisecond step needs that many) after warm-up steps, in 10 blocks interleaved across the
columns (median per column), so a shared machine's load swings hit every column alike.
Only shared + torch/opacus are imported (runs on a GPU machine without syft).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.training.backbones import extract_features  # noqa: E402
from shared.training.engine import DPTrainer  # noqa: E402
from shared.training.models import build_model  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


WARMUP, BLOCKS = 10, 10


def interleaved(runners: dict, steps: int, device) -> dict:
    """Seconds per step of each ``runners[name](k)`` (runs k steps): after WARMUP steps each,
    BLOCKS rounds in which every runner times one block of steps / BLOCKS steps in turn; the
    median over rounds. Interleaving puts a shared machine's load swings on every column alike,
    so the ratios stay stable even when the milliseconds do not."""
    for run in runners.values():
        run(WARMUP)
    block = -(-steps // BLOCKS)
    times = {name: [] for name in runners}
    for _ in range(BLOCKS):
        for name, run in runners.items():
            _sync(device)
            t = time.perf_counter()
            run(block)
            _sync(device)
            times[name].append((time.perf_counter() - t) / block)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def sgd_runner(model, X, y, batch, device):
    """k non-private SGD steps on fixed batches of ``batch``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(len(X), (batch,), generator=g)
        xb, yb = X[idx].to(device), y[idx].to(device)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        opt.step()

    return lambda k: [step() for _ in range(k)]


def dp_runner(model, X, y, batch, device, mode):
    """k DP-SGD steps of the product's engine (Poisson sampling, expected batch ``batch``)."""
    tr = DPTrainer(model, clip_norm=1.0, noise_multiplier=1.0, learning_rate=0.01, seed=0,
                   device=device, grad_sample_mode=mode)
    rates = np.full(len(X), batch / len(X))
    return lambda k: tr.run(X, y, rates, k)


def stock_opacus_runner(model, X, y, batch, device):
    """k steps of stock Opacus: make_private (hooks, flat clipping, Poisson DataLoader at rate
    B/N), the batches drawn from its DataLoader as a user's loop draws them."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(X, y), batch_size=batch)
    with warnings.catch_warnings():  # secure_mode / RNG advice: not what is measured here
        warnings.simplefilter("ignore")
        module, opt, loader = PrivacyEngine().make_private(
            module=model.to(device), optimizer=opt, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0)

    def batches():
        while True:  # epochs until enough steps
            yield from loader

    it = batches()

    def step():
        xb, yb = next(it)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(module(xb.to(device)), yb.to(device)).backward()
        opt.step()

    return lambda k: [step() for _ in range(k)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smaller data, no ResNet-9 (its 4 x 200 CPU steps take minutes)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = args.steps or 200
    n_img = 512 if args.quick else 2048
    big = device.type == "cuda" and not args.quick  # GPU: the literature's batch sizes

    rng = np.random.default_rng(0)
    # content does not change the cost: random images and rows (no datasite import needed)
    images = rng.integers(0, 256, (n_img, 28, 28), dtype=np.uint8)
    y_img = torch.from_numpy(rng.integers(0, 2, n_img))
    X_img = torch.from_numpy(images[:, None].astype(np.float32) / 255)
    X_tab = torch.rand(n_img, 30)
    t = time.perf_counter()
    feats = torch.from_numpy(extract_features(images, "scatter", device=device))
    extract_s = time.perf_counter() - t

    cases = [
        ("table mlp (30 feat)", lambda: build_model("mlp", 30, 2, 32), X_tab, 256),
        ("cnn w16 28x28", lambda: build_model("cnn", 0, 2, in_channels=1, image_size=(28, 28)),
         X_img, 256 if big else 64),
        ("resnet9 w64 28x28", lambda: build_model("resnet9", 0, 2, in_channels=1,
                                                  image_size=(28, 28)), X_img,
         128 if big else 16),
        (f"head on scatter ({feats.shape[1]} feat)",
         lambda: build_model("logreg", feats.shape[1], 2), feats, 256),
    ]
    if args.quick:
        cases = [c for c in cases if not c[0].startswith("resnet9")]
    print(f"device {device}, {steps} timed steps per column, torch threads {args.threads}")
    print(f"one-off scattering features: {n_img} images 28x28 in {extract_s:.2f} s "
          f"({1e3 * extract_s / n_img:.2f} ms/image)")
    print("ms per step; x sgd = DP step / non-private step, x opacus = DP step / stock Opacus step")
    print(f"{'model':34s} {'B':>4s} {'sgd':>8s} {'opacus':>8s} {'x sgd':>6s} {'hooks':>8s} "
          f"{'x sgd':>6s} {'x opacus':>8s} {'ghost':>8s} {'x sgd':>6s} {'x opacus':>8s}")
    for name, make, X, batch in cases:
        torch.manual_seed(0)
        with warnings.catch_warnings():  # Opacus' full-backward-hook notice, every step
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            t = interleaved({
                "sgd": sgd_runner(make().to(device), X, y_img, batch, device),
                "opacus": stock_opacus_runner(make(), X, y_img, batch, device),
                "hooks": dp_runner(make(), X, y_img, batch, device, "hooks"),
                "ghost": dp_runner(make(), X, y_img, batch, device, "ghost")}, steps, device)
        base, stock, hooks, ghost = t["sgd"], t["opacus"], t["hooks"], t["ghost"]
        print(f"{name:34s} {batch:4d} {1e3 * base:8.2f} {1e3 * stock:8.2f} {stock / base:6.2f} "
              f"{1e3 * hooks:8.2f} {hooks / base:6.2f} {hooks / stock:8.2f} "
              f"{1e3 * ghost:8.2f} {ghost / base:6.2f} {ghost / stock:8.2f}", flush=True)


if __name__ == "__main__":
    main()
