"""Rebuild the ledger's numbers from the signed audit chain and compare them with the tables.

Budgets and ledger entries live in ordinary tables (fast to query); the chain records every
change to them. Replaying it and finding any difference means a table was edited outside the
ledger: verify reports the first such row.
"""
from __future__ import annotations

import json

from sqlalchemy import select

from .ledger_tables import budgets, charges, charges_digest, entries

LEDGER_STATES = ("estimated", "reserved", "running", "committed", "released", "refunded",
                 "denied")


class Replay:
    def __init__(self):
        self.budgets: dict[tuple[str, str], tuple[float, float]] = {}
        self.entries: dict[str, dict] = {}

    def apply(self, row) -> str | None:
        """Feed one chain entry; a problem string if it contradicts the ones before."""
        p = json.loads(row.payload)
        if row.action == "budget":
            self.budgets[(p["dataset"], p["researcher"])] = (float(p["epsilon"]),
                                                             float(p["delta"]))
            return None
        state = p.get("state")
        if state not in LEDGER_STATES or row.request_id is None:
            return None  # an entry that moves no budget (a round, a certificate, a deny note)
        e = self.entries.get(row.request_id)
        if state in ("estimated", "reserved"):
            if state == "estimated" and e is not None:
                return "estimated twice"
            self.entries[row.request_id] = {
                "state": state, "dataset": p["dataset"], "researcher": p["researcher"],
                "event": p["event"], "realised": None, "charges": None,
                "alternatives": p.get("alternatives")}
            return None
        if e is None:
            return f"moves request {row.request_id[:8]} to {state} before it was reserved"
        e["state"] = state
        if state == "committed":
            e["realised"] = p.get("realised")
            e["charges"] = p.get("charges")
        return None

    def compare(self, c) -> str | None:
        """The first table row that differs from the replayed chain (None: all match)."""
        seen = set()
        for b in c.execute(select(budgets).order_by(budgets.c.dataset, budgets.c.researcher)):
            key = (b.dataset, b.researcher)
            seen.add(key)
            want = self.budgets.get(key)
            if want is None or (float(b.epsilon), float(b.delta)) != want:
                return (f"budget of {b.dataset}/{b.researcher or 'dataset'} is eps={b.epsilon:g} "
                        f"in the table but {want} in the signed chain: the table was edited")
        missing = set(self.budgets) - seen
        if missing:
            return f"budget rows {sorted(missing)} are in the signed chain but not in the table"
        rows = {r.request_id: r for r in c.execute(select(entries))}
        parts: dict[str, list] = {}
        for ch in c.execute(select(charges)):
            parts.setdefault(ch.request_id, []).append(
                (ch.kind, ch.event_json, json.loads(ch.record_ids) if ch.record_ids else None))
        for rid, want in self.entries.items():
            r = rows.pop(rid, None)
            if r is None:
                return f"ledger entry {rid[:8]} is in the signed chain but not in the table"
            have = {"state": r.state, "dataset": r.dataset, "researcher": r.researcher,
                    "event": json.loads(r.event_json),
                    "realised": json.loads(r.realised_json) if r.realised_json else None}
            for k, v in have.items():
                if v != want[k]:
                    return (f"ledger entry {rid[:8]}: {k} is {_short(v)} in the table but "
                            f"{_short(want[k])} in the signed chain: the table was edited")
            mine = parts.get(rid, [])
            if want["state"] in ("committed", "released") and want["charges"] is not None:
                got = charges_digest([p for p in mine if p[0] != "alt"])
                if got != want["charges"]:
                    return (f"ledger entry {rid[:8]}: its per-record charges differ from the "
                            "ones the signed chain recorded at commit: the table was edited")
            if want["state"] in ("reserved", "running") and want["alternatives"] is not None:
                if charges_digest([p for p in mine if p[0] == "alt"]) != want["alternatives"]:
                    return (f"ledger entry {rid[:8]}: its reserved alternatives differ from the "
                            "signed chain: the table was edited")
        if rows:
            rid = next(iter(rows))
            return f"ledger entry {rid[:8]} is in the table but not in the signed chain"
        return None


def _short(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v)
    return text if len(text) < 60 else text[:57] + "..."
