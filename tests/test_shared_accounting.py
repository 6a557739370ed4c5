"""shared.privacy.accounting: reference numbers from ALGORITHMS.md, calibration, JSON round trips."""
from __future__ import annotations

import json

import dp_accounting
import pytest

from shared.privacy.accounting import (AccountingError, calibrate_noise, compose_epsilon,
                                       dpsgd_event, epsilon, epsilon_rdp, event_from_json,
                                       event_to_json)
from shared.privacy.reporting import privacy_report

REF = dpsgd_event(0.01, 1.0, 1000)  # ALGORITHMS.md section 1


def test_reference_pld_and_rdp():
    assert epsilon(REF, 1e-5) == pytest.approx(1.828, abs=0.01)
    assert epsilon_rdp(REF, 1e-5) == pytest.approx(2.101, abs=0.02)


def test_wide_rdp_grid_is_tight_at_small_epsilon():
    # Opacus' orders (<= 63) give 0.160 here; orders up to 1024 give ~0.104; PLD 0.093.
    ev = dpsgd_event(0.001, 4.0, 10_000)
    assert epsilon_rdp(ev, 1e-6) < 0.11
    assert epsilon(ev, 1e-6) == pytest.approx(0.093, abs=0.003)


@pytest.mark.parametrize("q,sigma,steps,delta", [
    (0.01, 1.0, 1000, 1e-5), (0.125, 1.46, 40, 1e-5), (0.05, 0.8, 300, 1e-6), (1.0, 5.0, 10, 1e-5)])
def test_pld_never_above_rdp(q, sigma, steps, delta):
    ev = dpsgd_event(q, sigma, steps)
    assert epsilon(ev, delta) <= epsilon_rdp(ev, delta)


def test_calibrate_round_trip():
    # ALGORITHMS.md: q=0.01, T=1000, eps=4 at delta=1e-5 needs sigma=0.735.
    sigma = calibrate_noise(0.01, 1000, 4.0, 1e-5)
    assert sigma == pytest.approx(0.735, abs=0.003)
    eps = epsilon(dpsgd_event(0.01, sigma, 1000), 1e-5)
    assert eps <= 4.0  # the returned sigma is on the feasible side...
    assert eps > 4.0 * 0.99  # ...and not wastefully large
    assert epsilon(dpsgd_event(0.01, sigma * 0.99, 1000), 1e-5) > 4.0


def test_calibrate_unreachable_has_clear_error():
    with pytest.raises(AccountingError, match="out of reach"):
        calibrate_noise(0.5, 10_000, 0.01, 1e-9)
    with pytest.raises(AccountingError, match="epsilon"):
        calibrate_noise(0.1, 10, -1.0, 1e-5)


def test_event_json_round_trip_is_exact():
    events = [
        REF,
        dpsgd_event(1 / 3, 0.1 + 0.2, 7),  # floats with long reprs survive exactly
        dp_accounting.ComposedDpEvent([
            REF,
            dp_accounting.SelfComposedDpEvent(dp_accounting.LaplaceDpEvent(2.5), 3),
            dp_accounting.GaussianDpEvent(4.0),
        ]),
    ]
    for ev in events:
        text = event_to_json(ev)
        back = event_from_json(text)
        assert back == ev
        assert event_to_json(back) == text  # stable text
        assert epsilon(back, 1e-5) == epsilon(ev, 1e-5)


def test_event_json_refuses_unknown_classes():
    # from_named_tuple would import any module the data names; ours must not.
    bad = json.dumps({"class": "Popen", "args": ["true"]})
    with pytest.raises(AccountingError, match="unknown DpEvent class"):
        event_from_json(bad)


def test_compose_is_tighter_than_adding():
    texts = [event_to_json(REF)] * 2
    total = compose_epsilon(texts, 1e-5)
    assert epsilon(REF, 1e-5) < total < 2 * epsilon(REF, 1e-5)
    assert compose_epsilon([], 1e-5) == 0.0


def test_privacy_report():
    rep = privacy_report(REF, 1e-5)
    assert rep["accountant"] == "pld" and rep["delta"] == 1e-5
    assert rep["epsilon"] == pytest.approx(1.828, abs=0.01)
    assert rep["epsilon_rdp"] == pytest.approx(2.101, abs=0.02)
    assert event_from_json(rep["event"]) == REF
    json.dumps(rep)  # JSON-able as a whole


def test_approx_dp_event_is_composed_by_pld_and_round_trips():
    import math

    from shared.privacy.accounting import (approx_dp_event, epsilon, epsilon_rdp, event_from_json,
                                           event_to_json)

    e = approx_dp_event(1.0, 1e-6)
    assert epsilon(e, 1e-6) == pytest.approx(1.0, abs=2e-3)
    assert event_from_json(event_to_json(e)) == e
    assert epsilon_rdp(e, 1e-5) is None  # RDP cannot account an (eps, delta) guarantee
    # k-fold composition of pure eps-DP: never above k*eps, and below it by the advanced theorem
    k, eps0, d = 25, 0.2, 1e-5
    adv = eps0 * math.sqrt(2 * k * math.log(1 / d)) + k * eps0 * (math.exp(eps0) - 1)
    composed = epsilon(dp_accounting.SelfComposedDpEvent(approx_dp_event(eps0), k), d)
    assert composed < min(k * eps0, adv)
    assert composed > 0.5 * min(k * eps0, adv)
    with pytest.raises(ValueError, match="epsilon"):
        approx_dp_event(-1.0)


def test_rdp_curve_is_computed_once_per_event_and_shared_read_only(monkeypatch):
    """A tuned job's trials, its selection report and a privacy report after a calibration ask
    for the same event's RDP again: it is composed once, and the kept vector cannot be changed
    by one caller under another."""
    from shared.privacy import accounting as A

    A.clear_pld_cache()
    composed = []
    real = A._rdp_of
    monkeypatch.setattr(A, "_rdp_of", lambda ev: (composed.append(1), real(ev))[1])
    ev = dpsgd_event(0.02, 1.3, 300)
    first = A.rdp_curve(ev)
    again = A.rdp_curve(event_from_json(A.event_to_json(ev)))  # an equal event, rebuilt
    assert again is first and len(composed) == 1
    with pytest.raises(ValueError):
        first += 1.0  # read-only
    other = A.rdp_curve(dpsgd_event(0.02, 1.4, 300))
    assert len(composed) == 2 and (other < first).all()  # more noise: less RDP at every order
    assert epsilon_rdp(ev, 1e-5) == float(
        A.rdp_privacy_accountant.compute_epsilon(list(A.RDP_ORDERS), real(ev), 1e-5)[0])
