"""Dataset payloads and metadata, the same on the owner's and the researcher's side.

A *table* payload is a pandas DataFrame holding numeric feature columns and one label column.
An *images* payload is a dict ``{"images": uint8 array (N, H, W) or (N, H, W, C),
"labels": int64 array (N,)}`` -- the MedMNIST ``.npz`` layout without the split prefix.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

TABLE = "table"
IMAGES = "images"


@dataclass
class DatasetMeta:
    """What a researcher may know about a dataset without seeing a record."""

    name: str
    kind: str  # TABLE or IMAGES
    n_records: int
    label: str  # label column (tables) or "label" (images)
    labels: list[Any]  # the label set, sorted
    features: dict[str, str] = field(default_factory=dict)  # column -> dtype (tables)
    image_shape: list[int] | None = None  # (H, W) or (H, W, C) (images)
    description: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DatasetMeta":
        return cls(**json.loads(text))
