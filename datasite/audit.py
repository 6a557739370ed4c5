"""The owner's empirical privacy audit (``datasite audit``): a job kind run once on the private
data plus canaries (:mod:`shared.privacy.audit`), with an empirical epsilon lower bound next to the
epsilon the job claims.

Not a release: the report stays with the owner, who already holds the data; nothing goes to
the low side or to any researcher, so no budget is charged. It runs in memory on a copy of the
records (the stored data is never changed) and is written to the audit log, start and result.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import SiteError
from .storage import read_private


def load_spec(path: str | Path) -> dict:
    """A job spec from a JSON file (e.g. ``job.to_dict()`` saved by a researcher or the owner)."""
    try:
        spec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SiteError(f"No job spec file {path}; write the job's spec as JSON there.") from None
    except json.JSONDecodeError as e:
        raise SiteError(f"{path} is not JSON ({e}); give a job spec such as "
                        '{"kind": "dpsgd_table", "label": ..., "epsilon": 1, "delta": 1e-5}.') \
            from None
    if not isinstance(spec, dict):
        raise SiteError(f"{path} must hold one JSON object: the job's spec.")
    return spec


def run_audit(site, dataset: str, spec: dict, canaries: int = 1000,
              confidence: float = 0.95, progress=None) -> dict:
    """Audit ``spec`` on ``dataset`` of ``site`` (an OwnerSite); the report (owner only)."""
    from shared.privacy.audit import audit_job

    row = site.state.dataset(dataset)
    if row is None:
        raise SiteError(f"No dataset {dataset!r} on {site.name}; upload it first with "
                        f"`datasite upload {site.name} {dataset} ...`.")
    if spec.get("dataset", dataset) != dataset:
        raise SiteError(f"The spec names dataset {spec['dataset']!r}, not {dataset!r}; "
                        "fix its \"dataset\" field or audit that dataset.")
    spec = {**spec, "dataset": dataset}
    data, meta = read_private(Path(row["path"]))
    site.ledger.log("privacy_audit_start", None, {
        "dataset": dataset, "spec": spec, "canaries": canaries, "confidence": confidence,
        "note": "owner-only audit run: not a release, no budget charged"})
    try:
        report = audit_job(spec, data, meta, canaries=canaries, confidence=confidence,
                           progress=progress)
    except BaseException as e:
        site.ledger.log("privacy_audit_failed", None, {"dataset": dataset,
                                                       "error": str(e)[-500:]})
        raise
    site.ledger.log("privacy_audit", None, {
        k: report[k] for k in ("dataset", "kind", "canaries", "included", "guesses", "correct",
                               "confidence", "epsilon_lower_bound", "claimed_epsilon", "delta",
                               "violation", "released", "charged")})
    return report


def render(report: dict) -> str:
    """The audit report for the owner's terminal."""
    r = report
    verdict = ("VIOLATION: the run leaks more than its claim -- do not release this job kind "
               "until the implementation is fixed" if r["violation"]
               else "consistent with the claim (an audit can only ever refute a claim)")
    lines = [
        f"Privacy audit of a {r['kind']} job on {r['dataset']} (one run, {r['canaries']} "
        f"canaries, {r['included']} included at random)",
        f"  empirical epsilon >= {r['epsilon_lower_bound']:.3f} with {r['confidence']:.0%} "
        f"confidence ({r['correct']} of {r['guesses']} membership guesses right)",
        f"  claimed epsilon    = {r['claimed_epsilon']:.3f} at delta={r['delta']:g} "
        f"(this run's planned event; the job on the real data is priced "
        f"{r['job_epsilon']:.3f})",
        f"  {verdict}",
        "  Owner only: not a release, nothing sent to researchers, no budget charged; "
        "recorded in the audit log.",
    ]
    if r.get("noise_disabled_by_test_hook"):
        lines.append("  NOTE: DP-SGD noise was switched off by the test-only hook.")
    return "\n".join(lines)
