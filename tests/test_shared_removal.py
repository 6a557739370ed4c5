"""Certified removal (shared.removal, shared.jobs.removal): small synthetic problems, fast."""
from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from shared import removal as R
from shared.privacy.accounting import epsilon as pld_epsilon
from shared.data import DatasetMeta
from shared.jobs import SpecError


def _data(n=600, d=12, n_classes=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True) * rng.uniform(1.0, 1.5, (n, 1))
    w = rng.standard_normal((d, n_classes)) * 4
    y = (X @ w + 0.5 * rng.standard_normal((n, n_classes))).argmax(1)
    return X, y


def _fit(X, y, classes, seed=3, lam=1e-2, s=10.0):
    return R.train_removable(X, y, classes, lam=lam, s=s, eps=1.0, delta=1e-4, seed=seed)


def _b(model, seed=3, n_retrains=0):
    return R.draw_b(model.s, model.weights.shape, seed, n_retrains)


def _exact(X, y, model, b):
    ys = R.class_signs(y, model.n_models)
    return np.column_stack([R.minimise(X, ys[:, k], model.lam * len(X), b[:, k])
                            for k in range(model.n_models)])


def test_budget_arithmetic():
    assert R.residual_budget(10, 1, 1e-4) == pytest.approx(2.2803, abs=1e-4)
    assert R.residual_budget(10, 1, 1e-4) == pytest.approx(
        10 / math.sqrt(2 * math.log(1.5 / 1e-4)))


def test_training_converges_to_exact_minimiser():
    X, y = _data()
    m = _fit(X, y, [0, 1])
    g = R.objective_gradient(m, X, y, _b(m))
    assert np.linalg.norm(g) <= R.GRAD_TOL
    assert m.residual_used == pytest.approx(R.GRAD_TOL)
    # and with another b the minimiser differs: b really enters the objective
    g_other = R.objective_gradient(m, X, y, _b(m, seed=4))
    assert np.linalg.norm(g_other) > 1.0


@pytest.mark.parametrize("n_classes", [2, 3])
def test_removals_close_to_retraining_and_bound_holds(n_classes):
    X, y = _data(n_classes=n_classes)
    classes = list(range(n_classes))
    m = _fit(X, y, classes)
    b = _b(m)
    session = R.RemovalSession(m, X, y)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(X))[:30]
    for i in order:
        cert = session.remove(int(i))
        assert not cert["retrained"]
        live = session.live_rows
        # the certified bound really bounds the gradient residual of the perturbed objective
        measured = np.linalg.norm(R.objective_gradient(m, X[live], y[live], b))
        assert measured <= cert["residual_used"]
    live = session.live_rows
    W = _exact(X[live], y[live], m, b)
    assert np.linalg.norm(m.weights - W) <= 1e-3 * np.linalg.norm(W)
    # far from the model before removal (the removals changed something measurable)
    assert np.linalg.norm(_fit(X, y, classes).weights - W) > 10 * np.linalg.norm(m.weights - W)
    Xt, yt = _data(n=400, n_classes=n_classes, seed=9)
    ref = R.RemovableModel.from_dict({**m.to_dict(), "weights": W})
    assert np.mean(R.predict(m, Xt) == R.predict(ref, Xt)) >= 0.995
    assert cert["budget_left"] == pytest.approx(cert["budget"] - cert["residual_used"])
    assert cert["n_removed_total"] == 30 and cert["n_train"] == len(X) - 30


def test_batch_equals_one_by_one():
    X, y = _data()
    rows = np.arange(10)
    one = R.RemovalSession(_fit(X, y, [0, 1]), X, y)
    for i in rows:
        one.remove(int(i))
    batch = R.RemovalSession(_fit(X, y, [0, 1]), X, y)
    cert = batch.remove(rows)
    assert cert["n_removed"] == 10
    W1, W2 = one.model.weights, batch.model.weights
    assert np.linalg.norm(W1 - W2) <= 1e-3 * np.linalg.norm(W1)
    measured = np.linalg.norm(R.objective_gradient(batch.model, X[10:], y[10:],
                                                   _b(batch.model)))
    assert measured <= cert["residual_used"]


