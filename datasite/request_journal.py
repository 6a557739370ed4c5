"""An append-only journal of the ids of new PySyft requests, so the owner's processes learn of
new requests in O(new) without listing them all.

PySyft 0.9.5 offers a client no server-side filter for requests (``request.get_all`` takes no
arguments; ``get_all_pending`` loads and filters every request on the server, and is slower
than ``get_all``). The site's server process (``datasite.server``) wraps ``RequestService.submit``
to append each new request's id here, one line each (one ``O_APPEND`` write of < 4 KiB: lines
from concurrent writers do not interleave). A reader keeps its byte offset: a poll with nothing
new is one ``stat``. The journal holds ids only, nothing a researcher wrote.
"""
from __future__ import annotations

import os
from pathlib import Path

NAME = "request-journal.log"


def journal_path(syft_dir: Path) -> Path:
    return Path(syft_dir) / NAME


def record(path: Path, request_id: str) -> None:
    """Append one request id (a hex UID, checked: a line is exactly one id)."""
    if not request_id.isalnum():
        raise ValueError(f"not a request id: {request_id!r}")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (request_id + "\n").encode())
    finally:
        os.close(fd)


class JournalReader:
    """Reads the ids appended since the last read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0

    def exists(self) -> bool:
        return self.path.exists()

    def skip_to_end(self) -> None:
        """Start after what is there now (the caller has looked at those requests otherwise)."""
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def new_ids(self) -> list[str] | None:
        """Ids appended since the last call (complete lines only); None if there is no journal."""
        try:
            if os.stat(self.path).st_size <= self.offset:
                return []
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return None
        complete = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written waits
        self.offset += len(complete)
        return [line for line in complete.decode().split("\n") if line]
