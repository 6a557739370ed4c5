"""Demo and test data, made on this machine (nothing is downloaded).

* :func:`write_breast_cancer_csv`: the real Wisconsin diagnostic breast-cancer table shipped with
  scikit-learn (569 records, 30 numeric features), as a CSV the owner can ``datasite upload``,
  with its reviewed public schema beside it (``breast_cancer.schema.yaml``).
* :func:`make_synthetic_cxr` / :func:`write_synthetic_cxr_npz`: deterministic synthetic
  chest-X-ray-like grayscale images (no real patient), in the MedMNIST ``.npz`` layout like
  PneumoniaMNIST (label 0 normal, 1 pneumonia; optionally 2 pleural effusion).
* :func:`write_images_folder`: an images payload as a folder of PNGs plus ``labels.csv``
  (``filename,label``), the layout ``datasite upload --images DIR --labels labels.csv`` reads.
* :func:`write_messy_export`: a synthetic cohort written the way hospital systems export
  tables (semicolons, decimal commas, a BOM, patient ids with leading zeros, string categories,
  yes/no flags, a lab value missing for 17% of patients, day-first dates, a string label,
  optionally an outcome-after-baseline column that leaks the label and unlabelled records).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

CXR_CLASSES = ("normal", "pneumonia", "effusion")
_CHUNK = 256  # images generated per vectorised step (memory stays small for large sizes)


# -- breast cancer ---------------------------------------------------------------------------
def breast_cancer_frame() -> pd.DataFrame:
    """scikit-learn's breast-cancer table with snake_case columns and label ``diagnosis``.

    ``diagnosis`` is sklearn's target unchanged: **0 = malignant, 1 = benign** (212 / 357).
    Columns: ``mean_radius``, ..., ``worst_fractal_dimension`` (float64), then ``diagnosis``
    (int64).
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    df = bunch.frame.copy()
    df = df.rename(columns={"target": "diagnosis"})
    df.columns = [_snake(c) for c in df.columns]
    df["diagnosis"] = df["diagnosis"].astype(np.int64)
    return df


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")


def write_breast_cancer_csv(path) -> Path:
    """Write :func:`breast_cancer_frame` to ``path`` (CSV, no index column) and its reviewed
    schema beside it (:func:`schema_path`); return the CSV's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    breast_cancer_frame().to_csv(path, index=False)
    write_schema(schema_path(path), breast_cancer_schema())
    return path


# Bound of each nucleus measurement (WDBC: 10 measures of the nuclei in a digitised fine-needle
# aspirate), from what the measure can be, in generous round numbers, not from this table:
# radius up to 50 units, texture = sd of 8-bit grey levels <= 128, perimeter <= 400 and
# area <= 10000 for such a radius, normalised shape ratios <= 1 or 2.
_BC_MEASURES = {"radius": 50, "texture": 128, "perimeter": 400, "area": 10000, "smoothness": 1,
                "compactness": 2, "concavity": 2, "concave_points": 1, "symmetry": 1,
                "fractal_dimension": 1}


def breast_cancer_schema(records: int = 569) -> dict:
    """The reviewed public schema of :func:`breast_cancer_frame` (``records``: the declared count).

    ``mean_*`` and ``worst_*`` (mean of the three largest) lie within the measure's bound B;
    ``*_error`` (a standard error of values in [0, B]) within B / 2.
    """
    cols = {}
    for stat in ("mean", "error", "worst"):
        for m, b in _BC_MEASURES.items():
            name = f"{m}_error" if stat == "error" else f"{stat}_{m}"
            hi = b / 2 if stat == "error" else b
            cols[name] = {"type": "float", "bounds": [0, int(hi) if hi == int(hi) else hi]}
    order = list(breast_cancer_frame_columns())
    return {"kind": "table", "records": records,
            "description": "Wisconsin diagnostic breast cancer (scikit-learn).",
            "label": {"column": "diagnosis", "classes": {0: "malignant", 1: "benign"}},
            "columns": {c: cols[c] for c in order}}


def breast_cancer_frame_columns() -> list[str]:
    """The feature columns of :func:`breast_cancer_frame`, in table order (no data read)."""
    from sklearn.datasets import load_breast_cancer

    return [_snake(c) for c in load_breast_cancer().feature_names]


# -- schemas -----------------------------------------------------------------------------------
def schema_path(data_path) -> Path:
    """Where the demo writes a data file's schema: ``NAME.schema.yaml`` beside ``NAME.ext``."""
    p = Path(data_path)
    return p.parent / f"{p.stem if p.suffix else p.name}.schema.yaml"