def test_budget_exhaustion_retrains_with_fresh_b():
    X, y = _data(n=300)
    m = R.train_removable(X, y, [0, 1], lam=1e-2, s=0.3, eps=1.0, delta=1e-4, seed=3)
    session = R.RemovalSession(m, X, y)
    used, certs = [], []
    for i in range(200):
        c = session.remove(i)
        certs.append(c)
        if c["retrained"]:
            break
        used.append(c["residual_used"])
    assert c["retrained"], "budget never ran out"
    assert all(u <= m.budget for u in used) and np.all(np.diff(used) > 0)
    # the step that would have crossed the budget was not released
    assert c["residual_used"] == pytest.approx(R.GRAD_TOL) and m.n_retrains == 1
    assert "fresh perturbation" in c["retrain_note"] and c["training_epsilon"] > 0
    live = session.live_rows
    # the new weights minimise the objective with the NEW b, not the old one
    g_new = R.objective_gradient(m, X[live], y[live], _b(m, n_retrains=1))
    g_old = R.objective_gradient(m, X[live], y[live], _b(m, n_retrains=0))
    assert np.linalg.norm(g_new) <= R.GRAD_TOL < 1.0 < np.linalg.norm(g_old)
    # removals continue on the retrained model
    assert not session.remove(int(live[0]))["retrained"]


def test_bad_input_raises():
    X, y = _data(n=100)
    m = _fit(X, y, [0, 1])
    s = R.RemovalSession(m, X, y)
    with pytest.raises(R.RemovalError, match="empty"):
        s.remove([])
    with pytest.raises(R.RemovalError, match="not in the training data"):
        s.remove(100)
    with pytest.raises(R.RemovalError, match="twice"):
        s.remove([3, 3])
    s.remove(3)
    with pytest.raises(R.RemovalError, match="already removed"):
        s.remove(3)
    with pytest.raises(R.RemovalError, match="fitted on 99"):
        R.remove(m, X, y, [1])
    with pytest.raises(R.RemovalError, match="norm <= 1"):
        _fit(X * 2, y, [0, 1])


def test_one_shot_remove_leaves_input_model_alone_and_serialises():
    X, y = _data(n=200)
    m = _fit(X, y, [0, 1])
    w0 = m.weights.copy()
    m2, cert = R.remove(m, X, y, [0, 5])
    assert np.array_equal(m.weights, w0) and not np.array_equal(m2.weights, w0)
    back = R.RemovableModel.from_json(m2.to_json())
    assert np.array_equal(back.weights, m2.weights) and back.n_removed == 2
    pub = m2.public_dict()
    assert "known_residual" not in pub and "residual_used" not in pub
    assert cert["feature_source"] == {"kind": "public"} and "whole model" in cert["covers"]
    m3 = R.train_removable(X, y, [0, 1], 1e-2, 10.0, 1.0, 1e-4, seed=1,
                           feature_source={"kind": "dp_extractor", "epsilon": 3, "delta": 1e-5})
    assert "feature extractor" in R.remove(m3, X, y, [0])[1]["covers"]


def test_b_is_secret_by_default():
    X, y = _data(n=200)
    a = R.train_removable(X, y, [0, 1], 1e-2, 10.0, 1.0, 1e-4)
    b = R.train_removable(X, y, [0, 1], 1e-2, 10.0, 1.0, 1e-4)
    assert not np.allclose(a.weights, b.weights)


def test_spectral_norm_bound_is_an_upper_bound():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 20)) / 5
    bound = R.spectral_norm_bound(X)
    exact = np.linalg.svd(X, compute_uv=False)[0]
    assert exact <= bound <= exact * (1 + 1e-9)
    assert R.spectral_norm_bound(X[:100]) <= bound


