"""Forgetting a patient must not hand them to a researcher holding an earlier version of the
model (differencing attack, Chen et al. CCS 2021), each update is priced as the fresh release it
is, and the review says beforehand how many forgets the budgets can pay for. In-process: the
owner's side without a server (the live workflow is in test_forget.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import datasite.forget as F
from shared import removal as R
from shared.privacy.differencing import forget_sequence_ranks, identification_bound
from shared.protocol import ResultPayload
from shared.randomness import pinned_randomness, secret_seed

LAM, S = 1e-3, 10.0  # the settings of test_forget.py's live model
RESEARCHER = "alice@uni.edu"


def _table():
    from datasite.demo_data import breast_cancer_frame
    from shared.data import TABLE, DatasetMeta, power_of_ten_scale

    df = breast_cancer_frame()
    cols = [c for c in df.columns if c != "diagnosis"]
    scales = {c: power_of_ten_scale(float(df[c].abs().max())) for c in cols}
    meta = DatasetMeta(name="bc", kind=TABLE, n_records=len(df), label="diagnosis",
                       labels=[0, 1], features={c: "float64" for c in cols},
                       feature_scales=scales)
    return df, meta


def _features():
    df, meta = _table()
    cols = list(meta.feature_scales)
    pipeline = R.table_pipeline(cols, [meta.feature_scales[c] for c in cols])
    return R.make_features(df[cols].to_numpy(), pipeline), df["diagnosis"].to_numpy()


def test_differencing_attack_names_the_patient_only_from_a_noiseless_update(monkeypatch):
    """10 successive forgets on the breast-cancer table; before each the attacker holds the
    latest release, knows every other record, and ranks all records by |cos(x, H (w1 - w0) -
    lam w0)|. Against the old noiseless Newton release (test switch) it names the forgotten
    patient first almost every time; against fresh releases no more often than DP allows."""
    X, y = _features()

    def ranks(noiseless: bool) -> list[int]:
        monkeypatch.setattr(F, "_RELEASE_NOISELESS_NEWTON_FOR_TESTS", noiseless)
        with pinned_randomness(7):  # reproducible; on a datasite b comes from the OS
            return forget_sequence_ranks(F.updated_models, X, y, 10, LAM, S,
                                         np.random.default_rng(0), noise_seed=5)

    before = ranks(True)
    assert sum(r == 0 for r in before) >= 8, before
    after = ranks(False)
    # Each fresh release is (eps, 1e-6)-DP, so no attacker names a uniformly chosen forgotten
    # record first with probability above p = e^(2 eps)/n + (1 + e^eps) delta (~0.008 here;
    # replacing one record = remove + add). 3 or more of 10: P <= C(10,3) p^3 < 1e-4.
    p = identification_bound(LAM, S, len(X) - 10, 1e-6)
    assert p < 0.01 and math.comb(10, 3) * p ** 3 < 1e-4
    assert sum(r == 0 for r in after) <= 2, after
    assert np.median(after) > 50  # no better than guessing either: median rank ~ n / 2


def test_fresh_release_is_an_exact_training_with_a_fresh_perturbation():
    """The release minimises the perturbed objective on the remaining records exactly (same
    function as a first training), and two releases of the same data use independent b."""
    X, y = _features()
    model = R.train_removable(X, y, [0, 1], LAM, S, 1.0, 1e-9, seed=1)
    owner, released, cert = F.updated_models(model, X, y, 3, stream=(1,))
    keep = np.arange(len(X)) != 3
    assert released.n_train == owner.n_train == len(X) - 1
    with pinned_randomness(11):
        a = R.fresh_release(owner, X[keep], y[keep], (1,))
        b_a = R.draw_b(S, a.weights.shape, secret_seed(R.RELEASE_STREAM, 1), 0)  # its b
    grad = R.objective_gradient(a, X[keep], y[keep], b_a)
    assert np.linalg.norm(grad) <= R.GRAD_TOL  # the exact minimiser for b_a
    again = R.fresh_release(owner, X[keep], y[keep], (1,))  # unpinned: b from the OS
    assert np.linalg.norm(again.weights - a.weights) > 1.0
    # what goes out holds only public constants; the owner's copy is the certified Newton one
    assert released.n_retrains == 0 and released.residual_used == pytest.approx(R.GRAD_TOL)
    assert cert["residual_used"] > R.GRAD_TOL and not cert["retrained"]


# -- the owner's side: pricing, review, withdrawal --------------------------------------------
class _Owner:
    """The owner's side of a datasite without its server: what forget and review need."""

    def __init__(self, root, budget_eps: float, delta: float, researcher_eps: float | None):
        from datasite.config import init_site
        from datasite.ledger import Ledger
        from datasite.state import open_state
        from datasite.storage import write_private

        self.home = init_site("forget-priv", home=root / "site")
        self.name = "forget-priv"
        self.state = open_state(self.home)
        self.ledger = Ledger(self.state)
        df, meta = _table()
        (root / "private").mkdir()
        path = write_private(root / "private", meta, df)
        self.state.add_dataset("bc", meta.kind, meta.to_json(), str(path))
        self.ledger.set_budget("bc", budget_eps, delta)
        if researcher_eps is not None:
            self.ledger.set_budget("bc", researcher_eps, None, researcher=RESEARCHER)

    def publish_budgets(self, researchers=None) -> None:
        pass  # no server, nobody to tell

    def train(self, job_delta: float) -> tuple[str, dict]:
        """Review (affordable forgets), then run, release and register a removal model."""
        from datasite.storage import read_private
        from shared.privacy.accounting import event_to_json
        from shared.data import DatasetMeta
        from shared.privacy.pricing import planned_event
        from shared.jobs.removal import RemovalSpec
        from shared.jobs import n_train_records
        from shared.training import split_indices

        row = self.state.dataset("bc")
        meta = DatasetMeta.from_json(row["meta_json"])
        spec = RemovalSpec(dataset="bc", delta=job_delta, label="diagnosis", lam=LAM,
                           perturbation=S, removal_epsilon=1.0, removal_delta=1e-9)
        event_json = event_to_json(planned_event(spec.to_dict(), meta))
        review = F.affordable_forgets(self, spec.to_dict(), RESEARCHER, event_json)
        data, _ = read_private(row["path"])
        X, y, pipeline, _ = R.job_features(spec, data, meta)
        tr, _ = split_indices(X, y, spec.test_fraction, spec.seed)
        # as the job does: the regulariser at the planned (public) count, not len(tr)
        model = R.train_removable(X[tr], y[tr], [0, 1], LAM, S, 1.0, 1e-9, train_delta=job_delta,
                                  feature_pipeline=pipeline,
                                  n_reg=n_train_records(meta.n_records, spec.test_fraction))
        rid = f"job-{job_delta:g}"
        self.ledger.reserve(rid, "bc", RESEARCHER, event_json)
        self.ledger.start(rid)
        self.ledger.commit(rid, event_json)
        self.ledger.released(rid)
        F.register_release(self, rid, ResultPayload.from_dict(
            {"kind": spec.KIND, "spec": spec.to_dict(), "removable_model": model.to_dict(),
             "_owner_training_rows": list(tr)}), RESEARCHER)
        return rid, review

    def forget_until_withdrawn(self, rid: str, most: int = 30) -> tuple[int, dict]:
        """Forget training records of model ``rid`` until it is withdrawn: (updates, last)."""
        for k in range(most):
            (m,) = [m for m in self.state.models_for("bc") if m["request_id"] == rid]
            record = json.loads(m["record_ids_json"])[0]
            (out,) = F.forget(self, "bc", record)["models"]
            if out["status"] == "withdrawn":
                return k, out
        raise AssertionError(f"still not withdrawn after {most} forgets")


