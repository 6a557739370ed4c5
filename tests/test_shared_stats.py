"""shared.stats / shared.jobs.stats: DP statistics with OpenDP as a job kind."""
from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pandas as pd
import pytest
from dp_accounting import dp_event

from shared.privacy.accounting import (ApproxDpEvent, approx_dp_event, epsilon, event_from_json,
                                       event_to_json)
from shared.data import DatasetMeta
from shared.jobs.stats import DPStatsSpec, meta_columns
from shared.jobs import SpecError, spec_from_dict
from shared.stats import (OTHER, StatsError, compile_queries, noise_halfwidth, queries_event,
                          run_queries, validate_queries)

RUNS = 2000


def small_df() -> pd.DataFrame:
    return pd.DataFrame({"age": [30.0, 40.0, 50.0, np.nan, 70.0],
                         "visits": [1, 2, 3, 4, 5],
                         "ward": ["a", "b", "a", "c", "b"],
                         "y": [0, 1, 0, 1, 1]})


def draws(df, query, delta=0.0, runs=RUNS):
    """``runs`` answers of one single-measurement query: the measurement run_queries uses."""
    [(_, [part])] = compile_queries([query], delta)
    data = part.prepare(df)
    return np.array([part.measurement(data) for _ in range(runs)], dtype=float), part


# -- noise scale ---------------------------------------------------------------------------------
def discrete_laplace_std(scale: float) -> float:
    t = 1 / scale
    return math.sqrt(2 * math.exp(-t) / (1 - math.exp(-t)) ** 2)


def test_count_noise_matches_epsilon():
    df = small_df()
    x, part = draws(df, {"type": "count", "epsilon": 0.5})
    assert part.scale == pytest.approx(2.0) and part.noise == "discrete_laplace"
    noise = x - len(df)
    assert np.all(noise == np.round(noise))  # integer (discrete Laplace) noise
    std = noise.std()
    # rel. SE of a Laplace std from 2000 draws is ~2.5%: 10% is 4 SE, and a scale off by a
    # factor 2 (epsilon used twice or halved) is 50-100% off
    assert std == pytest.approx(discrete_laplace_std(2.0), rel=0.10)
    for wrong in (1.0, 4.0):
        assert abs(std / discrete_laplace_std(wrong) - 1) > 0.3
    assert abs(noise.mean()) < 0.25  # unbiased (SE ~0.06)
    h = noise_halfwidth("discrete_laplace", 2.0)
    assert 0.94 <= np.mean(np.abs(noise) <= h) <= 0.985


def test_sum_laplace_noise_scale_and_interval():
    df = small_df()
    x, part = draws(df, {"type": "sum", "column": "age", "bounds": [0, 100], "epsilon": 2.0})
    assert part.noise == "laplace" and part.sensitivity == pytest.approx(100, rel=1e-6)
    assert part.scale == pytest.approx(50, rel=1e-6)
    noise = x - 190.0  # NaN dropped
    assert noise.std() == pytest.approx(math.sqrt(2) * 50, rel=0.10)
    assert np.mean(np.abs(noise)) == pytest.approx(50, rel=0.08)  # E|Lap(b)| = b, SE ~2.2%
    mad = np.mean(np.abs(noise))
    assert abs(mad / 25 - 1) > 0.5 and abs(mad / 100 - 1) > 0.3  # a factor-2 error would fail
    h = noise_halfwidth("laplace", part.scale)
    assert h == pytest.approx(50 * math.log(20))
    assert 0.93 <= np.mean(np.abs(noise) <= h) <= 0.97


def test_gaussian_count_noise_matches_epsilon_delta():
    df = small_df()
    x, part = draws(df, {"type": "count", "epsilon": 1.0, "delta": 1e-6}, delta=1e-6)
    assert part.noise == "gaussian"
    # the analytic Gaussian calibration (Balle & Wang 2018) at eps=1, delta=1e-6: sigma = 4.22
    assert part.scale == pytest.approx(4.2247, rel=1e-3)
    assert epsilon(part.event, 1e-6) == pytest.approx(1.0, rel=5e-3)
    noise = x - len(df)
    assert noise.std() == pytest.approx(part.scale, rel=0.07)
    assert 0.93 <= np.mean(np.abs(noise) <= noise_halfwidth("gaussian", part.scale)) <= 0.97


