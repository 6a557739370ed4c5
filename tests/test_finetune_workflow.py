"""Fine-tuning a registered backbone through a real HTTP datasite: the owner registers the
package backbone, the researcher sees the catalogue (never the weights' path), runs on the
mock, submits; the owner reviews (sees the backbone), runs and releases; the researcher's
model rebuilds from the release and the package weights."""
from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest
import torch

import researcher
from conftest import RESEARCHER, make_site
from datasite.cli import print_request
from datasite.config import SiteError
from datasite.demo_data import schema_path, write_synthetic_cxr_npz
from researcher import jobs
from researcher.errors import ResearcherError
from researcher.connection import public_description
from shared.pretrained.architectures import LITE_PACKAGE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ft_site(tmp_path_factory):
    data = tmp_path_factory.mktemp("ftdata")
    npz = write_synthetic_cxr_npz(data / "cxr.npz", n_train=120, n_val=20, n_test=20, size=28)
    site = make_site(tmp_path_factory.mktemp("ft"), "hosp-ft")
    try:
        site.upload("cxr", npz=str(npz), schema=schema_path(npz), budget_epsilon=30.0,
                    delta=1e-4)
        site.add_user(*RESEARCHER, name="Alice")
        yield site
    finally:
        site.down()


def _job(backbone="lite0"):
    return jobs.FineTune("cxr", backbone, epsilon=4.0, delta=1e-5, method="head", epochs=1,
                         batch_size=32)


def test_finetune_from_a_registered_backbone(ft_site):
    owner = ft_site
    info = owner.add_model("lite0", package=LITE_PACKAGE, input_size=32)
    weights = owner.local_backbones()["lite0"].path

    # the researcher's catalogue: the public facts, never where the weights lie
    site = researcher.connect(owner.url, *RESEARCHER)
    models = site.models
    assert list(models) == ["lite0"] and models["lite0"] == info
    m = models["lite0"]
    assert (m.arch, m.input_size, m.feature_dim) == ("efficientnet_lite0", 32, 1280)
    assert m.n_params > 3e6 and LITE_PACKAGE in m.source
    text = public_description(owner.url)
    for secret in (weights, str(owner.home.root), "weights.pt", "models/lite0"):
        assert secret not in text and secret not in repr(models)
    assert all("path" not in i.to_dict() for i in models.values())

    # the mock run finds the installed package's file by its sha256 (no random weights)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        mock = _job().run_on_mock(site)
    assert mock.backbone["sha256"] == info.sha256
    assert mock.metrics["evaluated_on"].startswith("mock")

    req = site.submit(_job())
    # the researcher's client refuses an unregistered backbone before sending anything ...
    with pytest.raises(ResearcherError, match=r"no registered model 'resnet-x'.*\['lite0'\]"):
        site.submit(_job("resnet-x"))
    # ... and the owner refuses it from a client that skips that check
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("researcher.requests._check_backbones", lambda *a: None)
        bad = site.submit(_job("resnet-x"))
    reviewed = {r["request_id"]: r for r in owner.review()}
    good = reviewed[req.id]
    assert good["validation"] == "ok" and good["cost"]["budget"]["fits"]
    assert good["backbones"] == [{"name": "lite0", "registered": True,
                                  "arch": "efficientnet_lite0", "sha256": info.sha256,
                                  "source": info.source}]
    shown = io.StringIO()
    with redirect_stdout(shown):
        print_request(good)
    assert f"backbone lite0: efficientnet_lite0, sha256 {info.sha256[:12]}" in shown.getvalue()
    # an unknown backbone: refused at review with the names registered here
    assert reviewed[bad.id]["validation"] == ("backbone 'resnet-x' is not registered on this "
                                              "datasite; registered: ['lite0'] (see site.models)")
    with pytest.raises(SiteError, match="not registered.*lite0"):
        owner.run(bad.id, progress=False)
    owner.deny(bad.id, reason="no such backbone here")
    assert owner.executions(bad.id) == 0

    summary = owner.run(req.id, progress=False)
    assert summary["backbone"] == {"name": "lite0", "sha256": info.sha256,
                                   "arch": "efficientnet_lite0", "source": info.source}
    (after,) = [r for r in owner.review() if r["request_id"] == req.id]
    assert after["ran_from"]["sha256"] == info.sha256
    owner.release(req.id)
    result = req.wait(timeout=120, progress=False)
    assert result.backbone["sha256"] == info.sha256
    assert result.privacy["training_epsilon"] <= 4.0 + 1e-6
    model = result.model  # the package weights are found by their sha256
    images = torch.from_numpy(site.datasets["cxr"].mock["images"][:8]).float()[:, None] / 255
    assert model(images).shape == (8, 2)
    assert owner.executions(req.id) == 1
