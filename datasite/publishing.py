"""Importing datasets and publishing their metadata and mocks on the low side.

A part of :class:`datasite.owner.OwnerSite` (which holds ``home``, ``config``, ``state``,
``ledger`` and ``client``); its methods are called on the site."""
from __future__ import annotations

import sys

from shared.data import DatasetMeta, published_description

from .config import SiteError
from .storage import remove_private, write_private



class DatasetsMixin:
    """Datasets: import, check against the schema, publish metadata and mock."""

    def upload(self, dataset: str, *, table: str | None = None, label: str | None = None,
               images: str | None = None, labels: str | None = None, npz: str | None = None,
               schema=None, mock: str = "synthetic", description: str = "", seed: int = 0,
               budget_epsilon: float | None = None, delta: float | None = None) -> DatasetMeta:
        """Import real data, check it against the owner's public ``schema`` (a YAML path or a
        dict), publish the metadata and mock built from the schema alone."""
        from .schema import SchemaError, prepare

        sources = [x for x in (table, images, npz) if x]
        if len(sources) != 1:
            raise SiteError("Give exactly one of --table FILE, --images DIR or --npz FILE.")
        if mock != "synthetic":
            raise SiteError(f"Unknown mock kind {mock!r}; the only one is 'synthetic'.")
        if (budget_epsilon is None) != (delta is None):
            raise SiteError("Give both --budget-eps and --delta (or neither, and set the budget "
                            "later with `datasite budget`).")
        if self.state.dataset(dataset) or dataset in self._server_dataset_names():
            raise SiteError(f"A dataset named {dataset!r} already exists on {self.name}; "
                            "choose another name.")
        if images and not labels:
            raise SiteError("An image folder needs --labels labels.csv (filename,label).")
        try:
            payload, meta, mock_payload, notes = prepare(
                dataset, schema, table=table, label=label, images=images, labels=labels,
                npz=npz, description=description, seed=seed)
        except SchemaError as e:
            raise SiteError(str(e)) from None
        for note in notes:  # the owner's eyes only: counts about the records are never published
            print(f"note: {note}", file=sys.stderr)

        path = write_private(self.home.private, meta, payload)
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
        return meta

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

    def _unpublish(self, dataset: str) -> None:
        try:
            for d in self.client.datasets.get_all():
                if d.name == dataset:
                    self.client.api.services.dataset.delete(uid=d.id)
        except Exception:  # cleanup after a failure must not hide the original error
            pass

    def datasets(self) -> dict[str, DatasetMeta]:
        out = {}
        for name in self.state.dataset_names():
            out[name] = DatasetMeta.from_json(self.state.dataset(name)["meta_json"])
        return out
