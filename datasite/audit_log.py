"""The ledger's signed audit chain: append, heads for researchers, and verification.

Every budget change and every ledger state transition is an entry; each entry's chain hash is
signed with the site's Ed25519 key (secrets/signing_key, 0600, apart from the database), and the
latest signed head is also kept in secrets/audit_head. Whoever can write the database but not
read the key cannot rewrite or truncate the chain unnoticed; whoever holds the key can re-sign,
and only heads held by researchers (sent with every budget note) catch that (shared/audit_chain).
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, Text, event, insert, select, update

from shared.audit_chain import (GENESIS, entry_digest, link, sign_head, signature_ok,
                                verify_key_of)

from .state import now

# Test-only switch: False writes and verifies the plain hash chain (no signatures, no head file),
# so the tests can show that the rewrite attacks succeed without signing.
SIGN_AUDIT = True

metadata = MetaData()
audit = Table(
    "dpds_audit", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", String(40), nullable=False),
    Column("actor", String(320), nullable=False),
    Column("action", String(40), nullable=False),
    Column("request_id", String(64)),
    Column("payload", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("nonce", String(32)),   # salt of the digest: digests shown to researchers leak nothing
    Column("sig", String(128)),    # Ed25519 signature of (seq, hash)
)
# The last head sent to each researcher: the next one comes with the digests linking the two.
sent = Table(
    "dpds_audit_sent", metadata,
    Column("researcher", String(320), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)


class AuditLog:
    def __init__(self, engine, key_hex: str | None, head_file: Path | None):
        self.engine, self.key_hex, self.head_file = engine, key_hex, head_file
        if not event.contains(engine, "commit", _write_pending_head):
            event.listen(engine, "commit", _write_pending_head)

    @property
    def signing(self) -> bool:
        return bool(SIGN_AUDIT and self.key_hex)

    def append(self, c, actor: str, action: str, request_id: str | None, payload: dict) -> None:
        if c.dialect.name == "postgresql":  # serialise appends so the chain cannot fork
            c.exec_driver_sql("SELECT pg_advisory_xact_lock(7301)")
        last = c.execute(select(audit.c.seq, audit.c.hash).order_by(audit.c.seq.desc())
                         .limit(1)).first()
        seq, prev = (last.seq + 1, last.hash) if last else (1, GENESIS)
        at, nonce = now().isoformat(), secrets.token_hex(16)
        body = json.dumps(payload, sort_keys=True, default=str)
        h = link(prev, entry_digest(nonce, seq, at, actor, action, request_id, body))
        sig = sign_head(self.key_hex, seq, h) if self.signing else None
        c.execute(insert(audit).values(seq=seq, at=at, actor=actor, action=action,
                                       request_id=request_id, payload=body, prev_hash=prev,
                                       hash=h, nonce=nonce, sig=sig))
        if self.signing and self.head_file is not None:
            c.info["dpds_head"] = (str(self.head_file), seq, h, sig)  # written at commit

    # -- heads for researchers ---------------------------------------------------------------
    def head_for(self, researcher: str) -> dict | None:
        """The current signed head, with the digests linking it to the last one sent to them."""
        if not self.signing:
            return None
        with self.engine.connect() as c:
            rows = c.execute(select(audit).order_by(audit.c.seq)).all()
            last_sent = c.execute(select(sent).where(sent.c.researcher == researcher)).first()
        if not rows:
            return None
        top = rows[-1]
        head = {"seq": top.seq, "hash": top.hash, "sig": top.sig,
                "verify_key": verify_key_of(self.key_hex), "proof_from": None, "proof": []}
        if last_sent is not None:
            head["proof_from"] = last_sent.seq
            head["proof"] = [entry_digest(r.nonce, r.seq, r.at, r.actor, r.action, r.request_id,
                                          r.payload) for r in rows if r.seq > last_sent.seq]
        return head

    def mark_sent(self, researcher: str, head: dict | None) -> None:
        if not head:
            return
        with self.engine.begin() as c:
            values = dict(seq=head["seq"], hash=head["hash"])
            if c.execute(select(sent.c.seq).where(sent.c.researcher == researcher)).first():
                c.execute(update(sent).where(sent.c.researcher == researcher).values(**values))
            else:
                c.execute(insert(sent).values(researcher=researcher, **values))

    # -- verification --------------------------------------------------------------------------
    def verify(self, replay) -> tuple[bool, str]:
        """Walk the chain: links, hashes, signatures, no gap, no truncation; feed ``replay``."""
        vk = verify_key_of(self.key_hex) if self.signing else None
        prev, n = GENESIS, 0
        with self.engine.connect() as c:
            for r in c.execute(select(audit).order_by(audit.c.seq)):
                n += 1
                where = f"entry {r.seq} ({r.action})"
                if r.seq != n:
                    return False, f"entry {n}: missing (the next entry is {r.seq}): entries deleted"
                if r.prev_hash != prev:
                    return False, f"{where}: link to the previous entry is broken"
                if r.nonce is None or link(prev, entry_digest(
                        r.nonce, r.seq, r.at, r.actor, r.action, r.request_id, r.payload)) != r.hash:
                    return False, f"{where} was altered: its hash does not match its content"
                if vk and not signature_ok(vk, r.seq, r.hash, r.sig):
                    return False, (f"{where}: bad or missing signature: rewritten by someone "
                                   "without the site's signing key")
                problem = replay(r)
                if problem:
                    return False, f"{where}: {problem}"
                prev = r.hash
        if vk and self.head_file is not None:
            head = read_head(self.head_file)
            if head and head["seq"] > n:
                return False, (f"entries {n + 1}..{head['seq']} are missing: the log was "
                               f"truncated (the signed head in {self.head_file} is entry "
                               f"{head['seq']})")
            if head and head["seq"] == n and head["hash"] != prev:
                return False, f"entry {n} differs from the signed head in {self.head_file}"
        return True, f"audit log intact: {n} entries" + (", signed" if vk else ", unsigned")


def read_head(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_pending_head(conn) -> None:
    """On commit: move the head file forward (never back; concurrent writers take a lock)."""
    pending = conn.info.pop("dpds_head", None)
    if pending is None:
        return
    path, seq, h, sig = pending
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            old = json.loads(f.read() or "null")
        except json.JSONDecodeError:
            old = None
        if old is None or old.get("seq", 0) < seq:
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"seq": seq, "hash": h, "sig": sig}))
