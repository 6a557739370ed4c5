"""Issue 13, a DP synthetic mock charged to the dataset's budget (shared.synth,
datasite.mock_release): the priced event is the noise the mechanism adds, one record moves the
measurements by at most the stated sensitivity, the mock keeps a strong correlation, the
ledger charges it to the dataset and to every researcher, and the schema mock is unchanged."""
from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest

import dp_accounting
from datasite.demo_data import breast_cancer_frame, breast_cancer_schema
from datasite.ledger import Ledger, LedgerError
from datasite.mock import synthetic_mock
from datasite.mock_release import mock_event, reserve_mock, settle
from datasite.state import State, engine_for
from shared.privacy.accounting import dpsgd_event, epsilon, event_from_json, event_to_json
from shared.randomness import pinned_randomness
from shared.schema import meta_from_schema
from shared.synth import copula as cp
from shared.synth import correlation as corr
from shared.synth.budget import calibrate, moment_sensitivity

DELTA = 1e-5


@pytest.fixture(scope="module")
def bc():
    df = breast_cancer_frame()
    return df, meta_from_schema(breast_cancer_schema(len(df)), "bc")


def _small(bc, keep=("mean_radius", "mean_perimeter", "mean_texture", "worst_concave_points")):
    df, _ = bc
    schema = breast_cancer_schema(len(df))
    schema["columns"] = {k: schema["columns"][k] for k in keep}
    return df[[*keep, "diagnosis"]], meta_from_schema(schema, "bc")


# -- the priced event is the noise -----------------------------------------------------------
def test_event_is_priced_at_the_target_and_names_both_measurements(bc):
    df, meta = bc
    d = len(meta.columns) + 1
    noise = calibrate(d, 1.0, DELTA)
    ev = noise.event()
    assert epsilon(ev, DELTA) <= 1.0 and epsilon(ev, DELTA) > 0.98  # not overcharged either
    hist, pairs = ev.events
    assert hist == dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(noise.hist_sigma), d)
    assert pairs == dp_accounting.GaussianDpEvent(noise.corr_sigma)
    assert event_from_json(event_to_json(ev)) == ev


def test_noise_std_is_sigma_times_sensitivity(bc):
    """Over repeated pinned runs, the histogram noise has std hist_sigma * 1 and the moment
    noise std corr_sigma * moment_sensitivity: the mechanism adds what the ledger is told."""
    table, meta = _small(bc)
    cols = cp.columns_of(meta)
    exact = cp.histograms(cols, table)
    h_noise, m_noise = [], []
    noise = calibrate(len(cols), 1.0, DELTA)  # deterministic: the same noise for every run
    for s in range(300):
        with pinned_randomness(s):
            rng = np.random.default_rng(cp.secret_seed(cp._NOISE_STREAM))
            counts = [cp.noisy(h, noise.hist_sigma, rng) for h in exact]
            probs, _, _ = cp.read_marginals(cols, counts, noise.hist_sigma)
            std = noise.corr_sigma * noise.corr_sensitivity
            clean = cp.moments_of(cols, probs, table, noise.clip)
            m = cp.noisy(clean, std, rng)
        h_noise.append(np.concatenate([c - e for c, e in zip(counts, exact)]))
        m_noise.append(m - clean)
    h_std, m_std = np.std(h_noise), np.std(m_noise)
    assert h_std == pytest.approx(noise.hist_sigma, rel=0.03)
    assert m_std == pytest.approx(noise.corr_sigma * moment_sensitivity(len(cols), noise.clip),
                                  rel=0.05)
    # ATTACK on the pricing: a mechanism adding half the noise would be seen
    assert not h_std == pytest.approx(noise.hist_sigma / 2, rel=0.2)


def test_fit_uses_exactly_that_noise(bc, monkeypatch):
    """fit() adds noise only through cp.noisy, with the priced stds."""
    table, meta = _small(bc)
    noise = calibrate(len(meta.columns) + 1, 0.7, DELTA)
    seen = []
    real = cp.noisy
    monkeypatch.setattr(cp, "noisy", lambda v, std, rng: (seen.append(std), real(v, std, rng))[1])
    with pinned_randomness(0):
        cp.fit(table, meta, 0.7, DELTA)
    assert seen[:-1] == [noise.hist_sigma] * (len(meta.columns) + 1)
    assert seen[-1] == noise.corr_sigma * noise.corr_sensitivity