def write_schema(path, schema: dict) -> Path:
    """Write ``schema`` as YAML (a reviewed declaration: no draft marker); return the path."""
    from .schema import to_yaml

    path = Path(path)
    path.write_text("# Public schema of a dp-datasite dataset, reviewed: published to researchers.\n"
                    + to_yaml(schema))
    return path


# -- synthetic chest X-rays ------------------------------------------------------------------
def make_synthetic_cxr(n: int = 600, size: int = 28, seed: int = 0, n_classes: int = 2) -> dict:
    """``n`` synthetic chest-X-ray-like images: ``{"images": uint8 (n, size, size),
    "labels": int64 (n,)}``.

    Every image: a bright thorax on a dark background, a brighter spine/mediastinum and heart
    shadow, horizontal rib texture, two dark lung fields, random shifts, sizes, contrast and
    noise. Label 0 (normal) has clear lungs; label 1 (pneumonia) adds one to three bright patchy
    opacities inside a lung field; label 2 (effusion, only with ``n_classes=3``) fills the
    bottom of one lung field with a bright, meniscus-shaped opacity (blunted costophrenic
    angle). Classes are balanced (``n`` split as evenly as possible) and shuffled. Learnable
    (a logistic regression on raw pixels is far above chance) but no two images are alike.
    Deterministic: the same arguments give identical arrays.
    """
    if n_classes not in (2, 3):
        raise ValueError("n_classes must be 2 (normal, pneumonia) or 3 (+ effusion)")
    if n < 0 or size < 8:
        raise ValueError("need n >= 0 and size >= 8")
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % n_classes
    rng.shuffle(labels)
    images = np.empty((n, size, size), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        lab = labels[start:start + _CHUNK]
        images[start:start + len(lab)] = _cxr_chunk(lab, size, rng)
    return {"images": images, "labels": labels}


def _cxr_chunk(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    m = len(labels)
    c = np.linspace(-1.0, 1.0, size)
    yy = c[None, :, None]  # rows: top (-1) to bottom (+1)
    xx = c[None, None, :]

    def u(lo, hi):  # per-image parameter, broadcastable to (m, size, size)
        return rng.uniform(lo, hi, (m, 1, 1))

    def soft(d, width):  # ~1 inside (d < 1), ~0 outside, smooth edge
        return 1.0 / (1.0 + np.exp((d - 1.0) / width))

    sx, sy = u(-0.08, 0.08), u(-0.08, 0.08)  # patient position
    scale = u(0.9, 1.05)
    thorax = soft(((xx - sx) / (0.88 * scale)) ** 2 + ((yy - sy - 0.05) / (1.0 * scale)) ** 2,
                  0.08)
    img = 0.12 + 0.5 * thorax
    # ribs: curved horizontal stripes
    freq, phase = u(4.5, 6.0), u(0, 2 * np.pi)
    img += 0.06 * thorax * np.sin(2 * np.pi * freq * (yy - sy + 0.25 * (xx - sx) ** 2) / 2 + phase)
    # lungs
    lung_r = (u(0.24, 0.30) * scale, u(0.5, 0.6) * scale)
    lung_c = [(sx + side * u(0.34, 0.42), sy + u(-0.1, 0.0)) for side in (-1, 1)]
    lungs = [soft(((xx - cx) / lung_r[0]) ** 2 + ((yy - cy) / lung_r[1]) ** 2, 0.12)
             for cx, cy in lung_c]
    img -= u(0.32, 0.42) * (lungs[0] + lungs[1])
    # spine / mediastinum and heart shadow
    img += 0.12 * thorax * np.exp(-((xx - sx) / 0.13) ** 2)
    img += u(0.08, 0.16) * np.exp(-(((xx - sx - 0.18) / 0.22) ** 2 + ((yy - sy - 0.3) / 0.2) ** 2))

    side = rng.integers(0, 2, m)  # which lung is affected
    lung_mask = np.where(side[:, None, None] == 0, lungs[0], lungs[1])
    lcx = np.where(side[:, None, None] == 0, lung_c[0][0], lung_c[1][0])
    lcy = np.where(side[:, None, None] == 0, lung_c[0][1], lung_c[1][1])

    # pneumonia: 1-3 patchy opacities inside one lung field
    is_pna = (labels == 1)[:, None, None]
    patches = np.zeros((m, size, size))
    n_patch = rng.integers(1, 4, m)
    for k in range(3):
        px = lcx + u(-0.6, 0.6) * lung_r[0]
        py = lcy + u(-0.7, 0.7) * lung_r[1]
        sig = u(0.12, 0.22)
        amp = u(0.35, 0.55) * (k < n_patch)[:, None, None]
        patches += amp * np.exp(-(((xx - px) ** 2 + (yy - py) ** 2) / (2 * sig ** 2)))
    mottle = 0.6 + 0.4 * _smooth(rng, m, size, 7)
    img += is_pna * patches * mottle * lung_mask

    # effusion: bottom of one lung field filled, meniscus rising towards the outer wall
    is_eff = (labels == 2)[:, None, None]
    level = lcy + u(0.15, 0.45) * lung_r[1]
    outward = (xx - lcx) * np.where(side[:, None, None] == 0, -1.0, 1.0)
    fluid = 1.0 / (1.0 + np.exp(-(yy - level + 0.25 * outward) / 0.04))
    img += is_eff * u(0.3, 0.45) * fluid * lung_mask

    # acquisition: contrast, brightness, smooth and pixel noise
    img = u(0.85, 1.15) * (img - 0.4) + 0.4 + u(-0.06, 0.06)
    img += 0.04 * _smooth(rng, m, size, 5) + rng.normal(0, 0.03, (m, size, size))
    return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def _smooth(rng: np.random.Generator, m: int, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a random ``cells`` x ``cells`` grid, bilinearly upsampled."""
    from .mock import upsample

    return np.clip(upsample(rng.uniform(-1, 1, (m, cells, cells)), size, size), -1, 1)


def write_synthetic_cxr_npz(path, n_train: int = 600, n_val: int = 100, n_test: int = 200,
                            size: int = 28, seed: int = 0, n_classes: int = 2) -> Path:
    """Write :func:`make_synthetic_cxr` images in MedMNIST layout; return the path.

    Keys ``train_images``/``val_images``/``test_images`` (uint8, (N, size, size)) and
    ``train_labels``/``val_labels``/``test_labels`` (uint8, (N, 1)), the splits being
    consecutive slices of one generated set. Compressed, like MedMNIST's files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = make_synthetic_cxr(n_train + n_val + n_test, size=size, seed=seed, n_classes=n_classes)
    arrays, start = {}, 0
    for split, k in (("train", n_train), ("val", n_val), ("test", n_test)):
        arrays[f"{split}_images"] = data["images"][start:start + k]
        arrays[f"{split}_labels"] = data["labels"][start:start + k, None].astype(np.uint8)
        start += k
    with open(path, "wb") as f:  # np.savez_compressed would append ".npz" to other names
        np.savez_compressed(f, **arrays)
    write_schema(schema_path(path), cxr_schema(n_train + n_val + n_test, size, n_classes))
    return path


def cxr_schema(records: int, size: int = 28, n_classes: int = 2) -> dict:
    """The public schema of :func:`make_synthetic_cxr` images (declared by construction)."""
    return {"kind": "images", "records": records,
            "description": "Synthetic chest X-rays (dp-datasite generator; no real patient).",
            "label": {"classes": dict(enumerate(CXR_CLASSES[:n_classes]))},
            "image": {"height": size, "width": size, "channels": 1}}


def write_images_folder(folder, payload: dict, fmt: str = "png") -> Path:
    """Write an images payload as ``folder/img_00000.png``, ... plus ``folder/labels.csv``.

    ``fmt`` is ``"png"`` (lossless) or ``"jpg"``. (N, H, W) images become grayscale files,
    (N, H, W, 3) RGB files; (N, H, W, 1) is written as grayscale (read back as (N, H, W)).
    Returns the path of ``labels.csv`` (columns ``filename,label``).
    """
    from PIL import Image

    if fmt not in ("png", "jpg"):
        raise ValueError("fmt must be 'png' or 'jpg'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = np.asarray(payload["images"]), np.asarray(payload["labels"]).reshape(-1)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    names = []
    for i, im in enumerate(images):
        name = f"img_{i:05d}.{fmt}"
        Image.fromarray(im.astype(np.uint8)).save(folder / name,
                                                  **({"quality": 95} if fmt == "jpg" else {}))
        names.append(name)
    out = folder / "labels.csv"
    pd.DataFrame({"filename": names, "label": labels.astype(np.int64)}).to_csv(out, index=False)
    return out


# -- a messy hospital export -----------------------------------------------------------------
OUTCOMES = ("alive", "readmitted", "dead")


def messy_cohort(n: int, seed: int = 0, classes: int = 2, leak: bool = False,
                 unlabelled: float = 0.0) -> pd.DataFrame:
    """A cohort with a learnable outcome (``classes`` of :data:`OUTCOMES`: 2 = alive/dead),
    as raw export columns: ``patient_id`` (text, leading zeros), ``sex`` F/M, ``age``,
    ``grade`` I/II/III, ``smoker`` yes/no, ``crp`` (17% missing), ``admitted`` (dd/mm/yyyy),
    ``outcome``; ``leak``: a ``cause_of_death`` column recorded after the outcome (it gives
    the label away); ``unlabelled``: the share of records whose outcome is blank."""
    rng = np.random.default_rng(seed)
    age = rng.integers(25, 90, n)
    sex = rng.choice(["F", "M"], n)
    grade = rng.choice(["I", "II", "III"], n, p=[0.3, 0.45, 0.25])
    smoker = rng.random(n) < 0.3
    crp = np.round(rng.gamma(2.0, 12.0, n), 1)
    admitted = pd.Timestamp("2015-01-01") + pd.to_timedelta(rng.integers(0, 3000, n), "D")
    risk = (0.05 * (age - 60) + 0.9 * (grade == "III") - 0.4 * (grade == "I")
            + 0.03 * (crp - 24) + 0.3 * (sex == "M") + 0.5 * smoker - 1.0)
    u = rng.random(n)
    if classes == 2:
        outcome = np.where(u < 1 / (1 + np.exp(-risk)), "dead", "alive")
    else:  # ordinal: higher risk, further along alive -> readmitted -> dead (55/25/20%)
        z = 2 * risk + rng.logistic(size=n)
        cut = np.quantile(z, [0.55, 0.8])
        outcome = np.select([z < cut[0], z < cut[1]], ["alive", "readmitted"], "dead")
    df = pd.DataFrame({
        "patient_id": [f"{i:06d}" for i in rng.permutation(n) + 1],
        "sex": sex, "age": age, "grade": grade, "smoker": np.where(smoker, "yes", "no"),
        "crp": np.where(rng.random(n) < 0.17, np.nan, crp),
        "admitted": admitted.strftime("%d/%m/%Y"), "outcome": outcome.astype(object)})
    if leak:
        df.insert(7, "cause_of_death", np.where(
            df["outcome"] == "dead", rng.choice(["cardiac", "sepsis", "cancer"], n), "none"))
    if unlabelled:
        df.loc[rng.random(n) < unlabelled, "outcome"] = None
    return df


def write_messy_export(path, n: int, seed: int = 0, **cohort) -> pd.DataFrame:
    """:func:`messy_cohort` written as a hospital export (``;``, decimal commas, UTF-8 BOM);
    returns the frame."""
    df = messy_cohort(n, seed, **cohort)
    df.to_csv(path, sep=";", decimal=",", index=False, encoding="utf-8-sig")
    return df