# -- bounds ----------------------------------------------------------------------------------------
def test_bounds_limit_what_one_extreme_record_changes():
    base = pd.DataFrame({"v": [1.0, 2.0, 3.0, 4.0]})
    plus_big = pd.concat([base, pd.DataFrame({"v": [1e9]})], ignore_index=True)
    plus_small = pd.concat([base, pd.DataFrame({"v": [-1e9, np.inf]})], ignore_index=True)
    # epsilon 100 (noise scale 0.1), averaged over 200 answers: we see the clamped statistic
    q = {"type": "sum", "column": "v", "bounds": [0, 10], "epsilon": 100}
    [(_, [part])] = compile_queries([q], 0.0)

    def answer(df, runs=200):
        data = part.prepare(df)
        return np.mean([part.measurement(data) for _ in range(runs)])

    assert part.sensitivity == pytest.approx(10.0, rel=1e-6)
    assert answer(base) == pytest.approx(10.0, abs=0.06)
    assert answer(plus_big) - answer(base) == pytest.approx(10.0, abs=0.1)  # = upper bound
    # -1e9 is clamped to 0, +inf to 10
    assert answer(plus_small) - answer(base) == pytest.approx(10.0, abs=0.1)

    m = {"type": "mean", "column": "v", "bounds": [0, 10], "epsilon": 100}
    [(_, parts)] = compile_queries([m], 0.0)
    means = [s / c for s, c in ((p.measurement(p.prepare(plus_big)) for p in parts)
                                for _ in range(200))]
    assert np.mean(means) == pytest.approx((1 + 2 + 3 + 4 + 10) / 5, abs=0.05)
    # a histogram with bounds puts the outlier into the last bin, not outside; at epsilon 100
    # the discrete Laplace noise is 0 except with probability ~1e-43
    h = {"type": "histogram", "column": "v", "edges": [0, 2, 10], "epsilon": 100}
    [(_, [hp])] = compile_queries([h], 0.0)
    assert list(hp.measurement(hp.prepare(plus_big))) == [1, 4]


# -- events ----------------------------------------------------------------------------------------
QUERIES = [
    {"type": "count", "epsilon": 0.3},
    {"type": "count", "column": "age", "epsilon": 0.3, "delta": 1e-7},
    {"type": "sum", "column": "visits", "bounds": [-2, 5], "epsilon": 0.4},
    {"type": "sum", "column": "age", "bounds": [0, 100], "epsilon": 0.4, "delta": 1e-7},
    {"type": "mean", "column": "age", "bounds": [0, 100], "epsilon": 0.6},
    {"type": "mean", "column": "age", "bounds": [10, 100], "epsilon": 0.6, "delta": 2e-7},
    {"type": "histogram", "column": "ward", "categories": ["a", "b"], "epsilon": 0.5},
    {"type": "histogram", "column": "age", "bounds": [0, 100], "bins": 5, "epsilon": 0.5,
     "delta": 1e-7},
    {"type": "quantile", "column": "age", "bounds": [0, 100], "alphas": [0.1, 0.5],
     "epsilon": 0.5},
]


