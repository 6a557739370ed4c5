"""Registering researchers: the identity (verify key) every budget and request is bound to.

A part of :class:`datasite.owner.OwnerSite` (which holds ``home``, ``config``, ``state``,
``ledger`` and ``client``); its methods are called on the site."""
from __future__ import annotations

import contextlib
import re
import sys

from .config import SiteError

_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.-]{1,189}")


class UsersMixin:
    """Researchers' accounts, bound to the verify key recorded at registration."""

    def add_user(self, email: str, password: str, name: str | None = None,
                 institution: str = "") -> None:
        email = email.strip().lower()  # one identity per address, whatever its case
        if not _EMAIL.fullmatch(email):
            raise SiteError(f"{email!r} is not an e-mail address (name@host, at most 254 "
                            "characters, no spaces or control characters).")
        if len(password) < 8:
            raise SiteError("Choose a password of at least 8 characters for the researcher.")
        existing = {str(u.email).lower() for u in self.client.users.get_all()}
        if email in existing or email in self.state.researcher_keys():
            raise SiteError(f"{email} is already registered on {self.name}.")
        res = self.client.users.create(email=email, name=name or email.split("@")[0],
                                       password=password, password_verify=password,
                                       institution=institution or None)
        import syft as sy

        if isinstance(res, sy.SyftError):
            raise SiteError(f"Could not register {email}: {res.message}")
        # PySyft generates the researcher's key server-side and shows it to no admin API;
        # one login with the password we just set tells us where to send their budget notes.
        with contextlib.redirect_stdout(sys.stderr):
            as_user = sy.login(url=self.url, email=email, password=password)
        self.state.add_researcher(email, str(as_user.verify_key))

    def _registered(self, researcher: str) -> str:
        """The registered identity named by ``researcher`` (an e-mail given at `users add`)."""
        who = researcher.strip().lower()
        if who not in self.state.researcher_keys():
            raise SiteError(f"{researcher!r} is not a researcher registered on {self.name}; "
                            f"register them with `datasite users add {self.name} EMAIL`.")
        return who
