"""A removal model on a frozen image backbone records the backbone's feature version. At forget,
a model trained on an earlier version is withdrawn: a Newton step on today's features (values it
was never trained on) certifies nothing and may leave the forgotten patient in the model. The
record still leaves the data and current models are updated. In-process: the owner's side
without a server (as tests/test_forget_privacy.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import datasite.forget as F
from shared import removal as R
from shared.data import DatasetMeta
from shared.protocol import ResultPayload
from shared.removal import features as removal_features
from shared.training import backbones

LAM, S = 0.1, 10.0  # eps_train ~ 0.47 per release on 120 records
REMOVAL_EPS = 0.1  # residual budget s * eps / c = 0.154; one forget's Newton step uses ~0.04
RESEARCHER = "alice@uni.edu"
N = 150
_TODAY = backbones.extract_features


def _images():
    """8x8 grey images, class 1 brighter on the left half (a mirror moves it to the right)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, N)
    images = rng.integers(0, 120, (N, 8, 8)).astype(np.uint8)
    images[labels == 1, :, :4] += 100
    meta = DatasetMeta(name="img", kind="images", n_records=N, label="label", labels=[0, 1],
                       image_shape=[8, 8])
    return {"images": images, "labels": labels}, meta


def _earlier_version(images, name, *args, **kwargs):
    """Stand-in for the pre-kymatio "scatter" features: same length, other values (today's
    transform of the mirrored images), one record each, rows of norm 1."""
    return _TODAY(np.ascontiguousarray(np.asarray(images)[:, :, ::-1]), name, *args, **kwargs)


class _Site:
    """The owner's side of a datasite without its server, holding an image dataset."""

    def __init__(self, root):
        from datasite.config import init_site
        from datasite.ledger import Ledger
        from datasite.state import open_state
        from datasite.storage import write_private

        self.home = init_site("forget-stale", home=root / "site")
        self.name = "forget-stale"
        self.state = open_state(self.home)
        self.ledger = Ledger(self.state)
        self.data, self.meta = _images()
        (root / "private").mkdir()
        path = write_private(root / "private", self.meta, self.data)
        self.state.add_dataset("img", self.meta.kind, self.meta.to_json(), str(path))
        self.ledger.set_budget("img", 50.0, 1e-5)

    def publish_budgets(self, researchers=None) -> None:
        pass  # no server, nobody to tell

    def train(self, seed: int) -> str:
        """Run, release and register a removal model on "scatter" features."""
        from shared.jobs.removal import RemovalSpec
        from shared.privacy.accounting import event_to_json
        from shared.privacy.pricing import planned_event

        spec = RemovalSpec(dataset="img", delta=1e-7, features="scatter", lam=LAM, perturbation=S,
                           removal_epsilon=REMOVAL_EPS, removal_delta=1e-9, seed=seed)
        event_json = event_to_json(planned_event(spec.to_dict(), self.meta))
        result = R.run_removal_job(spec.validate(self.meta), self.data, self.meta)
        rid = f"job-{seed}"
        self.ledger.reserve(rid, "img", RESEARCHER, event_json)
        self.ledger.start(rid)
        self.ledger.commit(rid, event_json)
        self.ledger.released(rid)
        F.register_release(self, rid, ResultPayload.from_dict(
            {"kind": spec.KIND, "spec": spec.to_dict(), **result}), RESEARCHER)
        return rid

    def train_before_versions(self, seed: int, monkeypatch) -> str:
        """A model as the code before the kymatio rewrite trained it: on other feature values,
        recording no version (its stored pipeline edited as that code wrote it)."""
        with monkeypatch.context() as m:
            m.setattr(backbones, "extract_features", _earlier_version)
            rid = self.train(seed)
        model = json.loads(self.row(rid)["model_json"])
        del model["feature_pipeline"]["backbone_version"]
        self.state.update_model(rid, model_json=json.dumps(model))
        return rid

    def row(self, rid: str) -> dict:
        (m,) = [m for m in self.state.models_for("img") if m["request_id"] == rid]
        return m

    def records(self, rid: str) -> list[int]:
        return json.loads(self.row(rid)["record_ids_json"])


