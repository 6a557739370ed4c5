"""PySyft's own workflow on a dp-datasite: a researcher using only ``syft`` submits a custom
function (the PySyft + OpenDP tutorial, on the breast-cancer table), the owner reads it with
its declared cost and static summary, states the cost, runs it once in the sandbox, previews
the output and releases it; the researcher gets it through PySyft's usual call. Then the
attacks: overspending through the accounted handle, pickle results, and running twice."""
from __future__ import annotations

import io
import textwrap

import numpy as np
import pytest

from custom_helpers import call_released, running_custom_site, submit_source, syft_login

# The tutorial's flow adapted to a medical table: a nearest-centroid classifier whose class
# means are OpenDP Laplace releases (clipped sums and counts), returned with skops; noise goes
# through the owner's accounted handle when the runner passes one (on the mock: OpenDP itself).
TUTORIAL = textwrap.dedent('''
def dp_centroids(df, dp=None):
    """Nearest-centroid model from DP class means (OpenDP Laplace), returned with skops.

    declared privacy cost: epsilon=3.0, delta=0
    """
    import numpy as np
    import opendp.prelude as odp
    from skops.io import dumps
    from sklearn.neighbors import NearestCentroid

    odp.enable_features("contrib")

    def noisy(value, sensitivity, epsilon):
        if dp is not None:  # the owner's accounted handle: its spend is measured
            return dp.laplace(value, sensitivity, epsilon)
        space = odp.atom_domain(T=float, nan=False), odp.absolute_distance(T=float)
        return odp.m.make_laplace(*space, scale=sensitivity / epsilon)(float(value))

    features = {"mean_radius": 50.0, "mean_texture": 128.0}
    centroids, counts = [], []
    for label in (0, 1):
        rows = df[df["diagnosis"] == label]
        n = max(noisy(len(rows), 1.0, 0.5), 1.0)
        counts.append(n)
        centroids.append([noisy(rows[c].clip(0, b).sum(), b, 0.5) / n
                          for c, b in features.items()])
    model = NearestCentroid().fit(np.array([[0.0, 0], [0, 1], [1, 0], [1, 1]]),
                                  np.array([0, 0, 1, 1]))
    model.centroids_ = np.array(centroids)
    return dumps(model), {"noisy_counts": counts}, np.array(centroids)
''')


@pytest.fixture(scope="module")
def site(tmp_path_factory, demo_files):
    with running_custom_site(tmp_path_factory.mktemp("custom"), demo_files, "hosp-custom") as s:
        yield s


@pytest.fixture(scope="module")
def client(site):
    return syft_login(site)


def _info(site, rid):
    return site.describe_request(rid)


def test_tutorial_flow_with_raw_syft(site, client):
    from skops.io import get_untrusted_types, loads

    from datasite.cli import print_request
    from shared.privacy.accounting import is_declared

    ds = client.datasets["breast_cancer"]
    mock = ds.assets[0].mock
    ns = {}
    exec(TUTORIAL, ns)  # the researcher tries it on the mock first, as the tutorial does
    model_bytes, _, _ = ns["dp_centroids"](mock.copy())
    assert loads(model_bytes, trusted=get_untrusted_types(data=model_bytes)).predict(
        mock[["mean_radius", "mean_texture"]].to_numpy()).shape == (len(mock),)

    rid = submit_source(client, TUTORIAL)
    info = _info(site, rid)
    assert info["kind"] == "custom" and info["dataset"] == "breast_cancer"
    assert "def dp_centroids" in info["code"] and info["validation"] == "ok"
    c = info["custom"]
    assert c["declared_by_researcher"] == {"epsilon": 3.0, "delta": 0.0}
    s = c["summary"]
    assert s["takes_handle"] and "dp.laplace" in s["handle_calls"]
    assert "opendp.prelude.m.make_laplace" in s["dp_library_calls"]
    assert "skops.io" in s["imports"] and s["returns"]
    out = io.StringIO()
    print_request(info, file=out)
    text = out.getvalue()
    assert "| def dp_centroids(df, dp=None):" in text
    assert "declared privacy cost: eps=3, delta=0" in text and "dp handle calls: dp.laplace" in text

    from datasite.config import SiteError

    with pytest.raises(SiteError, match="--epsilon E --delta D"):
        site.run(rid, progress=False)  # no stated cost: nothing runs
    assert site.executions(rid) == 0

    summary = site.run(rid, progress=False, epsilon=3.0, delta=1e-6)
    assert summary["kind"] == "custom"
    assert summary["output"]["type"].startswith("tuple[bytes[") and "skops" in \
        summary["output"]["type"]
    assert summary["privacy"]["measured"]["measurements"] == 6
    assert summary["privacy"]["measured"]["epsilon"] == pytest.approx(3.0, rel=1e-3)
    assert not summary["privacy"]["overspent"]
    entry = site.ledger.entry(rid)
    assert entry["state"] == "running" and is_declared(entry["event_json"])

    site.release(rid)
    assert site.executions(rid) == 1
    from datasite.ledger_view import render, report

    rep = report(site.ledger, "breast_cancer")
    assert [h["cost"] for h in rep["history"] if h["request_id"] == rid] == ["declared"]
    assert "declared" in render(rep)
    assert rep["audit"]["intact"], rep["audit"]["detail"]  # the custom_run entry replays

    value = call_released(client, "dp_centroids")  # PySyft's usual call, after release
    model_bytes, counts, centroids = value
    model = loads(model_bytes, trusted=get_untrusted_types(data=model_bytes))
    assert type(model).__name__ == "NearestCentroid" and centroids.shape == (2, 2)
    assert len(counts["noisy_counts"]) == 2
    # DP centroids of the real table separate the classes (the mock keeps no such relation;
    # the test reads sklearn's copy of the table to check)
    from datasite.demo_data import breast_cancer_frame

    real = breast_cancer_frame()
    X = real[["mean_radius", "mean_texture"]].to_numpy()
    assert (model.predict(X) == real["diagnosis"].to_numpy()).mean() > 0.75

    # attacks on single execution: call again after release, run again, re-submit, approve
    again = call_released(client, "dp_centroids")
    assert again[0] == model_bytes and site.executions(rid) == 1
    with pytest.raises(SiteError, match="already released|at most once"):
        site.run(rid, progress=False, epsilon=3.0, delta=1e-6)
    assert site.executions(rid) == 1


