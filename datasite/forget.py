"""Honouring a patient's request to be forgotten (certified removal, ALGORITHMS.md section 4).

``datasite forget NAME DATASET --record ID`` removes the record from the real data for good and,
for every released removal-enabled model trained on it, does two things:

* **The owner's copy** (kept here, never sent) gets a Newton removal step (Guo et al. 2020), or a
  retrain with a fresh perturbation once its residual budget is used up. Its certificate covers
  that copy: it is (removal_epsilon, removal_delta)-indistinguishable from a retraining without
  the removed records. Its residual numbers depend on the data and stay in the owner's audit log.
* **The researcher** gets a fresh release: a new objective-perturbation training on the remaining
  records with a fresh b from the OS, minimised exactly from the same start as any training
  (:func:`shared.removal.fresh_release`). Never the Newton update: someone holding the earlier
  release w0 and a Newton update w1 computes H (w1 - w0) - lam w0, the forgotten record's
  gradient, i.e. its features (differencing attack, Chen et al., CCS 2021). A warm start from the
  owner's copy would save nothing (the fresh b moves the minimiser by about |b - b'| / (lam n);
  measured: 4-5 Newton evaluations either way), so there is none, and with it no leak through the
  optimiser's tolerance.

Why that is private (proof sketch). Write the releases R_0 = A(D_0, b_0), R_j = A(D_j, b_j), with
D_j the training records left after the j-th forget, A the exact minimiser of the perturbed
objective (a deterministic function of the data and b) and b_0, b_1, ... independent draws.
Given the data the releases are independent, and A(., b) with b ~ N(0, s^2 I) is
(eps_train(|D_j|), delta)-DP (:func:`shared.removal.training_epsilon`). A record x forgotten at
step k appears in D_0..D_{k-1} only; R_k, R_{k+1}, ... have the same distribution whether or not x
was ever in the data, so the whole sequence costs x exactly the composition of the releases before
its removal (for the first forget: the original model alone), and what later releases reveal
about it is nothing. A record still present has been in every D_j: the sequence costs it the
composition of independent (eps_train, delta)-DP releases, and the ledger prices exactly that:
each update is one more approx-DP event (eps_train(|D_j|), delta) (:func:`update_event`),
composed with the rest by PLD. (The forget requests come from patients, not from the releases;
adaptive choices would be covered by adaptive composition, the randomness being independent.)

A model trained on features its frozen backbone no longer computes (the backbone's version,
:data:`shared.training.backbones.FEATURE_VERSIONS`, changed since) is withdrawn, not updated: a
Newton step on today's features would carry no certificate for what the model learned from the
old ones (:func:`shared.removal.stale_features`). The record still leaves the data and the other
models are updated.

If a budget cannot pay for an update, the model is withdrawn and the researcher is told which
budget ran out, in epsilon or in delta; `datasite review` shows before training how many forgets
the budgets can pay for (:func:`affordable_forgets`). Plain DP models cannot be updated: they are
listed with what their DP guarantee still says.

Record ids are the row numbers of the uploaded file (0-based); they do not shift when records are
removed. A dataset uploaded with ``--id-column`` names its records by patient id instead (text, as
the id column writes it; ``--row`` still takes a row number): the id leaves the private map with
the record, and the audit log records the record id only. The mock is synthetic and holds no
real record (checked at upload), so it needs no change.
"""
from __future__ import annotations

import json
import math

import numpy as np

from shared.protocol import ResultPayload

from .config import SiteError
from .execution import execute_once
from .ingest_ids import id_text
from .storage import (delete_records, has_patient_ids, patient_record, read_private, record_ids,
                      removed_ids)

def register_release(site, request_id: str, result: ResultPayload, researcher: str) -> None:
    """Remember a released removal-enabled model: its owner copy and the records it reflects."""
    path = site.state.dataset(result.spec["dataset"])["path"]
    ids = record_ids(path)[np.asarray(result.owner["_owner_training_rows"], dtype=np.int64)]
    site.state.add_model(request_id, dataset=result.spec["dataset"], researcher=researcher,
                         spec_json=json.dumps(result.spec, sort_keys=True),
                         model_json=json.dumps(result.payload["removable_model"]),
                         record_ids_json=json.dumps([int(i) for i in ids]))