def test_each_event_matches_opendp_privacy_map():
    seen = set()
    for q, parts in compile_queries(QUERIES, 1e-6):
        for p in parts:
            got = float(p.measurement.map(1))  # OpenDP's own privacy map, add/remove d_in=1
            seen.add(type(p.event).__name__)
            if isinstance(p.event, dp_accounting.LaplaceDpEvent):
                assert 1 / p.event.noise_multiplier == pytest.approx(got, rel=1e-9)
                assert got <= p.epsilon * (1 + 1e-12)
            elif isinstance(p.event, ApproxDpEvent):  # discrete Laplace or exponential mech.
                assert p.event.epsilon == got and p.event.delta == 0.0
                assert got <= p.epsilon * (1 + 1e-12)
            else:  # Gaussian: OpenDP measures zCDP, rho = (l2 / sigma)^2 / 2
                assert isinstance(p.event, dp_accounting.GaussianDpEvent)
                assert 1 / (2 * p.event.noise_multiplier ** 2) == pytest.approx(got, rel=1e-9)
                assert epsilon(p.event, p.delta) == pytest.approx(p.epsilon, rel=5e-3)
    assert seen == {"LaplaceDpEvent", "ApproxDpEvent", "GaussianDpEvent"}
    # the mean splits its budget; the sum over [-2, 5] has OpenDP's add/remove sensitivity 7
    parts = {q["type"] + str(i): ps for i, (q, ps) in enumerate(compile_queries(QUERIES, 1e-6))}
    assert [p.epsilon for p in parts["mean4"]] == [0.3, 0.3]
    assert parts["sum2"][0].sensitivity == pytest.approx(7.0, rel=1e-6)
    assert parts["mean5"][0].sensitivity == pytest.approx(90.0, rel=1e-6)  # shifted to [0, 90]


def test_integer_laplace_event_is_the_discrete_laplace_pld():
    # OpenDP's integer Laplace is discrete: its loss is exactly +-eps, the pure-DP worst case.
    # approx_dp_event composes exactly that; LaplaceDpEvent (continuous) would undercharge.
    k, t, delta = 30, 0.2, 1e-6
    ours = epsilon(dp_accounting.SelfComposedDpEvent(approx_dp_event(t, 0.0), k), delta)
    exact = epsilon(dp_accounting.SelfComposedDpEvent(dp_event.DiscreteLaplaceDpEvent(t, 1), k),
                    delta)
    cont = epsilon(dp_accounting.SelfComposedDpEvent(dp_accounting.LaplaceDpEvent(1 / t), k),
                   delta)
    assert ours == pytest.approx(exact, rel=5e-3)
    assert cont < 0.97 * exact


def test_planned_event_is_executed_event_and_composes():
    df = small_df()
    planned = queries_event(QUERIES, 1e-6)
    res = run_queries(df, QUERIES, 1e-6, seed=0)
    assert res["privacy"]["event"] == event_to_json(planned)
    ev = event_from_json(res["privacy"]["event"])
    assert len(ev.events) == 12  # 9 queries; two means of 2 parts, a quantile of 2 alphas
    # PLD composition is tighter than adding the query epsilons at the summed query deltas
    eps_sum = sum(q["epsilon"] for q in QUERIES)
    assert res["privacy"]["epsilon"] < eps_sum
    assert epsilon(planned, 5e-7) <= eps_sum * 1.002
    assert res["privacy"]["epsilon_pure"] is None and res["privacy"]["delta"] == 1e-6
    json.dumps(res)  # the whole result is JSON-able
    assert res["metrics"]["n_queries"] == 9
    a = res["answers"]
    assert a[6]["bins"] == ["a", "b", OTHER] and len(a[6]["value"]) == 3
    assert len(a[7]["bins"]) == 5 and a[7]["bounds"] == [0.0, 100.0]
    assert len(a[8]["value"]) == 2 and a[8]["interval_95"] is None
    for ans in a[:4]:  # counts and sums: value +- the noise's 95% half-width
        lo, hi = ans["interval_95"]
        assert lo <= ans["value"] <= hi


def test_pure_batch_reports_pure_epsilon():
    df = small_df()
    qs = [{"type": "count", "epsilon": 0.5}, {"type": "mean", "column": "visits",
                                              "bounds": [0, 10], "epsilon": 0.5}]
    res = run_queries(df, qs, 0.0)
    assert res["privacy"]["epsilon_pure"] == pytest.approx(1.0)
    assert res["privacy"]["epsilon"] <= 1.0 + 1e-3
    with pytest.raises(StatsError, match="total delta"):
        run_queries(df, [{"type": "count", "epsilon": 0.5, "delta": 1e-6}], 0.0)


