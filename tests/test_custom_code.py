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


ONCE = textwrap.dedent('''
def released_once(df):
    """declared privacy cost: epsilon=1.0, delta=0"""
    return float(df["mean_radius"].clip(0, 50).mean())
''')


def test_resubmitted_and_natively_approved_code_never_runs(site, client):
    """The released code sent again is refused (syft keeps one request per code); new code
    the owner approves natively in PySyft runs nowhere: the server never executes code.
    (Its own released request: it does not depend on the tests before it.)"""
    import syft as sy

    first = submit_source(client, ONCE)
    site.run(first, progress=False, epsilon=1.0, delta=1e-6)
    site.release(first)
    released = [r for r in site.state.requests_on("breast_cancer", ["released"])
                if r["request_id"] == first]
    assert released, "its own request was released"
    before = site.executions()
    with pytest.raises(Exception, match="already exists"):
        submit_source(client, ONCE)
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


def _run_value(site, rid):
    """What the run produced, as the owner's side decoded it (before release)."""
    from pathlib import Path

    from shared.custom.output import decode

    return decode(Path(site.state.request(rid)["result_path"]) / "out")


def _refused(site, rid, match):
    from datasite.config import SiteError

    with pytest.raises(SiteError, match=match) as err:
        site.run(rid, progress=False, epsilon=1.0, delta=1e-6)
    assert "refunded" in str(err.value)
    assert site.state.request(rid)["state"] == "failed"
    assert site.ledger.entry(rid)["state"] == "refunded"
    return str(err.value)


def test_output_tampered_after_the_run_is_not_released(site, client, monkeypatch):
    """Release deposits exactly what the owner previewed: output changed on disk after the run
    is refused by the digest check; with the check off, the tampered value would be released."""
    import json
    from pathlib import Path

    from datasite import custom_code
    from datasite.config import SiteError

    rid = submit_source(client, textwrap.dedent('''
    def tamper_target(df):
        return {"mean_radius": float(df["mean_radius"].clip(0, 50).mean())}
    '''))
    summary = site.run(rid, progress=False, epsilon=1.0, delta=1e-6)
    out = Path(site.state.request(rid)["result_path"]) / "out"
    (out / "output.json").write_text(json.dumps({"value": {"mean_radius": 999.0}}))
    with pytest.raises(SiteError, match="output changed on disk since the run; not released"):
        site.release(rid)
    assert site.state.request(rid)["state"] == "ran"
    assert site.ledger.entry(rid)["state"] == "running"  # nothing committed
    with pytest.raises(Exception):
        call_released(client, "tamper_target")
    # defence off: the digest check always passes; the tampered value goes out
    monkeypatch.setattr(custom_code, "output_digest", lambda _out: summary["output_sha256"])
    site.release(rid)
    assert call_released(client, "tamper_target") == {"mean_radius": 999.0}


def test_a_result_forged_past_the_in_sandbox_encoder_is_checked_again(site, client,
                                                                       monkeypatch):
    """Code that writes its own output files (a pickle as bytes) and exits before the encoder
    runs is refused by the owner's decoder; with that re-check off, the pickle would pass."""
    import shared.custom.output as output

    forge = textwrap.dedent('''
    def forge(df):
        import base64, json, os, pickle
        blob = base64.b64encode(pickle.dumps({"rows": 3})).decode()
        with open("/job/out/output.json", "w") as f:
            json.dump({"value": {"__bytes__": blob, "format": "bytes"}}, f)
        with open("/job/out/privacy.json", "w") as f:
            json.dump({"events": [], "measurements": 0}, f)
        os._exit(0)
    ''')
    _refused(site, submit_source(client, forge), "pickle is refused")
    # defence off: the owner's side trusts the sandbox's encoding
    monkeypatch.setattr(output, "check_bytes", lambda data: "bytes")
    rid = submit_source(client, forge.replace("def forge(", "def forge_off("))
    site.run(rid, progress=False, epsilon=1.0, delta=1e-6)
    assert output.is_pickle(_run_value(site, rid))
    site.deny(rid, reason="defence-off check")


TORCH_STATE = textwrap.dedent('''
def linear_weights(df):
    import io
    import torch
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return {"state_dict": model.state_dict(), "file": buf.getvalue(), "rows": len(df)}
''')


