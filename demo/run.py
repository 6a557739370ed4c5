"""End-to-end demo: one datasite, one researcher, one DP-SGD job, from upload to release.

``python -m demo.run [--home DIR] [--keep]`` (./demo.sh sets everything up first).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from shared.protocol import public_privacy


def _section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo.run")
    parser.add_argument("--home", type=Path, default=None, help="where the demo site lives")
    parser.add_argument("--keep", action="store_true", help="leave the datasite running")
    parser.add_argument("--epsilon", type=float, default=3.0)
    args = parser.parse_args(argv)

    import researcher
    from researcher import jobs

    from datasite.cli import cmd_review
    from datasite.config import init_site
    from datasite.demo_data import schema_path, write_breast_cancer_csv
    from datasite.lifecycle import free_port
    from datasite.owner import OwnerSite

    base = args.home or Path(tempfile.mkdtemp(prefix="dp-datasite-demo-"))
    _section("Owner: create and start the datasite")
    home = init_site("demo-hospital", home=base / "demo-hospital", port=free_port())
    owner = OwnerSite(home)
    url = owner.up()
    print(f"datasite demo-hospital up at {url} (home {home.root})")
    try:
        _section("Owner: upload the real breast-cancer table with its reviewed public schema; "
                 "metadata and mock come from the schema alone")
        csv = base / "breast_cancer.csv"
        write_breast_cancer_csv(csv)
        meta = owner.upload("breast_cancer", table=str(csv), schema=schema_path(csv),
                            description="Wisconsin diagnostic breast cancer (scikit-learn).",
                            budget_epsilon=8.0, delta=1e-5)
        print(f"{meta.name}: {meta.n_records} records, {len(meta.features)} features, "
              f"labels {meta.labels}")
        owner.add_user("alice@uni.edu", "alice-demo-password", name="Dr Alice")
        owner.set_budget("breast_cancer", 5.0, researcher="alice@uni.edu")
        print("registered researcher alice@uni.edu; budgets: dataset eps=8 at delta=1e-5, "
              "alice eps=5")

        _section("Researcher: connect, browse, test on mock data, submit")
        site = researcher.connect(url, "alice@uni.edu", "alice-demo-password")
        print(site.datasets)
        print(site.datasets["breast_cancer"].mock.iloc[:3, :5])
        job = jobs.DPSGD(dataset="breast_cancer", label="diagnosis", epsilon=args.epsilon,
                         delta=1e-5, epochs=30, batch_size=64, clip_norm=1.0, learning_rate=1.0,
                         model="logreg")
        mock_result = job.run_on_mock(site)
        print(f"on mock data: {mock_result.metrics.get('test_accuracy'):.3f} accuracy "
              "(mock labels are random: ~chance is expected)")
        request = site.submit(job)
        print(f"submitted request {request.id[:8]}")

        _section("Owner: review, run on the private data, release")
        cmd_review(argparse.Namespace(name="demo-hospital", home=home.root, json=False, all=False))
        summary = owner.run(request.id)
        print(json.dumps(summary, indent=2, default=str))
        owner.release(request.id)
        print(f"released {request.id[:8]}; executions on private data: "
              f"{owner.executions(request.id)}")

        _section("Researcher: the result")
        result = request.wait(timeout=120)
        print("metrics:", json.dumps(result.metrics, indent=2, default=str))
        print("privacy:", json.dumps(public_privacy(result.privacy),
                                     indent=2, default=str))
        _section("Owner: the privacy ledger")
        from datasite.ledger_view import render, report

        print(render(report(owner.ledger,
                            sizes={n: m.n_records for n, m in owner.datasets().items()})))
        model = result.model
        print(f"model: {model.__class__.__name__} with "
              f"{sum(p.numel() for p in model.parameters())} parameters, loaded without syft")
    finally:
        if not args.keep:
            owner.down()
            print(f"\ndatasite stopped; its state stays in {home.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
