"""shared.privacy.reporting: trade-off curves, attack-risk bounds, mu-GDP, calibration to any target."""
from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from scipy.stats import norm

from shared.privacy.accounting import AccountingError, calibrate_noise, dpsgd_event, pld_of
from shared.privacy.reporting import (EPS_GRID, MU_ALPHAS, REPORT_FPRS, TradeOff,
                                      calibrate_noise_for, fit_mu, gaussian_tradeoff,
                                      privacy_profile, privacy_report, tpr_bound,
                                      tpr_bound_eps_delta, tradeoff_curve, tradeoff_from_pld,
                                      tradeoff_from_profile)

DELTA = 1e-5
FPRS = np.array(REPORT_FPRS)


@pytest.fixture(scope="module")
def example():
    """ALGORITHMS.md section 1: q=0.01, T=1000, eps=4 at delta=1e-5."""
    sigma = calibrate_noise(0.01, 1000, 4.0, DELTA)
    return sigma, dpsgd_event(0.01, sigma, 1000)


def test_algorithms_example(example):
    # "needs sigma=0.735 and bounds TPR at 1% FPR by 0.059, where (eps, delta) alone would only
    # say 0.546". The quoted figures have 3 decimals (rounding: +-0.0005); our sigma is
    # calibrated within 0.1% and the PLD discretisation moves the TPR by ~1e-4 (3e-3 -> 1e-4
    # interval: 0.05915 -> 0.05905). So +-0.001 is the honest tolerance, well inside +-0.005.
    sigma, ev = example
    assert sigma == pytest.approx(0.735, abs=0.003)
    rep = privacy_report(ev, DELTA)
    assert rep["tpr_bound"]["0.01"] == pytest.approx(0.059, abs=0.001)
    # (eps, delta) alone at exactly eps=4: e^4 * 0.01 + 1e-5 = 0.54599
    assert tpr_bound_eps_delta(4.0, DELTA, 0.01) == pytest.approx(0.546, abs=0.0005)
    # the report uses the event's own eps (3.997 <= 4), so its (eps, delta) bound is a bit lower
    assert 0.54 < rep["tpr_bound_eps_delta"]["0.01"] <= tpr_bound_eps_delta(4.0, DELTA, 0.01)
    for k in rep["tpr_bound"]:  # the curve never says less than the pair it contains
        assert rep["tpr_bound"][k] <= rep["tpr_bound_eps_delta"][k] + 1e-12
        assert rep["tpr_bound"][k] >= float(k)  # no attack does worse than guessing... bound-wise


def test_report_fields():
    ev = dpsgd_event(0.01, 1.0, 1000)
    rep = privacy_report(ev, DELTA)
    for key in ("epsilon", "delta", "epsilon_rdp", "accountant", "event", "tpr_bound",
                "tpr_bound_eps_delta", "mu", "mu_fit_error", "mu_fpr_range"):
        assert key in rep
    assert set(rep["tpr_bound"]) == {"0.001", "0.01", "0.1"} == set(rep["tpr_bound_eps_delta"])
    assert rep["epsilon"] == pytest.approx(1.828, abs=0.01)
    assert 0 < rep["mu"] < 1 and 0 <= rep["mu_fit_error"] < 0.1
    json.loads(json.dumps(rep, allow_nan=False))  # strict JSON


def test_non_private_and_no_op_events():
    rep = privacy_report(dp_accounting.NonPrivateDpEvent(), DELTA)
    assert rep["tpr_bound"] == {"0.001": 1.0, "0.01": 1.0, "0.1": 1.0} and rep["mu"] is None
    rep = privacy_report(dp_accounting.NoOpDpEvent(), DELTA)
    for k, v in rep["tpr_bound"].items():  # perfect privacy: TPR = FPR, mu = 0
        assert v == pytest.approx(float(k), abs=1e-12)
    assert rep["mu"] == pytest.approx(0.0, abs=1e-9)


