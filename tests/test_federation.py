"""A federation of real datasites (HTTP servers on 127.0.0.1) with different label distributions."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from conftest import RESEARCHER, make_site

pytestmark = pytest.mark.slow

JOB = dict(label="outcome", epsilon=4.0, delta=1e-4, model="logreg", batch_size=16,
           learning_rate=2.0, test_fraction=0.2, seed=0)
# Two rounds: round 1 starts from the average of round 0 (the multi-round path), and a site
# that stops after round 0 leaves the federation a round to go on without it. (Three rounds
# checked nothing more and cost a round-trip of jobs at both sites per test.) Federated still
# beats each single site by >= 0.1 accuracy (0.135 on average over 8 runs; 3 rounds: 0.14).
ROUNDS = 2
EPOCHS = 4  # per round; a single-site job trains EPOCHS * ROUNDS (as many as the federation)
# Both tests send these same specs: each site prices a spec once (the pricing server's cache),
# and its noise is calibrated once (the run's calibration cache), whichever test sends it first.
WEIGHTS = np.array([2.0, -1.5, 1.0, 0.5, 0, 0, 0, 0])


def cohort_schema(n: int) -> dict:
    """The public schema of :func:`cohort` tables: declared bounds, classes and count."""
    return {"kind": "table", "records": n,
            "label": {"column": "outcome", "classes": [0, 1]},
            "columns": {f"x{i}": {"type": "float", "bounds": [-1, 1]} for i in range(len(WEIGHTS))}}


def cohort(n: int, seed: int, keep: str | None = None, rate: float = 0.15) -> pd.DataFrame:
    """A synthetic cohort: 8 features in [-1, 1], outcome ~ logistic(x.w). ``keep="neg"`` keeps
    only ``rate`` of the positives (a site seeing mostly negatives), ``keep="pos"`` the reverse."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (6 * n, len(WEIGHTS)))
    y = (rng.random(len(X)) < 1 / (1 + np.exp(-X @ WEIGHTS))).astype(int)
    ok = np.ones(len(X), bool)
    if keep is not None:
        minority = 1 if keep == "neg" else 0
        ok = (y != minority) | (rng.random(len(X)) < rate)
    df = pd.DataFrame(X[ok][:n], columns=[f"x{i}" for i in range(len(WEIGHTS))])
    df["outcome"] = y[ok][:n]
    return df


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    """Two hospitals with opposite label distributions, and a test set from the union. The two
    sites are set up side by side (a server takes seconds to come up)."""
    from concurrent.futures import ThreadPoolExecutor

    a, b, test = cohort(150, 1, keep="neg"), cohort(150, 2, keep="pos"), cohort(3000, 99)
    root = tmp_path_factory.mktemp("fed")
    sites = []

    def start(name, part):
        path = root / f"{name}.csv"
        part.to_csv(path, index=False)
        site = make_site(root, name)
        sites.append(site)
        site.upload("cohort", table=str(path), schema=cohort_schema(len(part)),
                    budget_epsilon=20.0, delta=1e-4)
        site.add_user(*RESEARCHER, name="Alice")

    try:
        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(start, "hosp-a", a), pool.submit(start, "hosp-b", b)]:
                f.result()
        sites.sort(key=lambda s: s.name)
        yield sites, test
    finally:
        for s in sites:
            s.down()


@pytest.fixture(scope="module")
def clients(two_sites):
    """Alice, logged into each site (in the order of the sites), for both tests."""
    import researcher

    return [researcher.connect(s.url, *RESEARCHER) for s in two_sites[0]]


def _owner_loop(site, stop: threading.Event, actions: dict):
    """The data owner: approve (run + release) whatever arrives, or deny/stop as told. Looks at
    the requests (a full review: seconds of PySyft calls, and more as they pile up) only when
    the site's request journal names one it has not seen, so that idle polls cost nothing."""
    import time

    from datasite.request_journal import JournalReader, journal_path

    journal = JournalReader(journal_path(site.home.syft_dir))
    unseen: set[str] = set()
    while not stop.is_set():
        unseen.update(journal.new_ids() or [])
        for info in site.review(include_done=True) if unseen else []:
            unseen.discard(info["request_id"])
            if info["state"] != "pending" or info["kind"] == "fed_round":
                continue
            rid = info["request_id"]
            if actions.get(site.name) == "deny":
                site.deny(rid, "not this quarter")
                continue
            site.run(rid, progress=False)
            if info["kind"] != "fed_dpsgd_table":
                site.release(rid)
            elif actions.get(site.name) == "stop_after_1":
                actions[site.name] = ("stop", rid)
        act = actions.get(site.name)
        while isinstance(act, tuple) and not stop.is_set():  # watch closely: rounds are quick
            own = site.state.request(act[1])
            if own and '"rounds_done": 1' in (own["summary_json"] or ""):
                site.stop(act[1])
                actions[site.name] = act = "stopped"
            time.sleep(0.05)
        time.sleep(0.1)


def _accuracy(model, config, df):
    from shared.training.results import predict

    return float(np.mean(np.array(predict(model, config, df)) == df["outcome"].to_numpy()))


