"""shared.jobs: serialisation, the kind registry, and validation messages."""
from __future__ import annotations

import math

import pytest

from shared.data import DatasetMeta
from shared.jobs import DPSGDTableSpec, SpecError, spec_from_dict

META = DatasetMeta(name="bc", kind="table", n_records=569, label="diagnosis", labels=[0, 1])


def spec(**kw) -> DPSGDTableSpec:
    base = dict(dataset="bc", label="diagnosis", epsilon=3.0, delta=1e-5)
    return DPSGDTableSpec(**{**base, **kw})


def test_round_trip_and_stable_json():
    s = spec(model="mlp", hidden=8, seed=3)
    d = s.to_dict()
    assert d["kind"] == "dpsgd_table"
    assert spec_from_dict(d) == s
    assert DPSGDTableSpec.from_dict(d) == s
    assert s.to_json() == spec(seed=3, hidden=8, model="mlp").to_json()
    assert list(__import__("json").loads(s.to_json())) == sorted(d)
    assert s.validate(META) is s


def test_kind_is_fixed():
    with pytest.raises(TypeError):
        DPSGDTableSpec(dataset="bc", label="y", epsilon=1.0, delta=1e-5, kind="other")


@pytest.mark.parametrize("d,match", [
    ({"kind": "nope"}, "unknown job kind"),
    ({**spec().to_dict(), "kind": "sql_query"}, "unknown job kind"),
    ({**spec().to_dict(), "lr": 0.1}, r"unknown spec field\(s\) \['lr'\]"),
    ({"kind": "dpsgd_table", "dataset": "bc"}, "missing required field"),
])
def test_from_dict_rejects(d, match):
    with pytest.raises(SpecError, match=match):
        spec_from_dict(d)


def test_from_dict_wrong_kind_for_class():
    with pytest.raises(SpecError, match="expected 'dpsgd_table'"):
        DPSGDTableSpec.from_dict({**spec().to_dict(), "kind": "other"})


@pytest.mark.parametrize("kw,match", [
    (dict(epsilon=0.0), "epsilon must be a finite number > 0"),
    (dict(epsilon=-1.0), "epsilon must be a finite number > 0"),
    (dict(epsilon=math.inf), "epsilon must be a finite number > 0"),
    (dict(epsilon=math.nan), "epsilon is NaN"),
    (dict(delta=0.0), r"delta must be in \(0, 1\)"),
    (dict(delta=math.nan), "delta is NaN"),
    (dict(clip_norm=math.nan), "clip_norm is NaN"),
    (dict(learning_rate=math.nan), "learning_rate is NaN"),
    (dict(delta=1e-2), r"delta=0.01 is too large for 455 training records.*1/n"),
    (dict(batch_size=-1), r"batch_size=-1 is out of range: allowed 0..100000 \(0: chosen from"),
    (dict(batch_size=456), "batch_size=456 exceeds the 455 training records"),
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(clip_norm=0.0), "clip_norm must be a finite number > 0"),
    (dict(model="resnet"), "unknown model 'resnet'"),
    (dict(label="target"), "label column is 'diagnosis'"),
    (dict(dataset="other"), "spec names dataset 'other' but it runs on 'bc'"),
    (dict(epochs=2.5), "epochs must be int"),
    (dict(epochs=True), "epochs must be int"),
    (dict(test_fraction=1.0), r"test_fraction must be in \[0, 0.5\]"),
    (dict(test_fraction=0.99), r"test_fraction must be in \[0, 0.5\]"),
])
def test_validation_messages(kw, match):
    with pytest.raises(SpecError, match=match):
        spec(**kw).validate(META)


def test_batch_size_equal_to_training_set_is_fine():
    spec(batch_size=455).validate(META)


def test_meta_kind_must_be_table():
    images = DatasetMeta(name="bc", kind="images", n_records=569, label="label", labels=[0, 1])
    with pytest.raises(SpecError, match="needs a table"):
        spec(label="label").validate(images)


def test_validation_without_meta_checks_spec_alone():
    spec(delta=1e-2, batch_size=10_000).validate()  # data-dependent checks need meta
    with pytest.raises(SpecError):
        spec(epsilon=0.0).validate()


def test_design_card_active_learning_builder_maps_to_the_dpal_spec():
    from researcher import jobs

    assert jobs.ActiveLearning is jobs.DPActiveLearning  # one builder, the card's name an alias
    job = jobs.ActiveLearning("cxr", 8.0, 1e-6, start=100, queries=[50, 30], rounds=2,
                              step_amplification=False, model="head", backbone="scatter")
    assert (job.spec.start_size, job.spec.query_sizes, job.spec.mode) == (100, [50, 30], "naive")
    with pytest.raises(SpecError, match="one size per round"):
        jobs.ActiveLearning("cxr", 8.0, 1e-6, start=100, queries=[50, 30], rounds=3)
    with pytest.raises(SpecError, match="unknown model 'resnet9-gn'"):
        jobs.ActiveLearning("cxr", 8.0, 1e-6, start=100, queries=[50], model="resnet9-gn")
