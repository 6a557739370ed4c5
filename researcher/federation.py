"""Asking several datasites at once: one job submitted to each, one progress view, one result.

A site that is down, refuses the submission or denies the job does not stop the others: the
combined result says which sites contributed and why the others did not. Combining released
models (a federated average weighted by training-record counts) is post-processing, so each
site's DP guarantee is unchanged; the combined report lists every site's guarantee.
"""
from __future__ import annotations

import copy
import time
from dataclasses import replace

from .connection import Site, connect
from .errors import ConnectError, JobDenied, ResearcherError
from .results import JobResult


def federation(sites) -> "Federation":
    """A federation over ``sites``: logged-in :class:`Site` objects or ``(url, email, password)``
    tuples. Sites that cannot be reached are kept, with the reason, and skipped."""
    members: list[Site] = []
    unreachable: dict[str, str] = {}
    for s in sites:
        if isinstance(s, Site):
            members.append(s)
            continue
        url, email, password = s
        try:
            members.append(connect(url, email, password))
        except ConnectError as e:
            unreachable[url] = str(e)
    if not members and not unreachable:
        raise ResearcherError("A federation needs at least one datasite.")
    return Federation(members, unreachable)


class Federation:
    def __init__(self, sites: list[Site], unreachable: dict[str, str] | None = None):
        self.sites = sites
        self.unreachable = dict(unreachable or {})

    def submit(self, job, datasets: dict[str, str] | None = None) -> "FederatedRequest":
        """Submit ``job`` to every site. ``datasets`` maps a site's name to its dataset's name
        where it differs from ``job.spec.dataset``."""
        requests, failed = {}, dict(self.unreachable)
        for site in self.sites:
            site_job = copy.copy(job)
            name = (datasets or {}).get(site.name, job.spec.dataset)
            site_job.spec = replace(job.spec, dataset=name)
            try:
                requests[site.name] = site.submit(site_job)
            except Exception as e:  # down, unknown dataset, invalid for this site's data
                failed[site.name] = f"submission failed: {_short(e)}"
        if not requests:
            raise ResearcherError("No site accepted the job: " + "; ".join(
                f"{k}: {v}" for k, v in failed.items()))
        return FederatedRequest(requests, failed)

    def train(self, job, rounds: int, datasets: dict[str, str] | None = None,
              timeout: float | None = 3600, poll: float = 2.0,
              progress: bool = True) -> "FederatedTraining":
        """Multi-round federated DP training: ``rounds`` rounds of (local DP-SGD at every site,
        average, redistribute). Each site prices and reserves all rounds when its owner approves
        the schedule once; rounds then run without further approvals. A site that denies, stops
        or goes down drops out; the others go on."""
        from tqdm.auto import tqdm

        from shared.training.federated import average_states, state_to_text
        from shared.training.serialise import load_state
        from shared.jobs.federated import FedRoundSpec, FedScheduleSpec

        base = {k: v for k, v in job.spec.to_dict().items() if k != "kind"}
        schedule = _Spec(FedScheduleSpec(**base, rounds=rounds))
        approvals = self.submit(schedule, datasets).wait(timeout=timeout, poll=poll,
                                                         progress=progress)
        active = dict(approvals.results)
        left_out = dict(approvals.left_out)
        sites = {s.name: s for s in self.sites}
        global_state, history = None, []
        bar = tqdm(total=rounds, desc="federated rounds", disable=not progress, unit="round")
        try:
            for r in range(rounds):
                if not active:
                    break
                text = state_to_text(global_state) if global_state is not None else ""
                requests, failed = {}, {}
                for name in sorted(active):
                    spec = FedRoundSpec(dataset=active[name].spec["dataset"],
                                        schedule=approvals.request_ids[name], round=r, init_state=text)
                    try:
                        requests[name] = sites[name].submit(_Spec(spec))
                    except Exception as e:
                        failed[name] = f"round {r} not accepted: {_short(e)}"
                outcome = FederatedRequest(requests, failed)
                try:
                    res = outcome.wait(timeout=timeout, poll=poll, progress=False)
                except JobDenied as e:
                    res = FederatedResult({}, {n: str(e) for n in active})
                for name, why in res.left_out.items():
                    active.pop(name, None)
                    left_out[name] = f"dropped out in round {r}: {why}"
                if not res.results:
                    break
                states = [load_state(x.raw["model_state"]) for x in res.results.values()]
                weights = [x.metrics.get("n_train") or 0 for x in res.results.values()]
                global_state = average_states(states, weights)
                history.append({"round": r, "sites": sorted(res.results),
                                "metrics": {n: x.metrics for n, x in res.results.items()},
                                "last": res})
                bar.update(1)
        finally:
            bar.close()
        if global_state is None:
            raise ResearcherError("No round completed at any site: " + "; ".join(
                f"{k}: {v}" for k, v in sorted(left_out.items())))
        return FederatedTraining(global_state, history, approvals, left_out)

    def __repr__(self) -> str:
        names = [s.name for s in self.sites] + [f"{u} (unreachable)" for u in self.unreachable]
        return f"<federation of {len(names)} datasites: {', '.join(names)}>"