def test_federated_rounds_beat_each_single_site(two_sites, clients):
    import researcher
    from datasite.request_journal import journal_path
    from researcher.federation import federation

    sites, test = two_sites
    stop = threading.Event()
    owners = [threading.Thread(target=_owner_loop, args=(s, stop, {}), daemon=True) for s in sites]
    for t in owners:
        t.start()
    try:
        fed = federation(clients)
        job = researcher.jobs.DPSGD("cohort", epochs=EPOCHS, **JOB)
        trained = fed.train(job, rounds=ROUNDS, timeout=300, poll=0.5, progress=False)
        # each site alone, as many epochs as the federated model saw (both sites at once)
        single_reqs = {c.name: c.submit(researcher.jobs.DPSGD("cohort", epochs=EPOCHS * ROUNDS,
                                                               **JOB)) for c in clients}
        singles = {n: r.wait(timeout=300, poll=0.5, progress=False)
                   for n, r in single_reqs.items()}
    finally:
        stop.set()
        for t in owners:
            t.join(timeout=30)

    assert trained.contributed == ["hosp-a", "hosp-b"] and not trained.left_out
    assert len(trained.history) == ROUNDS
    fed_acc = _accuracy(trained.model(), trained.model_config, test)
    single_acc = {n: _accuracy(r.model, r.raw["model_config"], test) for n, r in singles.items()}
    # on failure, what each round saw: which sites, their weights (planned n_train) and noisy
    # local accuracy (one CI run in ~25 gave fed 0.56 against singles 0.58 / 0.53, not
    # reproduced in 40 simulated and 3 live runs: fed 0.71 +- 0.03, singles <= 0.62)
    assert all(fed_acc > a for a in single_acc.values()), \
        (fed_acc, single_acc, trained.rounds_table(), trained.left_out)

    # each site reserved all rounds at approval and, after the last round, committed exactly them
    for s in sites:
        schedule = s.ledger.entry(trained.approvals.request_ids[s.name])
        assert schedule["state"] == "released"
        assert schedule["realised_json"] == schedule["event_json"]
        assert s.executions() == ROUNDS + 1  # the rounds and one single-site job ran on real data
        # the server journaled every request (the round servers read new ones from there)
        journaled = set(journal_path(s.home.syft_dir).read_text().split())
        assert set(s.syft_requests()) <= journaled and len(journaled) >= ROUNDS + 1 + 1
    for name, p in trained.privacy.items():  # the rounds' training + one DP metric release each
        assert 4.0 < p["epsilon"] <= 4.0 + 0.5 and p["delta"] == 1e-4
    for h in trained.history:  # each round's metrics are a priced DP release
        assert all(m["mechanism"] == "noisy_class_x_correct_histogram"
                   for m in h["metrics"].values())


def test_a_denying_site_and_a_stopping_site(two_sites, clients):
    """A denial leaves the other site's result; a site that stops after one round commits one
    round and refunds the rest, and the federation goes on without it."""
    import researcher
    from researcher.federation import federation

    sites, _ = two_sites
    stop = threading.Event()
    actions = {"hosp-a": "deny"}
    owners = [threading.Thread(target=_owner_loop, args=(s, stop, actions), daemon=True)
              for s in sites]
    for t in owners:
        t.start()
    try:
        down = ("http://127.0.0.1:9", *RESEARCHER)  # nothing listens there
        fed = federation(clients + [down])
        assert "http://127.0.0.1:9" in fed.unreachable
        one = fed.submit(researcher.jobs.DPSGD("cohort", epochs=EPOCHS * ROUNDS, **JOB)).wait(
            timeout=300, poll=0.5, progress=False)
        assert one.contributed == ["hosp-b"]
        assert "denied" in one.left_out["hosp-a"] and "not this quarter" in one.left_out["hosp-a"]
        assert "No datasite answers" in one.left_out["http://127.0.0.1:9"]

        actions.clear()
        actions["hosp-a"] = "stop_after_1"
        before = sites[0].ledger.history("cohort")
        trained = fed.train(researcher.jobs.DPSGD("cohort", epochs=EPOCHS, **JOB), rounds=ROUNDS,
                            timeout=300, poll=0.5, progress=False)
    finally:
        stop.set()
        for t in owners:
            t.join(timeout=30)
    assert len(trained.history) == ROUNDS
    assert trained.history[0]["sites"] == ["hosp-a", "hosp-b"]
    assert trained.history[-1]["sites"] == ["hosp-b"]
    assert "dropped out in round 1" in trained.left_out["hosp-a"]
    assert "stopped participating" in trained.left_out["hosp-a"]

    from shared.privacy.accounting import event_from_json

    new = [e for e in sites[0].ledger.history("cohort") if e["request_id"] not in
           {b["request_id"] for b in before}]
    (entry,) = [e for e in new if e["state"] == "released"]
    planned, realised = event_from_json(entry["event_json"]), event_from_json(entry["realised_json"])
    # one round of ROUNDS committed: its DP-SGD steps and its one metric release
    assert realised.events[0].count * ROUNDS == planned.events[0].count
    assert planned.events[1].count == ROUNDS and realised.events[1] == planned.events[1].event
    assert entry["epsilon"] < sites[0].ledger.epsilon_of([entry["event_json"]], 1e-4)


def test_waiting_polls_one_request_not_the_listing():
    """A researcher's wait() (each site's, in a federation) polls its request by id: one round
    trip, where the listing of all her requests grows with every job and round."""
    import uuid
    from types import SimpleNamespace as NS

    from researcher.requests import JobRequest

    def listing():
        raise AssertionError("polled the listing of every request")

    def not_released(**kwargs):
        raise RuntimeError("waiting for approval")

    rid, asked = uuid.uuid4().hex, []
    syft_req = NS(status=NS(name="PENDING"))
    fetch = NS(get_by_uid=lambda uid: asked.append(uid.to_string()) or syft_req)
    client = NS(api=NS(services=NS(request=fetch, code=NS(call=not_released))),
                requests=NS(get_all=listing))
    req = JobRequest(NS(name="hosp", client=client), rid, "f", "cohort", code_uid="c", asset="a")
    assert req.status() == "pending" and asked == [rid]
    syft_req.status.name = "REJECTED"
    assert req.status() == "denied" and asked == [rid, rid]
