"""Privacy budgets, and the private notes that tell researchers theirs.

A part of :class:`datasite.owner.OwnerSite` (which holds ``home``, ``config``, ``state``,
``ledger`` and ``client``); its methods are called on the site."""
from __future__ import annotations


from shared.data import DatasetMeta
from shared.protocol import AUDIT_HEAD_KEY, encode_budget_note

from .config import SiteError
from .ledger import LedgerError

DISCLOSE_DATASET_LEFT = "disclose_dataset_left"


class BudgetsMixin:
    """Budgets of datasets and researchers, and the notes that tell researchers theirs."""

    def set_budget(self, dataset: str, epsilon: float, delta: float | None = None,
                   researcher: str = "") -> None:
        """The dataset's total budget (eps, delta), or a registered researcher's share of it."""
        if self.state.dataset(dataset) is None:
            raise SiteError(f"No dataset {dataset!r} on {self.name}.")
        if researcher:
            researcher = self._registered(researcher)
        if not researcher and delta is None:
            raise SiteError("A dataset budget needs --delta as well as --epsilon.")
        if delta is not None and not researcher:
            n = DatasetMeta.from_json(self.state.dataset(dataset)["meta_json"]).n_records
            if delta >= 1.0 / n:
                raise SiteError(f"delta={delta:g} is not below 1/n = {1.0 / n:.2g} for {n} records: "
                                "choose a smaller delta.")
        self._check_not_below_spent(dataset, epsilon, researcher)
        try:
            self.ledger.set_budget(dataset, epsilon, delta, researcher=researcher)
        except LedgerError as e:
            raise SiteError(str(e)) from None
        self.publish_budgets([researcher] if researcher else None)

    def _check_not_below_spent(self, dataset: str, epsilon: float, researcher: str) -> None:
        """A budget cannot go below what was already spent (or reserved) under it: the spend
        is a fact, and a budget under it would only hide that it was overspent."""
        if self.ledger.budget(dataset) is None:
            return  # a dataset's first budget: nothing spent under it yet
        spent = self.ledger.spent(dataset, researcher or None)["epsilon"]
        if epsilon < spent - 1e-9:
            who = f"{researcher}'s budget" if researcher else "the dataset's budget"
            raise SiteError(f"Cannot set {who} on {dataset} to eps={epsilon:g}: eps={spent:.3f} "
                            "is already spent or reserved under it. Choose at least that much; "
                            "nothing was changed.")

    def budgets_for(self, researcher: str, _dataset_left: dict | None = None) -> dict:
        """What a researcher may know: per dataset, their own budget left and whether the
        dataset can still pay for it. The dataset's exact remaining budget reveals what other
        researchers spent, so it is shown only where the owner opted in (`disclose_dataset_left`)."""
        dataset_left = _dataset_left if _dataset_left is not None else self._dataset_left()
        disclose = self.state.setting(DISCLOSE_DATASET_LEFT) == "yes"
        out = {}
        for b in self.ledger.all_budgets():
            ds = b["dataset"]
            if b["researcher"] or self.state.dataset(ds) is None:  # deleted: its budget stays
                continue                                            # in the ledger, unlisted
            left = {"delta": b["delta"], "researcher_left": None}
            own = self.ledger.budget(ds, researcher)
            if own:
                left["researcher_left"] = own["epsilon"] - self.ledger.spent(ds, researcher)["epsilon"]
            # one bit: can the dataset still pay for all this researcher may spend (or, with
            # no share of their own, for anything at all)?
            need = left["researcher_left"]
            left["dataset_can_pay"] = bool(dataset_left[ds] >= need - 1e-9 if need is not None
                                           else dataset_left[ds] > 1e-9)
            if disclose:
                left["dataset_left"] = dataset_left[ds]
            out[ds] = left
        return out

    def disclose_dataset_left(self, yes: bool) -> None:
        """Opt in (or out) to telling every researcher each dataset's exact remaining budget
        (which reveals how much the others spent)."""
        self.state.set_setting(DISCLOSE_DATASET_LEFT, "yes" if yes else "no")
        self.ledger.log("disclosure", None, {DISCLOSE_DATASET_LEFT: bool(yes)})
        self.publish_budgets()

    def _dataset_left(self) -> dict[str, float]:
        return {b["dataset"]: b["epsilon"] - self.ledger.spent(b["dataset"])["epsilon"]
                for b in self.ledger.all_budgets() if not b["researcher"]}

    def publish_budgets(self, researchers: list[str] | None = None) -> None:
        """Tell researchers their budgets, privately, as a PySyft notification to each."""
        from syft.server.credentials import SyftVerifyKey
        from syft.service.notification.notifications import CreateNotification

        targets = {e: k for e, k in self.state.researcher_keys().items()
                   if researchers is None or e in researchers}
        if not targets:
            return
        dataset_left = self._dataset_left()  # composed once, not once per researcher
        for email, key in targets.items():
            # the signed audit head rides along, so researchers can catch a rewritten history
            head = self.ledger.head_for(email)
            note = {**self.budgets_for(email, dataset_left), AUDIT_HEAD_KEY: head}
            res = self.client.api.services.notifications.send(notification=CreateNotification(
                subject=encode_budget_note(note),
                to_user_verify_key=SyftVerifyKey.from_string(key),
                from_user_verify_key=self.client.verify_key))
            if type(res).__name__ != "SyftError":  # the next proof starts where they are
                self.ledger.mark_sent(email, head)