# Test-only switch: True restores the old, broken release of the noiseless Newton update, so
# the differencing-attack tests can show that they catch it. Never set it outside tests.
_RELEASE_NOISELESS_NEWTON_FOR_TESTS = False


def update_event(spec, n_train: int, n_models: int):
    """The ledger event of one update sent to a researcher: a fresh objective-perturbation
    release on ``n_train`` records, (eps_train(n_train), spec.delta)-DP and independent of the
    earlier releases given the data (module docstring), so it composes as one more event."""
    from shared.privacy.accounting import approx_dp_event
    from shared.removal import training_epsilon

    return approx_dp_event(training_epsilon(spec.lam, spec.perturbation, int(n_train),
                                            spec.delta, n_models), spec.delta)


def updated_models(model, X, y, row: int, stream=(), n_reg: int | None = None) -> tuple:
    """(owner copy, released model, owner certificate) after removing position ``row`` of the
    model's current training records (X, y): the owner copy by a certified Newton step, the
    release by fresh training on the remaining records, its regulariser at the public count
    ``n_reg`` (the planned training count of the records left; default: those left in X)."""
    from shared.removal import fresh_release, remove

    owner_copy, cert = remove(model, X, y, [row])
    if _RELEASE_NOISELESS_NEWTON_FOR_TESTS:
        return owner_copy, owner_copy, cert
    keep = np.arange(len(X)) != row
    return owner_copy, fresh_release(owner_copy, X[keep], y[keep], stream, n_reg=n_reg), cert


def affordable_forgets(site, spec: dict, researcher: str, job_event_json: str,
                       cap: int = 100) -> dict:
    """How many forgets of training records the dataset's and the researcher's budgets can pay
    for after this removal_logreg job (each forget sends one update, priced by
    :func:`update_event`), up to ``cap``; and, when the next one cannot be paid, which budget
    stops it, in epsilon or in delta. Checked at review, before the job is trained."""
    import dp_accounting

    from shared.privacy.accounting import event_from_json, event_to_json
    from shared.data import DatasetMeta
    from shared.jobs import n_train_records, spec_from_dict

    job = spec_from_dict(spec)
    meta = DatasetMeta.from_json(site.state.dataset(job.dataset)["meta_json"])
    first = event_from_json(job_event_json)

    def n_after(k: int) -> int:  # planned (public) training count after k forgets
        return max(n_train_records(meta.n_records - k, job.test_fraction), 1)

    def composed(k: int) -> str:
        if k == 0:
            return job_event_json
        # the k-th update has the fewest records, so the largest epsilon: price all k at it
        upd = update_event(job, n_after(k), job.n_models(meta))
        return event_to_json(dp_accounting.ComposedDpEvent(
            [first, dp_accounting.SelfComposedDpEvent(upd, k)]))

    def fits(k: int) -> bool:
        return site.ledger.quote(job.dataset, researcher, composed(k))["fits"]

    lo, hi = 0, 1  # fits(lo) is assumed (the job itself; review says so separately)
    while hi <= cap and fits(hi):
        lo, hi = hi, 2 * hi
    hi = min(hi, cap + 1)
    while hi - lo > 1:  # fits(lo), not fits(hi) (or hi past the cap)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    upd = update_event(job, n_after(1), job.n_models(meta))
    out = {"count": lo, "at_least": lo >= cap, "update_epsilon": upd.epsilon,
           "update_delta": upd.delta, "dataset_delta": site.ledger.budget(job.dataset)["delta"]}
    if lo < cap:
        out["limit"], out["limit_in"] = _shortfall(site, job.dataset, researcher, composed(lo + 1))
    out["message"] = _forgets_message(out)
    return out