# -- one record ------------------------------------------------------------------------------
def test_one_record_moves_the_measurements_by_at_most_the_sensitivity(bc):
    table, meta = bc
    cols = cp.columns_of(meta)
    with pinned_randomness(1):
        model = cp.fit(table, meta, 1.0, DELTA)
    sens = moment_sensitivity(len(cols), model.noise.clip)
    full_h = cp.histograms(cols, table)
    full_m = cp.moments_of(cols, model.probs, table, model.noise.clip)
    worst_h, worst_m = 0.0, 0.0
    for i in range(0, len(table), 7):
        less = table.drop(index=table.index[i])
        for a, b in zip(full_h, cp.histograms(cols, less)):
            worst_h = max(worst_h, float(np.linalg.norm(a - b)))
        worst_m = max(worst_m, float(np.linalg.norm(
            full_m - cp.moments_of(cols, model.probs, less, model.noise.clip))))
    assert worst_h == pytest.approx(1.0)  # one bin of each histogram, by one
    assert 0 < worst_m <= sens + 1e-9
    # the bound is tight: a record at the clip in every column reaches it
    z = np.full((1, len(cols)), model.noise.clip)
    assert np.linalg.norm(corr.moments(z)) == pytest.approx(sens)


# -- what the mock keeps ---------------------------------------------------------------------
def test_mock_keeps_a_strong_correlation_at_eps_1(bc):
    table, meta = _small(bc)
    real = table["mean_radius"].corr(table["mean_perimeter"])
    assert real > 0.99
    for s in range(3):
        with pinned_randomness(s):
            mock, _ = cp.dp_copula_mock(table, meta, 1.0, DELTA, 569)
        assert abs(mock["mean_radius"].corr(mock["mean_perimeter"]) - real) < 0.2
        assert mock["diagnosis"].corr(mock["mean_radius"]) < -0.4  # label signal (real: -0.73)
    # the schema mock keeps none of it
    sm = synthetic_mock(meta, 569)
    assert abs(sm["mean_radius"].corr(sm["mean_perimeter"])) < 0.2


