"""The owner's one-run privacy audit (Steinke, Nasr, Jagielski 2023): the bound's statistics,
honest DP-SGD and DP-AL jobs below their claims, DP-SGD without noise (test-only hook) flagged,
and ``datasite audit`` (owner only: logged, nothing charged)."""
import json
import math

import numpy as np
import pytest
import scipy.stats
import torch

from shared.training import engine
from shared.privacy.audit import audit_job
from shared.privacy.audit_bound import epsilon_lower_bound, guess_and_bound, p_value
from shared.data import TABLE, DatasetMeta
from shared.randomness import pinned_randomness
from shared.jobs import SpecError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bc():
    from sklearn.datasets import load_breast_cancer

    df = load_breast_cancer(as_frame=True).frame
    df = df.rename(columns=lambda c: c.replace(" ", "_")).rename(columns={"target": "diagnosis"})
    meta = DatasetMeta(name="bc", kind=TABLE, n_records=len(df), label="diagnosis",
                       labels=[0, 1], features={c: "float64" for c in df if c != "diagnosis"})
    return df, meta


DPSGD = dict(kind="dpsgd_table", dataset="bc", label="diagnosis", epsilon=1.0, delta=1e-5,
             epochs=5, batch_size=64, learning_rate=0.1)


# -- the statistics --------------------------------------------------------------------------------
def _paper_p_value(m, r, v, eps, delta):
    """The paper's p-value procedure, written out as a loop (independent of the vectorised one)."""
    q = 1 / (1 + math.exp(-eps))
    beta = scipy.stats.binom.sf(v - 1, r, q)
    alpha, acc = 0.0, 0.0
    for i in range(1, v + 1):
        acc += scipy.stats.binom.pmf(v - i, r, q)
        alpha = max(alpha, acc / i)
    return min(beta + alpha * delta * 2 * m, 1.0)


@pytest.mark.parametrize("m,r,v,delta", [(1000, 600, 600, 1e-5), (1000, 200, 150, 1e-5),
                                         (100, 100, 100, 1e-5), (1000, 100, 60, 0.0)])
def test_bound_matches_the_papers_p_value(m, r, v, delta):
    for eps in (0.0, 0.5, 2.0, 5.0):
        assert p_value(m, r, v, eps, delta) == pytest.approx(_paper_p_value(m, r, v, eps, delta),
                                                             abs=1e-12)
    lb = epsilon_lower_bound(m, r, v, delta, 0.05)
    assert _paper_p_value(m, r, v, lb - 1e-4, delta) <= 0.05 if lb > 0 else True
    assert _paper_p_value(m, r, v, lb + 1e-3, delta) > 0.05


def test_bound_is_valid_on_randomised_response():
    """eps-DP randomised response on each canary's bit: the 95% lower bound exceeds the true
    eps in at most ~5% of runs (Bonferroni over guess sizes makes it rarer still)."""
    rng = np.random.default_rng(0)
    eps, m, runs, above = 1.0, 1000, 200, 0
    for _ in range(runs):
        bits = rng.random(m) < 0.5
        keep = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
        scores = np.where(keep, bits, ~bits).astype(float)
        above += guess_and_bound(scores, bits, 0.0, 0.95, rng=rng)["epsilon_lower_bound"] > eps
    assert above / runs <= 0.05
    # ... and it has power: the same mechanism at eps=4 is bounded well away from 0
    bits = rng.random(m) < 0.5
    keep = rng.random(m) < math.exp(4) / (1 + math.exp(4))
    scores = np.where(keep, bits, ~bits).astype(float)
    assert guess_and_bound(scores, bits, 0.0, 0.95, rng=rng)["epsilon_lower_bound"] > 2.5


# -- jobs --------------------------------------------------------------------------------------
def test_honest_dpsgd_stays_below_its_claim(bc):
    df, meta = bc
    with pinned_randomness(1):
        rep = audit_job(DPSGD, df, meta, canaries=1000)
    assert rep["claimed_epsilon"] == pytest.approx(1.0, rel=0.01)
    assert 0 <= rep["epsilon_lower_bound"] <= rep["claimed_epsilon"]
    assert not rep["violation"] and not rep["noise_disabled_by_test_hook"]
    assert rep["released"] is False and rep["charged"] is False
    assert 350 < rep["included"] < 650 and rep["canaries"] == 1000


