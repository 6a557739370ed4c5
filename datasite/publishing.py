"""Datasets: importing them, publishing their metadata and mocks on the low side, replacing them
with a new version and deleting them.

A part of :class:`datasite.owner.OwnerSite` (which holds ``home``, ``config``, ``state``,
``ledger`` and ``client``); its methods are called on the site.

Versions (``upload --replace``): the new data is read and checked completely first; it is then
written under ``private/NAME.vK`` (K = 2, 3, ...) beside the old version, the published dataset
and the owner's row are switched over, and the old directory is removed -- unless a job started
on it meanwhile, in which case it is kept (the report names it) until the owner removes it or
``datasets delete`` does. The ledger is keyed by the dataset's name, so its budgets, entries
and spend carry over to the new version: the same patients are in it.

Patient ids (``id_column``): the table's id column is split off as the file is read
(:mod:`datasite.ingest_ids`); its ids are stored privately beside the records, each version
with its own map, and name the record to forget. They reach nothing published.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import sys
import tempfile
from pathlib import Path

from shared.data import DatasetMeta, published_description

from .config import SiteError
from .mock_release import build_mock, published, reserve_mock, settle
from .states import Request
from .storage import has_patient_ids, remove_private, removed_ids, write_private
from .upload_checks import check_inputs, check_options

# Requests that stop a dataset being replaced or deleted: their job reads the current version,
# or their release maps training rows to its record ids.
BUSY = (Request.RUNNING, Request.SERVING, Request.RAN)


class DatasetsMixin:
    """Datasets: import, check against the schema, publish metadata and mock; replace, delete."""

    def upload(self, dataset: str, *, table: str | None = None, label: str | None = None,
               images: str | None = None, labels: str | None = None, npz: str | None = None,
               schema=None, mock: str = "synthetic", description: str = "", seed: int = 0,
               budget_epsilon: float | None = None, delta: float | None = None,
               replace: bool = False, sep: str | None = None, decimal: str | None = None,
               encoding: str | None = None, sheet: str | None = None,
               id_column: str | None = None, mock_epsilon: float | None = None) -> DatasetMeta:
        """Import real data, check it against the owner's public ``schema`` (a YAML path or a
        dict), publish the metadata and mock built from the schema alone. ``replace``: a new
        version of an existing dataset (see :meth:`replace_dataset`). ``sep``, ``decimal``,
        ``encoding``, ``sheet``: how the table file is written (sniffed when not given).
        ``id_column``: the table's patient-id column, kept privately to name records at
        ``forget``; it is not a feature and never published (leave it out of the schema).
        ``mock``: ``synthetic`` (from the schema alone) or ``dp`` (a DP synthetic mock of the
        table, ``mock_epsilon`` charged to the dataset's budget: :mod:`datasite.mock_release`)."""
        return self._import(dataset, replace, schema=schema, mock=mock, mock_epsilon=mock_epsilon,
                             description=description,
                             seed=seed, budget_epsilon=budget_epsilon, delta=delta, table=table,
                             label=label, images=images, labels=labels, npz=npz, sep=sep,
                             decimal=decimal, encoding=encoding, sheet=sheet,
                             id_column=id_column)["meta"]

    def replace_dataset(self, dataset: str, **upload_args) -> dict:
        """A new version of ``dataset`` under the same name (``upload`` arguments). Nothing
        changes unless the new data passes every check; the ledger's spend carries over (same
        patients); record ids are the new file's row numbers (and patient ids, with
        ``id_column``, those of its id column), so released removal-enabled models of the old
        version are withdrawn. Returns what changed."""
        return self._import(dataset, True, **upload_args)

    def _import(self, dataset: str, replace: bool, *, schema=None, mock: str = "synthetic",
                mock_epsilon: float | None = None, description: str = "", seed: int = 0,
                budget_epsilon: float | None = None, delta: float | None = None,
                **sources) -> dict:
        check_options(sources.get("table"), sources.get("images"), sources.get("labels"),
                      sources.get("npz"), mock, budget_epsilon, delta,
                      id_column=sources.get("id_column"), label=sources.get("label"),
                      mock_epsilon=mock_epsilon)
        old = self.state.dataset(dataset)  # the owner's own tables: no login yet
        if replace:
            self._check_replaceable(dataset, old)
        elif old:
            raise SiteError(f"A dataset named {dataset!r} already exists on {self.name}; choose "
                            "another name, or upload a new version of it with --replace.")
        check_inputs(table=sources.get("table"), images=sources.get("images"),
                     labels=sources.get("labels"), npz=sources.get("npz"), schema=schema)
        payload, meta, mock_payload, ids = self._prepared(dataset, schema, description, seed,
                                                          sources)
        self._check_budget_fits(meta, budget_epsilon, delta)
        on_server = dataset in self._server_dataset_names()  # the first login
        if on_server and not replace:
            raise SiteError(f"A dataset named {dataset!r} is already published on {self.name}; "
                            "choose another name.")
        charge = None
        if mock == "dp":  # reserved before it is measured; settled once published (or not)
            charge, mock_payload = self._dp_mock(meta, payload, budget_epsilon, delta,
                                                 mock_epsilon)
        ok = False
        try:
            out = (self._swap(old, meta, payload, mock_payload, budget_epsilon, delta, ids)
                   if replace else self._add(meta, payload, mock_payload, ids, budget_epsilon,
                                             delta))
            ok = True
        finally:
            settle(self.ledger, charge, ok)
        if charge is not None:
            out["spent"] = self._spent(dataset)
        return out

    def _dp_mock(self, meta: DatasetMeta, payload, budget_epsilon: float | None,
                 delta: float | None, mock_epsilon: float):
        """Reserve a DP mock's cost against the dataset's budget (set first, when the upload
        gives one), then build it; the metadata says which mock it is."""
        if budget_epsilon is not None:
            self.ledger.set_budget(meta.name, budget_epsilon, delta)
        charge = reserve_mock(self.ledger, meta, mock_epsilon)
        try:
            mock = build_mock(charge, payload, meta, min(meta.n_records, 2000))
        except BaseException:
            settle(self.ledger, charge, False)
            raise
        meta.mock = published(charge)
        return charge, mock

    def _add(self, meta: DatasetMeta, payload, mock_payload, ids, budget_epsilon, delta) -> dict:
        """Write and publish a new dataset; on any failure, undo."""
        dataset = meta.name
        path = write_private(self.home.private, meta, payload, ids)
        try:
            self._publish(meta, mock_payload)
            self.state.add_dataset(dataset, meta.kind, meta.to_json(), str(path))
            if budget_epsilon is not None:
                self.set_budget(dataset, budget_epsilon, delta)
        except BaseException:
            self.state.remove_dataset(dataset)
            remove_private(path)
            self._unpublish(dataset)
            raise
        return {"meta": meta, "path": str(path), "spent": self._spent(dataset)}

    def _prepared(self, dataset: str, schema, description: str, seed: int, sources: dict):
        from .schema import SchemaError, prepare_upload

        try:
            up = prepare_upload(dataset, schema, description=description, seed=seed, **sources)
        except SchemaError as e:
            raise SiteError(str(e)) from None
        for note in up.notes:  # the owner's eyes only: counts about records are never published
            print(f"note: {note}", file=sys.stderr)
        return up.payload, up.meta, up.mock, up.ids

    def _check_budget_fits(self, meta: DatasetMeta, epsilon: float | None,
                           delta: float | None) -> None:
        """The budget's delta (given, or the ledger's for this name) must be below 1/n."""
        kept = self.ledger.budget(meta.name)
        if delta is None and kept is None:
            return
        d, n = (delta if delta is not None else kept["delta"]), meta.n_records
        if not (0 < d < 1.0 / n):
            where = "--delta" if delta is not None else f"the ledger's budget for {meta.name}"
            raise SiteError(f"delta={d:g} ({where}) is not below 1/n = {1.0 / n:.2g} for {n} "
                            "records: give a smaller --delta with --budget-eps.")

    def _spent(self, dataset: str) -> dict | None:
        """The ledger's spend on ``dataset`` so far (None: no budget under this name)."""
        if self.ledger.budget(dataset) is None:
            return None
        return {**self.ledger.spent(dataset), "budget": self.ledger.budget(dataset)["epsilon"]}

    # -- replacing -------------------------------------------------------------------------------
    def _check_replaceable(self, dataset: str, old: dict | None) -> None:
        if old is None:
            raise SiteError(f"No dataset {dataset!r} on {self.name} to replace; upload it "
                            "without --replace.")
        busy = self.state.requests_on(dataset, BUSY)
        if busy:
            raise SiteError(f"Cannot replace {dataset!r} yet: {_busy_text(busy)}. {_BUSY_HELP}")
        if self._record_level_charges(dataset):
            raise SiteError(
                f"Cannot replace {dataset!r}: its ledger charges single records (active-learning "
                "jobs), by record id, and the new version's record ids (its row numbers) would "
                "name other patients, so their spend could not follow them. Upload the new "
                "data as a new dataset with its own budget instead.")

    def _record_level_charges(self, dataset: str) -> bool:
        from sqlalchemy import select

        from .ledger_tables import charges, entries
        from .states import SPENDING

        q = (select(charges.c.request_id).join(entries, entries.c.request_id
                                               == charges.c.request_id)
             .where(entries.c.dataset == dataset, entries.c.state.in_(SPENDING),
                    charges.c.kind == "ids").limit(1))
        with self.ledger.engine.connect() as c:
            return c.execute(q).first() is not None

    def _swap(self, old: dict, meta: DatasetMeta, payload, mock_payload,
              budget_epsilon: float | None, delta: float | None, ids: list | None) -> dict:
        """Write the new version (with its own patient-id map) beside the old one, then switch
        the published dataset and the owner's row over; on any failure, undo back to the old
        version."""
        name = meta.name
        new_path = self._write_version(meta, payload, ids)
        old_meta = DatasetMeta.from_json(old["meta_json"])
        old_mock = self._published_mock(old_meta)
        published = False
        try:
            self._unpublish(name, strict=True)
            self._publish(meta, mock_payload)
            published = True
            self.state.replace_dataset(name, meta.kind, meta.to_json(), str(new_path))
        except BaseException:
            if published:
                self._unpublish(name)
            self._republish(old_meta, old_mock)
            remove_private(new_path)
            raise
        return self._after_swap(old, meta, new_path, budget_epsilon, delta)

    def _after_swap(self, old: dict, meta: DatasetMeta, new_path: Path,
                    budget_epsilon: float | None, delta: float | None) -> dict:
        name = meta.name
        self.state.forget_prices(name)  # priced for the old record count
        withdrawn = self._withdraw_models(
            name, "its dataset was replaced by a new version whose record ids name other "
                  "records: forget can no longer update it")
        forgotten = len(removed_ids(old["path"]))
        running = self.state.requests_on(name, (Request.RUNNING, Request.SERVING))
        kept = old["path"] if running else None  # a job started on it meanwhile
        if not running:
            self._remove_private_dir(old["path"])
        self.ledger.log("dataset_replaced", None, {
            "dataset": name, "kind": meta.kind, "n_records_before":
            DatasetMeta.from_json(old["meta_json"]).n_records, "n_records": meta.n_records,
            "version_dir": new_path.name, "withdrawn_models": [w["request"] for w in withdrawn],
            "old_version_kept": bool(kept)})
        if budget_epsilon is not None:
            self.set_budget(name, budget_epsilon, delta)
        return {"meta": meta, "path": str(new_path), "old_path_kept": kept,
                "withdrawn": withdrawn, "spent": self._spent(name),
                "forgotten_before": forgotten, "patient_ids": has_patient_ids(new_path)}

    def _write_version(self, meta: DatasetMeta, payload, ids: list | None = None) -> Path:
        root = self.home.private
        taken = [int(m.group(1)) for p in root.iterdir()
                 if (m := re.fullmatch(re.escape(meta.name) + r"\.v(\d+)", p.name))]
        final = root / f"{meta.name}.v{max(taken, default=1) + 1}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
        try:
            write_private(tmp, meta, payload, ids).rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _republish(self, meta: DatasetMeta, mock_payload) -> None:
        """Publish the old version again after a failed switch (best effort: the switch's own
        error is the one the owner must see)."""
        try:
            if mock_payload is not None and meta.name not in self._server_dataset_names():
                with _quietly():
                    self._publish(meta, mock_payload)
        except Exception as e:
            print(f"warning: could not publish the old version of {meta.name} again "
                  f"({type(e).__name__}: {e}); upload it again.", file=sys.stderr)

    def _published_mock(self, meta: DatasetMeta):
        """The old version's published mock, to publish again if the switch fails."""
        try:
            for d in self.client.datasets.get_all():
                if d.name == meta.name:
                    with _quietly():
                        return d.assets[0].mock
        except Exception:  # rebuilt below from the schema-derived metadata instead
            pass
        try:
            from .mock import synthetic_mock

            return synthetic_mock(meta, n=min(meta.n_records, 2000))
        except Exception:
            return None

    def _withdraw_models(self, dataset: str, reason: str) -> list[dict]:
        """Mark the dataset's active removal-enabled models withdrawn, with ``reason``."""
        out = []
        for m in self.state.models_for(dataset):
            if m["status"] != "active":
                continue
            self.state.update_model(m["request_id"], status="withdrawn", reason=reason)
            self.ledger.log("model_withdrawn", m["request_id"],
                            {"dataset": dataset, "researcher": m["researcher"], "reason": reason})
            out.append({"request": m["request_id"], "researcher": m["researcher"],
                        "reason": reason})
        return out

    # -- deleting --------------------------------------------------------------------------------
    def delete_dataset(self, dataset: str, force: bool = False) -> dict:
        """Remove ``dataset``: its published metadata and mock, the owner's row and every
        stored version of the real data. Refused while a request on it runs, serves or waits
        for release, or a removal-enabled model on it is active, unless ``force``. The ledger
        keeps its history and budgets (an audit entry records the deletion)."""
        row = self.state.dataset(dataset)
        if row is None and dataset not in self._server_dataset_names():
            names = ", ".join(self.state.dataset_names()) or "none"
            raise SiteError(f"No dataset {dataset!r} on {self.name} (it has: {names}).")
        busy = self.state.requests_on(dataset, BUSY)
        active = [m for m in self.state.models_for(dataset) if m["status"] == "active"]
        if (busy or active) and not force:
            what = [_busy_text(busy)] if busy else []
            if active:
                what.append(f"{len(active)} released removal-enabled model(s) "
                            f"({', '.join(m['request_id'][:8] for m in active)}) are still "
                            "updated by `datasite forget` and would be withdrawn")
            raise SiteError(f"Not deleting {dataset!r}: {'; '.join(what)}. {_BUSY_HELP} Or "
                            "delete it anyway with --force.")
        self._unpublish(dataset, strict=True)
        withdrawn = self._withdraw_models(dataset, "its dataset was deleted")
        self.state.remove_dataset(dataset)
        removed = self._remove_versions(dataset, row)
        self.state.forget_prices(dataset)
        self.ledger.log("dataset_deleted", None, {
            "dataset": dataset, "forced": bool(force and (busy or active)),
            "requests_busy": [r["request_id"] for r in busy],
            "withdrawn_models": [w["request"] for w in withdrawn], "versions_removed": removed})
        self.publish_budgets()  # the researchers' notes stop listing it
        return {"dataset": dataset, "withdrawn": withdrawn, "busy": busy,
                "versions_removed": removed, "spent": self._spent(dataset)}

    def _remove_versions(self, dataset: str, row: dict | None) -> int:
        root = self.home.private
        paths = [p for p in root.iterdir()
                 if re.fullmatch(re.escape(dataset) + r"(\.v\d+)?", p.name)]
        if row and Path(row["path"]) not in paths:
            paths.append(Path(row["path"]))
        return sum(self._remove_private_dir(p) for p in paths)

    def _remove_private_dir(self, path) -> bool:
        """Remove a dataset directory, only ever one inside the site's ``private/``."""
        p = Path(path)
        if p.parent.resolve() != self.home.private.resolve() or not p.is_dir():
            return False
        remove_private(p)
        return True

    # -- the low side ----------------------------------------------------------------------------
    def _server_dataset_names(self) -> list[str]:
        return [d.name for d in self.client.datasets.get_all()]

    def _publish(self, meta: DatasetMeta, mock_payload) -> None:
        import syft as sy

        ds = sy.Dataset(name=meta.name, summary=f"{meta.kind}, {meta.n_records} records",
                        description=published_description(meta))
        # The low side never holds real data: its "private" asset is the mock as well.
        ds.add_asset(sy.Asset(name=meta.name, data=mock_payload, mock=mock_payload))
        result = self.client.upload_dataset(ds)
        if isinstance(result, sy.SyftError):
            raise SiteError(f"Publishing {meta.name} failed: {result.message}")

    def _unpublish(self, dataset: str, strict: bool = False) -> None:
        """Remove ``dataset`` from the low side; ``strict``: say so if that fails (else the
        cleanup after another failure must not hide the original error)."""
        try:
            for d in self.client.datasets.get_all():
                if d.name == dataset:
                    res = self.client.api.services.dataset.delete(uid=d.id)
                    if type(res).__name__ == "SyftError":
                        raise SiteError(res.message)
        except Exception as e:
            if strict:
                raise SiteError(f"Could not remove {dataset!r} from the PySyft server "
                                f"({type(e).__name__}: {e}); nothing was changed.") from None

    def datasets(self) -> dict[str, DatasetMeta]:
        out = {}
        for name in self.state.dataset_names():
            out[name] = DatasetMeta.from_json(self.state.dataset(name)["meta_json"])
        return out


_BUSY_HELP = ("Wait for running jobs to finish, release or deny the requests that ran "
              "(`datasite release` / `datasite deny`) and stop serving schedules "
              "(`datasite stop`), then try again.")


def _busy_text(busy: list[dict]) -> str:
    many = len(busy) > 1
    listed = ", ".join(f"{r['request_id'][:8]} ({r['state']})" for r in busy)
    return f"request{'s' if many else ''} {listed} on it {'are' if many else 'is'} not finished"


def _quietly():
    """PySyft prints progress on stdout; the owner's stdout carries only results."""
    return contextlib.redirect_stdout(sys.stderr)