def test_training_epsilon():
    # one model: the Gaussian mechanism (sensitivity 1, std s) plus the Jacobian term
    lam, s, n, delta = 1e-2, 10.0, 500, 1e-5
    eps = R.training_epsilon(lam, s, n, delta)
    gauss = pld_epsilon(dp_accounting.GaussianDpEvent(s), delta)
    assert eps == pytest.approx(gauss + math.log1p(1 / (4 * lam * n)), rel=2e-3)
    assert eps < R.kst_epsilon(lam, s, n, delta)  # KST's looser statement of the same thing
    # monotone the right way in every parameter; more models compose
    assert R.training_epsilon(lam, 2 * s, n, delta) < eps
    assert R.training_epsilon(lam, s, 10 * n, delta) < eps
    assert R.training_epsilon(lam, s, n, 1e-3) < eps
    assert eps < R.training_epsilon(lam, s, n, delta, n_models=3) < 3 * eps + 1e-9
    for bad in (dict(lam=0.0), dict(lam=-1.0), dict(s=0.0), dict(delta=1.0), dict(n=0)):
        kw = {**dict(lam=lam, s=s, n=n, delta=delta), **bad}
        with pytest.raises(R.RemovalError):
            R.training_epsilon(**kw)


def test_clipped_gaussian_bound_dominates_the_exact_loss():
    """The Gaussian term in training_epsilon: for any record x (|x| <= 1), label y and slope
    m in [0, 1], the exact log-density ratio (|b - c x|^2 - |b|^2) / 2s^2, c = -y m, is at most
    max(0, Z / s + 1 / 2s^2) with Z = y b.x / s ~ N(0, 1) -- on random draws of b."""
    rng = np.random.default_rng(0)
    s, d = 2.0, 5
    x = rng.standard_normal(d)
    x /= np.linalg.norm(x)
    for y in (-1, 1):
        b = s * rng.standard_normal((20000, d))
        Z = y * (b @ x) / s
        bound = np.maximum(0, Z / s + 1 / (2 * s * s))
        for m in (0.0, 0.3, 1.0):
            c = -y * m
            exact = (((b - c * x) ** 2).sum(1) - (b ** 2).sum(1)) / (2 * s * s)
            assert np.all(exact <= bound + 1e-12)
        assert abs(Z.std() - 1) < 0.03  # Z really is standard normal: the bound's distribution


def test_perturbation_has_std_s():
    # a wrong noise scale (s^2, 1/s, ...) would break the training guarantee silently
    for s in (0.5, 10.0):
        b = R.draw_b(s, (4000, 3), None, 0)
        assert abs(b.std() / s - 1) < 0.03 and abs(b.mean()) < 0.05 * s
        assert abs(np.corrcoef(b[:, 0], b[:, 1])[0, 1]) < 0.06


# -- the job spec ------------------------------------------------------------------------------
def _table_meta(df, scales=True):
    cols = [c for c in df.columns if c != "diagnosis"]
    from shared.data import power_of_ten_scale

    return DatasetMeta(name="bc", kind="table", n_records=len(df), label="diagnosis",
                       labels=[0, 1], feature_scales={c: power_of_ten_scale(df[c].abs().max())
                                                      for c in cols} if scales else {})