# -- accuracy on large n -------------------------------------------------------------------------
def test_histogram_quantile_mean_close_to_truth_on_large_n():
    rng = np.random.default_rng(0)
    n = 20_000
    df = pd.DataFrame({"x": rng.normal(50, 10, n), "g": rng.choice(["u", "v", "w"], n,
                                                                     p=[0.5, 0.3, 0.2])})
    edges = [0, 40, 50, 60, 100]
    qs = [{"type": "histogram", "column": "x", "edges": edges, "epsilon": 1.0},
          {"type": "histogram", "column": "g", "categories": ["u", "v"], "epsilon": 1.0},
          {"type": "quantile", "column": "x", "bounds": [0, 100], "resolution": 0.1,
           "alphas": [0.25, 0.5, 0.9], "epsilon": 1.5},
          {"type": "mean", "column": "x", "bounds": [0, 100], "epsilon": 1.0}]
    a = run_queries(df, qs, 0.0, seed=1)["answers"]
    truth = np.histogram(np.clip(df.x, 0, 100), bins=edges)[0]
    assert np.all(np.abs(np.array(a[0]["value"]) - truth) <= 15)
    vc = df.g.value_counts()
    assert np.all(np.abs(np.array(a[1]["value"]) - [vc["u"], vc["v"], vc["w"]]) <= 15)
    assert np.allclose(a[2]["value"], np.quantile(df.x, [0.25, 0.5, 0.9]), atol=0.4)
    # noise of the mean: Laplace(200) / 20000 = Laplace(0.01); P(|.| > 0.12) = e^-12
    assert a[3]["value"] == pytest.approx(df.x.mean(), abs=0.12)
    lo, hi = a[3]["interval_95"]
    assert lo < a[3]["value"] < hi and 0.03 < hi - lo < 0.1  # 2 ln(20) 0.01 = 0.06


def test_mean_interval_coverage():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"x": rng.uniform(0, 10, 40)})
    q = {"type": "mean", "column": "x", "bounds": [0, 10], "epsilon": 1.0}
    [(nq, parts)] = compile_queries([q], 0.0)
    from shared.stats import mean_interval

    truth, hits = df.x.mean(), 0
    for _ in range(200):
        s, c = (p.measurement(p.prepare(df)) for p in parts)
        lo, hi = mean_interval(float(s), float(c), 0.0, 10.0, parts[0], parts[1], rng, 4000)
        hits += lo <= truth <= hi
    assert 0.88 <= hits / 200 <= 1.0


# -- validation ------------------------------------------------------------------------------------
COLS = {"age": "float64", "ward": "object", "y": "int64"}


@pytest.mark.parametrize("queries,match", [
    ([], "no queries"),
    ("count", "no queries"),
    ([{"type": "median", "column": "age", "epsilon": 1}], "unknown type 'median'"),
    ([{"type": "sum", "column": "ward", "bounds": [0, 1], "epsilon": 1}],
     "column 'ward' is not numeric"),
    ([{"type": "mean", "column": "ward", "bounds": [0, 1], "epsilon": 1}], "not numeric"),
    ([{"type": "quantile", "column": "ward", "bounds": [0, 1], "alpha": .5, "epsilon": 1}],
     "not numeric"),
    ([{"type": "histogram", "column": "ward", "bins": 3, "bounds": [0, 1], "epsilon": 1}],
     "not numeric"),
    ([{"type": "sum", "column": "weight", "bounds": [0, 1], "epsilon": 1}],
     "unknown column 'weight'"),
    ([{"type": "sum", "column": "age", "bounds": [5, 1], "epsilon": 1}], "lower < upper"),
    ([{"type": "sum", "column": "age", "bounds": [5, 5], "epsilon": 1}], "lower < upper"),
    ([{"type": "mean", "column": "age", "epsilon": 1}], "needs bounds"),
    ([{"type": "sum", "column": "age", "bounds": [0, math.inf], "epsilon": 1}], "finite"),
    ([{"type": "count", "epsilon": 0}], "epsilon must be a finite number > 0"),
    ([{"type": "count", "epsilon": -1}], "epsilon must be a finite number > 0"),
    ([{"type": "count", "epsilon": 60}, {"type": "count", "epsilon": 60}], "above the cap"),
    ([{"type": "count"}], "epsilon must be a finite number > 0"),
    ([{"type": "count", "epsilon": 1, "bounds": [0, 1]}], r"unknown key\(s\) \['bounds'\]"),
    ([{"type": "count", "epsilon": 1, "delta": 1e-3}], "total delta"),
    ([{"type": "quantile", "column": "age", "bounds": [0, 1], "alpha": .5, "epsilon": 1,
       "delta": 1e-9}], "pure epsilon-DP"),
    ([{"type": "quantile", "column": "age", "bounds": [0, 1], "alpha": 1.5, "epsilon": 1}],
     r"alpha\(s\) must be numbers in \[0, 1\]"),
    ([{"type": "quantile", "column": "age", "bounds": [0, 1e6], "resolution": 1e-3,
       "alpha": .5, "epsilon": 1}], "coarser"),
    ([{"type": "histogram", "column": "age", "edges": [0, 5, 5], "epsilon": 1}],
     "strictly increasing"),
    ([{"type": "histogram", "column": "y", "categories": [1, 1.0], "epsilon": 1}], "distinct"),
    ([{"type": "histogram", "column": "age", "epsilon": 1}], "needs edges"),
    ([{"type": "histogram", "column": "age", "bins": 0, "bounds": [0, 1], "epsilon": 1}],
     "bins"),
])
def test_validation_messages(queries, match):
    with pytest.raises(StatsError, match=match):
        validate_queries(queries, 1e-6, COLS)