# -- the curve ---------------------------------------------------------------------------------
@pytest.mark.parametrize("s", [0.5, 1.0, 2.0, 4.0])
def test_gaussian_mechanism_is_exactly_mu_gdp(s):
    # A Gaussian mechanism with noise multiplier s (sensitivity 1) is exactly (1/s)-GDP.
    curve = tradeoff_curve(dp_accounting.GaussianDpEvent(s))
    mu, err = fit_mu(curve)
    # Soundness: our curve is a lower bound on the true one (G_{1/s}), so the fitted mu can
    # never be below 1/s, and the TPR bound never below the exact 1 - G_{1/s}(alpha).
    assert mu >= 1 / s - 1e-9
    assert np.all(curve.tpr(MU_ALPHAS) >= 1 - gaussian_tradeoff(1 / s, MU_ALPHAS) - 1e-12)
    # Tightness: pessimistic discretisation + finite grid cost almost nothing.
    assert mu == pytest.approx(1 / s, rel=1e-3)
    assert err < 1e-4
    assert np.all(curve.tpr(MU_ALPHAS) <= 1 - gaussian_tradeoff(1 / s, MU_ALPHAS) + 1e-3)


def test_profile_matches_dp_accounting_and_exact_gaussian():
    events = [dpsgd_event(0.01, 0.735, 1000), dp_accounting.GaussianDpEvent(2.0),
              dp_accounting.ComposedDpEvent([dpsgd_event(0.05, 1.2, 200),
                                             dp_accounting.LaplaceDpEvent(1.5)])]
    for ev in events:
        for interval in (3e-3, 1e-3):
            pld = pld_of(ev, interval)
            ours = privacy_profile(pld, EPS_GRID)  # numpy suffix sums
            theirs = np.asarray(pld.get_delta_for_epsilon(EPS_GRID))  # dp_accounting's loop
            np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-15)
    # Pessimistic PLD: delta never below the exact Gaussian profile (Balle & Wang 2018).
    mu = 0.5
    exact = norm.cdf(-EPS_GRID / mu + mu / 2) - np.exp(EPS_GRID) * norm.cdf(-EPS_GRID / mu - mu / 2)
    ours = privacy_profile(pld_of(dp_accounting.GaussianDpEvent(1 / mu), 1e-3), EPS_GRID)
    assert np.all(ours >= exact - 1e-15)
    assert np.max(ours - exact) < 1e-3


def test_finite_grid_is_conservative():
    # A sub-grid drops lines, so its beta is lower, its TPR bound higher: the safe direction.
    pld = pld_of(dpsgd_event(0.01, 1.0, 1000), 1e-3)
    fine = tradeoff_from_pld(pld)
    coarse = tradeoff_from_pld(pld, EPS_GRID[::20])
    alphas = np.logspace(-5, -0.01, 200)
    assert np.all(coarse.tpr(alphas) >= fine.tpr(alphas) - 1e-15)
    assert np.max(coarse.tpr(alphas) - fine.tpr(alphas)) > 0  # and it does cost something


def test_curve_is_the_tightest_of_dp_accountings_own_pairs():
    # Pairs (eps_i, delta_i) straight from dp_accounting's public accountant API.
    ev = dpsgd_event(0.01, 1.0, 1000)
    acc = PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(ev)
    deltas = np.logspace(-12, -0.5, 120)
    eps_i = np.array([acc.get_epsilon(d) for d in deltas])
    alphas = np.logspace(-5, -0.05, 150)
    pair_tprs = np.array([[tpr_bound_eps_delta(e, d, a) for a in alphas]
                          for e, d in zip(eps_i, deltas)])
    envelope = pair_tprs.min(axis=0)  # the best any single pair can say, at each FPR
    pld = pld_of(ev, 1e-3)
    # (1) With those eps in the grid, our curve is at least as tight as every single pair.
    with_pairs = tradeoff_from_pld(pld, np.union1d(EPS_GRID, eps_i[eps_i >= 0]))
    assert np.all(with_pairs.tpr(alphas) <= envelope + 1e-9)
    # (2) Soundness: never tighter than the profile allows. Pairs taken by dp_accounting's
    # get_delta on our own grid, through the public API, reproduce our curve exactly...
    grid = EPS_GRID[::5]
    pairs = tradeoff_from_profile(grid, [acc.get_delta(e) for e in grid])
    np.testing.assert_allclose(tradeoff_from_pld(pld, grid).tpr(alphas), pairs.tpr(alphas),
                               atol=1e-12)
    # ...and the sup over lines is computed right: compare with a plain double loop.
    some = alphas[::15]
    brute = [1 - max(max(0.0, 1 - d - math.exp(e) * a, math.exp(-e) * (1 - d - a))
                     for e, d in zip(pairs.eps, pairs.delta)) for a in some]
    np.testing.assert_allclose(pairs.tpr(some), brute, atol=1e-14)
    # (3) The default curve is within grid error of the envelope of the 120 pairs (it is tighter
    # where the pairs are sparse, never looser by more than the grid step costs).
    curve = tradeoff_from_pld(pld)
    assert np.all(curve.tpr(alphas) <= envelope + 2e-4)


