"""Raw PySyft 0.9.5's submit -> result, the baseline of ``benchmarks/workflow.py``.

A datasite launched with ``sy.orchestra.launch`` (its own server process on 127.0.0.1), the
table uploaded as a syft Dataset with a mock, a registered data scientist who submits a
``@sy.syft_function_single_use`` computing a column mean; the owner approves with
``request.approve()`` and the scientist calls the function (the server executes it) and gets
the value. Timed from the submission (the function's definition included, as the product's
``site.submit`` compiles its template) to the value in hand.
"""
from __future__ import annotations

import contextlib
import sys
import time

COLUMN = "mean_radius"


@contextlib.contextmanager
def raw_pysyft(df, port: int):
    """A launched raw PySyft datasite with ``df`` uploaded and a registered scientist; yields
    ``once()``, which times one submit -> approve -> result (seconds per phase and total)."""
    import syft as sy

    from shared.template import compile_function

    with contextlib.redirect_stdout(sys.stderr):  # syft prints banners; keep stdout for the table
        server = sy.orchestra.launch(name="raw-pysyft-bench", port=port, reset=True,
                                     host="127.0.0.1")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            admin = server.login(email="info@openmined.org", password="changethis")
            mock = df.sample(frac=1.0, random_state=0).reset_index(drop=True)
            ds = sy.Dataset(name="bc")
            ds.add_asset(sy.Asset(name="bc", data=df, mock=mock))
            admin.upload_dataset(ds)
            admin.users.create(email="ds@uni.edu", name="ds", password="raw-bench-pw",
                               password_verify="raw-bench-pw")
            scientist = server.login(email="ds@uni.edu", password="raw-bench-pw")
            asset = scientist.datasets["bc"].assets[0]
        count = [0]

        def once() -> dict[str, float]:
            count[0] += 1
            name = f"mean_{COLUMN}_{count[0]}"  # a new function per request, as a new job is
            src = (f"@sy.syft_function_single_use(df=asset)\ndef {name}(df):\n"
                   f"    return float(df[{COLUMN!r}].mean())\n")
            with contextlib.redirect_stdout(sys.stderr):
                t0 = time.perf_counter()
                fn = compile_function(src, {"sy": sy, "asset": asset})
                sub = scientist.code.request_code_execution(fn)
                t1 = time.perf_counter()
                req = next(q for q in admin.requests.get_all() if q.id == sub.id)
                req.approve()
                t2 = time.perf_counter()
                res = getattr(scientist.code, name)(df=asset)
                value = res.get() if hasattr(res, "get") else res
                t3 = time.perf_counter()
            assert abs(value - float(df[COLUMN].mean())) < 1e-9, value
            return {"submit": t1 - t0, "approve": t2 - t1, "call": t3 - t2, "total": t3 - t0}

        once()  # warm-up, not kept
        yield once
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            server.land()
