"""DP-SGD training of a table classifier with Opacus; the privacy guarantee comes from PLD.

What the guarantee covers: the model weights, for the training records, at (epsilon, delta),
and the test metrics, released through the priced Gaussian histogram of
:mod:`shared.private_metrics` (the report composes both).
"""
from __future__ import annotations

import hashlib
import io
import warnings
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader, TensorDataset

from .accounting import dpsgd_event
from .models import build_model, model_config
from .private_metrics import NOISE_STREAM, metrics_sigma, release
from .targets import noise_multiplier as target_noise_multiplier
from .private_metrics import privacy_report as metrics_report
from .dpsgd import noise_in_optimizer
from .randomness import secret_seed
from .data import n_train_records

PREPROCESSING = "row_l2_normalise"

Progress = Callable[[int, int], None]


# -- data --------------------------------------------------------------------------------------
def row_l2_normalise(X: np.ndarray) -> np.ndarray:
    """x -> x / max(1, ||x||_2), row by row; NaN -> 0.

    Why: standardising with column means/stds of the private table would release those
    statistics through the model without any noise. A fixed per-row map uses no statistics of
    other records, so it costs no privacy, and bounded rows keep the logits on a sane scale.
    (The price: columns of very different scales are not equalised.)
    """
    X = np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.maximum(norms, 1.0)).astype(np.float32)


def public_scale(X: np.ndarray, scales) -> np.ndarray:
    """x_j -> clip(x_j / s_j, -1, 1) with the owner's declared per-column scales s_j.

    The scales are public metadata (powers of ten), not statistics of the training records,
    so this costs no privacy and -- unlike row normalisation -- keeps each record's magnitude,
    which is often the signal (e.g. tumour area).
    """
    X = np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(X / np.asarray(scales, dtype=np.float64), -1.0, 1.0).astype(np.float32)


def preprocess(X: np.ndarray, config: dict) -> np.ndarray:
    """Apply the preprocessing recorded in a model config (training and prediction alike)."""
    if config["preprocessing"] == "public_scale":
        return public_scale(X, config["feature_scales"])
    if config["preprocessing"] == "row_l2_normalise":
        return row_l2_normalise(X)
    raise ValueError(f"unknown preprocessing {config['preprocessing']!r}")


def feature_columns(df: pd.DataFrame, label: str) -> list[str]:
    """All columns but the label, in table order; they must be numeric."""
    if label not in df.columns:
        raise ValueError(f"label column {label!r} is not in the table")
    cols = [c for c in df.columns if c != label]
    bad = [c for c in cols if not pd.api.types.is_numeric_dtype(df[c])]
    if bad or not cols:
        raise ValueError(f"feature columns must be numeric; not numeric: {bad}" if bad
                         else "the table has no feature columns")
    return [str(c) for c in cols]


def encode_labels(values, classes: Sequence) -> np.ndarray:
    """Class index of each label value (a Series or an array), in ``classes`` order."""
    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([index[v] for v in values.tolist()], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"label value {e.args[0]!r} is not in the label set {list(classes)}") \
            from None


# Test-only switch: True restores the old stratified sklearn split (a function of the whole
# dataset), so the neighbouring-datasets test can show that it catches it. Never set it elsewhere.
_STRATIFIED_SPLIT_FOR_TESTS = False


def record_side(content: bytes, test_fraction: float, seed: int) -> bool:
    """True iff the record whose bytes are ``content`` goes to the test split: a keyed hash
    (BLAKE2b, key = the spec's seed) of its own content, read as a number in [0, 1), below
    ``test_fraction``. A function of that record alone, so adding or removing one record never
    moves another one across the split (neighbouring datasets keep neighbouring training sets)."""
    h = hashlib.blake2b(content, digest_size=8, key=str(int(seed)).encode(), person=b"dp-split")
    return int.from_bytes(h.digest(), "big") / 2.0 ** 64 < test_fraction


def record_bytes(rows: np.ndarray, y: np.ndarray) -> list[bytes]:
    """Each record's content as bytes: its row (features, or image pixels) and its label."""
    rows, y = np.ascontiguousarray(rows), np.asarray(y)
    if len(rows) != len(y):
        raise ValueError(f"{len(rows)} rows but {len(y)} labels")
    return [rows[i].tobytes() + b"|" + str(y[i].item()).encode() for i in range(len(y))]


def split_indices(rows: np.ndarray, y: np.ndarray, test_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions: each record independently by :func:`record_side` of its own row
    and label. The only place a job's split is decided.

    The sizes are therefore random (Binomial(n, test_fraction) test records) and not public:
    everything privacy-relevant (sampling rate, steps, regulariser, released counts) uses the
    planned count ``shared.data.n_train_records(n_records, test_fraction)`` instead.
    """
    y = np.asarray(y)
    n = len(y)
    idx = np.arange(n)
    if test_fraction <= 0:
        return idx, idx[:0]
    if _STRATIFIED_SPLIT_FOR_TESTS:
        return _stratified_split(y, test_fraction, seed)
    test = np.fromiter((record_side(b, test_fraction, seed) for b in record_bytes(rows, y)),
                       dtype=bool, count=n)
    return idx[~test], idx[test]


def _stratified_split(y, test_fraction, seed):
    """The old split (tests only): sklearn's stratified split, a function of all the labels."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
    except ValueError:  # a class too small to stratify: fall back to a plain random split
        tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed)
    return np.sort(tr), np.sort(te)