def _forgets_message(out: dict) -> str:
    each = f"each forget sends a fresh release costing eps={out['update_epsilon']:.3g}, " \
           f"delta={out['update_delta']:g}"
    if out["at_least"]:
        return f"forgets affordable after this job: {out['count']} or more ({each})"
    text = (f"forgets affordable after this job: {out['count']} ({each}); the next one: "
            f"{out['limit']}")
    if out["count"] == 0:
        text = "WARNING: no forget can be paid for after this job -- the model would be " \
               f"withdrawn at the first forget ({each}; {out['limit']})"
    if out.get("limit_in") == "delta":
        d = out["dataset_delta"]
        text += (f". Every release adds its delta: k forgets need (k + 1) x the job's delta "
                 f"well below the dataset's {d:g}; for 20 forgets ask for delta <= {d / 42:.1g}")
    return text


def resolve_record(path, dataset: str, record=None, row: int | None = None) -> tuple:
    """(record id, patient id or None) of the record to forget. ``record``: its patient id
    (text) on a dataset uploaded with an id column, else its row number; ``row``: its row
    number in any case. An unknown id is refused without naming any other."""
    if (record is None) == (row is None):
        raise SiteError("Name the record to forget by its patient id (--record) or by its row "
                        "number (--row), one of the two.")
    if row is None and has_patient_ids(path):
        pid = id_text(record)
        found = None if pid is None else patient_record(path, pid)
        if found is None or found in removed_ids(path):
            raise SiteError(f"Patient id {pid or record!r} is not in {dataset} (or was already "
                            "forgotten): give it as the uploaded file's id column writes it "
                            "(text: leading zeros count), or name the record by its row number "
                            "with --row.")
        return found, pid
    number = record if row is None else row
    try:
        record_id = int(number) if isinstance(number, (int, np.integer)) else int(str(number))
    except ValueError:
        raise SiteError(f"{dataset} was uploaded without --id-column: name the record by its row "
                        f"number in the uploaded file (from 0), not {number!r}.") from None
    if record_id in removed_ids(path):
        raise SiteError(f"Record {record_id} was already removed from {dataset}; nothing to do.")
    ids = record_ids(path)
    if not (ids == record_id).any():
        raise SiteError(f"Dataset {dataset} has no record {record_id}: record ids are the row "
                        f"numbers of the uploaded file, 0 to {int(ids.max()) if len(ids) else -1}.")
    return record_id, None


def forget(site, dataset: str, record=None, data_only: bool = False, *,
           row: int | None = None) -> dict:
    """Remove a record from ``dataset`` and update the models trained on it. ``record``: its
    patient id on a dataset uploaded with an id column, else its row number; ``row``: its row
    number in any case (:func:`resolve_record`)."""
    found = site.state.dataset(dataset)
    if found is None:
        raise SiteError(f"No dataset {dataset!r} on {site.name}; known: "
                        f"{', '.join(site.state.dataset_names()) or 'none'}.")
    path = found["path"]
    record_id, patient_id, affected, stale = _affected(site, dataset, path, record, row,
                                                       data_only)
    ids = record_ids(path)
    current = [m for m in affected if m["request_id"] not in stale]
    data, meta = read_private(path) if current else (None, None)
    # every update computed before anything changes; each is one touch of the private data
    updates = {m["request_id"]: execute_once(
        site.state, f"{m['request_id']}:v{m['version'] + 1}", dataset,
        lambda m=m: _update(site, m, record_id, ids, data, meta)) for m in current}

    meta = delete_records(path, [record_id])
    site.state.update_dataset_meta(dataset, meta.to_json())  # n_records prices later jobs
    site.ledger.log("forget", None, {"dataset": dataset, "record": record_id,
                                     "models": [m["request_id"] for m in affected]})
    report = {"dataset": dataset, "record": record_id, "patient_id": patient_id, "models": [],
              "dp_models": _dp_models(site, dataset)}
    for m in affected:
        rid = m["request_id"]
        report["models"].append(_withdraw_stale(site, m, stale[rid]) if rid in stale else
                                _release_update(site, m, record_id, *updates[rid]))
    return report


