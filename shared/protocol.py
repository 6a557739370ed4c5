"""Everything that crosses between a datasite and a researcher, in one place.

* **The request** a researcher sends is a job template (:mod:`shared.template`: ``render`` on
  the researcher's side, ``recognise`` on the owner's), carrying a spec of :mod:`shared.jobs`.
* **The result** a job returns is a :class:`ResultPayload`. It has three views, and only these:
  the full payload (owner-side, pickled next to the ledger), :meth:`ResultPayload.summary`
  (what the owner reads before deciding) and :meth:`ResultPayload.public_view` (the only thing
  a datasite deposits for a researcher: no ``_owner_*`` key, no realised privacy event, and
  whatever the job kind declares private removed by its ``public_payload`` hook).
* **Notes** the owner sends as PySyft notifications: the budget note (with the signed audit
  head) and the model-update note after a forget. Their subject lines are encoded and decoded
  here and nowhere else.

Every number in a public view is either the output of a priced DP mechanism (model weights,
DP metrics, noisy answers) or public by declaration (the spec, the privacy report computed from
the planned event, planned counts); see ``SECURITY.md``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Keys of a job's result that never leave the site (record groups, training rows, ...).
OWNER_PREFIX = "_owner_"
# The realised privacy event inside ``privacy``: the ledger commits it; it is not released
# (it can be a function of which records were sampled, e.g. per-record DP-AL groups).
EVENT_KEY = "event"
_CORE = ("kind", "spec", "metrics", "privacy")

BUDGET_NOTE_PREFIX = "dp-datasite budget: "
# The budget note's key for the site's signed audit head (shared/audit_chain.py).
AUDIT_HEAD_KEY = "_audit_head"
MODEL_UPDATE_PREFIX = "dp-datasite model update: "
# A job's progress, sent privately to its researcher: phase (queued, running, ran, failed),
# queue position, steps done of the plan's total. Public by declaration (SECURITY.md): the total
# comes from the spec and the public record count, not from the data.
PROGRESS_NOTE_PREFIX = "dp-datasite progress: "


def public_privacy(report: dict | None) -> dict:
    """A privacy report without the realised event: what owner summaries and researchers see."""
    return {k: v for k, v in (report or {}).items() if k != EVENT_KEY}


@dataclass(frozen=True)
class ResultPayload:
    """A job's result, as :func:`shared.runner.run_job` returns it (a plain dict on the wire).

    ``payload``: the kind's public output (``model_state``/``model_config``, ``answers``,
    ``rounds``, ``removable_model``, ...); ``owner``: the ``_owner_*`` keys, kept on the site.
    """

    kind: str
    spec: dict
    metrics: dict = field(default_factory=dict)
    privacy: dict = field(default_factory=dict)
    payload: dict = field(default_factory=dict)
    owner: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "ResultPayload":
        if not isinstance(d, dict) or "kind" not in d:
            raise ValueError("a job result is a dict with at least a 'kind'")
        rest = {k: v for k, v in d.items() if k not in _CORE}
        return cls(kind=d["kind"], spec=d.get("spec") or {}, metrics=d.get("metrics") or {},
                   privacy=d.get("privacy") or {},
                   payload={k: v for k, v in rest.items() if not k.startswith(OWNER_PREFIX)},
                   owner={k: v for k, v in rest.items() if k.startswith(OWNER_PREFIX)})

    def to_dict(self) -> dict:
        """The full payload (owner-side only)."""
        return {"kind": self.kind, "spec": self.spec, "metrics": self.metrics,
                "privacy": self.privacy, **self.payload, **self.owner}

    @property
    def event_json(self) -> str | None:
        """The realised privacy event the ledger commits at release."""
        return self.privacy.get(EVENT_KEY)

    def summary(self) -> dict:
        """What the owner sees before releasing: metrics and privacy, no model bytes."""
        return {"kind": self.kind, "metrics": self.metrics,
                "privacy": public_privacy(self.privacy)}

    def public_view(self, spec=None) -> dict:
        """What may leave the site. ``spec``: the job's :class:`shared.jobs.JobSpec` (built from
        ``self.spec`` if not given), whose ``public_payload`` hook removes what its kind keeps
        private inside public keys (e.g. a removable model's residual state)."""
        if spec is None:
            from .jobs import spec_from_dict

            spec = spec_from_dict(self.spec)
        payload = spec.public_payload(dict(self.payload))
        leaked = [k for k in payload if k.startswith(OWNER_PREFIX) or k in _CORE]
        if leaked:  # a hook may only remove or reshape public keys
            raise ValueError(f"{self.kind}.public_payload returned owner or core keys {leaked}")
        return {"kind": self.kind, "spec": self.spec, "metrics": self.metrics,
                "privacy": public_privacy(self.privacy), **payload}


# -- notes -------------------------------------------------------------------------------------
def encode_budget_note(note: dict) -> str:
    return BUDGET_NOTE_PREFIX + json.dumps(note, sort_keys=True)


def decode_budget_note(subject: str) -> dict | None:
    """The budget note in a notification subject, or None if it is not one."""
    return _decode(subject, BUDGET_NOTE_PREFIX)


def encode_model_update(payload: dict) -> str:
    return MODEL_UPDATE_PREFIX + json.dumps(payload, sort_keys=True, default=float)


def decode_model_update(subject: str) -> dict | None:
    """The model-update note in a notification subject, or None if it is not one."""
    return _decode(subject, MODEL_UPDATE_PREFIX)


def encode_progress_note(payload: dict) -> str:
    return PROGRESS_NOTE_PREFIX + json.dumps(payload, sort_keys=True)


def decode_progress_note(subject: str) -> dict | None:
    """The progress note in a notification subject, or None if it is not one."""
    return _decode(subject, PROGRESS_NOTE_PREFIX)


def _decode(subject: Any, prefix: str) -> dict | None:
    if not isinstance(subject, str) or not subject.startswith(prefix):
        return None
    try:
        out = json.loads(subject[len(prefix):])
    except ValueError:
        return None  # a note that only looks like ours
    return out if isinstance(out, dict) else None