def test_a_torch_state_dict_result_is_accepted_and_reloads(site, client):
    import io

    import torch

    rid = submit_source(client, TORCH_STATE)
    summary = site.run(rid, progress=False, epsilon=1.0, delta=1e-6)
    assert "bytes[" in summary["output"]["type"] and "torch]" in summary["output"]["type"]
    site.release(rid)
    value = call_released(client, "linear_weights")
    torch.manual_seed(0)
    reference = torch.nn.Linear(2, 1).state_dict()
    model = torch.nn.Linear(2, 1)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in
                           value["state_dict"].items()})
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k])
    again = torch.nn.Linear(2, 1)
    again.load_state_dict(torch.load(io.BytesIO(value["file"]), weights_only=True))
    for k, v in again.state_dict().items():
        assert torch.equal(v, reference[k])


def test_a_torch_file_or_module_that_needs_pickle_is_refused(site, client):
    msg = _refused(site, submit_source(client, textwrap.dedent('''
    def torch_module_file(df):
        import io
        import torch
        buf = io.BytesIO()
        torch.save(torch.nn.Linear(2, 1), buf)  # the whole module: needs pickle to load
        return buf.getvalue()
    ''')), "does not load with weights_only=True")
    assert "state_dict" in msg
    _refused(site, submit_source(client, textwrap.dedent('''
    def torch_module(df):
        import torch
        return torch.nn.Linear(2, 1)
    ''')), r"return model\.state_dict\(\)")


class _Payload:
    """Unpickling this runs ``os.mkdir(path)``: code execution, made visible."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.mkdir, (str(self.path),))


def test_weights_only_is_what_refuses_a_torch_file_that_runs_code(tmp_path):
    import io

    import torch

    from shared.custom.output import OutputError, check_bytes

    marker = tmp_path / "code-ran"
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "extra": _Payload(marker)}, buf)
    data = buf.getvalue()
    with pytest.raises(OutputError, match="weights_only=True"):
        check_bytes(data)
    assert not marker.exists()
    # defence off: a full (pickle) load of the same bytes runs the payload
    torch.load(io.BytesIO(data), weights_only=False)
    assert marker.exists()


def test_a_skops_file_with_untrusted_types_is_refused(site, client):
    msg = _refused(site, submit_source(client, textwrap.dedent('''
    def skops_with_system(df):
        import os
        from skops.io import dumps
        from sklearn.preprocessing import FunctionTransformer
        return {"model": dumps(FunctionTransformer(func=os.system))}
    ''')), "skops file holds types outside scikit-learn")
    assert "posix.system" in msg  # (builtins.eval and getattr: the unit test below)


def test_skops_trust_is_classes_only_and_that_is_what_refuses_functions(tmp_path, monkeypatch):
    """A skops file naming ``builtins.eval`` passed a trust rule of module prefixes alone; the
    check now trusts classes only. Defence off (the prefix rule): it passes, and loading it
    with those types trusted runs the caller's string as code."""
    import os
    import warnings

    from skops.io import dumps, get_untrusted_types, loads
    from sklearn.neighbors import NearestCentroid
    from sklearn.preprocessing import FunctionTransformer

    import shared.custom.output as output

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = dumps(NearestCentroid().fit(np.array([[0.0, 0], [1, 1], [0, 1], [1, 0]]),
                                            np.array([0, 1, 0, 1])))
    assert output.check_bytes(plain) == "skops"  # plain estimators still pass
    for func in (os.system, eval, getattr):
        with pytest.raises(output.OutputError, match="skops file holds types outside"):
            output.check_bytes(dumps(FunctionTransformer(func=func)))
    evil = dumps(FunctionTransformer(func=eval))
    monkeypatch.setattr(output, "_trusted_skops_type",
                        lambda name: name.startswith(output.SKOPS_TRUSTED_PREFIXES))
    assert output.check_bytes(evil) == "skops"
    marker = tmp_path / "code-ran"
    loads(evil, trusted=get_untrusted_types(data=evil)).transform(
        f"__import__('os').mkdir({str(marker)!r})")
    assert marker.exists()