def _affected(site, dataset: str, path, record, row, data_only: bool) -> tuple:
    """(record id, patient id, the active removal-enabled models trained on the record, and
    {model: why it cannot be updated} for those trained on stale features); SiteError when
    the record is unknown, or nothing would be updated and not ``data_only``."""
    record_id, patient_id = resolve_record(path, dataset, record, row)
    models = [m for m in site.state.models_for(dataset) if m["status"] == "active"]
    if not models and not data_only:
        raise SiteError(
            f"Dataset {dataset} has no released removal-enabled model, so there is nothing to "
            "update. To remove the record from the data only, run again with --data-only. "
            f"{_dp_models_note(site, dataset)}")
    affected = [m for m in models if record_id in json.loads(m["record_ids_json"])]
    # a model trained on an earlier version of its backbone's features cannot be updated
    stale = {m["request_id"]: why for m in affected if (why := _stale_features(m))}
    return record_id, patient_id, affected, stale


def forget_plan(site, dataset: str, record=None, data_only: bool = False, *,
                row: int | None = None) -> dict:
    """What :func:`forget` would do, changing nothing: the record, and for every model that
    saw it what happens to it (``updated``: certified update and a fresh DP release, or
    withdrawn if a budget cannot pay; ``withdrawn``: stale features; ``dp_only``: a plain DP
    model, unchanged, covered by its guarantee). Same checks and errors as :func:`forget`."""
    found = site.state.dataset(dataset)
    if found is None:
        raise SiteError(f"No dataset {dataset!r} on {site.name}; known: "
                        f"{', '.join(site.state.dataset_names()) or 'none'}.")
    record_id, patient_id, affected, stale = _affected(site, dataset, found["path"], record,
                                                       row, data_only)
    models = []
    for m in affected:
        rid = m["request_id"]
        if rid in stale:
            models.append({"request": rid, "researcher": m["researcher"], "action": "withdrawn",
                           "why": f"trained on stale features ({stale[rid]}): no certified "
                                  "update is possible"})
        else:
            models.append({"request": rid, "researcher": m["researcher"], "action": "updated",
                           "why": "certified removal step on the owner's copy (retrained with "
                                  "fresh noise once its residual budget is used up) and a fresh "
                                  "DP release sent to the researcher; withdrawn instead if a "
                                  "budget cannot pay for that release"})
    dp = [{"request": d["request"], "researcher": d["researcher"], "action": "dp_only",
           "why": d["guarantee"]} for d in _dp_models(site, dataset)]
    return {"dataset": dataset, "record": record_id, "patient_id": patient_id,
            "models": models, "dp_models": dp}


def _stale_features(m: dict) -> str | None:
    """Why model ``m``'s features cannot be recomputed as it was trained on them, or None."""
    from shared.removal import features

    return features.stale_features(json.loads(m["model_json"]).get("feature_pipeline"))


def _update(site, m: dict, record_id: int, ids: np.ndarray, data, meta):
    """(owner copy, released model, owner certificate) of one model without ``record_id``;
    changes nothing."""
    import hashlib

    from shared.removal import RemovableModel, job_features
    from shared.jobs import n_train_records, spec_from_dict

    spec = spec_from_dict(json.loads(m["spec_json"]))
    extractor = None
    if spec.extractor:
        import pickle

        with open(site.state.request(spec.extractor)["result_path"], "rb") as f:
            extractor = pickle.load(f)
    model = RemovableModel.from_dict(json.loads(m["model_json"]))
    X, y, _, _ = job_features(spec, data, meta, extractor, model.feature_pipeline)
    m_ids = np.asarray(json.loads(m["record_ids_json"]), dtype=np.int64)
    pos = np.searchsorted(ids, m_ids) if np.all(np.diff(ids) > 0) else \
        np.array([int(np.flatnonzero(ids == i)[0]) for i in m_ids])
    # the stream names this release (model, version) for tests that pin the randomness
    stream = (int(hashlib.sha256(m["request_id"].encode()).hexdigest()[:12], 16), m["version"] + 1)
    # the planned (public) training count once the record is gone, never the realised one:
    # each record's side of the split is its own (shared.training.split.split_indices)
    n_reg = n_train_records(meta.n_records - 1, spec.test_fraction)
    owner_copy, released, cert = updated_models(
        model, X[pos], y[pos], int(np.flatnonzero(m_ids == record_id)[0]), stream, n_reg)
    event = update_event(spec, released.reg_count, model.n_models)
    cert["copy"] = "owner"  # this certificate is about the datasite's own copy
    cert["covers"] = "the datasite's own copy (never sent): " + cert["covers"]
    cert["training_epsilon"] = event.epsilon
    return owner_copy, released, cert