def test_envelope_equals_the_max_over_every_line():
    """beta is read from the upper envelope of the pairs' lines (one line per alpha, not all
    2n): on real curves and on random pair sets, ties and equal epsilons included, it is the
    max over every line, as the direct (alphas x pairs) computation gives it, and never above."""
    from shared.privacy.reporting import MU_ALPHAS, TradeOff, _lines

    rng = np.random.default_rng(7)
    curves = [tradeoff_curve(dpsgd_event(q, s, t))
              for q, s, t in ((0.1, 1.1, 15), (0.01, 0.8, 1000), (0.5, 5.0, 3))]
    for _ in range(150):
        n = int(rng.integers(1, 40))
        eps = rng.uniform(0, 3, n).round(1) if rng.random() < 0.5 else rng.uniform(0, 12, n)
        curves.append(TradeOff(eps, rng.uniform(0, 0.3, n)))
    alphas = np.concatenate([MU_ALPHAS, rng.uniform(0, 1, 300), np.logspace(-12, 0, 50),
                             [0.0, 1.0]])
    for c in curves:
        direct = np.concatenate([_lines(c.eps, c.delta, alphas[i:i + 256]).max(axis=1)
                                 for i in range(0, len(alphas), 256)])
        got = c.beta(alphas)
        assert np.all(got <= direct) and np.array_equal(got, direct)
        assert c.beta(float(alphas[600])) == direct[600]  # a scalar alpha too


def test_tpr_bound_monotone_in_fpr_and_sigma():
    alphas = np.linspace(1e-4, 0.999, 400)
    previous = None
    for sigma in (0.6, 0.8, 1.0, 1.5, 2.5):
        curve = tradeoff_curve(dpsgd_event(0.01, sigma, 1000))
        tprs = curve.tpr(alphas)
        assert np.all(np.diff(tprs) >= -1e-12)  # more false positives allowed -> more TPR
        assert np.all(tprs >= alphas - 1e-12)
        at = curve.tpr(FPRS)
        if previous is not None:
            assert np.all(at < previous)  # more noise -> less attack success
        previous = at


def test_eps_delta_bound_formula():
    # 1 - f_{eps,delta}(alpha) = min(1, e^eps a + d, 1 - e^-eps (1 - d - a))
    assert tpr_bound_eps_delta(1.0, 1e-5, 0.01) == pytest.approx(math.e * 0.01 + 1e-5)
    assert tpr_bound_eps_delta(4.0, 1e-5, 0.1) == pytest.approx(1 - math.exp(-4) * (0.9 - 1e-5))
    assert tpr_bound_eps_delta(10.0, 1e-5, 0.5) <= 1.0
    assert tpr_bound_eps_delta(math.inf, 1e-5, 0.01) == 1.0


def test_clt_mu_is_not_a_bound():
    # mu_CLT = q sqrt(T (e^{1/sigma^2} - 1)) is an approximation. Here G_{mu_CLT} is *above* the
    # event's (valid) trade-off curve at small FPR: reporting mu_CLT would understate the risk.
    q, sigma, steps = 0.01, 0.735, 1000
    mu_clt = q * math.sqrt(steps * (math.exp(1 / sigma ** 2) - 1))
    curve = tradeoff_curve(dpsgd_event(q, sigma, steps))
    mu, _ = fit_mu(curve)
    assert mu > mu_clt * 1.1
    small = np.array([1e-6, 1e-5, 1e-4])
    assert np.all(gaussian_tradeoff(mu_clt, small) > curve.beta(small))


