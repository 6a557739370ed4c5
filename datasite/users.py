"""Registering researchers: the identity (verify key) every budget and request is bound to.

A part of :class:`datasite.owner.OwnerSite` (which holds ``home``, ``config``, ``state``,
``ledger`` and ``client``); its methods are called on the site."""
from __future__ import annotations

import math
import re
import sys

from shared.per_thread import kept

from .config import SiteError

_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.-]{1,189}")


def verify_key_of(url: str, email: str, password: str) -> str:
    """The verify key of the account ``email`` at ``url`` (hex), from PySyft's password
    exchange alone, on a connection of its own; PySyft's error if the password is wrong."""
    from syft.client.client import HTTPConnection

    key = HTTPConnection(url=url).login(email=email, password=password)
    if key is None or not hasattr(key, "signing_key"):
        raise SiteError(f"Could not log in as {email} at {url}: {key}")
    return str(key.signing_key.verify_key)


def login(url: str, email: str, password: str):
    """A PySyft client of ``email`` at ``url``. The password is checked by the server every
    time (:func:`verify_key_of`: a wrong or changed password fails as a fresh login would);
    a thread that already logged in to that account gets its client again
    (:mod:`shared.per_thread`), without a new client API."""
    import syft as sy

    return kept(("syft client", url, verify_key_of(url, email, password)),
                lambda: sy.login(url=url, email=email, password=password, cache=False))


class UsersMixin:
    """Researchers' accounts, bound to the verify key recorded at registration."""

    def add_user(self, email: str, password: str, name: str | None = None,
                 institution: str = "", dataset: str | None = None,
                 budget_epsilon: float | None = None) -> None:
        """Register a researcher (and, with ``dataset``, their budget on it), all or nothing:
        every precondition is checked before the PySyft account exists, and a later failure
        deletes the account again, so the same command can simply be run again."""
        email = email.strip().lower()  # one identity per address, whatever its case
        self.check_new_user(email, password, dataset, budget_epsilon)
        existing = {str(u.email).lower() for u in self.client.users.get_all()}
        if email in existing or email in self.state.researcher_keys():
            raise SiteError(f"{email} is already registered on {self.name}.")
        import syft as sy

        uid, registered = None, False
        try:
            res = self.client.users.create(email=email, name=name or email.split("@")[0],
                                           password=password, password_verify=password,
                                           institution=institution or None)
            if isinstance(res, sy.SyftError):
                raise SiteError(f"Could not register {email}: {res.message}")
            uid = getattr(res, "id", None)
            # PySyft generates the researcher's key server-side and shows it to no admin API;
            # one password exchange with the password we just set tells us where to send
            # budget notes (the exchange alone: a full login would also fetch and build the
            # researcher's API, about 2 s of CPU here and in the server for nothing)
            self.state.add_researcher(email, verify_key_of(self.url, email, password))
            registered = True
            if dataset:
                self.set_budget(dataset, budget_epsilon, researcher=email)
        except BaseException:
            self._unregister(email, uid, registered)
            raise

    def check_new_user(self, email: str, password: str | None = None,
                       dataset: str | None = None, budget_epsilon: float | None = None) -> None:
        """What ``add_user`` needs before it creates anything (no login): a valid e-mail and
        password, and for a budget, a dataset here that has a budget of its own."""
        email = email.strip().lower()
        if not _EMAIL.fullmatch(email):
            raise SiteError(f"{email!r} is not an e-mail address (name@host, at most 254 "
                            "characters, no spaces or control characters).")
        if password is not None and len(password) < 8:
            raise SiteError("Choose a password of at least 8 characters for the researcher.")
        if email in self.state.researcher_keys():
            raise SiteError(f"{email} is already registered on {self.name}.")
        if dataset is None and budget_epsilon is None:
            return
        if dataset is None or budget_epsilon is None:
            raise SiteError("Give both --dataset and --budget-eps for the researcher's budget "
                            "(or neither, and set it later with `datasite budget`).")
        if not (math.isfinite(budget_epsilon) and budget_epsilon > 0):
            raise SiteError(f"--budget-eps must be a number above 0, got {budget_epsilon}.")
        if self.state.dataset(dataset) is None:
            names = ", ".join(self.state.dataset_names()) or "none"
            raise SiteError(f"No dataset {dataset!r} on {self.name} (it has: {names}); nothing "
                            "was registered.")
        if self.ledger.budget(dataset) is None:
            raise SiteError(f"Dataset {dataset!r} has no budget of its own yet, so it cannot "
                            "give the researcher a share; nothing was registered. Set it first: "
                            f"`datasite budget {self.name} {dataset} --epsilon E --delta D`.")

    def _unregister(self, email: str, uid, registered: bool) -> None:
        """Undo a half-done registration: the owner's row and the PySyft account."""
        try:
            if registered:
                self.state.remove_researcher(email)
            if uid is None:  # created, but the reply was lost: find it by address
                uid = next((u.id for u in self.client.users.get_all()
                            if str(u.email).lower() == email), None)
            if uid is not None:
                res = self.client.users.delete(uid=uid)
                if type(res).__name__ == "SyftError":
                    raise RuntimeError(res.message)
        except Exception as e:  # the original error is the one to show; say what is left
            print(f"warning: could not remove the half-registered account {email} "
                  f"({type(e).__name__}: {e}); delete it before registering again.",
                  file=sys.stderr)

    def _registered(self, researcher: str) -> str:
        """The registered identity named by ``researcher`` (an e-mail given at `users add`)."""
        who = researcher.strip().lower()
        if who not in self.state.researcher_keys():
            raise SiteError(f"{researcher!r} is not a researcher registered on {self.name}; "
                            f"register them with `datasite users add {self.name} EMAIL`.")
        return who
