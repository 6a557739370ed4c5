"""Honouring a patient's request to be forgotten (certified removal, ALGORITHMS.md section 4).

``datasite forget NAME DATASET --record ID`` removes the record from the real data for good, and
updates every released removal-enabled model trained on it with a Newton step (or a retrain with
fresh noise when the model's residual budget is used up). Each update gets a certificate in the
audit log and goes to the researcher who received the model, as a private notification
(``JobRequest.updates()``). Every update is itself a new release computed from the remaining
records, so it is priced in the ledger like any other release (see :func:`update_event`); if the
budget cannot pay for it, the model is withdrawn instead and the researcher is told to stop using
it. Plain DP models cannot be updated: they are listed with what their DP guarantee still says.

Record ids are the row numbers of the uploaded file (0-based); they do not shift when records are
removed. The mock is synthetic and holds no real record (checked at upload), so it needs no change.
"""
from __future__ import annotations

import json
import math

import numpy as np

from .config import SiteError
from .storage import delete_records, read_private, record_ids, removed_ids

REMOVAL_KIND = "removal_logreg"


def register_release(site, request_id: str, spec: dict, result: dict, researcher: str) -> None:
    """Remember a released removal-enabled model: its owner copy and the records it reflects."""
    path = site.state.dataset(spec["dataset"])["path"]
    ids = record_ids(path)[np.asarray(result["_owner_training_rows"], dtype=np.int64)]
    site.state.add_model(request_id, dataset=spec["dataset"], researcher=researcher,
                         spec_json=json.dumps(spec, sort_keys=True),
                         model_json=json.dumps(result["removable_model"]),
                         record_ids_json=json.dumps([int(i) for i in ids]))


def public_result(result: dict) -> dict:
    """What the researcher may receive: no ``_owner_*`` keys, no residual state."""
    from shared.removal import RemovableModel

    out = {k: v for k, v in result.items() if not k.startswith("_owner_")}
    if "removable_model" in out:
        out["removable_model"] = RemovableModel.from_dict(out["removable_model"]).public_dict()
    return out


def update_event(eps_train: float, delta_train: float, eps_rem: float, delta_rem: float):
    """The guarantee of an updated model for the *remaining* records.

    Certified removal makes the update (eps_rem, delta_rem)-indistinguishable from a fresh
    training without the removed records, which is (eps_train, delta_train)-DP; chaining
    update(D) ~ fresh(D - x) ~ fresh(D' - x) ~ update(D') gives
    (eps_train + 2 eps_rem, delta_rem + e^eps_rem delta_train + e^(eps_rem + eps_train) delta_rem).
    """
    from shared.accounting import approx_dp_event

    delta = (delta_rem + math.exp(eps_rem) * delta_train
             + math.exp(eps_rem + eps_train) * delta_rem)
    return approx_dp_event(eps_train + 2 * eps_rem, min(delta, 0.999))


def forget(site, dataset: str, record_id: int, data_only: bool = False) -> dict:
    """Remove record ``record_id`` from ``dataset`` and update the models trained on it."""
    row = site.state.dataset(dataset)
    if row is None:
        raise SiteError(f"No dataset {dataset!r} on {site.name}; known: "
                        f"{', '.join(site.state.dataset_names()) or 'none'}.")
    path = row["path"]
    record_id = int(record_id)
    if record_id in removed_ids(path):
        raise SiteError(f"Record {record_id} was already removed from {dataset}; nothing to do.")
    ids = record_ids(path)
    where = np.flatnonzero(ids == record_id)
    if len(where) != 1:
        raise SiteError(f"Dataset {dataset} has no record {record_id}: record ids are the row "
                        f"numbers of the uploaded file, 0 to {int(ids.max()) if len(ids) else -1}.")
    models = [m for m in site.state.models_for(dataset) if m["status"] == "active"]
    if not models and not data_only:
        raise SiteError(
            f"Dataset {dataset} has no released removal-enabled model, so there is nothing to "
            "update. To remove the record from the data only, run again with --data-only. "
            f"{_dp_models_note(site, dataset)}")
    affected = [m for m in models if record_id in json.loads(m["record_ids_json"])]
    data, meta = read_private(path) if affected else (None, None)
    # every update computed before anything changes
    updates = [_update(site, m, record_id, ids, data, meta) for m in affected]

    meta = delete_records(path, [record_id])
    site.state.update_dataset_meta(dataset, meta.to_json())  # n_records prices later jobs
    site.ledger.record("forget", None, {"dataset": dataset, "record": record_id,
                                        "models": [m["request_id"] for m in affected]})
    report = {"dataset": dataset, "record": record_id, "models": [],
              "dp_models": _dp_models(site, dataset)}
    for m, (new_model, cert) in zip(affected, updates):
        report["models"].append(_release_update(site, m, record_id, new_model, cert))
    return report