def test_correlation_is_psd_unit_diagonal_and_pure_noise_gives_independence():
    rng = np.random.default_rng(0)
    d = 12
    noisy_r = rng.normal(0, 0.5, d * (d - 1) // 2)
    r = corr.project(noisy_r, d, 0.5)
    assert np.allclose(np.diag(r), 1) and np.linalg.eigvalsh(r).min() > -1e-9
    assert np.abs(r - np.eye(d)).max() < 0.2
    true = np.full(d * (d - 1) // 2, 0.6)  # one factor: projected back nearly exactly
    assert np.abs(corr.project(true, d, 0.0) - (0.6 + 0.4 * np.eye(d))).max() < 1e-3


def test_mock_has_the_published_structure_and_missing_values(bc):
    df, meta = bc
    with pinned_randomness(0):
        mock, _ = cp.dp_copula_mock(df, meta, 1.0, DELTA, 300)
    ref = synthetic_mock(meta, 300)
    assert list(mock.columns) == list(ref.columns) and (mock.dtypes == ref.dtypes).all()
    schema = {"kind": "table", "records": 400, "label": {"column": "y", "classes": [0, 1]},
              "columns": {"crp": {"type": "float", "bounds": [0, 300], "missing": True},
                          "stage": {"type": "category", "categories": [1, 2, 3]}}}
    m2 = meta_from_schema(schema, "c")
    rng = np.random.default_rng(0)
    crp = rng.uniform(0, 100, 400)
    crp[:160] = np.nan  # 40% missing
    t = pd.DataFrame({"crp": crp, "stage": rng.integers(1, 4, 400), "y": rng.integers(0, 2, 400)})
    with pinned_randomness(0):
        mock2, _ = cp.dp_copula_mock(t, m2, 2.0, DELTA, 2000)
    assert mock2["crp"].isna().mean() == pytest.approx(0.4, abs=0.08)
    assert set(mock2["stage"]) <= {1, 2, 3} and mock2["crp"].dropna().between(0, 300).all()


def test_schema_mock_default_unchanged(bc):
    _, meta = bc
    assert meta.mock == {"kind": "synthetic", "epsilon": 0.0}
    a, b = synthetic_mock(meta, 100, seed=3), synthetic_mock(meta, 100, seed=3)
    pd.testing.assert_frame_equal(a, b)
    # drawn from the metadata alone: the same whatever the records are
    assert a["mean_radius"].between(0, 50).all() and abs(a["mean_radius"].mean() - 25) < 5


# -- the ledger charge -----------------------------------------------------------------------
def _ledger(tmp_path):
    from datasite.config import init_site

    site = init_site("l", home=tmp_path / f"l-{uuid.uuid4().hex[:6]}")
    return Ledger(State(engine_for(site)), site)


def _job():
    return event_to_json(dpsgd_event(0.02, 2.0, 100))


def test_mock_charge_counts_for_the_dataset_and_every_researcher(tmp_path, bc):
    _, meta = bc
    led = _ledger(tmp_path)
    led.set_budget("bc", 2.0, DELTA)
    led.set_budget("bc", 1.5, None, researcher="alice@uni.edu")
    job_eps = Ledger.epsilon_of([_job()], DELTA)
    charge = reserve_mock(led, meta, 0.5)
    settle(led, charge, True)
    assert charge.request_id == "mock:bc:v1" and led.entry("mock:bc:v1")["state"] == "released"
    assert led.spent("bc")["epsilon"] == pytest.approx(charge.epsilon, rel=1e-6)
    for who in ("alice@uni.edu", "bob@uni.edu"):  # a budgeted researcher and one without
        q = led.quote("bc", who, _job())
        assert q["researcher_spent"] == pytest.approx(charge.epsilon, rel=1e-6)
        assert q["researcher_after"] > job_eps
    assert reserve_mock(led, meta, 0.1).request_id == "mock:bc:v2"  # a new mock: a new charge


def test_mock_charge_blocks_a_job_that_would_exceed_the_budget(tmp_path, bc, monkeypatch):
    """ATTACK: a job that fits only if the mock were free. With the charge it is refused;
    without it (the mock left out of the spend, monkeypatched) the same job would fit."""
    _, meta = bc
    job_eps = Ledger.epsilon_of([_job()], DELTA)
    both = Ledger.epsilon_of([_job(), mock_event(meta, 0.5, DELTA)], DELTA)
    assert both > job_eps + 0.05
    led = _ledger(tmp_path)
    led.set_budget("bc", (job_eps + both) / 2, DELTA)  # fits the job alone, not with the mock
    settle(led, reserve_mock(led, meta, 0.5), True)
    assert not led.quote("bc", "alice@uni.edu", _job())["fits"]
    with pytest.raises(LedgerError, match="Refused"):
        led.reserve("r1", "bc", "alice@uni.edu", _job())
    # defence off: the ledger no longer counts the mock's entry
    import datasite.ledger as ledger_mod

    real_jobs = Ledger._jobs

    def without_mock(self, c, dataset, researcher=None, skip=None):
        return real_jobs(self, c, dataset, researcher, skip="mock:bc:v1")

    monkeypatch.setattr(ledger_mod.Ledger, "_jobs", without_mock)
    assert led.quote("bc", "alice@uni.edu", _job())["fits"]


def test_mock_refused_before_it_is_built_when_the_budget_cannot_pay(tmp_path, bc, monkeypatch):
    _, meta = bc
    led = _ledger(tmp_path)
    led.set_budget("bc", 0.3, DELTA)
    from datasite import mock as mock_mod
    from datasite.config import SiteError

    monkeypatch.setattr(mock_mod, "dp_mock", lambda *a, **k: pytest.fail("measured the data"))
    with pytest.raises(SiteError, match="smaller --mock-epsilon"):
        reserve_mock(led, meta, 0.5)
    assert led.spent("bc")["epsilon"] == 0.0
    # a failed upload refunds the reservation
    charge = reserve_mock(led, meta, 0.2)
    settle(led, charge, False)
    assert led.entry(charge.request_id)["state"] == "refunded" and led.spent("bc")["jobs"] == 0
    assert mock_event(meta, 0.2, DELTA) == charge.event_json


# -- through a real site ---------------------------------------------------------------------
@pytest.mark.slow
def test_upload_with_dp_mock_and_a_researcher_reads_it(tmp_path, demo_files):
    import researcher
    from conftest import RESEARCHER, make_site
    from datasite.ledger_view import render, report

    site = make_site(tmp_path, "hosp-dpmock")
    try:
        site.upload("bc", table=str(demo_files / "breast_cancer.csv"), label="diagnosis",
                    schema=demo_files / "breast_cancer.schema.yaml", budget_epsilon=5.0,
                    delta=1e-5, mock="dp", mock_epsilon=3.0)
        site.add_user(*RESEARCHER, name="Alice")
        assert site.ledger.spent("bc")["epsilon"] == pytest.approx(3.0, abs=0.02)
        text = render(report(site.ledger, "bc"))
        assert "mock:bc:v1" in text and "everyone (owner release)" in text
        ds = researcher.connect(site.url, *RESEARCHER).datasets["bc"]
        assert ds.meta.mock["kind"] == "dp" and ds.meta.mock["epsilon"] <= 3.0
        mock = ds.mock
        # the DP mock keeps the strong correlation (real 0.998; 300 draws of this eps-3 mock
        # offline: min 0.514, 1% quantile 0.537) that the schema mock lacks (|corr| < 0.2)
        assert len(mock) == 569 and mock["mean_radius"].corr(mock["mean_perimeter"]) > 0.35
        out = site.replace_dataset("bc", table=str(demo_files / "breast_cancer.csv"),
                                   label="diagnosis", mock="dp", mock_epsilon=0.5,
                                   schema=demo_files / "breast_cancer.schema.yaml")
        assert out["meta"].mock["ledger_entry"] == "mock:bc:v2"
        assert site.ledger.spent("bc")["epsilon"] > 3.05  # two mocks composed
        with pytest.raises(Exception, match="smaller --mock-epsilon"):
            site.replace_dataset("bc", table=str(demo_files / "breast_cancer.csv"),
                                 label="diagnosis", mock="dp", mock_epsilon=5.0,
                                 schema=demo_files / "breast_cancer.schema.yaml")
        assert researcher.connect(site.url, *RESEARCHER).datasets["bc"].meta.mock[
            "ledger_entry"] == "mock:bc:v2"  # the refused upload changed nothing
    finally:
        site.down()