def test_dpsgd_without_noise_is_flagged(bc, monkeypatch):
    """The attack test: the same job with DP-SGD's noise switched off (test-only hook), still
    reporting its calibrated sigma, is caught; with the noise on (above) it is not."""
    df, meta = bc
    monkeypatch.setattr(engine, "TEST_ONLY_DISABLE_NOISE", True)
    with pinned_randomness(1):
        rep = audit_job(DPSGD, df, meta, canaries=1000)
    assert rep["noise_disabled_by_test_hook"]
    assert rep["violation"] and rep["epsilon_lower_bound"] > 2 * rep["claimed_epsilon"]
    assert rep["correct"] >= 0.95 * rep["guesses"]


def test_noise_hook_is_off_by_default_and_reaches_the_engine(monkeypatch):
    """The hook zeroes the noise inside Opacus for DPTrainer, the one DP-SGD engine (table,
    images, DP-AL), only when set."""
    from torch import nn

    assert engine.TEST_ONLY_DISABLE_NOISE is False
    make = lambda: engine.DPTrainer(nn.Linear(3, 2), clip_norm=1.0, noise_multiplier=1.5,  # noqa
                                    learning_rate=0.1, seed=0, device="cpu")
    assert make().optimizer.noise_multiplier == 1.5
    monkeypatch.setattr(engine, "TEST_ONLY_DISABLE_NOISE", True)
    assert make().optimizer.noise_multiplier == 0.0


def test_honest_dpal_stays_below_its_claim(bc):
    df, meta = bc
    spec = dict(kind="dpal", dataset="bc", label="diagnosis", epsilon=2.0, delta=1e-5,
                start_size=150, query_sizes=[50], batch_size=32, eps_selection=1.0)
    with pinned_randomness(2):
        rep = audit_job(spec, df, meta, canaries=500)
    assert rep["kind"] == "dpal" and rep["claimed_epsilon"] == pytest.approx(2.0, rel=0.02)
    assert 0 <= rep["epsilon_lower_bound"] <= rep["claimed_epsilon"] and not rep["violation"]


def test_audit_refuses_what_it_cannot_audit(bc):
    df, meta = bc
    with pytest.raises(SpecError, match="canaries must be"):
        audit_job(DPSGD, df, meta, canaries=10)
    stats = dict(kind="dp_stats", dataset="bc", queries=[])
    with pytest.raises(SpecError):
        audit_job(stats, df, meta)


# -- the owner's command -------------------------------------------------------------------------
def test_datasite_audit_command_logs_and_charges_nothing(bc, tmp_path, monkeypatch, capsys):
    """`datasite audit` on a site's private table (no server needed): a report for the owner,
    two audit-log entries, no ledger charge, the stored data unchanged."""
    from datasite import cli
    from datasite.config import init_site
    from datasite.ledger import Ledger
    from datasite.owner import OwnerSite
    from datasite.storage import read_private, write_private

    df, meta = bc
    home = init_site("auditsite", home=tmp_path / "auditsite", port=18099)
    site = OwnerSite(home)
    path = write_private(home.private, meta, df)
    site.state.add_dataset("bc", TABLE, meta.to_json(), str(path))
    site.ledger.set_budget("bc", 8.0, 1e-5)
    logged = []
    real_log = Ledger.log
    monkeypatch.setattr(Ledger, "log", lambda self, action, rid, payload, **kw: (
        logged.append((action, payload)), real_log(self, action, rid, payload, **kw))[1])
    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps({k: v for k, v in DPSGD.items() if k != "dataset"}))
    rc = cli.main(["audit", "auditsite", "bc", "--home", str(home.root), "--job", str(spec_file),
                   "--canaries", "200"])
    out = capsys.readouterr().out
    assert rc == 0 and "empirical epsilon >=" in out and "not a release" in out
    assert [a for a, _ in logged] == ["privacy_audit_start", "privacy_audit"]
    assert logged[1][1]["charged"] is False and logged[1][1]["canaries"] == 200
    assert OwnerSite(home).ledger.spent("bc")["epsilon"] == 0
    assert read_private(path)[0].equals(df)  # canaries were added to a copy only
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**DPSGD, "dataset": "other"}))
    assert cli.main(["audit", "auditsite", "bc", "--home", str(home.root), "--job", str(bad)]) == 2