def test_resubmitted_and_natively_approved_code_never_runs(site, client):
    """The released code sent again is refused (syft keeps one request per code); new code
    the owner approves natively in PySyft runs nowhere: the server never executes code."""
    import syft as sy

    released = [r for r in site.state.requests_on("breast_cancer", ["released"])]
    assert released, "runs after test_tutorial_flow_with_raw_syft"
    before = site.executions()
    with pytest.raises(Exception, match="already exists"):
        submit_source(client, TUTORIAL)
    rid = submit_source(client, TUTORIAL.replace("dp_centroids", "dp_centroids2"))
    syft_req = [x for x in site.client.requests.get_all() if x.id.to_string() == rid][0]
    try:  # the owner approves natively in PySyft (syft may refuse on a low side): nothing runs
        syft_req.approve()
    except Exception:
        pass
    asset = client.datasets["breast_cancer"].assets[0]
    client.refresh()
    with pytest.raises(Exception, match="never runs|approval|denied|not approved"):
        res = client.code.dp_centroids2(df=asset)
        if isinstance(res, sy.SyftError):
            raise RuntimeError(res.message)
    assert site.executions(rid) == 0 and site.executions() == before


OVERSPEND = textwrap.dedent('''
def overspend(df, dp=None):
    """declared privacy cost: epsilon=1.0, delta=0"""
    total = 0.0
    for c in ["mean_radius", "mean_texture", "mean_area"]:  # three queries, not one
        total += dp.laplace(df[c].clip(0, 100).sum(), 100.0, 1.0)
    return total
''')


def test_overspending_through_the_handle_is_not_released(site, client):
    from datasite.config import SiteError

    rid = submit_source(client, OVERSPEND)
    summary = site.run(rid, progress=False, epsilon=1.0, delta=1e-6)
    assert summary["privacy"]["overspent"] and summary["privacy"]["measured"]["measurements"] == 3
    with pytest.raises(SiteError, match="more than the eps=1 you stated: not released"):
        site.release(rid)
    site.deny(rid, reason="spent more than stated")
    assert site.ledger.entry(rid)["state"] == "refunded"
    with pytest.raises(Exception):
        call_released(client, "overspend")


def test_pickle_and_objects_are_refused_as_results(site, client):
    from datasite.config import SiteError

    pickled = textwrap.dedent('''
    def give_pickle(df):
        import pickle
        return {"model": pickle.dumps(df.head(3))}
    ''')
    rid = submit_source(client, pickled)
    with pytest.raises(SiteError, match="pickle is refused"):
        site.run(rid, progress=False, epsilon=1.0, delta=1e-6)
    assert site.state.request(rid)["state"] == "failed"
    assert site.ledger.entry(rid)["state"] == "refunded"
    obj = textwrap.dedent('''
    def give_object(df):
        class Trojan:
            def __reduce__(self):
                return (print, ("owned",))
        return Trojan()
    ''')
    rid = submit_source(client, obj)
    with pytest.raises(SiteError, match="cannot leave the sandbox as data"):
        site.run(rid, progress=False, epsilon=1.0, delta=1e-6)
    assert site.ledger.entry(rid)["state"] == "refunded"


def test_output_encoding_refuses_pickle_in_any_protocol():
    import pickle

    from shared.custom.output import OutputError, check_bytes, is_pickle

    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps({"a": np.arange(3)}, protocol=proto)
        assert is_pickle(data)
        with pytest.raises(OutputError):
            check_bytes(data)
    assert check_bytes(b"plain bytes, not a pickle") == "bytes"
