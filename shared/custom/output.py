"""The only way a custom function's result leaves the sandbox: data, never pickle.

The sandboxed process encodes what the function returned (:func:`encode`) into ``output.json``
(the structure, plain JSON) and ``arrays.npz`` (numeric arrays, saved and loaded with
``allow_pickle=False``); the owner's process decodes it (:func:`decode`) without unpickling
anything. Accepted: None, bool, int, float, str; lists, tuples and str-keyed dicts of them;
numpy arrays and scalars of non-object dtypes; pandas Series and DataFrames (numeric or text
columns); torch tensors (as numpy arrays); scikit-learn estimators (as skops bytes); and bytes,
unless they are a pickle stream. Bytes that are a skops file must hold only scikit-learn, numpy
and builtin classes (no functions: ``FunctionTransformer(func=eval)`` is refused), and a torch
file must load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import base64
import io
import json
import math
import pickletools
import zipfile
from pathlib import Path

import numpy as np

OUTPUT_FILE = "output.json"
ARRAYS_FILE = "arrays.npz"
MAX_DEPTH = 20
MAX_ITEMS = 100_000
# module prefixes a returned skops file may name (sklearn estimators and what they hold)
SKOPS_TRUSTED_PREFIXES = ("sklearn.", "numpy.", "builtins.", "scipy.sparse.", "collections.")


class OutputError(ValueError):
    """A result that cannot leave the sandbox as data; the message says what to return."""


def is_pickle(data: bytes) -> bool:
    """True when ``data`` is a complete pickle stream (any protocol, 0 included)."""
    if not data:
        return False
    try:
        last = None
        for op, _, pos in pickletools.genops(io.BytesIO(data)):
            last = (op.name, pos)
        return last is not None and last[0] == "STOP" and last[1] == len(data) - 1
    except Exception:
        return False


def _zip_names(data: bytes) -> list[str] | None:
    if not data.startswith(b"PK"):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return z.namelist()
    except zipfile.BadZipFile:
        return None


def _trusted_skops_type(name: str) -> bool:
    """A name a returned skops file may hold: a class (never a function such as
    ``builtins.eval`` or ``posix.system``) of scikit-learn, numpy, scipy.sparse, collections
    or the builtins (only modules of those packages are imported to look it up)."""
    import importlib

    if not name.startswith(SKOPS_TRUSTED_PREFIXES):
        return False
    module, _, attr = name.rpartition(".")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception:  # noqa: BLE001 (a name that does not resolve is not trusted)
        return False
    return isinstance(obj, type)


def check_bytes(data: bytes) -> str:
    """What these returned bytes are ('skops', 'torch', 'bytes'); OutputError for a pickle, a
    skops file naming other types, or a torch file that needs pickle to load."""
    if is_pickle(data):
        raise OutputError("the result holds a pickle: pickle is refused (it runs code when "
                          "loaded). Return a scikit-learn model as skops.io.dumps(model) and a "
                          "torch model as its state_dict().")
    names = _zip_names(data)
    if names is None:
        return "bytes"
    if "schema.json" in names:
        from skops.io import get_untrusted_types

        untrusted = get_untrusted_types(data=data)
        bad = [t for t in untrusted if not _trusted_skops_type(t)]
        if bad:
            raise OutputError(f"the skops file holds types outside scikit-learn/numpy (or "
                              f"functions, which run when called): {bad[:5]}; return a plain "
                              "scikit-learn estimator")
        return "skops"
    if any(n.endswith("data.pkl") for n in names):
        import torch

        try:
            torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as e:
            raise OutputError(f"the torch file does not load with weights_only=True ({e}); "
                              "return model.state_dict(), not the model") from None
        return "torch"
    return "bytes"


class _Encoder:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self.items = 0

    def array(self, a: np.ndarray) -> dict:
        if a.dtype == object or a.dtype.kind in "OV":
            raise OutputError(f"numpy arrays of dtype {a.dtype} need pickle; return numbers "
                              "or a list of strings instead")
        key = f"a{len(self.arrays)}"
        self.arrays[key] = np.ascontiguousarray(a)
        return {"__ndarray__": key}

    def encode(self, v, depth: int = 0):
        self.items += 1
        if depth > MAX_DEPTH or self.items > MAX_ITEMS:
            raise OutputError(f"the result is nested deeper than {MAX_DEPTH} or holds more "
                              f"than {MAX_ITEMS} items; return arrays instead")
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            return v if abs(v) < 2**63 else {"__bigint__": str(v)}
        if isinstance(v, float):
            return v if math.isfinite(v) else {"__float__": repr(v)}
        if isinstance(v, (bytes, bytearray, memoryview)):
            data = bytes(v)
            return {"__bytes__": base64.b64encode(data).decode(), "format": check_bytes(data)}
        if isinstance(v, np.generic):
            return self.encode(v.item(), depth + 1)
        if isinstance(v, np.ndarray):
            return self.array(v)
        mod = type(v).__module__.split(".")[0]
        if mod == "pandas":
            return self.pandas(v, depth)
        if mod == "torch":
            import torch

            if isinstance(v, torch.Tensor):
                return self.array(v.detach().cpu().numpy())
            raise OutputError(f"a {type(v).__name__} cannot be returned: return "
                              "model.state_dict() (tensors), not the torch module")
        if mod == "sklearn":
            from sklearn.base import BaseEstimator
            from skops.io import dumps

            if isinstance(v, BaseEstimator):
                data = dumps(v)
                return {"__bytes__": base64.b64encode(data).decode(), "format": check_bytes(data)}
        if isinstance(v, (list, tuple)):
            out = [self.encode(x, depth + 1) for x in v]
            return {"__tuple__": out} if isinstance(v, tuple) else out
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise OutputError("dict results need str keys")
            if any(k.startswith("__") and k.endswith("__") for k in v):
                raise OutputError("dict keys of the form __x__ are reserved")
            return {k: self.encode(x, depth + 1) for k, x in v.items()}
        raise OutputError(f"a {type(v).__module__}.{type(v).__name__} cannot leave the sandbox "
                          "as data: return numbers, strings, numpy arrays, pandas objects, a "
                          "scikit-learn model (skops) or a torch state_dict")

    def pandas(self, v, depth: int):
        import pandas as pd

        if isinstance(v, pd.Series):
            return {"__series__": self.column(v), "name": self.encode(v.name, depth + 1)}
        if isinstance(v, pd.DataFrame):
            return {"__dataframe__": [[str(c), self.column(v[c])] for c in v.columns]}
        raise OutputError(f"a pandas {type(v).__name__} cannot be returned; return a Series "
                          "or DataFrame")

    def column(self, s):
        a = s.to_numpy()
        if a.dtype == object:  # text: plain JSON strings (no pickle)
            if not all(x is None or isinstance(x, str) for x in a):
                raise OutputError(f"column {s.name!r} mixes types; convert it to numbers or str")
            return list(a)
        return self.array(a)


def encode(value, out_dir: Path) -> None:
    """Write ``value`` to ``out_dir`` as data (OutputError if it cannot be)."""
    enc = _Encoder()
    doc = {"value": enc.encode(value)}
    out_dir = Path(out_dir)
    if enc.arrays:
        with open(out_dir / ARRAYS_FILE, "wb") as f:
            np.savez(f, **enc.arrays)
    (out_dir / OUTPUT_FILE).write_text(json.dumps(doc, allow_nan=False))


def decode(out_dir: Path):
    """The value :func:`encode` wrote (no pickle anywhere; bytes re-checked)."""
    out_dir = Path(out_dir)
    doc = json.loads((out_dir / OUTPUT_FILE).read_text())
    arrays = {}
    if (out_dir / ARRAYS_FILE).exists():
        with np.load(out_dir / ARRAYS_FILE, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    return _decode(doc["value"], arrays)


def _decode(v, arrays):
    if isinstance(v, list):
        return [_decode(x, arrays) for x in v]
    if not isinstance(v, dict):
        return v
    if "__ndarray__" in v:
        return arrays[v["__ndarray__"]]
    if "__tuple__" in v:
        return tuple(_decode(x, arrays) for x in v["__tuple__"])
    if "__bytes__" in v:
        data = base64.b64decode(v["__bytes__"])
        check_bytes(data)  # the sandbox said so; the owner's side checks again
        return data
    if "__float__" in v:
        return float(v["__float__"])
    if "__bigint__" in v:
        return int(v["__bigint__"])
    if "__series__" in v or "__dataframe__" in v:
        import pandas as pd

        if "__series__" in v:
            return pd.Series(_decode(v["__series__"], arrays), name=_decode(v["name"], arrays))
        return pd.DataFrame({c: _decode(col, arrays) for c, col in v["__dataframe__"]})
    return {k: _decode(x, arrays) for k, x in v.items()}


def describe(value, max_chars: int = 400) -> dict:
    """What the owner sees before release: the type (nested), a size, and a short preview."""
    return {"type": _type_of(value), "preview": _preview(value)[:max_chars]}


def _type_of(v, depth: int = 0) -> str:
    if depth > 3:
        return "..."
    if isinstance(v, bytes):
        try:
            fmt = check_bytes(v)
        except OutputError:
            fmt = "REFUSED"
        return f"bytes[{len(v)}, {fmt}]"
    if isinstance(v, np.ndarray):
        return f"ndarray{list(v.shape)}:{v.dtype}"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(_type_of(x, depth + 1) for x in v[:8])
        more = ", ..." if len(v) > 8 else ""
        return f"{type(v).__name__}[{inner}{more}]"
    if isinstance(v, dict):
        inner = ", ".join(f"{k}: {_type_of(x, depth + 1)}" for k, x in list(v.items())[:8])
        return "dict{" + inner + (", ..." if len(v) > 8 else "") + "}"
    name = type(v).__name__
    shape = getattr(v, "shape", None)
    return f"{name}{list(shape)}" if shape is not None else name


def _preview(v) -> str:
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    if isinstance(v, np.ndarray):
        with np.printoptions(threshold=8, edgeitems=3, precision=4):
            return repr(v)
    if isinstance(v, (list, tuple)):
        parts = ", ".join(_preview(x) for x in v[:8])
        return ("(" if isinstance(v, tuple) else "[") + parts + (
            ")" if isinstance(v, tuple) else "]")
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {_preview(x)}" for k, x in list(v.items())[:8]) + "}"
    text = repr(v)
    return text if len(text) <= 120 else text[:120] + "..."


def output_size(out_dir: Path) -> int:
    """Bytes of the encoded output files."""
    return sum((Path(out_dir) / f).stat().st_size for f in (OUTPUT_FILE, ARRAYS_FILE)
               if (Path(out_dir) / f).exists())


def output_digest(out_dir: Path) -> str:
    """sha256 over the encoded output files: release deposits exactly what the owner saw."""
    import hashlib

    h = hashlib.sha256()
    for f in (OUTPUT_FILE, ARRAYS_FILE):
        p = Path(out_dir) / f
        h.update(f.encode() + b"\0")
        if p.exists():
            h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()
