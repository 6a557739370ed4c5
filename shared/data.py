"""Dataset payloads and metadata, the same on the owner's and the researcher's side.

A *table* payload is a pandas DataFrame holding numeric feature columns and one label column.
An *images* payload is a dict ``{"images": uint8 array (N, H, W) or (N, H, W, C),
"labels": int64 array (N,)}`` -- the MedMNIST ``.npz`` layout without the split prefix.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

TABLE = "table"
IMAGES = "images"
_META_FENCE = "```json dp-datasite-meta"


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
    # column -> public scale (the largest |value| the owner's declared bounds allow, see
    # shared/schema.py). Table jobs map each column from its declared bounds (``columns``) to
    # [-1, 1] (shared.training.preprocess.declared_bounds); they divide by these scales only
    # for metadata without declarations (published before schemas)
    feature_scales: dict[str, float] = field(default_factory=dict)
    description: str = ""
    # column -> the owner's declaration {type, unit, bounds | categories [+ names], [missing]}
    # (tables; plus a date's origin and format, declared rates: see shared/schema.py); names:
    # the declared string categories, stored as codes 0..k-1 in that order
    columns: dict[str, dict] = field(default_factory=dict)
    class_names: dict[str, str] = field(default_factory=dict)  # str(class code) -> name
    # the owner's declared class shares, in ``labels`` order (empty: none declared); they shape
    # the mock only and are public by declaration (shared/schema.py)
    label_rates: list[float] = field(default_factory=list)
    # which mock is published: {"kind": "synthetic", "epsilon": 0.0} (drawn from the schema
    # alone) or {"kind": "dp", "epsilon", "delta", "ledger_entry"} (a DP synthetic mock whose
    # cost is charged to the dataset's budget; datasite.mock_release)
    mock: dict = field(default_factory=lambda: {"kind": "synthetic", "epsilon": 0.0})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DatasetMeta":
        """Published metadata back; keys this version does not know (a newer site's) are
        ignored, so an older researcher client still reads a newer site's catalogue."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


def power_of_ten_scale(max_abs: float) -> float:
    """The smallest power of ten >= ``max_abs`` (1.0 for an all-zero column).

    For tests and benchmarks that build metadata in process. A datasite never publishes this
    of its records (it is a non-DP statistic of them): published scales come from the owner's
    declared bounds (``shared.schema.scale_of``).
    """
    import math

    if not math.isfinite(max_abs) or max_abs <= 0:
        return 1.0
    return float(10.0 ** math.ceil(math.log10(max_abs)))


# Characters escaped as \uXXXX in the published JSON. They only ever occur inside JSON strings
# (column names, descriptions...), where the escape decodes to the same text: a backtick could
# close the Markdown fence early, and < > & could open HTML where the description is rendered.
_FENCE_SAFE = str.maketrans({c: f"\\u{ord(c):04x}" for c in "`<>&"})


def published_description(meta: DatasetMeta) -> str:
    """A dataset's public description: the owner's prose plus machine-readable metadata.

    The metadata is one line of ASCII JSON without backticks or ``< > &``, so any column name
    or description round-trips exactly through :func:`parse_published`.
    """
    body = json.dumps(asdict(meta), sort_keys=True, ensure_ascii=True).translate(_FENCE_SAFE)
    return f"{meta.description}\n\n{_META_FENCE}\n{body}\n```\n"


def parse_published(text: str) -> DatasetMeta | None:
    """The metadata in a description written by ``published_description`` (else None).

    Raises ValueError if the fenced metadata is not valid (e.g. written by another tool).
    """
    start = text.rfind(_META_FENCE)  # ours is appended last, whatever the owner's prose says
    if start < 0:
        return None
    # raw_decode reads exactly one JSON value: nothing inside it can end the block early
    body, _ = json.JSONDecoder().raw_decode(text[start + len(_META_FENCE):].lstrip())
    if not isinstance(body, dict):
        raise ValueError("the dp-datasite metadata block is not a JSON object")
    return DatasetMeta(**body)


# Leading characters that make a spreadsheet read a CSV cell as a formula (OWASP, CSV injection).
CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def formula_like(text) -> bool:
    """Whether ``text`` is a string a spreadsheet would run as a formula if it were a CSV cell."""
    return isinstance(text, str) and text.startswith(CSV_FORMULA_PREFIXES)


def csv_safe(value):
    """``value`` made inert for spreadsheets: a formula-like string gets a leading single quote
    (the OWASP CSV-injection defence); anything else is returned unchanged."""
    return "'" + value if formula_like(value) else value


def csv_safe_frame(df):
    """A copy of DataFrame ``df`` with :func:`csv_safe` applied to its column names and text
    cells, for ``to_csv(..., quoting=csv.QUOTE_NONNUMERIC)`` (quoted, as OWASP advises; pandas
    would leave a bare CR unquoted); numbers (negative ones included) are left as they are."""
    out = df.rename(columns=csv_safe)
    for c in out.columns:
        if out[c].dtype == object or str(out[c].dtype) == "string":
            out[c] = out[c].map(csv_safe)
    return out


def n_train_records(n_records: int, test_fraction: float) -> int:
    """The planned (public) training-record count after the held-out split. The split itself is
    per record (``shared.training.split.split_indices``), so the realised count is Binomial and
    private; every privacy-relevant quantity of a job (Poisson rate, steps, regulariser,
    reported counts) uses this planned count instead."""
    n_test = int(math.ceil(n_records * test_fraction)) if test_fraction > 0 else 0
    return n_records - n_test
