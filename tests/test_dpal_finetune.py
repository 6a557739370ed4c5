"""DP active learning from a registered pretrained backbone (``dpal`` with ``method``): the loop
fine-tunes it between acquisitions, the release rebuilds like a finetune result, the spec is
refused where it cannot run, and the privacy accounting is the plan's whatever the method."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datasite.demo_data import make_synthetic_cxr
from shared.data import DatasetMeta
from shared.jobs import SpecError
from shared.jobs.dpal import DPALSpec
from shared.pretrained.info import LocalBackbone
from shared.pretrained.weights import inspect_weights, package_weights
from shared.privacy.accounting import event_to_json
from shared.runner import resolve_backbones, run_job

torch.set_num_threads(1)  # as tests/test_shared_dpal.py: two threads thrash on a shared box

SIZE = 32  # the backbone's input side: EfficientNet is fully convolutional, 32x32 is fast on CPU
N = 80
META = DatasetMeta(name="cxr", kind="images", n_records=N, label="label", labels=[0, 1],
                   image_shape=[28, 28])
# naive mode: a plan in ~2 s on a shared CPU (step amplification's search takes ~10 s)
SPEC = dict(kind="dpal", dataset="cxr", epsilon=8.0, delta=1e-3, eps_selection=1.0,
            start_size=16, query_sizes=[8], batch_size=8, epochs_per_round=1.0, mode="naive",
            backbone="lite0")


@pytest.fixture(scope="module")
def lite():
    arch, path, source = package_weights()
    return LocalBackbone(inspect_weights("lite0", arch, path, source, input_size=SIZE), str(path))


@pytest.fixture(scope="module")
def data():
    return make_synthetic_cxr(n=N, size=28, seed=0)


def _reproduces_reported_metrics(result: dict, data: dict) -> None:
    """The released model, rebuilt by load_model, gives the mock's exact test metrics again."""
    from shared.training.images import predict_images_proba
    from shared.training.metrics import auc
    from shared.training.results import load_model
    from shared.training.split import split_indices

    model = load_model(result)  # the package's weights are found by their sha256
    y = np.asarray(data["labels"])
    _, te = split_indices(data["images"], y, 0.2, 0)
    p = predict_images_proba(model, result["model_config"], data["images"][te])
    assert np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.mean(p.argmax(1) == y[te]) == pytest.approx(result["metrics"]["test_accuracy"])
    assert auc(p, y[te], 2) == pytest.approx(result["metrics"]["test_auc"], abs=1e-6)


def test_bitfit_dpal_fine_tunes_the_backbone_and_releases_a_finetune_model(lite, data):
    from shared.pretrained.model import build_finetuned
    from shared.training.serialise import load_state

    spec = {**SPEC, "method": "bitfit", "learning_rate": 2.0}
    r = run_job(spec, data, META, backbones={"lite0": lite}, mock=True, pin_randomness=0)
    assert r["backbone"] == {"name": "lite0", "sha256": lite.info.sha256,
                             "arch": "efficientnet_lite0", "source": lite.info.source}
    config = r["model_config"]
    assert config["name"] == "finetuned" and config["method"] == "bitfit"
    assert config["backbone"]["sha256"] == lite.info.sha256 and config["classes"] == [0, 1]
    assert lite.path not in str({k: v for k, v in r.items() if k != "model_state"})
    # the backbone's biases moved away from the registered weights (and only trained
    # parameters are released: the backbone itself is the owner's)
    state = load_state(r["model_state"])
    pretrained = dict(build_finetuned(lite.info, lite.path, "bitfit", 2).named_parameters())
    biases = [k for k in state if k.startswith("backbone.")]
    assert biases and all(k.endswith(".bias") for k in biases)
    moved = [k for k in biases if not torch.allclose(state[k], pretrained[k].detach())]
    assert len(moved) > len(biases) // 2, f"{len(moved)} of {len(biases)} biases moved"
    # the executed events are the plan's
    planned = DPALSpec.from_dict(spec).planned_event(META)
    assert r["privacy"]["event"] == event_to_json(planned)
    assert [row["steps"] for row in r["rounds"]] == r["plan"]["steps"]
    assert sorted(i for g in r["_owner_record_groups"] for i in g["rows"]) == list(range(N))
    _reproduces_reported_metrics(r, data)


