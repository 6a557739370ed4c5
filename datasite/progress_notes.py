"""Telling a researcher how their job is doing: a private PySyft notification per phase.

Sent when a job is queued (with its position), when a worker starts it, every
:data:`STEP_FRACTION` of its steps (at most every :data:`MIN_INTERVAL_S`), and when it ran or
failed: a dozen notes per job at most, so the researcher's notification list stays small.
Nothing in a note depends on the private data (see SECURITY.md, "Numbers that leave the site").
A note that cannot be sent is logged and dropped: progress never fails a job.
"""
from __future__ import annotations

import logging
import time

STEP_FRACTION = 0.1
MIN_INTERVAL_S = 2.0

log = logging.getLogger("datasite.progress")


def send(site, request_id: str, phase: str, **fields) -> bool:
    """Notify the request's researcher of its ``phase`` (queued, running, ran, failed);
    ``site``: an OwnerSite (its root client sends). False if it could not be sent."""
    try:
        from syft.server.credentials import SyftVerifyKey
        from syft.service.notification.notifications import CreateNotification

        from shared.protocol import encode_progress_note

        own = site.state.request(request_id)
        key = site.state.researcher_keys().get(own["researcher"]) if own else None
        if key is None:
            return False
        note = dict(request=request_id, phase=phase, **fields)
        res = site.client.api.services.notifications.send(notification=CreateNotification(
            subject=encode_progress_note(note), to_user_verify_key=SyftVerifyKey.from_string(key),
            from_user_verify_key=site.client.verify_key))
        return type(res).__name__ != "SyftError"
    except Exception:  # pylint: disable=broad-except
        log.warning("could not send a progress note for %s", request_id[:8], exc_info=True)
        return False


class Throttle:
    """Whether a step count is worth a note: a new tenth of the total, not too soon."""

    def __init__(self):
        self.last_t, self.last_tenth = 0.0, -1

    def due(self, done: int, total: int) -> bool:
        tenth = int(done / max(total, 1) / STEP_FRACTION)
        now = time.monotonic()
        if tenth > self.last_tenth and now - self.last_t >= MIN_INTERVAL_S:
            self.last_t, self.last_tenth = now, tenth
            return True
        return False
