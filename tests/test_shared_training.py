"""shared.training (the table job on the one DP-SGD engine) / results / runner: noise scale and
Poisson sampling at the table job's settings, and a real DP-SGD run on the breast-cancer table."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from shared import training
from shared.training import table
from shared.training.engine import DPTrainer
from shared.privacy.accounting import dpsgd_event, epsilon, event_from_json
from shared.data import DatasetMeta
from shared.training.models import build_model
from shared.training.results import load_model, predict, predict_proba
from shared.runner import run_job
from shared.jobs import DPSGDTableSpec, SpecError

EPS, DELTA = 3.0, 1e-5
# Row-L2 features need more steps and a larger rate than the spec defaults (see the report).
BC_OPTIONS = dict(epochs=30, learning_rate=2.0, batch_size=32, seed=0)


def bc_frame() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    df = load_breast_cancer(as_frame=True).frame
    return df.rename(columns={"target": "diagnosis"})  # 0 malignant, 1 benign


def bc_meta(df) -> DatasetMeta:
    return DatasetMeta(name="bc", kind="table", n_records=len(df), label="diagnosis",
                       labels=[0, 1])


def bc_spec(**kw) -> DPSGDTableSpec:
    base = dict(dataset="bc", label="diagnosis", epsilon=EPS, delta=DELTA, **BC_OPTIONS)
    return DPSGDTableSpec(**{**base, **kw})


@pytest.fixture(scope="module")
def bc_run():
    # Pinned: a utility check must not depend on the draw. Unpinned (fresh noise, as on a
    # datasite) 12 runs gave test accuracy 0.73, 0.89 (x5), 0.90 (x2), 0.90, 0.91 (x2), 0.92.
    # Pins 0..55 on the one engine (DPTrainer): mean 0.852, median 0.86, 8 of 56 <= 0.80 (the
    # old Opacus-loader path: mean 0.855, median 0.873, 8 of 56); pin 5 gives 0.856, the median.
    df = bc_frame()
    calls = []
    result = run_job(bc_spec().to_dict(), df, bc_meta(df), progress=lambda d, t: calls.append((d, t)),
                     pin_randomness=5)
    return df, result, calls


# -- the engine at the table job's settings ----------------------------------------------------
def _table_trainer(model, n, batch, **kw):
    """DPTrainer as train_dpsgd_table sets it up: every record at the planned rate q of
    poisson_schedule, "mean" over the planned expected batch size q * n."""
    q, _ = training.poisson_schedule(n, batch, 1)
    trainer = DPTrainer(model, learning_rate=kw.pop("learning_rate", 0.1), device="cpu", **kw)
    return trainer, np.full(n, q), q * n


def test_noise_std_on_summed_gradients_is_sigma_times_clip():
    """All-zero inputs make the weight gradients exactly zero, so one step moves the weights by
    pure noise: -lr * N(0, (sigma C)^2) / expected_batch. Passing sigma/C (a known bug) would be
    off by a factor C^2 = 6.25."""
    n, d, sigma, clip, lr, batch = 100, 2000, 0.7, 2.5, 1.0, 10
    model = build_model("logreg", d, 2)
    torch.nn.init.zeros_(model[0].weight)
    X, y = torch.zeros(n, d), torch.zeros(n, dtype=torch.long)
    trainer, rates, expected_batch = _table_trainer(
        model, n, batch, noise_multiplier=sigma, clip_norm=clip, learning_rate=lr, seed=0)
    opt = trainer.optimizer
    assert opt.noise_multiplier == sigma and opt.max_grad_norm == clip
    trainer.run(X, y, rates, 1, expected_batch_size=expected_batch)
    update = model[0].weight.detach().numpy().ravel()  # started at zero
    expected = sigma * clip * lr / opt.expected_batch_size
    assert opt.expected_batch_size == 10  # q = 1/ceil(100/10), n*q
    assert abs(update.mean()) < 4 * expected / np.sqrt(update.size)
    assert update.std() == pytest.approx(expected, rel=0.05)  # ~1.1% standard error


def test_poisson_sampling_not_fixed_batches():
    n, batch = 1000, 50
    X = torch.zeros(n, 1)
    y = torch.arange(n)  # the "labels" are record ids: the loss sees who was sampled
    batches = []

    def spy(logits, ids):
        batches.append(ids.numpy().copy())
        return logits.sum(1) * 0.0

    trainer, rates, expected_batch = _table_trainer(
        build_model("logreg", 1, 2), n, batch, noise_multiplier=1.0, clip_norm=1.0, seed=1,
        loss_fn=spy)
    q = rates[0]
    assert q == pytest.approx(batch / n)
    assert trainer.run(X, y, rates, 200, expected_batch_size=expected_batch) == 200
    counts = np.zeros(n)
    for idx in batches:
        assert len(set(idx.tolist())) == len(idx)  # no record twice in a batch
        counts[idx] += 1
    sizes = np.array(trainer.last_batch_sizes)
    assert len(sizes) == 200 and sizes.sum() == counts.sum()
    # Binomial(n, q): mean n q = 50, variance n q (1 - q) = 47.5. Fixed batches have variance 0.
    assert sizes.mean() == pytest.approx(n * q, abs=4 * np.sqrt(n * q * (1 - q) / len(sizes)))
    assert 0.6 < sizes.var(ddof=1) / (n * q * (1 - q)) < 1.5
    # each record enters independently at rate q (200 steps: about 10 times each)
    assert counts.mean() == pytest.approx(200 * q, rel=0.05)
    assert counts.var() == pytest.approx(200 * q * (1 - q), rel=0.3)


def test_empty_poisson_batch_still_takes_a_noisy_step():
    model = build_model("logreg", 3, 2)
    trainer, rates, expected_batch = _table_trainer(
        model, 10, 1, noise_multiplier=1.0, clip_norm=1.0, seed=0)
    before = model[0].weight.detach().clone()
    # rate 0: the batch is empty, the planned expected batch size still scales the noise
    trainer.run(torch.randn(10, 3), torch.zeros(10, dtype=torch.long), rates * 0, 1,
                expected_batch_size=expected_batch)
    after = model[0].weight.detach()
    assert trainer.last_batch_sizes == [0]
    assert torch.isfinite(after).all() and not torch.equal(before, after)


def test_schedule_matches_opacus_loader():
    # The priced schedule is the one Opacus' Poisson loader runs (the table job's old engine, so
    # plans priced before stay valid): int(1/q) steps per epoch with q = 1/ceil(n/B), for
    # ceil(n/B) = 93 that is 92. The engine then runs exactly those steps.
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader, TensorDataset

    for n, b in [(455, 64), (455, 32), (93, 1), (1000, 50), (7, 7)]:
        q, steps = training.poisson_schedule(n, b, 3)
        loader = DPDataLoader.from_data_loader(
            DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=b),
            generator=torch.Generator().manual_seed(0))
        assert loader.sample_rate == q and 3 * len(loader) == steps
        assert steps == 3 * sum(1 for _ in loader)
        trainer, rates, expected_batch = _table_trainer(
            build_model("logreg", 1, 2), n, b, noise_multiplier=1.0, clip_norm=1.0, seed=0)
        assert rates[0] == q
        assert trainer.run(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long), rates, steps,
                           expected_batch_size=expected_batch) == steps
        assert len(trainer.last_batch_sizes) == steps
    assert training.poisson_schedule(93, 1, 1) == (1 / 93, 92)


def test_row_l2_normalise():
    X = np.array([[3.0, 4.0], [0.3, 0.4], [np.nan, 2.0], [0.0, 0.0]])
    Z = training.row_l2_normalise(X)
    np.testing.assert_allclose(Z, [[0.6, 0.8], [0.3, 0.4], [0.0, 1.0], [0.0, 0.0]], rtol=1e-6)
    assert (np.linalg.norm(Z, axis=1) <= 1 + 1e-6).all()


# -- the real run ------------------------------------------------------------------------------
def test_breast_cancer_learns_under_dp(bc_run):
    df, result, _ = bc_run
    m = result["metrics"]
    majority = df["diagnosis"].value_counts(normalize=True).max()  # 0.627
    assert m["n_train"] == 455 and m["n_test"] == 114
    # the model's exact test accuracy and AUC (computed here, never released) ...
    from sklearn.metrics import roc_auc_score

    X, y, *_ = training.table_xy(df, "diagnosis", [0, 1])
    _, te = training.split_indices(X, y, 0.2, 0)
    probs = predict_proba(load_model(result), result["model_config"], df.iloc[te])
    exact = float(np.mean(probs.argmax(1) == df["diagnosis"].to_numpy()[te]))
    assert exact > 0.80 > majority + 0.15
    assert roc_auc_score(df["diagnosis"].to_numpy()[te], probs[:, 1]) > 0.9
    # ... and what is released: a DP estimate of it, within its noise
    assert m["mechanism"] == "noisy_class_x_correct_histogram"
    assert abs(m["test_accuracy"] - exact) < 4 * m["test_accuracy_std"]
    assert set(m["per_class_accuracy"]) == {"0", "1"}
    assert "train_accuracy" not in m and "test_auc" not in m  # not released on private data


def test_breast_cancer_privacy_report(bc_run):
    _, result, calls = bc_run
    p = result["privacy"]
    assert p["accountant"] == "pld" and p["delta"] == DELTA
    assert EPS * 0.99 < p["training_epsilon"] <= EPS  # training spends its epsilon, no more
    assert p["epsilon"] <= p["epsilon_rdp"]
    # the stored event is the executed schedule composed with the metrics' Gaussian release,
    # and it re-derives the same epsilon
    import dp_accounting

    ev = event_from_json(p["event"])
    assert ev.events == [dpsgd_event(p["sample_rate"], p["noise_multiplier"], p["steps"]),
                         dp_accounting.GaussianDpEvent(p["metrics"]["noise_scale"])]
    assert epsilon(ev, DELTA) == p["epsilon"]
    assert p["training_epsilon"] < p["epsilon"] < p["training_epsilon"] + p["metrics"]["epsilon"]
    assert p["sample_rate"] == 1 / 15 and p["steps"] == 30 * 15
    assert p["clip_norm"] == 1.0
    assert calls == [(i, p["steps"]) for i in range(1, p["steps"] + 1)]
    json.dumps(p)


def test_executed_event_equals_priced_plan(bc_run):
    # the datasite prices from spec + metadata alone; the run must match that plan exactly
    from shared.privacy.pricing import planned_event

    df, result, _ = bc_run
    assert planned_event(bc_spec().to_dict(), bc_meta(df)) == event_from_json(
        result["privacy"]["event"])


def test_result_shape_and_reload(bc_run):
    df, result, _ = bc_run
    assert result["kind"] == "dpsgd_table" and result["spec"] == bc_spec().to_dict()
    cfg = result["model_config"]
    assert cfg["classes"] == [0, 1] and cfg["preprocessing"] == "row_l2_normalise"
    assert cfg["feature_columns"] == [c for c in df.columns if c != "diagnosis"]
    model = load_model(result)
    labels = predict(model, cfg, df)
    assert set(labels) <= {0, 1}
    probs = predict_proba(model, cfg, df.drop(columns="diagnosis"))  # label column not needed
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    acc = float(np.mean(np.array(labels) == df["diagnosis"].to_numpy()))
    assert acc > 0.8


def test_same_seed_same_model_other_seed_other_model():
    from shared.randomness import pinned_randomness

    df = bc_frame().sample(200, random_state=0)
    spec = bc_spec(epochs=2, delta=1e-4)

    def state(s, pin=0):
        with pinned_randomness(pin):
            r = training.train_dpsgd_table(df, s, device="cpu")
        return torch.load(io.BytesIO(r["model_state"]), weights_only=True), r["metrics"]

    (a, ma), (b, mb) = state(spec), state(spec)
    assert all(torch.equal(a[k], b[k]) for k in a) and ma == mb
    c, _ = state(bc_spec(epochs=2, delta=1e-4, seed=1))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_researcher_seed_does_not_fix_sampling_or_noise():
    """An attacker who knows the spec (and its seed) must not be able to replay the noise: on the
    datasite, two runs of the same spec draw different batches and different noise."""
    df = bc_frame().sample(200, random_state=0)
    spec = bc_spec(epochs=2, delta=1e-4)
    a, b = (torch.load(io.BytesIO(training.train_dpsgd_table(df, spec, device="cpu")["model_state"]),
                       weights_only=True) for _ in range(2))
    assert not any(torch.equal(a[k], b[k]) for k in a)


def test_privacy_covers_the_noise_actually_used(monkeypatch):
    """The optimizer Opacus runs gets exactly the sigma and C the report states."""
    seen = {}

    class Spy(DPTrainer):
        def run(self, X, y, sample_rates, steps, **kw):
            assert len(set(np.asarray(sample_rates).tolist())) == 1  # one rate for all
            seen.update(sigma=self.optimizer.noise_multiplier, clip=self.optimizer.max_grad_norm,
                        q=float(sample_rates[0]))
            return super().run(X, y, sample_rates, steps, **kw)

    monkeypatch.setattr(table, "DPTrainer", Spy)
    df = bc_frame().sample(150, random_state=1)
    r = training.train_dpsgd_table(df, bc_spec(epochs=1, delta=1e-4, clip_norm=0.5))
    p = r["privacy"]
    assert (seen["sigma"], seen["clip"], seen["q"]) == (p["noise_multiplier"], 0.5,
                                                        p["sample_rate"])


def test_run_job_validates_before_touching_data():
    df = bc_frame()
    with pytest.raises(SpecError, match="too large"):
        run_job(bc_spec(delta=0.1).to_dict(), None, bc_meta(df))
    with pytest.raises(SpecError, match="unknown job kind"):
        run_job({"kind": "sql"}, None, bc_meta(df))


def test_mlp_runs():
    df = bc_frame().sample(120, random_state=2)
    meta = DatasetMeta(name="bc", kind="table", n_records=120, label="diagnosis", labels=[0, 1])
    r = run_job(bc_spec(model="mlp", hidden=4, epochs=1, delta=1e-4).to_dict(), df, meta)
    assert load_model(r)[0].out_features == 4


def test_shared_never_imports_syft_datasite_researcher():
    # a fresh interpreter: other tests in this session may have imported them legitimately
    code = ("import sys, shared.runner, shared.training.results, shared.training, shared.jobs, "
            "shared.privacy.accounting, shared.training.models\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('syft', 'datasite', 'researcher')]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