def release_certificate(spec, released, owner_cert: dict) -> dict:
    """What the researcher is told about an update: that it is a fresh DP release, and what the
    owner's Newton certificate covers. No residual numbers: they depend on the records."""
    fs = dict(released.feature_source)
    covers = (f"the released weights are a fresh DP release: objective perturbation trained on "
              f"the remaining records (regulariser at the planned count {released.reg_count}) "
              "with a fresh perturbation, independent "
              f"of every earlier version given the data; (eps={owner_cert['training_epsilon']:.3g}"
              f", delta={spec.delta:g})-DP for the remaining records, and independent of the "
              "removed ones")
    if fs.get("kind") == "dp_extractor":
        covers += (f"; the feature extractor was trained with DP (eps={fs.get('epsilon')}, "
                   f"delta={fs.get('delta')}) and still holds the removed records' influence, "
                   "bounded only by that guarantee")
    return {"release": "fresh_objective_perturbation", "covers": covers,
            "training_epsilon": owner_cert["training_epsilon"], "delta": spec.delta,
            "n_train": int(released.reg_count), "n_removed_total": int(released.n_removed),
            "feature_source": fs,
            "owner_copy": (f"the datasite's own copy was updated by a certified Newton removal "
                           f"step (Guo et al. 2020): (eps={owner_cert['eps']:g}, "
                           f"delta={owner_cert['delta']:g})-indistinguishable from a retraining "
                           "without the removed records; it is never sent")}


def _shortfall(site, dataset: str, researcher: str, event_json: str) -> tuple[str, str]:
    """(which budget cannot pay for ``event_json``, and whether in "epsilon" or "delta")."""
    q = site.ledger.quote(dataset, researcher, event_json)
    for who, after, budget in (("the dataset's", q["dataset_after"], q["dataset_budget"]),
                               (f"{researcher}'s", q["researcher_after"], q["researcher_budget"])):
        if budget is None or after <= budget + 1e-9:
            continue
        if math.isinf(after):  # the releases' deltas alone exceed the budget's delta
            return (f"{who} delta on {dataset} is used up: with it the releases would need "
                    f"delta > {q['delta']:g} (every release adds its own delta)"), "delta"
        return f"{who} epsilon on {dataset} would reach {after:.3f} > budget {budget:g}", "epsilon"
    return "the ledger refused it", ""


def _release_update(site, m: dict, record_id: int, owner_copy, released, cert: dict) -> dict:
    """Price the update in the ledger, record the certificates, and tell the researcher."""
    from shared.privacy.accounting import event_to_json
    from shared.jobs import spec_from_dict

    from .ledger import LedgerError

    spec = spec_from_dict(json.loads(m["spec_json"]))
    version = m["version"] + 1
    event_json = event_to_json(update_event(spec, released.reg_count, released.n_models))
    entry_id = f"{m['request_id']}:v{version}"
    m_ids = [i for i in json.loads(m["record_ids_json"]) if i != record_id]
    public_cert = release_certificate(spec, released, cert)
    out = {"request": m["request_id"], "researcher": m["researcher"], "version": version,
           "certificate": cert, "released": public_cert}
    # the owner's copy loses the record either way: it is certified, and never sent
    site.state.update_model(m["request_id"], version=version, model_json=owner_copy.to_json(),
                            record_ids_json=json.dumps(m_ids))
    try:
        site.ledger.reserve(entry_id, m["dataset"], m["researcher"], event_json)
    except LedgerError:
        why, _ = _shortfall(site, m["dataset"], m["researcher"], event_json)
        return _withdraw(site, m, out, (
            f"the update could not be paid for: {why}. `datasite review` shows before "
            "training how many forgets the budgets can pay for"),
            {k: public_cert[k] for k in ("owner_copy", "n_removed_total", "feature_source")})
    site.ledger.start(entry_id)
    site.ledger.commit(entry_id, event_json)
    site.ledger.released(entry_id)
    out.update(status="updated", ledger_entry=entry_id)
    site.ledger.log("removal_certificate", m["request_id"], out)
    _notify(site, m, {**_public(out), **_released_model(spec, released)})
    site.publish_budgets([m["researcher"]])
    return out