def test_head_method_through_the_researcher_builder_on_mock(lite, data):
    from researcher import jobs
    from researcher.connection import ModelCatalog
    from shared.training.serialise import load_state

    site = SimpleNamespace(datasets={"cxr": SimpleNamespace(mock=data, meta=META)},
                           models=ModelCatalog(lite0=lite.info))
    opts = {k: v for k, v in SPEC.items() if k not in ("kind", "dataset", "epsilon", "delta")}
    job = jobs.DPActiveLearning("cxr", epsilon=8.0, delta=1e-3,
                                **{**opts, "method": "head", "acquisition": "bald"})
    assert job.spec.backbones_needed() == ["lite0"] and job.spec.lr() == 4.0  # head's rate
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the installed package's file: its real weights
        result = job.run_on_mock(site)
    r = result.raw
    assert r["backbone"]["sha256"] == lite.info.sha256
    assert set(load_state(r["model_state"])) == {"head.0.weight", "head.0.bias"}
    assert r["metrics"]["evaluated_on"].startswith("mock")
    _reproduces_reported_metrics(r, data)
    # the plain spec (data-independent backbone) still names no registered backbone
    assert jobs.DPActiveLearning("cxr", epsilon=8.0, delta=1e-3, **{
        **opts, "backbone": "scatter"}).spec.backbones_needed() == []


def test_an_unregistered_backbone_is_refused_naming_the_registered_ones(lite, data):
    spec = {**SPEC, "method": "lora", "backbone": "resnet_cxr"}
    with pytest.raises(SpecError, match=r"'resnet_cxr' is not registered.*\['lite0'\]"):
        run_job(spec, data, META, backbones={"lite0": lite}, mock=True)
    # a method with a data-independent backbone's name: also not a registered backbone
    with pytest.raises(SpecError, match=r"'scatter' is not registered"):
        run_job({**spec, "backbone": "scatter"}, data, META, backbones={"lite0": lite})
    # every weight fine-tuned over a big batch does not fit the site's memory
    big = DatasetMeta(**{**META.__dict__, "n_records": 100_000})
    full = DPALSpec.from_dict({**SPEC, "method": "full", "delta": 1e-6, "start_size": 500,
                               "batch_size": 400}).validate(big)
    with pytest.raises(SpecError, match="full fine-tuning of 'lite0'.*per-sample gradients"):
        resolve_backbones(full, ["lite0"], {"lite0": lite}, big)


def test_method_is_for_images_and_checked():
    table = DatasetMeta(name="bc", kind="table", n_records=500, label="y", labels=[0, 1])
    spec = DPALSpec.from_dict({**SPEC, "dataset": "bc", "label": "y", "method": "bitfit"})
    with pytest.raises(SpecError, match="fine-tunes a registered image backbone.*method=''"):
        spec.validate(table)
    with pytest.raises(SpecError, match="unknown method"):
        DPALSpec.from_dict({**SPEC, "method": "everything"})
    with pytest.raises(SpecError, match="lora_rank"):
        DPALSpec.from_dict({**SPEC, "method": "lora", "lora_rank": 1000})
    with pytest.raises(SpecError, match="unknown backbone 'lite0'.*give method="):
        DPALSpec.from_dict({k: v for k, v in SPEC.items()})  # no method: data-independent only
    # learning_rate 0: finetune's measured rate for the method; today's specs keep 0.5
    assert DPALSpec.from_dict({**SPEC, "method": "lora", "learning_rate": 0.0}).lr() == 0.1
    assert DPALSpec.from_dict({**SPEC, "backbone": "scatter"}).lr() == 0.5
    assert DPALSpec.from_dict({**SPEC, "backbone": "scatter", "learning_rate": 0.0}).lr() == 0.5


def test_privacy_accounting_is_the_plans_whatever_the_method():
    """The guarantee comes from the plan: a fine-tuning method changes what is trained, not the
    events priced (planned afresh for each spec, no cache shared between them)."""
    from shared.jobs import dpal

    events = {}
    for method, backbone in (("", "scatter"), ("bitfit", "lite0"), ("full", "lite0")):
        dpal._PLAN_CACHE.clear()
        spec = DPALSpec.from_dict({**SPEC, "method": method, "backbone": backbone,
                                   "model": "mlp"}).validate(META)
        plan = dpal.plan_for(spec, META).to_dict()
        plan.pop("planning_seconds")
        events[method] = (event_to_json(spec.planned_event(META)), spec.record_events(META), plan)
    assert events[""] == events["bitfit"] == events["full"]


def test_bald_on_a_fine_tuned_model_drops_out_the_heads_inputs(lite):
    from shared.dpal.acquisition import mc_dropout_proba, predict_proba, scores
    from shared.pretrained.model import build_finetuned

    torch.manual_seed(0)
    model = build_finetuned(lite.info, lite.path, "bitfit", 3)
    with torch.no_grad():
        model.head[0].weight.normal_(0, 5.0)
    X = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    P = mc_dropout_proba(model, X, n_samples=3, seed=1, batch=4)
    assert P.shape == (3, 6, 3) and not np.allclose(P[0], P[1])  # dropout active
    assert np.allclose(mc_dropout_proba(model, X, n_samples=1, p=0.0, batch=4)[0],
                       predict_proba(model, X, batch=4), atol=1e-6)
    s = scores("bald", model, X, seed=1, batch=4)
    assert s.shape == (6,) and s.min() >= 0 and s.max() <= np.log(3) + 1e-9
