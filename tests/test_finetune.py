"""DP fine-tuning of pretrained backbones (shared/pretrained, shared/training/finetune.py):
the conversion keeps the pretrained function, frozen BatchNorm keeps per-sample gradients
per-sample, each method trains what it says, LoRA under Opacus equals a plain SGD step, and
weights are checked (sha256, weights-only, shapes)."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from shared.pretrained.info import BackboneInfo, LocalBackbone, catalogue_text, parse_catalogue
from shared.pretrained.layers import ChannelAffine, frozen_batchnorm
from shared.pretrained.lora import LoRA
from shared.pretrained.model import build_finetuned, released_state
from shared.pretrained.weights import (inspect_weights, load_features, package_weights,
                                       read_state_dict)
from shared.training.engine import DPTrainer

SIZE = 32  # input side for tests: EfficientNet is fully convolutional, 32x32 runs fast on CPU


@pytest.fixture(scope="module")
def lite():
    arch, path, source = package_weights()
    return LocalBackbone(inspect_weights("lite0", arch, path, source, input_size=SIZE), str(path))


def _images(n: int, channels: int = 1, side: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(seed))


def test_registered_lite0_is_the_wheels_imagenet_model(lite):
    """The converted trunk (SAME pads + plain convs, frozen BN) computes what the port does."""
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=lite.path).eval()
    ours = load_features(lite.info, lite.path)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref.extract_features(x).mean((2, 3))
        got = ours(x)
    assert got.shape == (2, 1280) and lite.info.feature_dim == 1280
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ours.modules())
    assert all(type(m) is not nn.Conv2d or m.padding == (0, 0) or m.kernel_size == (1, 1)
               for m in ours.modules())


def _per_sample_grads(layer_model, x, y):
    """Per-sample gradients by autograd, one record at a time (the definition)."""
    out = []
    for i in range(len(x)):
        layer_model.zero_grad()
        nn.functional.cross_entropy(layer_model(x[i:i + 1]), y[i:i + 1], reduction="sum").backward()
        out.append(torch.cat([p.grad.flatten().clone() for p in layer_model.parameters()
                              if p.requires_grad]))
    return torch.stack(out)


def _bn_net(bn: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), bn, nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


def test_frozen_batchnorm_gradients_are_per_sample_and_opacus_computes_them_exactly():
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.2, 0.2)
    net = _bn_net(frozen_batchnorm(bn))
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    want = _per_sample_grads(net, x, y)

    from opacus.grad_sample import GradSampleModule

    gsm = GradSampleModule(copy.deepcopy(net), loss_reduction="sum")
    nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    got = torch.cat([p.grad_sample.flatten(1) for p in gsm.parameters() if p.requires_grad], 1)
    assert torch.allclose(got, want, atol=1e-5)
    # record 0's gradient does not depend on who else is in the batch
    x2 = x.clone()
    x2[1:] = torch.randn(5, 3, 8, 8)
    assert torch.allclose(_per_sample_grads(net, x2, y)[0], want[0])


def test_batchnorm_in_training_mode_would_mix_records():
    """The defence off: an ordinary BatchNorm in training mode normalises with the batch's
    statistics, so record 0's gradient changes with the other records -- not per-sample."""
    net = _bn_net(nn.BatchNorm2d(4)).train()
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 0, 1, 1, 0])

    def grad0(batch):
        net.zero_grad()
        nn.functional.cross_entropy(net(batch), y, reduction="none")[0].backward()
        return torch.cat([p.grad.flatten().clone() for p in net.parameters()])

    x2 = x.clone()
    x2[1:] = torch.randn(5, 3, 8, 8)
    assert not torch.allclose(grad0(x), grad0(x2), atol=1e-4)
    from opacus.grad_sample import GradSampleModule

    with pytest.raises(NotImplementedError, match="buffers"):  # Opacus refuses it, rightly
        GradSampleModule(net, loss_reduction="sum")


@pytest.mark.parametrize("method", ["head", "bitfit", "lora", "full"])
def test_each_method_trains_what_it_says(lite, method):
    torch.manual_seed(0)
    model = build_finetuned(lite.info, lite.path, method, n_classes=3)
    trained = {k for k, p in model.named_parameters() if p.requires_grad}
    backbone = {k for k in trained if k.startswith("backbone.")}
    assert {"head.0.weight", "head.0.bias"} <= trained
    if method == "head":
        assert not backbone
    elif method == "bitfit":
        assert backbone and all(k.endswith(".bias") for k in backbone)
        assert any(isinstance(m, ChannelAffine) and m.bias.requires_grad
                   for m in model.modules())
    elif method == "lora":
        assert backbone and all(".down." in k or ".up." in k for k in backbone)
    else:
        assert backbone == {k for k, _ in model.named_parameters() if k.startswith("backbone.")}
    # what is released: the trained parameters only (the backbone is the registered one)
    released = set(released_state(model, method))
    assert released == trained or (method == "full" and trained <= released)


