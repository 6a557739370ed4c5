"""The ledger's tables (budgets, entries, per-record charges) and the digest of a request's
charges that the audit chain records.

A module of its own so that both the ledger (which writes them) and the chain replay (which
checks them, ledger_replay.py) can use them without importing each other.
"""
from __future__ import annotations

import hashlib
import json

from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, Text

metadata = MetaData()

budgets = Table(
    "dpds_budgets", metadata,
    Column("dataset", String(200), primary_key=True),
    Column("researcher", String(320), primary_key=True),  # "" = the dataset's own budget
    Column("epsilon", Float, nullable=False),
    Column("delta", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

entries = Table(
    "dpds_ledger", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("dataset", String(200), nullable=False),
    Column("researcher", String(320), nullable=False),
    # estimated | reserved | running | committed | released | refunded | denied
    Column("state", String(20), nullable=False),
    Column("event_json", Text, nullable=False),       # the reserved (planned) event
    Column("realised_json", Text),                     # what the job reports it ran
    Column("epsilon", Float, nullable=False),          # of the event alone, at the dataset delta
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Which records received which event (owner-side only; never released): per request, parts of
# kind "all" (every record), "ids" (record_ids: JSON list) or, while it runs, "alt" (each record
# will receive one of these events).
charges = Table(
    "dpds_charges", metadata,
    Column("request_id", String(64), primary_key=True),
    Column("part", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(8), nullable=False),
    Column("event_json", Text, nullable=False),
    Column("record_ids", Text),
)


def charges_digest(rows) -> str:
    """What the audit chain records of a request's parts: [(kind, event, ids)] -> sha256."""
    canon = sorted([k, e, sorted(i) if i is not None else None] for k, e, i in rows)
    return hashlib.sha256(json.dumps(canon, separators=(",", ":")).encode()).hexdigest()
