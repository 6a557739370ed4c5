"""Connecting to a datasite and browsing its datasets (mock data and metadata only)."""
from __future__ import annotations

import csv
import json
import urllib.request
import warnings

from shared.display import escape
from shared.data import DatasetMeta, parse_published
from shared.pretrained.info import BackboneInfo, parse_catalogue
from shared.protocol import AUDIT_HEAD_KEY, decode_budget_note

from .errors import ConnectError, ResearcherError


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v2/metadata", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def connect(url: str, email: str, password: str) -> "Site":
    """Log in to a datasite as a researcher."""
    if not _reachable(url):
        raise ConnectError(f"No datasite answers at {url}. Check the address, or ask the data "
                           "owner to start it (`datasite up NAME`).")
    import syft as sy
    from syft.client.client import HTTPConnection

    from shared.per_thread import kept

    try:
        # the server checks the password every time (a changed one fails as a fresh login
        # would); a thread that logged in to this account already gets its client again,
        # without a new client API (about 1 s)
        key = HTTPConnection(url=url).login(email=email, password=password)
        client = kept(("syft client", url, str(key.signing_key.verify_key)),
                      lambda: sy.login(url=url, email=email, password=password, cache=False))
    except Exception as e:  # syft raises SyftException with a generic text
        raise ConnectError(f"Login to {url} as {email} failed: wrong email or password? "
                           f"({str(e).strip().splitlines()[-1][:200]})") from None
    if isinstance(client, sy.SyftError):
        raise ConnectError(f"Login to {url} as {email} failed: {client.message}")
    return Site(url, email, client)


class RemoteDataset:
    """A dataset as a researcher sees it: metadata and mock data; the real data stays home."""

    def __init__(self, meta: DatasetMeta, asset, budget: dict | None = None):
        self.meta = meta
        self._asset = asset
        self.budget = budget  # eps left to the dataset and to you, as the owner last told you

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def mock(self):
        return self._asset.mock

    def save_mock_csv(self, path) -> None:
        """Write a table dataset's mock to a CSV file that is safe to open in a spreadsheet.

        Column names come from the data owner; any that a spreadsheet would run as a formula
        (starting with = + - @, tab or CR) are written with a leading single quote.
        """
        from shared.data import TABLE, csv_safe_frame

        if self.meta.kind != TABLE:
            raise ResearcherError(f"{self.name} is an image dataset; only table mocks are "
                                  "written as CSV (use .mock['images'] and .mock['labels']).")
        # text cells quoted: pandas leaves a bare CR unquoted, which would split the row
        csv_safe_frame(self.mock).to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)

    def __repr__(self) -> str:
        m = self.meta
        shape = m.image_shape if m.image_shape else f"{len(m.features)} features"
        b = self.budget or {}
        left = (f", eps left: {b['researcher_left']:.2f} for you" if b.get("researcher_left")
                is not None else "") + (f", {b['dataset_left']:.2f} for the dataset"
                                       if b.get("dataset_left") is not None else "") + (
            ", the dataset's budget is spent" if b.get("dataset_can_pay") is False else "")
        return escape(f"<dataset {m.name}: {m.kind}, {m.n_records} records, {shape}, "
                      f"labels {m.labels}{left}>", 1000)


class DatasetCatalog(dict):
    def __missing__(self, key):
        raise ResearcherError(f"No dataset {key!r} on this datasite; available: {sorted(self)}.")

    def __repr__(self) -> str:
        return "\n".join(repr(v) for v in self.values()) or "<no datasets>"


class ModelCatalog(dict):
    """The backbones a datasite's owner registered: name -> public facts (no weights)."""

    def __missing__(self, key):
        raise ResearcherError(f"No model {key!r} registered on this datasite; registered: "
                              f"{sorted(self) or 'none'} (the data owner adds them with "
                              "`datasite models add`).")

    def __repr__(self) -> str:
        return "\n".join(escape(repr(v), 1000) for v in self.values()) or "<no models>"


