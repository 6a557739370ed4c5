"""Image job kind: models, frozen backbones, DP-SGD image training (small synthetic CXR data)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from datasite.demo_data import make_synthetic_cxr
from shared.privacy.accounting import event_to_json
from shared.data import DatasetMeta
from shared.jobs import SpecError
from shared.jobs.dpsgd_images import BACKBONE_NAMES, GRAD_SAMPLE_MODES, IMAGE_MODELS, DPSGDImageSpec

torch.set_num_threads(1)


def _meta(n, size, kind="images"):
    return DatasetMeta(name="cxr", kind=kind, n_records=n, label="label", labels=[0, 1],
                       image_shape=[size, size])


@pytest.fixture(scope="module")
def cxr28():
    return make_synthetic_cxr(400, size=28, seed=0)


def test_spec_mirrors_the_heavy_modules():
    from shared.training.backbones import BACKBONES
    from shared.training.engine import GRAD_SAMPLE_MODES as modes
    from shared.training.models import IMAGE_MODEL_NAMES

    assert BACKBONE_NAMES == BACKBONES and GRAD_SAMPLE_MODES == modes
    assert IMAGE_MODELS == IMAGE_MODEL_NAMES


@pytest.mark.parametrize("name", ["cnn", "resnet9"])
def test_image_models_are_opacus_valid_and_rebuild_from_config(name):
    from opacus.validators import ModuleValidator

    from shared.training.models import build_from_config, build_model, model_config

    model = build_model(name, 0, 3, in_channels=1, image_size=(28, 28), width=8)
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    cfg = model_config(name, 0, 3, in_channels=1, image_size=(28, 28), width=8)
    clone = build_from_config(cfg)
    clone.load_state_dict(model.state_dict())
    x = torch.rand(2, 1, 28, 28)
    assert clone(x).shape == (2, 3) and torch.allclose(clone(x), model(x))
    big = build_model(name, 0, 2, in_channels=3, image_size=(64, 64))
    assert big(torch.rand(1, 3, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_features_are_per_record_normalised_and_deterministic(name, cxr28):
    from shared.training.backbones import extract_features, feature_dim

    imgs = cxr28["images"][:40]
    f = extract_features(imgs, name, device="cpu", batch_size=16)
    assert f.dtype == np.float32 and f.shape == (40, feature_dim(name, (28, 28)))
    norms = np.linalg.norm(f.astype(np.float64), axis=1)
    assert (norms <= 1.0).all() and (norms > 0.99).all()
    # a row depends on its own image only: the same image alone or in another batch, same row
    alone = extract_features(imgs[[7]], name, device="cpu")
    assert np.allclose(alone[0], f[7], atol=1e-5)
    assert np.array_equal(f, extract_features(imgs, name, device="cpu", batch_size=16))
    # and it is not constant: different images, different features
    assert np.abs(f[0] - f[1]).max() > 1e-3


@pytest.mark.parametrize("shape", [(8, 8), (16, 16), (28, 28), (32, 32), (64, 64), (28, 40),
                                   (13, 9), (20, 20, 3)])
def test_scatter_works_at_small_and_non_square_sizes(shape):
    from shared.jobs.bounds import backbone_dim
    from shared.training.backbones import extract_features, feature_dim

    imgs = np.random.default_rng(1).integers(0, 256, (5, *shape), dtype=np.uint8)
    f = extract_features(imgs, "scatter", device="cpu", batch_size=2)
    assert f.shape == (5, feature_dim("scatter", shape)) == (5, backbone_dim("scatter", shape))
    norms = np.linalg.norm(f.astype(np.float64), axis=1)
    assert (norms <= 1.0).all() and (norms > 0.99).all()
    alone = extract_features(imgs[[3]], "scatter", device="cpu")
    assert np.allclose(alone[0], f[3], atol=1e-5)  # own image only, whatever the batch


def test_scatter_is_kymatios_transform_grouped_per_record():
    from kymatio.torch import Scattering2D

    from shared.training.backbones import Backbone

    x = torch.rand(3, 2, 32, 32)  # 32 // 4 = 8: no extra pooling
    s = Scattering2D(J=2, shape=(32, 32), L=8)(x).flatten(1, 2)  # (3, 2 * 81, 8, 8)
    ref = torch.nn.functional.group_norm(s, 27).flatten(1)
    ref = ref / (ref.norm(dim=1, keepdim=True) * (1 + 1e-5))
    assert torch.allclose(Backbone("scatter", (32, 32, 2))(x), ref, atol=1e-6)


def test_scatter_refuses_tiny_images_and_explains_kymatio_refusals(monkeypatch):
    import kymatio.torch

    from shared.training.backbones import Backbone

    with pytest.raises(ValueError, match="at least 8x8"):
        Backbone("scatter", (7, 28))

    def refuse(*a, **k):
        raise RuntimeError("The smallest dimension should be larger than 2^J.")

    monkeypatch.setattr(kymatio.torch, "Scattering2D", refuse)
    with pytest.raises(ValueError, match=r"refused 9x9 images .*at least 8x8 work"):
        Backbone("scatter", (9, 9))(torch.rand(1, 1, 9, 9))


def test_head_state_dict_holds_the_head_only_not_the_scattering_filters():
    from shared.training.models import build_model

    def head():
        return build_model("head", 3969, 2, in_channels=1, image_size=(28, 28),
                           backbone="scatter")

    model = head()
    x = torch.rand(4, 1, 28, 28)
    out = model(x)  # builds the kymatio filters
    assert sum(b.numel() for b in model.backbone.buffers()) > 10_000  # they exist ...
    keys = list(model.state_dict())
    assert keys and all(k.startswith("head.") for k in keys), keys  # ... but are not saved
    fresh = head()  # never run: no filters yet; an older head's state loads strictly
    fresh.load_state_dict(model.state_dict())
    assert torch.allclose(fresh(x), out, atol=1e-6)


def test_scatter_backbone_pickles_and_copies_after_use():
    import copy
    import pickle

    from shared.training.backbones import Backbone

    bb = Backbone("scatter", (16, 16))
    x = torch.rand(2, 1, 16, 16)
    f = bb(x)
    for clone in (pickle.loads(pickle.dumps(bb)), copy.deepcopy(bb)):
        assert torch.equal(clone(x), f)
    assert bb.scattering is not None  # pickling left the original intact


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scatter_follows_the_module_to_the_gpu():
    from shared.training.backbones import Backbone

    bb = Backbone("scatter", (28, 28))
    x = torch.rand(3, 1, 28, 28)
    f = bb(x)  # filters built on the CPU, then moved with the module
    bb.to("cuda")
    assert all(b.is_cuda for b in bb.scattering.buffers())
    assert torch.allclose(bb(x.cuda()).cpu(), f, atol=1e-4)


def test_head_beats_chance_and_executes_the_planned_event(cxr28):
    from shared.training.images import predict_images_proba
    from shared.training.results import load_model

    meta = _meta(400, 28)
    spec = DPSGDImageSpec(dataset="cxr", epsilon=4.0, delta=1e-4, model="head",
                          backbone="pixels", epochs=10, batch_size=64).validate(meta)
    seen = []
    from shared.randomness import pinned_randomness

    with pinned_randomness(0):  # a utility check must not depend on the draw
        r = spec.run(cxr28, meta, progress=lambda d, t: seen.append((d, t)))
    p = r["privacy"]
    assert p["event"] == event_to_json(spec.planned_event(meta))
    assert p["training_epsilon"] <= 4.0 and p["steps"] == seen[-1][0] == seen[-1][1]
    assert p["noise_multiplier"] > 0.5 and p["sample_rate"] == pytest.approx(1 / 5)
    m = r["metrics"]
    assert m["n_train"] == 320 and m["n_test"] == 80
    assert set(m["per_class_accuracy"]) == {"0", "1"} and "test_auc" not in m
    # the released model (backbone + head) rebuilds from its config and predicts the same
    model = load_model(r)
    probs = predict_images_proba(model, r["model_config"], cxr28["images"])
    from shared.training import split_indices

    _, te = split_indices(cxr28["images"], np.asarray(cxr28["labels"], dtype=np.int64), 0.2, 0)
    acc = (probs[te].argmax(1) == cxr28["labels"][te]).mean()
    # fresh secret noise each run: exact AUC is stable (0.80-0.87 over runs), accuracy less so
    from sklearn.metrics import roc_auc_score

    assert acc > 0.6 and roc_auc_score(cxr28["labels"][te], probs[te, 1]) > 0.75  # chance: 0.5
    # released: a DP estimate of the exact accuracy (never the exact value)
    assert abs(m["test_accuracy"] - acc) < 4 * m["test_accuracy_std"]


def test_same_spec_same_model(cxr28):
    meta = _meta(400, 28)
    spec = DPSGDImageSpec(dataset="cxr", epsilon=2.0, delta=1e-4, model="head",
                          backbone="random_conv", epochs=2, hidden=8).validate(meta)
    from shared.randomness import pinned_randomness

    with pinned_randomness(7):
        a, b = spec.run(cxr28, meta), spec.run(cxr28, meta)
        other = DPSGDImageSpec.from_dict({**spec.to_dict(), "seed": 1}).run(cxr28, meta)
    sa, sb, so = (torch.load(io.BytesIO(r["model_state"])) for r in (a, b, other))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], so[k]) for k in sa)


@pytest.mark.parametrize("model,mode", [("cnn", "ghost"), ("resnet9", "hooks")])
def test_conv_models_train_a_few_steps(model, mode):
    data = make_synthetic_cxr(60, size=16, seed=1)
    meta = _meta(60, 16)
    spec = DPSGDImageSpec(dataset="cxr", epsilon=8.0, delta=1e-3, model=model, width=4,
                          epochs=1, batch_size=16, learning_rate=0.5, grad_sample_mode=mode,
                          physical_batch_size=8).validate(meta)
    r = spec.run(data, meta)
    assert r["privacy"]["event"] == event_to_json(spec.planned_event(meta))
    assert r["privacy"]["steps"] >= 2
    assert r["model_config"]["name"] == model and r["model_config"]["width"] == 4
    assert 0 <= r["metrics"]["test_accuracy"] <= 1
    from shared.training.models import build_from_config

    init = build_from_config(r["model_config"]).state_dict()
    from shared.training.results import load_model

    trained = load_model(r).state_dict()
    assert any(not torch.equal(init[k], trained[k]) for k in init)  # it moved


@pytest.mark.parametrize("change,message", [
    (dict(model="vit"), "unknown model"),
    (dict(backbone="resnet50"), "unknown backbone"),
    (dict(delta=0.01), "too large"),
    (dict(batch_size=1000), "exceeds"),
    (dict(grad_sample_mode="functorch"), "grad_sample_mode"),
    (dict(epsilon=0.0), "epsilon"),
    (dict(momentum=1.0), "momentum"),
    (dict(dataset="other"), "names dataset"),
    (dict(epochs=1.5), "epochs must be int"),
])
def test_validation_messages(change, message):
    spec = DPSGDImageSpec(**{**dict(dataset="cxr", epsilon=1.0, delta=1e-5), **change})
    with pytest.raises(SpecError, match=message):
        spec.validate(_meta(400, 28))


def test_validation_against_wrong_kind_and_tiny_images():
    with pytest.raises(SpecError, match="needs images"):
        DPSGDImageSpec(dataset="cxr", epsilon=1.0, delta=1e-5).validate(_meta(400, 28, "table"))
    with pytest.raises(SpecError, match="at least 8x8"):
        DPSGDImageSpec(dataset="cxr", epsilon=1.0, delta=1e-5, model="cnn").validate(
            _meta(400, 6))
    spec = DPSGDImageSpec.from_dict({"kind": "dpsgd_images", "dataset": "cxr", "epsilon": 1.0,
                                     "delta": 1e-5})
    assert spec.validate(_meta(400, 28)).to_dict()["kind"] == "dpsgd_images"
