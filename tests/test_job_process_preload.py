"""The workers' fork server imports what jobs would otherwise import lazily, so a forked job
starts warm (benchmarks/workflow.py: opendp, torch._dynamo and sklearn cost a forked DP
statistics job ~1 s and a DP-SGD table job ~3 s when each job imported them itself)."""
from __future__ import annotations

import sys

from datasite import job_process

# imported inside job code (shared.stats.mechanisms, the first torch.optim optimizer, the
# table preprocessing), not at the top of any PRELOAD module
LAZY = ("opendp.prelude", "torch._dynamo", "sklearn.compose", "sklearn.impute",
        "sklearn.preprocessing")


def _missing(conn) -> None:
    conn.send([m for m in LAZY if m not in sys.modules])


def test_a_forked_job_starts_with_the_lazy_imports_already_loaded():
    ctx = job_process.context()
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_missing, args=(send,))
    p.start()
    send.close()
    missing = recv.recv()
    p.join()
    assert p.exitcode == 0 and missing == []