def _sent(monkeypatch) -> dict:
    """What each researcher is told at forget, by request id."""
    sent = {}
    monkeypatch.setattr(F, "_notify", lambda site, m, payload: sent.update({m["request_id"]:
                                                                            payload}))
    return sent


def _true_residual(site: _Site, before: R.RemovableModel, rid: str, record: int,
                   extract) -> float:
    """|grad L(w)| of model ``rid``'s owner copy after forgetting ``record``, on the features
    ``extract`` computes, with the b its training used (recovered from the original weights:
    grad L(w0) = 0 up to GRAD_TOL on the records it was fitted on)."""
    ids = np.asarray(json.loads(site.row(rid)["record_ids_json"]) + [record])
    X = R.make_features(extract(site.data["images"][ids], "scatter"), before.feature_pipeline)
    y = site.data["labels"][ids]
    b = -R.objective_gradient(before, X, y, 0.0)
    after = R.RemovableModel.from_json(site.row(rid)["model_json"])
    assert after.n_train == len(ids) - 1
    return float(np.linalg.norm(R.objective_gradient(after, X[:-1], y[:-1], b)))


def _forget_both(site: _Site, a: str, b: str) -> int:
    return sorted(set(site.records(a)) & set(site.records(b)))[0]


# -- stale_features ----------------------------------------------------------------------------
def test_stale_features_on_each_kind_of_pipeline():
    today = backbones.feature_version("scatter")
    assert set(backbones.FEATURE_VERSIONS) == set(backbones.UNRECORDED_VERSIONS) == \
        set(backbones.BACKBONES)
    current = {**R.unit_pipeline("scatter"), "backbone": "scatter", "backbone_version": today}
    assert R.stale_features(current) is None
    # unaffected: a table pipeline is stored whole; dp_extractor features come from a model
    assert R.stale_features(R.table_pipeline(["a", "b"], [1.0, 2.0])) is None
    assert R.stale_features(R.unit_pipeline("dp_extractor")) is None
    assert R.stale_features({}) is None and R.stale_features(None) is None
    legacy = {k: v for k, v in current.items() if k != "backbone_version"}
    why = R.stale_features(legacy)
    assert "'fft-J2-box' (it recorded none)" in why and repr(today) in why
    assert R.stale_features({**legacy, "input": "scatter", "backbone": "scatter"})
    assert "'0'" in R.stale_features({**current, "backbone_version": "0"})
    # the other backbones never changed: no version recorded means today's
    for name in ("random_conv", "pixels"):
        assert R.stale_features({**R.unit_pipeline(name), "backbone": name}) is None
    assert "no longer exists" in R.stale_features({**current, "backbone": "gone"})
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.feature_version("gone")


def test_job_features_refuses_a_stale_pipeline():
    from shared.jobs.removal import RemovalSpec

    data, meta = _images()
    spec = RemovalSpec(dataset="img", delta=1e-7, features="pixels").validate(meta)
    X, _, pipeline, _ = R.job_features(spec, data, meta)
    assert pipeline["backbone_version"] == backbones.feature_version("pixels")
    assert R.job_features(spec, data, meta, pipeline=pipeline)[0] == pytest.approx(X)
    with pytest.raises(R.RemovalError, match="'0'.*Retrain the model"):
        R.job_features(spec, data, meta, pipeline={**pipeline, "backbone_version": "0"})


