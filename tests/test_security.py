"""Attacks a researcher could try against a datasite, and the proof that each one fails."""
from __future__ import annotations

import pandas as pd
import pytest
import syft as sy

import researcher
from datasite.config import SiteError
from researcher import jobs

from conftest import RESEARCHER

pytestmark = pytest.mark.slow


def _submit(site, **kw):
    args = dict(dataset="breast_cancer", label="diagnosis", epsilon=2.0, delta=1e-5, epochs=2,
                batch_size=64)
    args.update(kw)
    return site.submit(jobs.DPSGD(**args))


def _call(site, func_name):
    asset = site.datasets["breast_cancer"]._asset
    out = getattr(site.client.code, func_name)(data=asset)
    return out.get() if hasattr(out, "get") else out


def test_real_data_is_not_on_the_server(live_site, demo_files):
    """Neither the researcher nor even root on the low side can read a real record."""
    real = pd.read_csv(demo_files / "breast_cancer.csv")
    site = researcher.connect(live_site.url, *RESEARCHER)
    asset = site.datasets["breast_cancer"]._asset
    with pytest.raises(Exception):
        data = asset.data
        if data is None or isinstance(data, sy.SyftError):
            raise PermissionError("no access")
    root_view = live_site.client.datasets["breast_cancer"].assets[0].data
    assert len(root_view.merge(real, how="inner", on=list(real.columns))) == 0
    # and no real value is anywhere in the server's files (SQLite backend)
    syft_dir = live_site.home.syft_dir
    blob = b"".join(p.read_bytes() for p in syft_dir.rglob("*") if p.is_file())
    distinctive = real["mean_area"].iloc[:20] if "mean_area" in real else real.iloc[:20, 3]
    import struct

    hits = sum(struct.pack("<d", float(v)) in blob for v in distinctive)
    assert hits == 0


def test_no_execution_before_approval_nor_after_release(live_site):
    site = researcher.connect(live_site.url, *RESEARCHER)
    req = _submit(site)
    with pytest.raises(Exception, match="waiting for approval|never runs"):
        _call(site, req.func_name)
    assert live_site.executions(req.id) == 0

    live_site.run(req.id, progress=False)
    with pytest.raises(Exception):  # ran on the high side, not released: nothing to read
        _call(site, req.func_name)

    live_site.release(req.id)
    first = _call(site, req.func_name)
    second = _call(site, req.func_name)  # PySyft#9391: this would re-execute on a plain server
    assert first["metrics"] == second["metrics"]
    assert live_site.executions(req.id) == 1
    with pytest.raises(SiteError, match="already ran"):
        live_site.run(req.id, progress=False)
    assert live_site.executions(req.id) == 1


def test_custom_code_never_runs(live_site):
    """Custom code is shown to the owner, refused by the runner, and cannot execute even if
    the owner approves it by hand in PySyft."""
    site = researcher.connect(live_site.url, *RESEARCHER)
    asset = site.datasets["breast_cancer"]._asset

    @sy.syft_function_single_use(data=asset)
    def steal(data):
        import os
        return {"files": os.listdir("/"), "rows": data.values.tolist()}

    req = site.client.code.request_code_execution(steal)
    rid = req.id.to_string()
    info = {r["request_id"]: r for r in live_site.review()}[rid]
    assert info["template"] is False and "os.listdir" in info["code"]
    with pytest.raises(SiteError, match="custom code"):
        live_site.run(rid, progress=False)
    # the owner approves it natively: the low side still refuses to execute anything
    syft_req = [r for r in live_site.client.requests.get_all() if r.id.to_string() == rid][0]
    try:
        syft_req.approve()
    except Exception:
        pass
    with pytest.raises(Exception, match="never runs|approval|denied"):
        _call(site, "steal")
    assert live_site.executions(rid) == 0


def test_researcher_cannot_act_as_owner(live_site):
    site = researcher.connect(live_site.url, *RESEARCHER)
    req = _submit(site, epsilon=1.0)
    own = [r for r in site.client.requests.get_all() if r.id.to_string() == req.id][0]
    for attempt in (lambda: own.approve(), lambda: own.deposit_result({"kind": "dpsgd_table"})):
        try:
            res = attempt()
        except Exception:
            continue
        assert isinstance(res, sy.SyftError) or res is None
    assert req.status() == "pending"
    # cannot register accounts either
    with pytest.raises(Exception):
        res = site.client.users.create(email="mallory@x.org", name="M", password="mallorypw1",
                                       password_verify="mallorypw1")
        if isinstance(res, sy.SyftError):
            raise PermissionError(res.message)
    users = [u.email for u in live_site.client.users.get_all()]
    assert "mallory@x.org" not in users


def test_no_self_signup(live_site):
    guest = sy.login_as_guest(url=live_site.url)
    try:
        res = guest.register(name="Eve", email="eve@x.org", password="evepassword1",
                             password_verify="evepassword1")
    except Exception as e:  # refused: fine, checked below
        res = e
    users = [u.email for u in live_site.client.users.get_all()]
    assert "eve@x.org" not in users, res