def _update(site, m: dict, record_id: int, ids: np.ndarray, data, meta):
    """The Newton update (or retrain) of one model without ``record_id``; changes nothing."""
    from shared.removal import RemovableModel, job_features, remove, training_epsilon
    from shared.specs import spec_from_dict

    spec = spec_from_dict(json.loads(m["spec_json"]))
    extractor = None
    if spec.extractor:
        import pickle

        with open(site.state.request(spec.extractor)["result_path"], "rb") as f:
            extractor = pickle.load(f)
    X, y, _, _ = job_features(spec, data, meta, extractor)
    m_ids = np.asarray(json.loads(m["record_ids_json"]), dtype=np.int64)
    pos = np.searchsorted(ids, m_ids) if np.all(np.diff(ids) > 0) else \
        np.array([int(np.flatnonzero(ids == i)[0]) for i in m_ids])
    model = RemovableModel.from_dict(json.loads(m["model_json"]))
    new_model, cert = remove(model, X[pos], y[pos], [int(np.flatnonzero(m_ids == record_id)[0])])
    n_models = 1 if len(model.classes) == 2 else len(model.classes)
    eps_t = training_epsilon(spec.lam, spec.perturbation, new_model.n_train, spec.delta, n_models)
    cert["training_epsilon"] = eps_t
    return new_model, cert


def _release_update(site, m: dict, record_id: int, new_model, cert: dict) -> dict:
    """Price the update in the ledger, record the certificate, and tell the researcher."""
    from shared.accounting import approx_dp_event, event_to_json
    from shared.specs import spec_from_dict

    from .ledger import LedgerError

    spec = spec_from_dict(json.loads(m["spec_json"]))
    version = m["version"] + 1
    if cert["retrained"]:
        event = approx_dp_event(cert["training_epsilon"], spec.delta)
    else:
        event = update_event(cert["training_epsilon"], spec.delta, new_model.eps, new_model.delta)
    entry_id = f"{m['request_id']}:v{version}"
    m_ids = [i for i in json.loads(m["record_ids_json"]) if i != record_id]
    out = {"request": m["request_id"], "researcher": m["researcher"], "version": version,
           "certificate": cert}
    try:
        site.ledger.reserve(entry_id, m["dataset"], m["researcher"], event_to_json(event))
    except LedgerError as e:
        site.state.update_model(m["request_id"], status="withdrawn", version=version,
                                record_ids_json=json.dumps(m_ids))
        out.update(status="withdrawn", reason=f"the update could not be paid for: {e}")
        site.ledger.record("removal_certificate", m["request_id"], out)
        _notify(site, m, {**out, "certificate": cert})
        return out
    site.ledger.start(entry_id)
    site.ledger.commit(entry_id, event_to_json(event))
    site.ledger.released(entry_id)
    site.state.update_model(m["request_id"], version=version, model_json=new_model.to_json(),
                            record_ids_json=json.dumps(m_ids))
    out.update(status="updated", ledger_entry=entry_id)
    site.ledger.record("removal_certificate", m["request_id"], out)
    _notify(site, m, {**out, **_released_model(spec, new_model)})
    site.publish_budgets([m["researcher"]])
    return out


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
    from syft.server.credentials import SyftVerifyKey
    from syft.service.notification.notifications import CreateNotification

    from shared.data import MODEL_UPDATE_PREFIX

    key = site.state.researcher_keys().get(m["researcher"])
    if key is None:
        return
    site.client.api.services.notifications.send(notification=CreateNotification(
        subject=MODEL_UPDATE_PREFIX + json.dumps(payload, sort_keys=True, default=float),
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