class FederatedRequest:
    """One job at several sites. ``wait()`` shows them in one progress view."""

    def __init__(self, requests: dict, failed: dict[str, str]):
        self.requests = requests
        self.failed = dict(failed)

    def status(self) -> dict[str, str]:
        out = {}
        for name, req in self.requests.items():
            try:
                out[name] = req.status()
            except Exception as e:  # the site went down after submission
                out[name] = f"unreachable ({_short(e)})"
        out.update({k: "not submitted" for k in self.failed})
        return out

    def wait(self, timeout: float | None = 3600, poll: float = 2.0,
             progress: bool = True) -> "FederatedResult":
        """Wait until every site has released, denied or failed, or ``timeout`` passes; then
        combine whatever was released. Sites still pending at the timeout are left out."""
        from tqdm.auto import tqdm

        start = time.monotonic()
        results: dict[str, JobResult] = {}
        left_out = dict(self.failed)
        pending = set(self.requests)
        bar = tqdm(total=len(self.requests) + len(self.failed), initial=len(self.failed),
                   desc="datasites done", disable=not progress, unit="site")
        try:
            while pending:
                for name in sorted(pending):
                    req = self.requests[name]
                    try:
                        state = req.status()
                    except Exception as e:
                        state, why = "gone", f"unreachable after submission: {_short(e)}"
                    if state == "released":
                        results[name] = req.result
                    elif state == "denied":
                        left_out[name] = f"denied by the data owner: {req.denial_reason()}"
                    elif state == "gone":
                        left_out[name] = why
                    else:
                        continue
                    pending.discard(name)
                    bar.update(1)
                bar.set_postfix_str(", ".join(f"{n}: {s}" for n, s in sorted(
                    {**{n: "pending" for n in pending}, **{n: "released" for n in results},
                     **{n: "out" for n in left_out}}.items())))
                if not pending:
                    break
                if timeout is not None and time.monotonic() - start > timeout:
                    for name in pending:
                        left_out[name] = f"still pending after {timeout:.0f}s"
                    break
                time.sleep(poll)
        finally:
            bar.close()
        if not results:
            raise JobDenied("federated", "no site released a result: " + "; ".join(
                f"{k}: {v}" for k, v in sorted(left_out.items())))
        out = FederatedResult(results, left_out)
        out.request_ids = {n: self.requests[n].id for n in results}
        return out


class FederatedResult:
    """Per-site results and their combination (post-processing of the released results)."""

    def __init__(self, results: dict[str, JobResult], left_out: dict[str, str]):
        self.results = results
        self.left_out = left_out
        self.request_ids: dict[str, str] = {}

    @property
    def contributed(self) -> list[str]:
        return sorted(self.results)

    @property
    def privacy(self) -> dict[str, dict]:
        """Each contributing site's own guarantee (averaging does not change any of them)."""
        from shared.protocol import public_privacy

        return {name: public_privacy(r.privacy) for name, r in sorted(self.results.items())}

    @property
    def metrics(self) -> dict:
        """Metrics per site, and pooled: test accuracy weighted by each site's test-set size."""
        per_site = {name: r.metrics for name, r in sorted(self.results.items())}
        n = sum((m.get("n_test") or 0) for m in per_site.values() if m.get("test_accuracy") is not None)
        pooled = None
        if n:
            pooled = sum(m["test_accuracy"] * m["n_test"] for m in per_site.values()
                         if m.get("test_accuracy") is not None) / n
        return {"per_site": per_site, "pooled": {"test_accuracy": pooled, "n_test": n}}

    def model(self):
        """The federated average of the sites' models, weighted by their training-record counts."""
        from shared.training.federated import average_states
        from shared.training.serialise import load_state

        configs = [r.raw.get("model_config") for r in self.results.values()]
        if any(c is None for c in configs):
            raise ResearcherError("Only results with a model can be averaged.")
        if any(c != configs[0] for c in configs[1:]):
            raise ResearcherError("The sites' models differ in shape, features or classes; they "
                                  "cannot be averaged. Use the same job and datasets with the "
                                  "same columns and label set at every site.")
        states = [load_state(r.raw["model_state"]) for r in self.results.values()]
        weights = [r.metrics.get("n_train") or 0 for r in self.results.values()]
        from shared.training.models import build_from_config

        model = build_from_config(configs[0])
        model.load_state_dict(average_states(states, weights))
        return model.eval()

    @property
    def model_config(self) -> dict:
        return next(iter(self.results.values())).raw["model_config"]

    def __repr__(self) -> str:
        out = ", ".join(f"{k} ({v})" for k, v in sorted(self.left_out.items()))
        return (f"<federated result from {', '.join(self.contributed)}"
                + (f"; left out: {out}" if out else "") + ">")


class FederatedTraining:
    """The outcome of :meth:`Federation.train`: the global model, per-round history, and each
    site's guarantee for the rounds it ran (reserved up front at approval)."""

    def __init__(self, state: dict, history: list[dict], approvals: FederatedResult,
                 left_out: dict[str, str]):
        self.state = state
        self.history = history
        self.approvals = approvals
        self.left_out = left_out

    @property
    def model_config(self) -> dict:
        return next(iter(self.history[-1]["last"].results.values())).raw["model_config"]

    def model(self):
        from shared.training.models import build_from_config

        model = build_from_config(self.model_config)
        model.load_state_dict(self.state)
        return model.eval()

    @property
    def contributed(self) -> list[str]:
        return self.history[-1]["sites"]

    @property
    def privacy(self) -> dict[str, dict]:
        """Each approving site's guarantee for the whole schedule it reserved."""
        return self.approvals.privacy

    def rounds_table(self) -> list[dict]:
        """Per round and site: local test accuracy and training-record count."""
        return [{"round": h["round"], "site": n, "test_accuracy": m.get("test_accuracy"),
                 "n_train": m.get("n_train")}
                for h in self.history for n, m in sorted(h["metrics"].items())]

    def __repr__(self) -> str:
        return (f"<federated training: {len(self.history)} round(s), sites "
                f"{', '.join(self.contributed)}"
                + (f"; left out: {self.left_out}" if self.left_out else "") + ">")


class _Spec:
    """A job made of a spec alone (what ``Site.submit`` needs)."""

    def __init__(self, spec):
        self.spec = spec


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:200]
