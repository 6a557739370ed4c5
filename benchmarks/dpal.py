"""DP active learning vs baselines at the same total epsilon and labelling budget.

Datasets: breast cancer (table, public-scale features, logreg) and synthetic chest X-rays
(frozen scattering features, logreg head). Methods: passive DP-SGD on a random subset of the
budget's size, naive DP-AL, step-amplified DP-AL planned with the reference's RDP accountant,
step-amplified DP-AL planned with exact PLD, and non-private AL. Prints test accuracy / AUC
(mean +- std over seeds) and the steps each schedule affords.

    .venv/bin/python benchmarks/dpal.py --quick
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from shared.dpal import make_plan, run_dpal
from shared.training.models import build_model
from shared.training.preprocess import public_scale
from shared.training.split import split_indices


def breast_cancer():
    from datasite.demo_data import breast_cancer_frame
    from shared.data import power_of_ten_scale

    df = breast_cancer_frame()
    cols = [c for c in df.columns if c != "diagnosis"]
    scales = [power_of_ten_scale(df[c].abs().max()) for c in cols]
    X = public_scale(df[cols].to_numpy(), scales)
    classes = sorted(df.diagnosis.unique().tolist())
    y = np.array([classes.index(v) for v in df.diagnosis], dtype=np.int64)
    return X, y


def cxr(n: int):
    from datasite.demo_data import make_synthetic_cxr
    from shared.training.backbones import extract_features

    d = make_synthetic_cxr(n=n, size=28, seed=0)
    return extract_features(d["images"], "scatter"), np.asarray(d["labels"], dtype=np.int64)


def run_method(method, X, y, cfg, seed, plans):
    tr, te = split_indices(X, y, 0.2, seed)
    Xp, yp = X[tr], y[tr]
    n_classes = int(y.max()) + 1
    plan = plans[method]
    private = method != "non-private AL"
    acq = "random" if method == "passive DP-SGD" else cfg["acquisition"]
    out = run_dpal(Xp, lambda i: yp[i], X[te], y[te], plan,
                   lambda: build_model("logreg", X.shape[1], n_classes), n_classes=n_classes,
                   acquisition=acq, seed=seed, private=private, learning_rate=cfg["lr"],
                   device="cpu")
    last = out["rounds"][-1]
    return last["accuracy"], last["auc"]


def make_plans(n_pool, cfg):
    base = dict(n_pool=n_pool, start_size=cfg["start"], query_sizes=cfg["queries"],
                epsilon=cfg["eps"], delta=cfg["delta"], eps_selection=cfg["eps_sel"],
                batch_size=cfg["batch"], epochs_per_round=cfg["epochs"])
    R = len(cfg["queries"])
    t = time.perf_counter()
    plans = {
        "passive DP-SGD": make_plan(**{**base, "start_size": cfg["start"] + sum(cfg["queries"]),
                                       "query_sizes": [], "eps_selection": 0.0,
                                       "epochs_per_round": cfg["epochs"] * (R + 1)},
                                    mode="naive"),
        "naive DP-AL": make_plan(**base, mode="naive", accountant="pld"),
        "step-ampl. (RDP ref)": make_plan(**base, mode="step_amplified",
                                          accountant="rdp_reference"),
        "step-ampl. (PLD)": make_plan(**base, mode="step_amplified", accountant="pld"),
    }
    plans["non-private AL"] = plans["naive DP-AL"]
    return plans, time.perf_counter() - t


CIFAR = dict(n_pool=50000, start_size=10000, query_sizes=[10000, 3000, 1000, 1000], epsilon=8,
             delta=1e-5, eps_selection=2, batch_size=4096, epochs_per_round=30)


def reference_schedules():
    """The reference's CIFAR-10 configuration: its own schedule (Opacus RDP, default orders,
    selection epsilons added, earlier groups pooled), our per-group RDP schedule, and exact PLD
    composition (lower sigma at the same steps, or more steps at the same sigma)."""
    from shared.privacy.accounting import epsilon as pld_epsilon

    rows = [
        ("reference: naive", dict(mode="naive", accountant="rdp_reference", verify=False)),
        ("reference: amplified (pooled)", dict(mode="step_amplified", accountant="rdp_reference",
                                               pool_old_groups=True, verify=False)),
        ("RDP per group", dict(mode="step_amplified", accountant="rdp_reference", verify=False)),
        ("PLD, same rounding", dict(mode="step_amplified", accountant="pld",
                                    rounding="reference")),
        ("PLD, sigma fixed 4.106", dict(mode="step_amplified", accountant="pld",
                                        rounding="reference", noise_multiplier=4.106)),
    ]
    print("\n== reference CIFAR-10 configuration (eps=8, delta=1e-5, eps_sel=2, B=4096, 30 epochs)")
    for name, kw in rows:
        t = time.perf_counter()
        p = make_plan(**CIFAR, **kw)
        took = time.perf_counter() - t
        final = [pld_epsilon(p.group_event(g), CIFAR["delta"]) for g in range(len(p.steps))]
        print(f"  {name:30s} sigma={p.noise_multiplier:.3f} steps={p.steps} "
              f"(total {sum(p.steps)}); final PLD eps per group "
              f"[{', '.join(f'{e:.2f}' for e in final)}]; planned in {took:.1f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--reference-only", action="store_true",
                    help="only the CIFAR-10 schedules (no training)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    reference_schedules()
    if args.reference_only:
        return
    seeds = args.seeds or (2 if args.quick else 5)
    setups = {
        "breast_cancer": (breast_cancer, dict(start=60, queries=[40, 40, 40, 40], eps=2.0,
                                              delta=1e-4, eps_sel=0.5, batch=32, epochs=4,
                                              acquisition="entropy", lr=1.0)),
        "synthetic_cxr": (lambda: cxr(600 if args.quick else 1200),
                          dict(start=60, queries=[40, 40, 40, 40], eps=2.0, delta=1e-4,
                               eps_sel=0.5, batch=32, epochs=4, acquisition="entropy",
                               lr=1.0)),
    }
    for name, (load, cfg) in setups.items():
        X, y = load()
        n_pool = len(split_indices(X, y, 0.2, 0)[0])
        plans, took = make_plans(n_pool, cfg)
        print(f"\n== {name}: pool {n_pool}, budget {cfg['start'] + sum(cfg['queries'])} labels, "
              f"eps={cfg['eps']} (selection {cfg['eps_sel']}), delta={cfg['delta']}; "
              f"planning 4 schedules took {took:.1f} s")
        for m, p in plans.items():
            if m == "non-private AL":
                continue
            ge = ", ".join(f"{e:.2f}" for e in p.group_epsilon)
            print(f"  {m:22s} sigma={p.noise_multiplier:.3f} steps={p.steps} "
                  f"group eps (PLD)=[{ge}]")
        print(f"  {'method':22s} {'accuracy':>15s} {'AUC':>15s}")
        for m in plans:
            res = np.array([run_method(m, X, y, cfg, s, plans) for s in range(seeds)],
                           dtype=float)
            print(f"  {m:22s} {res[:, 0].mean():.3f} +- {res[:, 0].std():.3f}   "
                  f"{res[:, 1].mean():.3f} +- {res[:, 1].std():.3f}")


if __name__ == "__main__":
    main()