def _lora_model(lite):
    torch.manual_seed(3)
    model = build_finetuned(lite.info, lite.path, "lora", n_classes=2, lora_rank=4)
    with torch.no_grad():  # away from the zero start, so every adapter has a gradient
        for m in model.modules():
            if isinstance(m, LoRA):
                m.up.weight.normal_(0, 0.01)
        model.head[0].weight.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_lora_dp_step_without_noise_or_clipping_equals_plain_sgd(lite, mode):
    """Opacus issue 820 (PEFT LoRA silently mis-updated under Opacus): with sigma=0 and a clip
    norm no gradient reaches, one DP step on every record must be one plain SGD step."""
    model = _lora_model(lite)
    reference = copy.deepcopy(model)
    x, y = _images(8), torch.tensor([0, 1] * 4)
    before = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}

    trainer = DPTrainer(model, clip_norm=1e6, noise_multiplier=0.0, learning_rate=0.5,
                        seed=0, device="cpu", grad_sample_mode=mode)
    trainer.run(x, y, np.ones(len(x)), steps=1)
    trainer.close()

    opt = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.5)
    reference.train()
    nn.functional.cross_entropy(reference(x), y).backward()
    opt.step()
    ref = dict(reference.named_parameters())
    adapters = [k for k in before if ".down." in k or ".up." in k]
    assert len(adapters) > 50
    for k, old in before.items():
        new = dict(model.named_parameters())[k].detach()
        assert torch.allclose(new, ref[k].detach(), atol=1e-6, rtol=1e-4), k
    moved = [k for k in adapters if not torch.equal(dict(model.named_parameters())[k], before[k])]
    assert len(moved) == len(adapters)  # every adapter weight actually changed


def test_finetune_job_on_mock_head_and_bitfit(lite):
    """The job kind end to end on public data: result records the backbone, the released state
    reloads into the same predictions."""
    from datasite.demo_data import make_synthetic_cxr
    from shared.data import DatasetMeta
    from shared.runner import run_job
    from shared.training.images import predict_images_proba
    from shared.training.results import load_model

    data = make_synthetic_cxr(n=120, size=28, seed=0)
    meta = DatasetMeta(name="cxr", kind="images", n_records=120, label="label", labels=[0, 1],
                       image_shape=[28, 28])
    for method in ("head", "bitfit"):
        spec = dict(kind="finetune", dataset="cxr", backbone="lite0", method=method,
                    epsilon=8.0, delta=1e-3, epochs=1, batch_size=16)
        r = run_job(spec, data, meta, backbones={"lite0": lite}, mock=True, pin_randomness=0)
        assert r["backbone"]["sha256"] == lite.info.sha256
        assert r["model_config"]["backbone"]["sha256"] == lite.info.sha256
        assert "path" not in str(r["model_config"]) and lite.path not in str(r)
        assert r["privacy"]["training_epsilon"] <= 8.0 + 1e-6  # metrics are priced on top
        model = load_model(r)  # the package's weights are found by their sha256
        p = predict_images_proba(model, r["model_config"], data["images"][:5])
        assert p.shape == (5, 2) and np.allclose(p.sum(1), 1, atol=1e-5)
    with pytest.raises(Exception, match="not registered.*lite0"):
        run_job({**spec, "backbone": "resnet_cxr"}, data, meta, backbones={"lite0": lite},
                mock=True)


def test_weights_changed_after_registration_are_refused(lite, tmp_path):
    path = tmp_path / "w.pt"
    sd = read_state_dict(lite.path)
    torch.save(sd, path)
    info = inspect_weights("mine", "efficientnet_lite0", path, "owner's file", input_size=SIZE)
    load_features(info, path)  # as registered: fine
    sd["_conv_stem.weight"] = sd["_conv_stem.weight"] * 0 + 1  # a poisoned backbone
    torch.save(sd, path)
    with pytest.raises(ValueError, match="changed since they were registered"):
        load_features(info, path)


class _Payload:
    """Unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch '{self.marker}'",))


def test_a_pickled_checkpoint_runs_no_code(tmp_path):
    import os

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload(marker)}, path)
    with pytest.raises(ValueError, match="weights-only"):
        read_state_dict(path)
    assert not os.path.exists(marker)
    with open(path, "rb") as f:  # the defence off: plain pickle loading runs the payload
        torch.load(f, weights_only=False)
    assert os.path.exists(marker)
    os.remove(marker)


def test_a_torchvision_architecture_from_an_owner_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=14)  # e.g. a CXR-trained net
    path = tmp_path / "resnet18_cxr.pt"
    torch.save({"state_dict": net.state_dict()}, path)
    info = inspect_weights("cxr18", "resnet18", path, "owner's file", input_size=SIZE)
    assert info.feature_dim == 512 and 11_000_000 < info.n_params < 11_200_000
    with pytest.raises(ValueError, match="do not fit architecture 'resnet34'.*missing"):
        inspect_weights("x", "resnet34", path, "owner's file")
    with pytest.raises(ValueError, match="unsupported architecture"):
        inspect_weights("x", "vit_b_16", path, "owner's file")


def test_catalogue_round_trip_keeps_owner_prose_and_no_path():
    info = BackboneInfo("lite0", "efficientnet_lite0", 224, 3_371_416, 1280, "ab" * 32,
                        "PyPI package x ```injected")
    text = catalogue_text([info], "Hospital A's datasite.")
    assert text.startswith("Hospital A's datasite.")
    assert parse_catalogue(text) == [info]
    assert parse_catalogue("no catalogue") == []
    assert pickle.loads(pickle.dumps(info)) == info