def test_each_update_is_priced_as_a_fresh_release(tmp_path):
    from shared.privacy.accounting import event_from_json

    site = _Owner(tmp_path, budget_eps=50.0, delta=1e-5, researcher_eps=None)
    rid, _ = site.train(job_delta=1e-7)
    (m,) = site.state.models_for("bc")
    n = len(json.loads(m["record_ids_json"]))
    report = F.forget(site, "bc", json.loads(m["record_ids_json"])[5])
    (out,) = report["models"]
    assert out["status"] == "updated"
    event = event_from_json(site.ledger.entry(f"{rid}:v1")["event_json"])
    # exactly one more independent (eps_train(n'), job delta) release, no chaining terms, with
    # n' the planned (public) training count of the 568 records left, not the realised n - 1
    from shared.jobs import n_train_records

    n_left = n_train_records(568, 0.2)
    assert n_left != n - 1  # the per-record split's realised size is not the planned one
    assert event.epsilon == pytest.approx(R.training_epsilon(LAM, S, n_left, 1e-7))
    assert event.delta == 1e-7
    # the researcher's certificate: a fresh DP release, no data-dependent residual numbers
    pub = out["released"]
    assert "fresh DP release" in pub["covers"] and "Newton" in pub["owner_copy"]
    assert not {"residual_used", "residual_bound", "budget_left"} & set(pub)
    assert pub["n_train"] == n_left
    # the owner's copy kept here is the certified Newton update
    owner = R.RemovableModel.from_json(site.state.models_for("bc")[0]["model_json"])
    assert owner.n_train == n - 1 and owner.residual_used > R.GRAD_TOL
    assert out["certificate"]["copy"] == "owner" and not out["certificate"]["retrained"]


@pytest.mark.parametrize("case", ["researcher_epsilon", "dataset_delta"])
def test_review_counts_the_forgets_the_budgets_pay_for(tmp_path, case):
    """The count shown at review is what forgetting then delivers: exactly that many updates,
    then the model is withdrawn, and the message names the budget (and eps or delta)."""
    if case == "researcher_epsilon":  # eps_train ~ 0.9 per release: a researcher share of 3
        site = _Owner(tmp_path, budget_eps=50.0, delta=1e-5, researcher_eps=3.0)
        rid, review = site.train(job_delta=1e-7)
        assert 1 <= review["count"] <= 5 and "alice@uni.edu's epsilon" in review["limit"]
        assert "WARNING" not in review["message"]
    else:  # two releases at the job's delta exceed the dataset's: no update can be paid
        site = _Owner(tmp_path, budget_eps=50.0, delta=1e-5, researcher_eps=None)
        rid, review = site.train(job_delta=6e-6)
        assert review["count"] == 0 and "the dataset's delta" in review["limit"]
        assert review["message"].startswith("WARNING") and review["limit_in"] == "delta"
        assert "well below the dataset" in review["message"]
    updates, last = site.forget_until_withdrawn(rid)
    assert updates == review["count"]
    who = "alice@uni.edu's epsilon" if case == "researcher_epsilon" else "the dataset's delta"
    assert who in last["reason"] and "inf" not in last["reason"]
    (m,) = site.state.models_for("bc")
    assert m["status"] == "withdrawn"
    owner = R.RemovableModel.from_json(m["model_json"])  # the owner's copy lost the record too
    assert owner.n_removed == updates + 1