def test_run_checks_columns_of_the_real_table():
    with pytest.raises(StatsError, match="unknown column 'weight'"):
        run_queries(small_df(), [{"type": "count", "column": "weight", "epsilon": 1}], 0.0)
    with pytest.raises(StatsError, match="not numeric"):
        run_queries(small_df(), [{"type": "sum", "column": "ward", "bounds": [0, 1],
                                  "epsilon": 1}], 0.0)


# -- the job kind --------------------------------------------------------------------------------
META = DatasetMeta(name="t", kind="table", n_records=5, label="y", labels=[0, 1],
                   features={"age": "float64", "visits": "int64", "ward": "object"})


def test_spec_round_trip_validate_and_run_job():
    from shared.runner import run_job

    qs = [{"type": "histogram", "column": "y", "categories": [0, 1], "epsilon": 0.5},
          {"type": "mean", "column": "y", "bounds": [0, 1], "epsilon": 0.5}]
    s = DPStatsSpec(dataset="t", queries=qs)
    d = s.to_dict()
    assert d["kind"] == "dp_stats" and spec_from_dict(d) == s
    assert s.validate(META) is s
    assert meta_columns(META)["y"] == "int64"
    res = run_job(d, small_df(), META)
    assert res["kind"] == "dp_stats" and len(res["answers"]) == 2
    assert res["privacy"]["event"] == event_to_json(s.planned_event(META))
    assert res["privacy"]["epsilon_pure"] == pytest.approx(1.0)


@pytest.mark.parametrize("kw,match", [
    (dict(queries=[{"type": "sum", "column": "ward", "bounds": [0, 1], "epsilon": 1}]),
     "not numeric"),
    (dict(queries=[{"type": "count", "column": "nope", "epsilon": 1}]), "unknown column"),
    (dict(queries=[]), "no queries"),
    (dict(queries=[{"type": "count", "epsilon": 1}], delta=0.5), "too large for 5 records"),
    (dict(queries=[{"type": "count", "epsilon": 1}], delta=-0.1), r"delta must be in \[0, 1\)"),
    (dict(queries=[{"type": "count", "epsilon": 1}], dataset="other"), "runs on 't'"),
    (dict(queries={"type": "count"}), "queries must be list"),
])
def test_spec_rejects(kw, match):
    with pytest.raises(SpecError, match=match):
        DPStatsSpec(**{"dataset": "t", **kw}).validate(META)


def test_spec_rejects_images():
    meta = DatasetMeta(name="t", kind="images", n_records=5, label="label", labels=[0, 1])
    with pytest.raises(SpecError, match="needs a table"):
        DPStatsSpec(dataset="t", queries=[{"type": "count", "epsilon": 1}]).validate(meta)
