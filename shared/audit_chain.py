"""The signed audit chain's public half: entry hashes, signed heads, and the researcher's check.

Entry i has a salted digest d_i = H(nonce, seq, at, actor, action, request_id, payload) and a
chain hash h_i = H(h_{i-1}, d_i); the site signs (seq, h_i) with its Ed25519 key. A *head* is
the latest (seq, hash, sig). A researcher who saw head (k, h_k) can check a newer head (n, h_n)
extends it from the digests d_{k+1..n} alone: they reveal nothing about the entries (salted)
and nobody can produce them for a rewritten history without a hash collision. The site's key
holder can re-sign a rewritten chain, so heads held outside the site are what catch that.
"""
from __future__ import annotations

import hashlib
import json

GENESIS = "0" * 64
_DOMAIN = b"dp-datasite audit head v1\n"  # never valid as another message signed by this key


def entry_digest(nonce: str, seq: int, at: str, actor: str, action: str,
                 request_id: str | None, payload: str) -> str:
    body = json.dumps([nonce, int(seq), at, actor, action, request_id, payload],
                      separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def link(prev: str, digest: str) -> str:
    return hashlib.sha256(f"{prev}:{digest}".encode()).hexdigest()


def _message(seq: int, chain_hash: str) -> bytes:
    return _DOMAIN + json.dumps([int(seq), chain_hash]).encode()


def sign_head(key_hex: str, seq: int, chain_hash: str) -> str:
    from nacl.signing import SigningKey

    return SigningKey(bytes.fromhex(key_hex)).sign(_message(seq, chain_hash)).signature.hex()


def verify_key_of(key_hex: str) -> str:
    from nacl.signing import SigningKey

    return SigningKey(bytes.fromhex(key_hex)).verify_key.encode().hex()


def signature_ok(verify_key_hex: str, seq: int, chain_hash: str, sig_hex: str | None) -> bool:
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    if not sig_hex:
        return False
    try:
        VerifyKey(bytes.fromhex(verify_key_hex)).verify(_message(seq, chain_hash),
                                                        bytes.fromhex(sig_hex))
        return True
    except (BadSignatureError, ValueError):
        return False


def check_head(new: dict, seen: list[dict], verify_key: str | None = None) -> list[str]:
    """Problems with a newly received head given the heads seen before ([] = consistent).

    ``new``: {"seq", "hash", "sig", "verify_key", "proof_from", "proof"} as the site sends it
    (``proof``: the digests from entry proof_from+1 to seq). ``verify_key``: the key you trust
    for this site (its PySyft server key); default: the one of the earliest seen head.
    """
    problems = []
    key = verify_key or (seen[0].get("verify_key") if seen else None) or new.get("verify_key")
    if new.get("verify_key") and new["verify_key"] != key:
        problems.append("the head is signed with another key than the site's")
    if not signature_ok(key, new["seq"], new["hash"], new.get("sig")):
        problems.append(f"head {new['seq']}: bad signature")
    if not seen:
        return problems
    last = max(seen, key=lambda h: h["seq"])
    if new["seq"] < last["seq"]:
        problems.append(f"history truncated: head {new['seq']} after you saw head {last['seq']}")
        return problems
    known = {h["seq"]: h["hash"] for h in seen}
    if new["seq"] in known and known[new["seq"]] != new["hash"]:
        problems.append(f"entry {new['seq']} has changed since you saw it (history rewritten)")
        return problems
    start = new.get("proof_from")
    if new["seq"] == last["seq"]:
        return problems
    if start is None or start not in known or start < last["seq"]:
        problems.append(f"the site does not show that head {new['seq']} extends head "
                        f"{last['seq']} you saw (history rewritten or truncated?)")
        return problems
    h = known[start]
    for i, d in enumerate(new.get("proof") or [], start=start + 1):
        h = link(h, d)
        if i in known and known[i] != h:
            problems.append(f"entry {i} has changed since you saw it (history rewritten)")
            return problems
    if start + len(new.get("proof") or []) != new["seq"] or h != new["hash"]:
        problems.append(f"head {new['seq']} does not extend head {start} you saw: "
                        "the history was rewritten")
    return problems