# -- forget --------------------------------------------------------------------------------------
def test_a_model_on_earlier_features_is_withdrawn_and_the_forget_goes_on(tmp_path, monkeypatch):
    from sqlalchemy import select

    from datasite.audit_log import audit
    from datasite.storage import read_private, record_ids

    site = _Site(tmp_path)
    legacy = site.train_before_versions(1, monkeypatch)
    current = site.train(2)
    record = _forget_both(site, legacy, current)
    sent = _sent(monkeypatch)
    report = F.forget(site, "img", record)

    out = {m["request"]: m for m in report["models"]}
    assert out[legacy]["status"] == "withdrawn"
    why = out[legacy]["reason"]
    assert "earlier version of its backbone" in why and "'fft-J2-box'" in why
    assert "cannot be certified" in why and "Retrain" in why
    # the researcher is told why, and gets no weights
    note = sent[legacy]
    assert note["status"] == "withdrawn" and note["reason"] == why
    assert note["certificate"]["withdrawn"] and "no weights were sent" in \
        note["certificate"]["covers"]
    assert not {"removable_model", "model_state", "model_config"} & set(note)
    row = site.row(legacy)
    assert row["status"] == "withdrawn" and row["reason"] == why
    # nothing priced or released for it, its private data not touched, the audit log says why
    assert site.ledger.entry(f"{legacy}:v1") is None
    assert site.state.execution_count(f"{legacy}:v1") == 0
    with site.state.engine.connect() as c:
        (logged,) = c.execute(select(audit.c.payload).where(
            audit.c.action == "removal_certificate", audit.c.request_id == legacy)).scalars()
    assert json.loads(logged)["status"] == "withdrawn" and json.loads(logged)["reason"] == why
    # the forget went on: the record left the data, the current model was updated
    path = site.state.dataset("img")["path"]
    assert record not in record_ids(path).tolist() and len(read_private(path)[0]["labels"]) == N - 1
    assert out[current]["status"] == "updated" and "removable_model" in sent[current]
    assert site.ledger.entry(f"{current}:v1")["state"] == "released"
    assert record not in site.records(current)


def test_without_the_check_the_update_runs_on_features_the_model_never_saw(tmp_path,
                                                                           monkeypatch):
    """The bug the check prevents: with it switched off, the model trained on the earlier
    features is "updated" by a Newton step on today's, and its owner certificate is false on
    the features it was trained on: the certified residual bound is within the budget, the true
    gradient residual is not, so the copy is not (eps, delta)-indistinguishable from a
    retraining without the patient. (The researcher's release is a fresh training on the
    remaining records, so it does not hold the patient either way.)"""
    site = _Site(tmp_path)
    legacy = site.train_before_versions(1, monkeypatch)
    before = R.RemovableModel.from_json(site.row(legacy)["model_json"])
    record = site.records(legacy)[0]
    sent = _sent(monkeypatch)
    monkeypatch.setattr(removal_features, "stale_features", lambda pipeline: None)
    (out,) = F.forget(site, "img", record)["models"]

    assert out["status"] == "updated" and "removable_model" in sent[legacy]
    cert = out["certificate"]
    assert not cert["retrained"] and cert["residual_used"] <= cert["budget"]
    true = _true_residual(site, before, legacy, record, _earlier_version)
    assert true > cert["budget"] and true > 5 * cert["residual_used"], (true, cert)


def test_a_current_model_records_its_version_and_is_updated(tmp_path, monkeypatch):
    """The control of the test above: on the features it was trained on, the owner copy's
    gradient residual is within the certified bound."""
    site = _Site(tmp_path)
    rid = site.train(3)
    before = R.RemovableModel.from_json(site.row(rid)["model_json"])
    assert before.feature_pipeline["backbone"] == "scatter"
    assert before.feature_pipeline["backbone_version"] == backbones.feature_version("scatter")
    record = site.records(rid)[0]
    sent = _sent(monkeypatch)
    (out,) = F.forget(site, "img", record)["models"]

    assert out["status"] == "updated" and site.row(rid)["status"] == "active"
    released = sent[rid]["removable_model"]
    assert released["feature_pipeline"]["backbone_version"] == backbones.feature_version("scatter")
    cert = out["certificate"]
    assert not cert["retrained"]
    assert _true_residual(site, before, rid, record, _TODAY) <= cert["residual_used"]