def _withdraw_stale(site, m: dict, why: str) -> dict:
    """Withdraw model ``m``, trained on features its backbone no longer computes (``why``): no
    removal step is taken, as none could be certified."""
    version = m["version"] + 1
    model = json.loads(m["model_json"])
    site.state.update_model(m["request_id"], version=version)
    owner = ("the datasite's own copy was not updated either (a removal step on today's features "
             "would not certifiably remove the record from what the model learned); it is kept "
             "withdrawn, never sent")
    out = {"request": m["request_id"], "researcher": m["researcher"], "version": version,
           "certificate": {"copy": "owner", "withdrawn": True, "covers": "nothing: " + owner}}
    return _withdraw(site, m, out, (
        f"the model was trained on features of an earlier version of its backbone ({why}), so "
        "an update cannot be certified. Retrain it: submit the job again"),
        {"owner_copy": owner, "feature_source": model.get("feature_source")})


def _withdraw(site, m: dict, out: dict, reason: str, public: dict) -> dict:
    """Withdraw model ``m`` instead of sending an update: mark it, log ``out`` (the owner's
    report) with ``reason``, and tell the researcher that no weights were sent, why, and
    ``public`` (facts that depend on no record)."""
    site.state.update_model(m["request_id"], status="withdrawn", reason=reason)
    out.update(status="withdrawn", reason=reason)
    site.ledger.log("removal_certificate", m["request_id"], out)
    note = {k: v for k, v in out.items() if k not in ("certificate", "released")}
    _notify(site, m, {**note, "certificate": {
        "withdrawn": True, "covers": "no weights were sent: the model is withdrawn", **public}})
    return out


def _public(out: dict) -> dict:
    """The researcher's view of an update report: the release certificate, not the owner's."""
    pub = {k: v for k, v in out.items() if k not in ("certificate", "released")}
    pub["certificate"] = out["released"]
    return pub


def _released_model(spec, model) -> dict:
    """The updated model in the form the researcher's original result had."""
    import base64

    out = {"removable_model": model.public_dict()}
    cols = model.feature_pipeline.get("feature_columns") if model.feature_pipeline else None
    if cols:
        from shared.removal import table_model_state

        state, config = table_model_state(model, cols, model.feature_pipeline)
        out.update(model_state=base64.b64encode(state).decode("ascii"), model_config=config)
    return out


def _notify(site, m: dict, payload: dict) -> None:
    key = site.state.researcher_keys().get(m["researcher"])
    if key is None:
        return
    from syft.server.credentials import SyftVerifyKey
    from syft.service.notification.notifications import CreateNotification

    from shared.protocol import encode_model_update

    site.client.api.services.notifications.send(notification=CreateNotification(
        subject=encode_model_update(payload),
        to_user_verify_key=SyftVerifyKey.from_string(key),
        from_user_verify_key=site.client.verify_key))


def _dp_models(site, dataset: str) -> list[dict]:
    """Released plain DP models on ``dataset``: they cannot be updated; their guarantee bounds
    what they reveal about the removed record."""
    out = []
    removal = {m["request_id"] for m in site.state.models_for(dataset)}
    budget = site.ledger.budget(dataset)  # none: nothing was ever released on it
    for e in site.ledger.history(dataset):
        if e["state"] != "released" or e["request_id"] in removal or ":v" in e["request_id"]:
            continue
        out.append({"request": e["request_id"], "researcher": e["researcher"],
                    "epsilon": e["epsilon"],
                    "guarantee": f"(eps={e['epsilon']:.3g}, delta={budget['delta']:g})"
                                 "-DP: any test telling whether the record was in its training "
                                 "data is bounded by this; the model is not changed"})
    return out


def _dp_models_note(site, dataset: str) -> str:
    dp = _dp_models(site, dataset)
    if not dp:
        return "No model trained on it was released."
    return (f"{len(dp)} released DP model(s) cannot be updated; their guarantees bound what they "
            "reveal about the record: " + "; ".join(f"{d['request'][:8]} eps={d['epsilon']:.3g}"
                                                   for d in dp))