def public_description(url: str) -> str:
    """The server's public description, read now (``/api/v2/metadata``, no login)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v2/metadata", timeout=10) as r:
            return str(json.loads(r.read().decode()).get("description") or "")
    except (OSError, ValueError) as e:
        raise ConnectError(f"Could not read the datasite's metadata at {url}: {e}") from None


def _plausible(info: BackboneInfo) -> bool:
    """The catalogue is the owner's text: entries of the wrong types are left out."""
    ints = (info.input_size, info.n_params, info.feature_dim)
    return (all(isinstance(v, str) and v for v in (info.name, info.arch, info.source))
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ints)
            and isinstance(info.sha256, str) and len(info.sha256) == 64
            and all(c in "0123456789abcdef" for c in info.sha256)
            and all(isinstance(v, list) and len(v) == 3
                    and all(isinstance(x, (int, float)) and x == x for x in v)
                    for v in (info.mean, info.std)) and all(x > 0 for x in info.std))


def read_models(url: str, site_name: str = "this datasite") -> ModelCatalog:
    """The model catalogue the datasite at ``url`` publishes in its description."""
    out = ModelCatalog()
    try:
        infos = parse_catalogue(public_description(url))
    except (ValueError, TypeError, AttributeError) as e:
        warnings.warn(f"The model catalogue of {site_name} cannot be read ({type(e).__name__}: "
                      f"{str(e)[:200]}); ask the data owner to register the models again.",
                      stacklevel=3)
        return out
    for info in infos:
        if _plausible(info):
            out[info.name] = info
        else:
            warnings.warn(f"A model in the catalogue of {site_name} is malformed and left out: "
                          f"{escape(str(info.to_dict()), 300)}", stacklevel=3)
    return out


class Site:
    """A logged-in researcher's view of one datasite."""

    def __init__(self, url: str, email: str, client):
        self.url = url
        self.email = email
        self.client = client
        self._heads: list[dict] = []  # signed audit heads seen so far (audit_head)

    @property
    def name(self) -> str:
        return self.client.name

    def _budget_notes(self) -> list[dict]:
        notes = sorted(self.client.api.services.notifications.get_all(),
                       key=lambda n: n.created_at)
        return [note for note in (decode_budget_note(n.subject) for n in notes) if note]

    def budgets(self) -> dict:
        """Your privacy budget per dataset: the latest figures the owner sent you."""
        notes = self._budget_notes()
        return {k: v for k, v in notes[-1].items() if k != AUDIT_HEAD_KEY} if notes else {}

    def audit_head(self, store: str | None = None) -> dict | None:
        """The site's latest signed audit head, checked against every head seen before.

        Heads come with each budget note (and each released result). Each must be signed by
        the site's server key and extend the earlier ones (shared.audit_chain.check_head): a
        rewritten or truncated ledger history raises :class:`AuditMismatch`. ``store``: a JSON
        file keeping the heads you saw across sessions (the site's database could drop notes).
        """
        from .audit import check_and_remember

        heads = [n[AUDIT_HEAD_KEY] for n in self._budget_notes() if n.get(AUDIT_HEAD_KEY)]
        return check_and_remember(self._heads, heads, str(self.client.metadata.verify_key),
                                  store)

    @property
    def datasets(self) -> DatasetCatalog:
        return self._catalog(self.budgets())

    def _catalog(self, budgets: dict) -> DatasetCatalog:
        """The published datasets, each with its budget from ``budgets``."""
        out = DatasetCatalog()
        for ds in self.client.datasets.get_all():
            try:
                meta = parse_published(ds.description.text if hasattr(ds.description, "text")
                                       else str(ds.description))
            except (ValueError, TypeError) as e:  # one unreadable dataset must not hide the rest
                warnings.warn(f"Dataset {ds.name!r} on {self.name}: its published metadata cannot "
                              f"be read ({type(e).__name__}: {str(e)[:200]}); it is left out. "
                              "Ask the data owner to re-publish it with the current dp-datasite.",
                              stacklevel=2)
                continue
            if meta is None:
                continue  # not published by dp-datasite
            out[ds.name] = RemoteDataset(meta, ds.assets[0], budgets.get(ds.name))
        return out

    @property
    def models(self) -> ModelCatalog:
        """The pretrained backbones the owner registered for fine-tuning (``jobs.FineTune``):
        name -> public facts (architecture, input size, parameters, where the weights came
        from, their sha256), read fresh from the server. The weights stay with the owner."""
        return read_models(self.url, self.name)

    def submit(self, job) -> "JobRequest":
        from .requests import submit

        return submit(self, job)

    def request(self, request_id: str) -> "JobRequest":
        from .requests import JobRequest

        return JobRequest.find(self, request_id)

    def __repr__(self) -> str:
        return f"<datasite {escape(str(self.name))} at {escape(self.url)} as {escape(self.email)}>"
