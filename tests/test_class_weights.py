"""class_weights="balanced" on the table DP-SGD job: weights proportional to 1 / (K rate_k) from
the DECLARED label rates (never the records' class counts; the largest weight 1), refused
without them, and free of privacy cost because each record's weighted gradient is still clipped
to clip_norm before the noise."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import shared.training.table as table
from shared.jobs import DPSGDTableSpec, SpecError
from shared.jobs.federated import FedScheduleSpec
from shared.privacy.accounting import event_to_json
from shared.runner import run_job
from shared.schema import meta_from_schema
from shared.training.engine import DPTrainer
from shared.training.models import build_model
from shared.training.results import load_model, predict_proba

DELTA = 1e-5
RATES = [0.9, 0.1]


def _meta(rates=RATES, n: int = 600):
    label = {"column": "y", "classes": [0, 1], **({"rates": rates} if rates else {})}
    return meta_from_schema({"kind": "table", "records": n, "label": label,
                             "columns": {"a": {"type": "float", "bounds": [-4, 4]},
                                         "b": {"type": "float", "bounds": [-4, 4]}}}, "imb")


def _table(n: int = 600, rate: float = 0.1, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(np.int64)
    return pd.DataFrame({"a": np.clip(rng.normal(1.2 * y, 1.0), -4, 4),
                         "b": np.clip(rng.normal(0.0, 1.0, n), -4, 4), "y": y})


def _spec(**kw) -> dict:
    return dict(kind="dpsgd_table", dataset="imb", label="y", epsilon=2.0, delta=DELTA,
                epochs=5, **kw)


# -- the option --------------------------------------------------------------------------------
def test_balanced_needs_declared_rates_and_says_how():
    DPSGDTableSpec("imb", "y", 2.0, DELTA, class_weights="balanced").validate(_meta())
    with pytest.raises(SpecError, match="declare.*rates"):
        DPSGDTableSpec("imb", "y", 2.0, DELTA, class_weights="balanced").validate(_meta(None))
    with pytest.raises(SpecError, match="rate > 0 per class"):
        DPSGDTableSpec("imb", "y", 2.0, DELTA, class_weights="balanced").validate(
            _meta([1.0, 0.0]))
    with pytest.raises(SpecError, match="class_weights must be one of"):
        DPSGDTableSpec("imb", "y", 2.0, DELTA, class_weights="auto").validate(_meta())
    # the federated schedule inherits the check
    with pytest.raises(SpecError, match="declare.*rates"):
        FedScheduleSpec("imb", "y", 2.0, DELTA, class_weights="balanced").validate(_meta(None))
    # "none" needs nothing
    DPSGDTableSpec("imb", "y", 2.0, DELTA).validate(_meta(None))


def test_weights_come_from_the_declared_rates_not_the_records(monkeypatch):
    w = table.class_weights("balanced", [0.8, 0.2], 2)  # 1 / (K rate): [1/1.6, 1/0.4], max 1
    torch.testing.assert_close(w, torch.tensor([0.25, 1.0]))
    w3 = table.class_weights("balanced", [0.5, 0.3, 0.2], 3)
    torch.testing.assert_close(w3, torch.tensor([0.4, 2 / 3, 1.0]))
    assert table.class_weights("none", [0.8, 0.2], 2) is None
    seen = []
    real = table.weighted_cross_entropy
    monkeypatch.setattr(table, "weighted_cross_entropy", lambda w: seen.append(w) or real(w))
    df = _table(rate=0.3)  # realised share ~0.3, declared 0.1: the declaration is used
    run_job(_spec(class_weights="balanced"), df, _meta(), pin_randomness=0, mock=True)
    torch.testing.assert_close(seen[0], torch.tensor([1 / 9, 1.0]))


# -- privacy: same event, clipped gradients ----------------------------------------------------
def test_the_priced_event_is_identical_with_and_without_weights():
    meta = _meta(n=5000)
    for cls in (DPSGDTableSpec, FedScheduleSpec):
        plain = cls("imb", "y", 2.0, DELTA).validate(meta)
        weighted = cls("imb", "y", 2.0, DELTA, class_weights="balanced").validate(meta)
        assert (event_to_json(plain.planned_event(meta))
                == event_to_json(weighted.planned_event(meta)))
    # and the job's own report says the same
    df = _table()
    a = run_job(_spec(), df, _meta(), pin_randomness=0)["privacy"]
    b = run_job(_spec(class_weights="balanced"), df, _meta(), pin_randomness=0)["privacy"]
    assert a["epsilon"] == b["epsilon"] and a["noise_multiplier"] == b["noise_multiplier"]


def _one_record_update(x, y, weights, clip_norm: float) -> float:
    """||update|| of one DP-SGD step on the single record (x, y), no noise, lr 1, batch 1: the
    record's clipped (weighted) gradient norm, measured end to end through the engine."""
    torch.manual_seed(0)
    model = build_model("logreg", x.shape[1], 2, 32)
    before = [p.detach().clone() for p in model.parameters()]
    loss = None if weights is None else table.weighted_cross_entropy(weights)
    trainer = DPTrainer(model, clip_norm=clip_norm, noise_multiplier=0.0, learning_rate=1.0,
                        seed=0, device="cpu", loss_fn=loss)
    trainer.run(x, y, np.ones(1), 1, expected_batch_size=1.0)
    trainer.close()
    return float(torch.sqrt(sum(((p.detach() - b) ** 2).sum()
                                for p, b in zip(model.parameters(), before))))


@pytest.mark.parametrize("weights", [table.class_weights("balanced", [0.98, 0.02], 2),
                                     torch.tensor([0.04, 1.0]) * 25])  # unscaled: weight 25
def test_weighted_per_sample_gradients_never_exceed_clip_norm(weights):
    rng = np.random.default_rng(1)
    clip = 0.5
    raw = []
    for _ in range(20):
        x = torch.from_numpy(rng.uniform(-3, 3, (1, 6)).astype(np.float32))
        y = torch.tensor([int(rng.integers(2))])
        assert _one_record_update(x, y, weights, clip) <= clip * (1 + 1e-5)
        # the defence switched off (no effective clipping): the bound fails
        raw.append((_one_record_update(x, y, weights, 1e6), _one_record_update(x, y, None, 1e6),
                    int(y)))
    assert max(r[0] for r in raw) > 2 * clip  # unclipped weighted gradients break the bound
    for weighted, plain, label in raw:  # and they are exactly the weight times the plain one
        assert weighted == pytest.approx(float(weights[label]) * plain, rel=1e-4)


# -- it changes the model toward the minority --------------------------------------------------
def test_balanced_weights_raise_the_minority_scores():
    df, meta = _table(), _meta()
    score = {}
    for mode in ("none", "balanced"):
        r = run_job(_spec(class_weights=mode, metrics_epsilon=0.0), df, meta, pin_randomness=3)
        p = predict_proba(load_model(r), r["model_config"], df)
        score[mode] = float(p[df["y"].to_numpy() == 1, 1].mean())  # minority's own score
    assert score["balanced"] > score["none"] + 0.05