def test_spec_validation_and_planned_event():
    from datasite.demo_data import breast_cancer_frame
    from shared.privacy.accounting import epsilon
    from shared.jobs.removal import RemovalSpec

    df = breast_cancer_frame()
    meta = _table_meta(df)
    spec = RemovalSpec(dataset="bc", delta=1e-4, lam=1e-4, perturbation=1.0).validate(meta)
    ev = spec.planned_event(meta)
    eps_train = R.training_epsilon(1e-4, 1.0, 455, 1e-4)
    assert epsilon(ev.events[0], 1e-4) == pytest.approx(eps_train, rel=1e-3)
    # + the Laplace metrics (pure eps 0.5): the eps add up exactly at the training's delta
    assert epsilon(ev, 1e-4) == pytest.approx(eps_train + 0.5, rel=1e-3)
    for bad, msg in ((dict(delta=1e-2), "too large"), (dict(lam=0.0), "lam"),
                     (dict(features="scatter"), "features='table'"),
                     (dict(label="nope"), "label column"), (dict(features="x"), "unknown")):
        with pytest.raises(SpecError, match=msg):
            RemovalSpec(**{**dict(dataset="bc", delta=1e-4), **bad}).validate(meta)
    img = DatasetMeta(name="bc", kind="images", n_records=500, label="label", labels=[0, 1, 2],
                      image_shape=[28, 28])
    with pytest.raises(SpecError, match="backbone"):
        RemovalSpec(dataset="bc", delta=1e-4).validate(img)
    three = RemovalSpec(dataset="bc", delta=1e-4, features="pixels").validate(img)
    assert epsilon(three.planned_event(img).events[0], 1e-4) == pytest.approx(
        R.training_epsilon(three.lam, three.perturbation, 400, 1e-4, n_models=3), rel=1e-3)


def test_spec_run_on_table():
    import io

    import torch
    from datasite.demo_data import breast_cancer_frame
    from shared.privacy.accounting import epsilon, event_from_json
    from shared.training.models import build_from_config
    from shared.runner import run_job
    from shared.training.preprocess import preprocess

    import shared.jobs.removal  # noqa: F401  (registers the kind)

    df = breast_cancer_frame()
    meta = _table_meta(df)
    spec = dict(kind="removal_logreg", dataset="bc", delta=1e-4, lam=1e-4, perturbation=0.3)
    out = run_job(spec, df, meta)
    m = out["metrics"]  # Laplace-noised (pure DP): the training event uses all of delta
    assert m["noise"] == "laplace" and out["privacy"]["metrics"]["epsilon"] == pytest.approx(0.5, rel=1e-3)
    assert m["test_accuracy"] > 0.8 - 4 * m["test_accuracy_std"]
    planned = shared.jobs.removal.RemovalSpec.from_dict(spec).planned_event(meta)
    assert epsilon(event_from_json(out["privacy"]["event"]), 1e-4) <= epsilon(planned, 1e-4)
    tr = out["_owner_training_rows"]
    # per-record split: a Binomial number of training rows; the regulariser and the reported
    # counts use the planned, public 455 (shared.data.n_train_records), never the realised one
    assert len(set(tr)) == len(tr) and 400 < len(tr) < 510
    assert out["privacy"]["n_train"] == m["n_train"] == 455 and m["n_test"] == 114
    model = R.RemovableModel.from_dict(out["removable_model"])
    assert model.n_train == len(tr) and model.reg_count == 455
    assert model.public_dict()["n_train"] == 455
    assert model.noise_seed is None and model.residual_used == pytest.approx(R.GRAD_TOL)
    # the torch Linear gives the same predictions as the removable model
    lin = build_from_config(out["model_config"])
    lin.load_state_dict(torch.load(io.BytesIO(out["model_state"])))
    cols = out["model_config"]["feature_columns"]
    Xraw = df[cols].to_numpy()
    with torch.no_grad():
        logits = lin(torch.from_numpy(preprocess(Xraw, out["model_config"]))).numpy()
    ours = R.predict(model, R.make_features(Xraw, model.feature_pipeline))
    assert np.mean(logits.argmax(1) == ours) >= 0.995
    # the owner can serve a removal from what the job returned
    Xf = R.make_features(Xraw, model.feature_pipeline)[tr]
    yf = df["diagnosis"].to_numpy()[tr]
    _, cert = R.remove(model, Xf, yf, [0])
    assert cert["n_removed"] == 1 and not cert["retrained"]