def test_tradeoff_validation():
    with pytest.raises(AccountingError):
        tradeoff_from_profile([0.0, -1.0], [0.1, 0.2])
    with pytest.raises(AccountingError):
        TradeOff(np.array([0.0]), np.array([0.0])).beta(1.5)
    t = tradeoff_from_profile([0.0], [0.0])  # (0, 0)-DP: perfect privacy
    assert t.tpr(0.3) == pytest.approx(0.3)


# -- calibration -------------------------------------------------------------------------------
def test_calibrate_for_epsilon_reuses_calibrate_noise(monkeypatch):
    """An epsilon target is calibrate_noise's own answer, with every argument passed on."""
    import shared.privacy.reporting as reporting

    calls = []
    monkeypatch.setattr(reporting, "calibrate_noise",
                        lambda *a, **kw: calls.append((a, kw)) or 0.123)
    assert calibrate_noise_for(0.02, 50, epsilon=2.0, delta=DELTA, rtol=1e-2) == 0.123
    assert calls == [((0.02, 50, 2.0, DELTA), {"rtol": 1e-2})]


def test_calibrate_for_tpr_round_trip(example):
    sigma_eps, _ = example
    # Asking for the TPR that eps=4 gives should land on (about) the same sigma.
    target = tpr_bound(dpsgd_event(0.01, sigma_eps, 1000), 0.01)
    sigma = calibrate_noise_for(0.01, 1000, tpr=target, fpr=0.01)
    assert sigma == pytest.approx(sigma_eps, rel=5e-3)
    ev = dpsgd_event(0.01, sigma, 1000)
    got = privacy_report(ev, DELTA)["tpr_bound"]["0.01"]
    assert got <= target  # feasible side, as the report shows it
    assert tpr_bound(dpsgd_event(0.01, sigma * 0.99, 1000), 0.01) > target  # not wasteful
    # a stricter target needs more noise
    assert calibrate_noise_for(0.01, 1000, tpr=0.03, fpr=0.01) > sigma


def test_calibrate_for_mu_round_trip():
    sigma = calibrate_noise_for(0.01, 1000, mu=0.5)
    mu, _ = fit_mu(tradeoff_curve(dpsgd_event(0.01, sigma, 1000)))
    assert 0.5 * 0.99 < mu <= 0.5
    assert privacy_report(dpsgd_event(0.01, sigma, 1000), DELTA)["mu"] <= 0.5
    mu_less, _ = fit_mu(tradeoff_curve(dpsgd_event(0.01, sigma * 0.99, 1000)))
    assert mu_less > 0.5


def test_calibrate_for_gaussian_mu_matches_theory():
    # One full-batch step (q=1) is the Gaussian mechanism: mu-GDP needs sigma = 1/mu.
    sigma = calibrate_noise_for(1.0, 1, mu=0.25)
    assert sigma == pytest.approx(4.0, rel=3e-3)
    assert sigma >= 4.0 * (1 - 1e-6)  # never less noise than the exact answer


def test_calibrate_for_bad_targets():
    with pytest.raises(AccountingError, match="exactly one target"):
        calibrate_noise_for(0.01, 100)
    with pytest.raises(AccountingError, match="exactly one target"):
        calibrate_noise_for(0.01, 100, epsilon=1.0, delta=DELTA, mu=0.5)
    with pytest.raises(AccountingError, match="needs delta"):
        calibrate_noise_for(0.01, 100, epsilon=1.0)
    with pytest.raises(AccountingError, match="tpr must lie"):
        calibrate_noise_for(0.01, 100, tpr=0.01, fpr=0.01)
    with pytest.raises(AccountingError, match="fpr"):
        calibrate_noise_for(0.01, 100, tpr=0.1)
    with pytest.raises(AccountingError, match="mu must be"):
        calibrate_noise_for(0.01, 100, mu=-1.0)
    with pytest.raises(AccountingError, match="out of reach"):
        calibrate_noise_for(0.5, 10_000, tpr=0.0011, fpr=0.001)