# -- Opacus wiring -----------------------------------------------------------------------------
def poisson_schedule(n_train: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate, total steps) exactly as Opacus' Poisson loader will run them.

    Opacus samples with q = 1 / len(DataLoader) = 1 / ceil(n / B) -- not B / n -- and runs
    int(1 / q) steps per epoch (float rounding makes that ceil(n / B) - 1 for some n, e.g. 93).
    We ask Opacus' own classes rather than re-derive the arithmetic.
    """
    plain = DataLoader(range(n_train), batch_size=batch_size)
    q = 1 / len(plain)
    per_epoch = len(UniformWithReplacementSampler(num_samples=n_train, sample_rate=q))
    return q, epochs * per_epoch


def make_private_trainer(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, *,
                         noise_multiplier: float, clip_norm: float, learning_rate: float,
                         batch_size: int, seed: int, device: torch.device | str = "cpu",
                         sample_rate: float | None = None, n_planned: int | None = None):
    """(module, optimizer, loader) from Opacus: per-sample clipping to ``clip_norm``, Gaussian
    noise of std ``noise_multiplier * clip_norm`` on the summed clipped gradients, Poisson
    sampling; sampling and noise secret (:mod:`shared.randomness`), streams named by ``seed``.

    ``sample_rate``/``n_planned``: the planned (public) Poisson rate and training-record count.
    A job passes them so that the rate, the steps and the gradient scaling are those the owner
    priced, not functions of how many records the per-record split happened to put in training.
    Default: the rate Opacus derives from ``len(X)`` and ``batch_size``.
    """
    device = torch.device(device)
    n_planned = len(X) if n_planned is None else int(n_planned)
    if sample_rate is None:
        sample_rate, _ = poisson_schedule(n_planned, batch_size, 1)
    # Secret sampling and noise (shared.randomness): the researcher chose ``seed``.
    loader = DPDataLoader(TensorDataset(X, y), sample_rate=sample_rate,
                          generator=torch.Generator().manual_seed(secret_seed(seed, 0)))
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        # Opacus' accountant is attached but unused: our guarantee is PLD over the event.
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        module, optimizer, loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader,
            # (noise_in_optimizer: a test-only hook can zero it; see shared.dpsgd)
            noise_multiplier=noise_in_optimizer(noise_multiplier), max_grad_norm=clip_norm,
            poisson_sampling=False,  # the loader above already samples at the planned rate
            noise_generator=torch.Generator(device=device).manual_seed(secret_seed(seed, 1)),
        )
    # "mean" divides by the expected batch size: the planned one, not q * (realised count)
    optimizer.expected_batch_size = max(1, int(n_planned * sample_rate))
    return module, optimizer, loader


def dp_step(module, optimizer, xb: torch.Tensor, yb: torch.Tensor) -> None:
    """One DP-SGD step. Empty Poisson batches still take the (pure-noise) step: skipping it
    would make the release depend on the sampling outcome outside the accounted mechanism."""
    optimizer.zero_grad(set_to_none=True)
    logits = module(xb)
    # sum / max(1, b) is the mean for b >= 1 and 0 (not NaN) for an empty batch
    loss = F.cross_entropy(logits, yb, reduction="sum") / max(1, len(yb))
    with warnings.catch_warnings():
        # torch warns that Opacus' full backward hook fires on module outputs when the inputs
        # need no grad: that is exactly the case Opacus handles, so the warning is noise.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()
    optimizer.step()


# -- the job -----------------------------------------------------------------------------------
def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def table_xy(df: pd.DataFrame, label: str, classes: Sequence | None = None,
             feature_scales: dict | None = None):
    """(X, y, feature columns, classes, preprocessing config) of a table job: X preprocessed
    row by row (public map), y class indices. The split hashes these rows (split_indices)."""
    cols = feature_columns(df, label)
    classes = sorted(df[label].unique().tolist()) if classes is None else list(classes)
    if len(classes) < 2:
        raise ValueError(f"need at least two label values to classify, got {classes}")
    prep = {"preprocessing": PREPROCESSING}
    if feature_scales and all(c in feature_scales for c in cols):
        prep = {"preprocessing": "public_scale",
                "feature_scales": [float(feature_scales[c]) for c in cols]}
    return preprocess(df[cols].to_numpy(), prep), encode_labels(df[label], classes), cols, \
        classes, prep


def train_dpsgd_table(df: pd.DataFrame, spec, progress: Progress | None = None,
                      device: torch.device | str | None = None,
                      classes: Sequence | None = None,
                      feature_scales: dict | None = None,
                      noise_multiplier: float | None = None,
                      init_state: dict | None = None,
                      sampling_seed: int | None = None,
                      metrics_releases: int = 1, metrics_index: int = 0) -> dict:
    """Train ``spec`` (a validated DPSGDTableSpec) on ``df``; return model, metrics, privacy.

    ``classes``: the public label set (DatasetMeta.labels); if None, the sorted labels in ``df``.
    ``noise_multiplier``: use this sigma instead of calibrating one to ``spec.epsilon`` (a round
    of a longer schedule priced as a whole); ``init_state``: start from these weights (warm start);
    ``sampling_seed``: seed of batch sampling and noise (default ``spec.seed``);
    ``metrics_releases``: how many metric releases the schedule's metric noise is priced for
    (its rounds), ``metrics_index``: which one this is (names the noise stream).
    Under ``pinned_randomness`` the same spec, data and device give the same model.
    """
    device = torch.device(device) if device is not None else default_device()
    X, y, cols, classes, prep = table_xy(df, spec.label, classes, feature_scales)
    tr, te = split_indices(X, y, spec.test_fraction, spec.seed)
    # The schedule is planned from the public record count, exactly as the owner priced it
    # (shared.jobs): the realised split sizes are Binomial and never enter the mechanism.
    n_train = n_train_records(len(y), spec.test_fraction)

    q, steps = poisson_schedule(n_train, spec.batch_size, spec.epochs)
    # the spec's target (epsilon, mu or attack TPR), calibrated as the planner does (shared.targets)
    sigma = (target_noise_multiplier(spec, q, steps) if noise_multiplier is None
             else float(noise_multiplier))

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(spec.seed)
        model = build_model(spec.model, len(cols), len(classes), spec.hidden)
    if init_state is not None:
        model.load_state_dict(init_state)  # raises on a mismatched shape: nothing runs
    model.to(device)
    module, optimizer, loader = make_private_trainer(
        model, torch.from_numpy(X[tr]), torch.from_numpy(y[tr]), noise_multiplier=sigma,
        clip_norm=spec.clip_norm, learning_rate=spec.learning_rate, batch_size=spec.batch_size,
        seed=spec.seed if sampling_seed is None else sampling_seed, device=device,
        sample_rate=q, n_planned=n_train)
    if not (loader.sample_rate == q and len(loader) * spec.epochs == steps):
        raise RuntimeError("Opacus' loader disagrees with the accounted schedule")  # never ship

    done = 0
    module.train()
    for _ in range(spec.epochs):
        for xb, yb in loader:
            dp_step(module, optimizer, xb.to(device), yb.to(device))
            done += 1
            if progress is not None:
                progress(done, steps)

    # The guarantee is for the schedule actually executed, counted step by step.
    event = dpsgd_event(q, sigma, done)
    m_sigma = metrics_sigma(spec, metrics_releases)
    privacy = metrics_report(event, m_sigma, 1, spec.delta)
    privacy.update(noise_multiplier=sigma, sample_rate=q, steps=done, clip_norm=spec.clip_norm,
                   expected_batch_size=q * n_train)

    model.eval()
    config = model_config(spec.model, len(cols), len(classes), spec.hidden)
    config.update(classes=classes, feature_columns=cols, **prep)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return {
        "model_state": buf.getvalue(),
        "model_config": config,
        # DP (priced above), or exact only on the public mock (shared.private_metrics)
        "metrics": _metrics(model, X, y, tr, te, classes, device, m_sigma,
                            (spec.seed, NOISE_STREAM, metrics_index), n_train),
        "privacy": privacy,
    }


@torch.no_grad()
def _metrics(model, X, y, tr, te, classes, device, sigma, stream, n_planned) -> dict:
    def probs(idx):
        if len(idx) == 0:
            return np.zeros((0, len(classes)))
        return torch.softmax(model(torch.from_numpy(X[idx]).to(device)), 1).cpu().numpy()

    p_te = probs(te)

    def mock_extras() -> dict:  # exact, and only ever on the public mock
        out = {"train_accuracy": _accuracy(probs(tr), y[tr]), "test_auc": None}
        if len(classes) == 2 and len(set(y[te].tolist())) == 2:
            from sklearn.metrics import roc_auc_score

            out["test_auc"] = float(roc_auc_score(y[te], p_te[:, 1]))
        return out

    pred = p_te.argmax(1) if len(te) else np.zeros(0, dtype=int)
    return release(y[te], pred, classes, sigma, stream=stream, n_train=n_planned,
                   n_test=len(y) - n_planned, mock_extras=mock_extras)


def _accuracy(p: np.ndarray, y: np.ndarray) -> float | None:
    return float((p.argmax(1) == y).mean()) if len(y) else None
