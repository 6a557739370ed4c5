"""What a review of N pending requests costs, and what it cost before requests were priced once.

    .venv/bin/python benchmarks/review.py [--pending 20]

A temporary SQLite datasite with the breast-cancer table, one researcher and ``--pending``
distinct DP-SGD requests (different seeds and epochs). Timed, in the owner's process:
(i) the baseline measured in the same run: pricing every pending spec in-process with
``shared.privacy.pricing.planned_event`` + ``record_events``, as `datasite review` did on every call
before this change; (ii) the first `OwnerSite.review()` (each request priced once in the
bounded worker, its price cached in the owner's database); (iii) a second review in the same
process and (iv) a review from a new OwnerSite (a new `datasite review` command: prices come
from the database). Prints seconds and the ratios against (i).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pending", type=int, default=20)
    args = ap.parse_args()

    import researcher
    from datasite.config import init_site
    from datasite.inbox import code_of
    from datasite.demo_data import write_breast_cancer_csv
    from datasite.lifecycle import free_port
    from datasite.owner import OwnerSite
    from researcher import jobs
    from shared.data import DatasetMeta
    from shared.privacy.pricing import planned_event, record_events
    from shared.template import recognise

    base = Path(tempfile.mkdtemp(prefix="dpds-review-"))
    write_breast_cancer_csv(base / "bc.csv")
    site = OwnerSite(init_site("bench", home=base / "site", port=free_port()))
    site.up()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            site.upload("bc", table=str(base / "bc.csv"), label="diagnosis",
                        schema=base / "bc.schema.yaml", budget_epsilon=100.0, delta=1e-5)
            site.add_user("alice@uni.edu", "alice-password-1")
            r = researcher.connect(site.url, "alice@uni.edu", "alice-password-1")
            for i in range(args.pending):
                r.submit(jobs.DPSGD(dataset="bc", label="diagnosis", epsilon=1.0 + 0.1 * i,
                                    delta=1e-5, epochs=2 + i % 5, batch_size=64, seed=i))
        meta = DatasetMeta.from_json(site.state.dataset("bc")["meta_json"])
        pending = [recognise(code_of(req).raw_code) for req in site.syft_requests().values()]
        t_base, _ = _timed(lambda: [(planned_event(s, meta), record_events(s, meta))
                                    for s in pending])
        t_first, items = _timed(site.review)
        t_again, _ = _timed(site.review)
        t_new, _ = _timed(lambda: OwnerSite(site.home).review())
        assert len(items) == args.pending and all("cost" in i for i in items)
    finally:
        site.down()
    print(f"{args.pending} pending requests")
    print(f"  baseline (old review: price every spec in-process, every time): {t_base:6.2f} s")
    for name, t in (("first review (priced once, bounded worker)", t_first),
                    ("second review, same process", t_again),
                    ("review from a new process (prices from the database)", t_new)):
        print(f"  {name:55s} {t:6.2f} s  ({t / t_base:5.2f}x baseline)")


if __name__ == "__main__":
    main()
