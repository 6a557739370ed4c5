"""A registered backbone as everyone may see it (no torch, no syft): the site's public model
catalogue. The weights file's path is the owner's alone and never part of it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

# Fine-tuning methods (``shared.pretrained.methods`` implements them; mirrored here without torch).
METHODS = ("head", "bitfit", "lora", "full")
# Where a catalogue travels: a fenced JSON block in the server's public description.
_FENCE = "```dp-datasite-models"


@dataclass(frozen=True)
class BackboneInfo:
    """Public facts about one registered backbone (what ``site.models`` shows)."""

    name: str
    arch: str
    input_size: int                 # images are resized to input_size x input_size
    n_params: int                   # parameters of the feature extractor (no classifier)
    feature_dim: int                # length of its feature vector
    sha256: str                     # of the weights file as registered
    source: str                     # where the weights came from, in words
    mean: list = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneInfo":
        """Ignores keys it does not know, so an older client reads a newer site's catalogue."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def __repr__(self) -> str:
        return (f"<backbone {self.name}: {self.arch}, {self.input_size}x{self.input_size} input, "
                f"{self.n_params / 1e6:.2f}M parameters, {self.feature_dim} features, "
                f"weights: {self.source} (sha256 {self.sha256[:12]})>")


def catalogue_text(infos: list[BackboneInfo], prose: str = "") -> str:
    """The server description that publishes ``infos`` (after the owner's ``prose``)."""
    body = json.dumps([i.to_dict() for i in infos], sort_keys=True, ensure_ascii=True)
    body = body.replace("`", "\\u0060")  # nothing inside can close the fence
    return f"{prose.rstrip()}\n\n{_FENCE}\n{body}\n```\n".lstrip()


def parse_catalogue(text: str | None) -> list[BackboneInfo]:
    """The backbones a description written by :func:`catalogue_text` lists ([] if none)."""
    text = text or ""
    start = text.rfind(_FENCE)
    if start < 0:
        return []
    body, _ = json.JSONDecoder().raw_decode(text[start + len(_FENCE):].lstrip())
    if not isinstance(body, list):
        raise ValueError("the dp-datasite model catalogue is not a JSON list")
    return [BackboneInfo.from_dict(d) for d in body]


def prose_of(text: str | None) -> str:
    """The owner's own words in a description, without the catalogue block."""
    text = text or ""
    start = text.rfind(_FENCE)
    return (text if start < 0 else text[:start]).rstrip()


@dataclass(frozen=True)
class LocalBackbone:
    """A registered backbone with where its weights lie on this machine (the owner's path, or a
    researcher's copy; None: random weights of the architecture, for checking a job on mock
    data only). Never published."""

    info: BackboneInfo
    path: str | None
