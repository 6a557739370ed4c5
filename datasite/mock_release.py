"""The owner's DP mock (``upload --mock dp``) as a release in the ledger.

A DP mock is measured from the real records (:mod:`shared.synth`), so it spends privacy. Every
researcher sees it, so its event is charged to the dataset's budget as an owner release: a
ledger entry with the synthetic request id ``mock:<dataset>:v<k>`` and researcher
:data:`datasite.ledger.EVERYONE` (``''``), which counts in the dataset's spend and in every
researcher's spend and quotes on that dataset. It is reserved before the mock is built (the
reservation refuses, with the numbers, when the budget cannot pay), then committed and released
once the mock is published, or refunded if the upload fails. Each upload (``--replace``
included) builds a new mock: a new charge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import SiteError

if TYPE_CHECKING:  # the ledger (sqlalchemy) loads only when a mock is charged
    from .ledger import Ledger

KINDS = ("synthetic", "dp")  # the schema-only mock (the default, no privacy cost); the DP one


@dataclass(frozen=True)
class MockCharge:
    request_id: str
    event_json: str
    epsilon_target: float  # what the owner asked for (--mock-epsilon)
    epsilon: float  # the event's PLD epsilon at the dataset's delta (what the ledger charges)
    delta: float


def check_mock_options(kind: str, epsilon: float | None, is_table: bool) -> None:
    """``--mock`` and ``--mock-epsilon`` fit together (before any login)."""
    if kind not in KINDS:
        raise SiteError(f"Unknown mock kind {kind!r}; choose 'synthetic' (from the schema "
                        "alone, the default) or 'dp' (a DP synthetic mock, with --mock-epsilon).")
    if kind == "synthetic":
        if epsilon is not None:
            raise SiteError("--mock-epsilon applies to --mock dp only; drop it.")
        return
    if not is_table:
        raise SiteError("--mock dp is for tables only; image datasets get the schema mock.")
    if epsilon is None or not (math.isfinite(epsilon) and epsilon > 0):
        raise SiteError(f"--mock dp needs --mock-epsilon E (a number above 0, e.g. 0.5), got "
                        f"{epsilon}: it is charged to the dataset's privacy budget.")


def mock_event(meta, epsilon: float, delta: float) -> str:
    """The JSON event of a DP mock of ``meta``'s table at (epsilon, delta) (no data read)."""
    from shared.privacy.accounting import event_to_json
    from shared.synth.budget import calibrate
    from shared.synth.domain import columns_of

    return event_to_json(calibrate(len(columns_of(meta)), epsilon, delta).event())


def reserve_mock(ledger: Ledger, meta, epsilon: float, actor: str = "owner") -> MockCharge:
    """Price a DP mock of ``epsilon`` at the dataset's delta and reserve it against the
    dataset's budget (which must be set), before anything is measured: a SiteError with the
    numbers when the budget cannot pay for it."""
    from .ledger import EVERYONE, LedgerError

    budget = ledger.budget(meta.name)
    if budget is None:
        raise SiteError(f"--mock dp is charged to {meta.name}'s privacy budget, and it has none: "
                        "give --budget-eps E --delta D with the upload.")
    event = mock_event(meta, epsilon, budget["delta"])
    rid = f"mock:{meta.name}:v{_mock_count(ledger, meta.name) + 1}"
    try:
        priced = ledger.reserve(rid, meta.name, EVERYONE, event, actor=actor)
    except LedgerError as e:
        raise SiteError(f"Not uploading with a DP mock of eps={epsilon:g}: {e} Choose a smaller "
                        "--mock-epsilon, raise the budget, or upload with the schema mock "
                        "(no --mock dp, no privacy cost).") from None
    ledger.start(rid, actor=actor)
    return MockCharge(rid, event, epsilon, priced["epsilon"], budget["delta"])


def build_mock(charge: MockCharge, table, meta, n: int):
    """The DP mock of ``table``, measured with exactly the reserved event."""
    from .mock import dp_mock

    mock, event = dp_mock(meta, table, charge.epsilon_target, charge.delta, n)
    if event != charge.event_json:
        raise SiteError("The DP mock's noise differs from what was reserved; not published.")
    return mock


def settle(ledger: Ledger, charge: MockCharge | None, ok: bool, actor: str = "owner") -> None:
    """Commit and release the mock's charge once it is published, or refund it (nothing was
    published)."""
    if charge is None:
        return
    if ok:
        ledger.commit(charge.request_id, charge.event_json, actor=actor)
        ledger.released(charge.request_id, actor=actor)
    else:
        ledger.refund(charge.request_id, "the upload failed: the mock was not published",
                      actor=actor)


def published(charge: MockCharge | None) -> dict:
    """What the metadata says about the mock (public)."""
    if charge is None:
        return {"kind": "synthetic", "epsilon": 0.0}
    return {"kind": "dp", "epsilon": charge.epsilon, "delta": charge.delta,
            "ledger_entry": charge.request_id}


def _mock_count(ledger: Ledger, dataset: str) -> int:
    prefix = f"mock:{dataset}:v"
    return sum(e["request_id"].startswith(prefix) for e in ledger.history(dataset))
