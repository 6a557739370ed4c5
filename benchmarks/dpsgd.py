"""What DP-SGD costs per training step, against non-private SGD of the same model and batch.

    .venv/bin/python benchmarks/dpsgd.py [--quick] [--device cpu|cuda] [--steps 20]

Cases: the table MLP (30 features, B=256), the GroupNorm CNN (28x28, B=64), ResNet-9
(28x28, B=16), and a linear head on frozen scattering features (B=256; the one-off feature
extraction is timed separately). DP-SGD runs through shared.training.engine.DPTrainer (Opacus, Poisson
sampling at rate B/N, so the realised batch varies around B) with hooks and with ghost
clipping; the baseline is plain torch SGD on fixed batches of B. Only shared + torch/opacus are
imported (runs on a GPU machine without syft).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.training.backbones import extract_features  # noqa: E402
from shared.training.engine import DPTrainer  # noqa: E402
from shared.training.models import build_model  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_sgd(model, X, y, batch, steps, device) -> float:
    """Seconds per non-private SGD step (fixed batches of ``batch``)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)

    def step():
        idx = torch.randint(len(X), (batch,), generator=g)
        xb, yb = X[idx].to(device), y[idx].to(device)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        opt.step()

    for _ in range(2):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - t) / steps


def time_dp(model, X, y, batch, steps, device, mode) -> float:
    """Seconds per DP-SGD step (Poisson sampling with expected batch ``batch``)."""
    tr = DPTrainer(model, clip_norm=1.0, noise_multiplier=1.0, learning_rate=0.01, seed=0,
                   device=device, grad_sample_mode=mode)
    rates = np.full(len(X), batch / len(X))
    tr.run(X, y, rates, 2)
    _sync(device)
    t = time.perf_counter()
    tr.run(X, y, rates, steps)
    _sync(device)
    tr.close()
    return (time.perf_counter() - t) / steps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps, smaller data")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = args.steps or (5 if args.quick else 20)
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
    print(f"device {device}, {steps} timed steps per row, torch threads {args.threads}")
    print(f"one-off scattering features: {n_img} images 28x28 in {extract_s:.2f} s "
          f"({1e3 * extract_s / n_img:.2f} ms/image)")
    print(f"{'model':34s} {'B':>4s} {'sgd ms':>9s} {'hooks ms':>9s} {'x':>6s} "
          f"{'ghost ms':>9s} {'x':>6s}")
    for name, make, X, batch in cases:
        torch.manual_seed(0)
        base = time_sgd(make().to(device), X, y_img, batch, steps, device)
        row = [time_dp(make(), X, y_img, batch, steps, device, m) for m in ("hooks", "ghost")]
        print(f"{name:34s} {batch:4d} {1e3 * base:9.2f} {1e3 * row[0]:9.2f} "
              f"{row[0] / base:6.2f} {1e3 * row[1]:9.2f} {row[1] / base:6.2f}", flush=True)


if __name__ == "__main__":
    main()
