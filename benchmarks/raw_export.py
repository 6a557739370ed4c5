"""From a hospital's raw export to a first released DP model, as a new user does it, timed.

A messy export is written the way hospital systems hand tables over (semicolons, decimal
commas, patient ids with leading zeros, string categories, a lab value missing for 17% of
patients, admission dates, a string label), then every step runs through the real CLI
(``datasite init / up / schema draft / upload / users add / review / run / release``) and the
researcher's notebook API (``researcher.connect``, ``jobs.DPSGD``, ``wait``). The owner's only
edit is the one a reviewer makes: deleting the draft marker after reading the draft.

Baseline, measured in the same run: the non-private pipeline a data scientist with the raw file
writes (pandas read, one-hot, imputation, standard scaling, scikit-learn logistic regression).

    python benchmarks/raw_export.py [--records 5000] [--epsilon 4]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def baseline(path: Path, seed: int = 0) -> tuple[float, float, float]:
    """(seconds, accuracy, majority rate): non-private scikit-learn on the raw file."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    t0 = time.perf_counter()
    df = pd.read_csv(path, sep=";", decimal=",", encoding="utf-8-sig", dtype={"patient_id": str})
    df["admitted"] = (pd.to_datetime(df["admitted"], dayfirst=True)
                      - pd.Timestamp("2000-01-01")).dt.days
    y = (df.pop("outcome") == "dead").to_numpy()
    df = df.drop(columns=["patient_id"])
    pre = ColumnTransformer([
        ("cat", OneHotEncoder(), ["sex", "grade", "smoker"]),
        ("num", make_pipeline(SimpleImputer(add_indicator=True), StandardScaler()),
         ["age", "crp", "admitted"])])
    Xtr, Xte, ytr, yte = train_test_split(df, y, test_size=0.2, random_state=seed)
    model = make_pipeline(pre, LogisticRegression(max_iter=1000)).fit(Xtr, ytr)
    acc = float(model.score(Xte, yte))
    return time.perf_counter() - t0, acc, float(max(yte.mean(), 1 - yte.mean()))


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "datasite.cli", *args], capture_output=True,
                         text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"datasite {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--epsilon", type=float, default=4.0)
    args = parser.parse_args(argv)

    import researcher
    from datasite.demo_data import write_messy_export
    from datasite.lifecycle import free_port
    from researcher import jobs

    work = Path(tempfile.mkdtemp(prefix="raw-export-"))
    export, schema, pw = work / "export.csv", work / "cohort.schema.yaml", work / "alice.pw"
    write_messy_export(export, args.records)
    pw.write_text("alice-benchmark-password\n")
    home = str(work / "site")
    steps: list[tuple[str, float]] = []

    def step(name, fn):
        t0 = time.perf_counter()
        out = fn()
        steps.append((name, time.perf_counter() - t0))
        return out

    t_start = time.perf_counter()
    step("init", lambda: _cli("init", "hosp", "--home", home, "--port", str(free_port())))
    url = step("up", lambda: _cli("up", "hosp", "--home", home)).split(" is up at ")[1].strip()
    try:
        step("schema draft", lambda: _cli("schema", "draft", str(export), "--label", "outcome",
                                          "--id-column", "patient_id", "-o", str(schema)))
        # the owner reads the draft and signs it off: the one manual edit
        schema.write_text("\n".join(line for line in schema.read_text().splitlines()
                                    if not line.startswith("drafted_from_data")) + "\n")
        step("upload", lambda: _cli("upload", "hosp", "cohort", "--home", home, "--table",
                                    str(export), "--schema", str(schema), "--id-column",
                                    "patient_id", "--budget-eps", "8", "--delta", "1e-5"))
        step("users add", lambda: _cli("users", "add", "hosp", "alice@uni.edu", "--home", home,
                                       "--password-file", str(pw), "--dataset", "cohort",
                                       "--budget-eps", "6"))
        site = step("connect", lambda: researcher.connect(url, "alice@uni.edu",
                                                          "alice-benchmark-password"))
        req = step("submit", lambda: site.submit(jobs.DPSGD(
            "cohort", "outcome", epsilon=args.epsilon, delta=1e-5)))
        step("review", lambda: _cli("review", "hosp", "--home", home, "--json"))
        step("run", lambda: _cli("run", "hosp", req.id, "--home", home))
        step("release", lambda: _cli("release", "hosp", req.id, "--home", home))
        result = step("wait", lambda: req.wait(timeout=600, progress=False))
    finally:
        _cli("down", "hosp", "--home", home)
    total = time.perf_counter() - t_start
    base_s, base_acc, majority = baseline(export)

    print(f"\nraw export -> first released DP model ({args.records} records, "
          f"eps={args.epsilon:g}, delta=1e-5)")
    for name, s in steps:
        print(f"  {name:<13} {s:7.2f} s")
    print(f"  {'total':<13} {total:7.2f} s   (baseline: non-private pandas + scikit-learn on the "
          f"raw file {base_s:.2f} s; ratio {total / base_s:.0f}x)")
    m = result.metrics
    print(f"DP test accuracy {m.get('test_accuracy'):.3f} (DP-noised, {m.get('evaluated_on')}), "
          f"balanced {m.get('balanced_accuracy') or float('nan'):.3f}; non-private baseline "
          f"{base_acc:.3f}; majority rate {majority:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
