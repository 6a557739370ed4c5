"""The data owner's operations, as a Python API (the CLI is a thin layer over this).

The PySyft server is the *low side*: mock data, users, code requests. The owner's process is
the *high side*: real data on disk, the trusted job runner, the record of every execution.
A request moves: pending (on the server) -> running -> ran -> released | denied (| failed).

:class:`OwnerSite` is a facade: each group of operations lives in its own module, as a mixin
over the site's ``home``, ``config``, ``state``, ``ledger`` and ``client``:
:mod:`.publishing` (datasets), :mod:`.users`, :mod:`.budgets`, :mod:`.review` (reading and
pricing requests), :mod:`.run_once` (running a job once), :mod:`.decisions` (release, deny,
stop, forget, audit) and :mod:`.models` (the pretrained backbones fine-tuning jobs start from).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from . import lifecycle
from .budgets import BudgetsMixin
from .config import SiteError, SiteHome, open_site
from .decisions import DecisionsMixin
from .ledger import Ledger
from .models import ModelsMixin
from .publishing import DatasetsMixin
from .review import ReviewMixin
from .run_once import RunMixin
from .state import open_state
from .users import UsersMixin, login


class OwnerSite(DatasetsMixin, UsersMixin, BudgetsMixin, ReviewMixin, RunMixin, DecisionsMixin,
                ModelsMixin):
    """One datasite, seen by its owner."""

    def __init__(self, site: SiteHome):
        self.home = site
        self.config = site.load()
        self.state = open_state(site)
        self.ledger = Ledger(self.state)
        self._client = None
        # Jobs run in the foreground fork from this process's warm fork server
        # (datasite.execution): a one-shot command sets False, a fresh subprocess being cheaper
        # than a fork server's imports when only one job will run.
        self.warm_jobs = True

    @classmethod
    def open(cls, name: str, home: Path | None = None) -> "OwnerSite":
        return cls(open_site(name, home))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def url(self) -> str:
        return lifecycle.url_for(self.config.port)

    def up(self, port: int | None = None) -> str:
        url = lifecycle.up(self.home, port=port)
        self.config = self.home.load()
        return url

    def down(self) -> bool:
        self._client = None
        return lifecycle.down(self.home)

    @property
    def client(self):
        """Root client of the low side (logs in on first use)."""
        if self._client is None:
            if not lifecycle.is_healthy(self.url):
                raise SiteError(f"Datasite {self.name} is not running at {self.url}; "
                                f"start it with `datasite up {self.name}`.")
            with contextlib.redirect_stdout(sys.stderr):  # keep the owner's stdout for results
                self._client = login(self.url, self.config.root_email,
                                     self.home.root_password())
        return self._client
