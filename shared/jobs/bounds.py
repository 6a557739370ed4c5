"""The limits on every field of a researcher's job spec: the one place they live.

A spec is data the researcher chooses, and the owner's datasite prices it (PLD accounting) and
prints it before anyone has decided anything. Unbounded, one valid spec took 931 s to price
(``epochs=10000, batch_size=1``), exhausted memory (``epsilon=1e308``), or forged the owner's
review with ANSI escapes in a string field. So every field is bounded in type, range and form;
each limit says why it sits where it does. The checks raise ``SpecError`` naming the field,
the value and the allowed range. Those needing the dataset's metadata (steps, model size) take
the numbers as arguments; the spec modules call them from ``validate(meta)``.

Light module (standard library only).
"""
from __future__ import annotations

import math
import re
from statistics import NormalDist

from ..display import brief, is_unsafe_char
from ..errors import SpecError

# -- privacy parameters ------------------------------------------------------------------------
# Below 0.01 a training job needs noise near the accountant's cap (sigma 1e3: the model learns
# nothing) and its calibration mostly fails (epsilon 1e-4 aborted pricing).
EPSILON_MIN = 0.01
# e^20 ~ 5e8: an attacker's likelihood ratio that protects nobody; and the PLD the owner
# computes widens as 1/sigma^2, so pricing time grows with epsilon (50: ~10 s, 1e308: MemoryError).
EPSILON_MAX = 20.0
# The DP test metrics are a side release: more than this buys exact numbers, not privacy.
METRICS_EPSILON_MAX = 10.0
# delta is the probability the guarantee fails outright: above 1% it is no guarantee (every real
# dataset's 1/n check is far below anyway). Below 1e-10 the PLD refinement stops converging
# near the accountant's tail truncation (1e-15 per PLD): at 1e-12 one valid spec priced in 182 s.
DELTA_MIN = 1e-10
DELTA_MAX = 1e-2
# mu-GDP 3 is (eps ~ 17, delta 1e-5)-DP, about EPSILON_MAX: a weaker target protects nobody
# (and a huge mu calibrates to vanishing noise). A TPR target is held to the same mu.
MU_MAX = 3.0
MU_MIN = 0.01
# An attack false-positive rate below 1e-6 cannot even be tested on medical datasets.
FPR_MIN = 1e-6
# Seeds are fed to 32-bit generators.
SEED_MAX = 2**32 - 1

# -- schedule (the work the owner prices and then runs) ---------------------------------------
# Total DP-SGD steps of one job (all rounds of a federated schedule together). Pricing time
# grows with steps; at this many the worst case allowed here prices in seconds (see
# tests/test_spec_bounds.py). 50,000 records at batch 256 for 100 epochs is 19,600 steps.
STEPS_MAX = 20_000
# Steps per epoch (ceil(records / batch)): the sample rate is at least 1%. Pricing time grows as
# the rate falls (20,000 steps priced in 18 s at rate 0.002, 3 s at 0.018), and DP-SGD wants
# large batches anyway (the noise per step is sigma * clip / batch).
STEPS_PER_EPOCH_MAX = 100
# Epochs alone: beyond this, DP-SGD spends budget on noise (STEPS_MAX binds first anyway).
EPOCHS_MAX = 5_000
# Expected (Poisson) batch: larger than any dataset a site holds; the meta check bounds it by
# the training-record count.
BATCH_SIZE_MAX = 100_000
# Federated rounds of one schedule, each priced up front and each a metrics release.
FED_ROUNDS_MAX = 100
# DP active learning: planning runs a rate search per round and per group, so its cost grows
# faster than the rounds (worst corner measured on a loaded 2-core machine: 3 rounds 6-11 s,
# 5 rounds 23 s, 20 rounds 85 s).
DPAL_ROUNDS_MAX = 3
# Records labelled per DP-AL round or in its start set: more than any site holds.
DPAL_SIZE_MAX = 10_000_000

# -- model size --------------------------------------------------------------------------------
HIDDEN_MAX = 4_096  # an MLP layer wider than any DP-SGD head needs; PARAMS_MAX binds on wide data
WIDTH_MAX = 256  # ResNet-9's usual width is 64 (PARAMS_MAX binds from about 80)
# 10M parameters: 40 MB of float32, ResNet-9 at width 64 is 6.6M.
PARAMS_MAX = 10_000_000
# DP-SGD keeps one gradient per sample of a physical batch: params x batch x 4 bytes.
GRAD_MEMORY_BYTES_MAX = 4 * 2**30

# -- other numbers -----------------------------------------------------------------------------
CLIP_NORM_MAX = 1e4  # gradients are clipped to this; larger only means "no clipping"
LEARNING_RATE_MAX = 1e3  # beyond this any model diverges
SCORE_BOUND_MAX = 1e6  # DP-AL's score clipping bound S
LAM_MIN, LAM_MAX = 1e-9, 1e3  # objective perturbation's L2 weight per record
# the perturbation's std s: below 0.01 its Gaussian loss term (1/s^2) is too wide to price
PERTURBATION_MIN, PERTURBATION_MAX = 1e-2, 1e4
REMOVAL_EPSILON_MAX = 100.0  # certified removal's epsilon: a certificate, not a release

# -- strings and lists -------------------------------------------------------------------------
# The datasite's own rule for dataset names (datasite.ingest_checks.NAME_RE).
DATASET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# Column names come from the owner's files; a spec can only name one, and a printable one.
COLUMN_MAX_CHARS = 128
# A syft request id (UID.to_string(): 32 hex digits); dashes tolerated.
REQUEST_ID_RE = re.compile(r"[0-9A-Fa-f][0-9A-Fa-f-]{7,63}")
# A model state (torch.save bytes) as base64: the federated rounds' starting weights.
BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
# ... of at most PARAMS_MAX float32 weights (plus torch's zip framing), as base64
INIT_STATE_MAX_CHARS = 4 * ((4 * PARAMS_MAX + 2**20) // 3 + 1)
STATS_QUERIES_MAX = 100  # a Gaussian query costs ~35 ms to price (OpenDP calibration)
STATS_TEXT_MAX_CHARS = 128  # a query's name, column or category
STATS_LIST_MAX = 10_001  # edges, categories, candidates (shared.stats' own caps)
STATS_ALPHAS_MAX = 99  # quantile levels in one query: each is an exponential mechanism
# Quantiles price in time ~ levels x candidates (99 x 10,001 in one query: 1.4 s; 100 such
# queries: 138 s to price, 184 s to report), the report in time ~ levels over the job.
STATS_QUANTILE_LEVELS_MAX = 200  # summed over the job's quantile queries
STATS_QUANTILE_WORK_MAX = 1_000_000  # sum over quantile queries of levels x candidates


def _error(msg: str) -> SpecError:
    return SpecError(msg)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_int(field: str, value, lo: int, hi: int, why: str = "") -> None:
    """``value`` is an int in [lo, hi]."""
    if not _is_int(value):
        raise _error(f"{field} must be an integer in {lo}..{hi}, got {brief(value)}")
    if not lo <= value <= hi:
        raise _error(f"{field}={brief(value)} is out of range: allowed {lo}..{hi}"
                     + (f" ({why})" if why else "") + f"; choose {field} in that range")


def check_number(field: str, value, lo: float, hi: float, *, lo_open: bool = False,
                 hi_open: bool = False, why: str = "") -> None:
    """``value`` is a finite int or float in the interval from lo to hi (open ends as given)."""
    span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if not (_is_number(value) and math.isfinite(value)):
        raise _error(f"{field} must be a finite number in {span}, got {brief(value)}")
    if (value <= lo if lo_open else value < lo) or (value >= hi if hi_open else value > hi):
        raise _error(f"{field}={brief(value)} is out of range: allowed {span}"
                     + (f" ({why})" if why else "") + f"; choose {field} in that range")


def check_choice(field: str, value, choices) -> None:
    """``value`` is one of ``choices``."""
    if not (isinstance(value, str) and value in choices):
        raise _error(f"unknown {field} {brief(value)}; choose one of {list(choices)}")


def check_pattern(field: str, value, pattern: re.Pattern, what: str, max_chars: int,
                  allow_empty: bool = False) -> None:
    """``value`` is a string matching ``pattern`` in full, at most ``max_chars`` long."""
    if allow_empty and value == "":
        return
    if not isinstance(value, str):
        raise _error(f"{field} must be a string ({what}), got {brief(value)}")
    if len(value) > max_chars:
        raise _error(f"{field} is {len(value)} characters long; at most {max_chars} ({what})")
    if not pattern.fullmatch(value):
        raise _error(f"{field}={brief(value)} is not {what}")


def check_text(field: str, value, max_chars: int = COLUMN_MAX_CHARS,
               allow_empty: bool = False) -> None:
    """``value`` is a printable name: no control, bidi or invisible characters, no leading or
    trailing space, at most ``max_chars`` characters (a column name, a query name)."""
    if not isinstance(value, str):
        raise _error(f"{field} must be a string, got {brief(value)}")
    if value == "":
        if allow_empty:
            return
        raise _error(f"{field} must not be empty")
    if len(value) > max_chars:
        raise _error(f"{field} is {len(value)} characters long; at most {max_chars}")
    if value != value.strip() or any(is_unsafe_char(c) for c in value):
        raise _error(f"{field}={brief(value)} holds control, bidi, invisible or surrounding "
                     "space characters; give the plain name")


def check_dataset(value) -> None:
    check_pattern("dataset", value, DATASET_RE, "a dataset name (letters, digits, _ and -, "
                  "starting with a letter or digit)", 64)


def check_request_id(field: str, value, allow_empty: bool = False) -> None:
    check_pattern(field, value, REQUEST_ID_RE, "a request id (hex digits, as request.id "
                  "gives it)", 64, allow_empty=allow_empty)


def check_init_state(value) -> None:
    """Base64 of a model state, or "" (none)."""
    check_pattern("init_state", value, BASE64_RE, "base64 model weights (from "
                  "shared.training.federated.state_to_text)", INIT_STATE_MAX_CHARS,
                  allow_empty=True)


def check_list(field: str, value, max_len: int) -> None:
    if not isinstance(value, list):
        raise _error(f"{field} must be a list, got {brief(value)}")
    if len(value) > max_len:
        raise _error(f"{field} has {len(value)} entries; at most {max_len}")


# -- privacy targets ---------------------------------------------------------------------------
def check_privacy(epsilon, target: dict) -> None:
    """The training target's strength (after ``shared.targets.check_target`` checked its form):
    epsilon in [EPSILON_MIN, EPSILON_MAX], or mu in [MU_MIN, MU_MAX], or a TPR target no
    weaker than MU_MAX (its Gaussian-DP equivalent)."""
    if not target:
        check_number("epsilon", epsilon, EPSILON_MIN, EPSILON_MAX,
                     why="weaker protects nobody and prices slowly; stronger cannot be reached")
        return
    if "mu" in target:
        check_number("target mu", target["mu"], MU_MIN, MU_MAX,
                     why=f"mu={MU_MAX:g} is already about epsilon 17 at delta 1e-5")
        return
    tpr, fpr = target["tpr"], target["fpr"]
    check_number("target fpr", fpr, FPR_MIN, 0.5)
    mu = NormalDist().inv_cdf(tpr) - NormalDist().inv_cdf(fpr)
    if mu > MU_MAX:
        cap = NormalDist().cdf(NormalDist().inv_cdf(fpr) + MU_MAX)
        raise _error(f"target tpr={brief(tpr)} at fpr={brief(fpr)} is as weak as mu={mu:.3g} "
                     f"Gaussian DP; allowed: mu <= {MU_MAX:g}, i.e. tpr <= {cap:.4g} at this fpr")


# -- work --------------------------------------------------------------------------------------
def dpsgd_steps(n_train: int, batch_size: int, epochs: float) -> int:
    """The DP-SGD steps a schedule runs, as Opacus counts them (ceil(n / B) per epoch; one
    fewer for some n, never more), without importing it."""
    return int(math.ceil(epochs * math.ceil(n_train / batch_size)))


def auto_batch_size(n_train: int, epochs: float, floor: int = 64) -> int:
    """The expected batch a job with ``batch_size=0`` uses, from the public training count: at
    least ``floor`` (the measured table default), a sample rate of at least 1% (the
    STEPS_PER_EPOCH_MAX check) and at most STEPS_MAX steps for ``epochs`` (all rounds
    together) where a batch of at most ``n_train`` allows it; never above ``n_train``. A fixed
    64 failed the 1% check past 6,400 training records."""
    n = max(int(n_train), 1)
    per_epoch = min(STEPS_PER_EPOCH_MAX, math.floor(STEPS_MAX / epochs))  # ceil(n / b) at most
    return min(max(int(floor), math.ceil(n / max(per_epoch, 1))), n)


def check_sample_rate(n_train: int, batch_size: int, what: str) -> None:
    """One epoch of ``n_train`` records at ``batch_size`` is at most STEPS_PER_EPOCH_MAX steps."""
    per_epoch = math.ceil(n_train / batch_size)
    if per_epoch > STEPS_PER_EPOCH_MAX:
        need = math.ceil(n_train / STEPS_PER_EPOCH_MAX)
        raise _error(f"batch_size={batch_size} makes an epoch of {what} {per_epoch} steps over "
                     f"{n_train} records; at most {STEPS_PER_EPOCH_MAX} (a sample rate of at "
                     f"least 1%): choose batch_size >= {need}")


def check_steps(steps: int, what: str) -> None:
    """``steps`` DP-SGD steps (the job's total, all rounds) is within STEPS_MAX."""
    if steps > STEPS_MAX:
        raise _error(f"{what} runs {steps} DP-SGD steps; at most {STEPS_MAX} (the owner prices "
                     "every step before approving): lower epochs or rounds, or raise batch_size")


# -- model size --------------------------------------------------------------------------------
def table_params(model: str, n_features: int, n_classes: int, hidden: int) -> int:
    """Parameters of ``shared.training.models.build_model`` for a table (logreg: one Linear; mlp:
    Linear-ReLU-Linear)."""
    if model == "mlp":
        return n_features * hidden + hidden + hidden * n_classes + n_classes
    return n_features * n_classes + n_classes


def backbone_dim(backbone: str, image_shape) -> int:
    """Feature length of ``shared.training.backbones.Backbone`` (mirrors it without torch; a
    test pins that they agree)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    c = int(image_shape[2]) if len(image_shape) > 2 else 1
    if backbone == "scatter":
        return c * 81 * min(max(h // 4, 1), 8) * min(max(w // 4, 1), 8)
    if backbone == "random_conv":
        return 128 * min(max(h // 4, 1), 4) * min(max(w // 4, 1), 4)
    return c * min(h, 16) * min(w, 16)


def image_params(model: str, image_shape, n_classes: int, width: int, hidden: int,
                 backbone: str) -> int:
    """Trainable parameters of an image model of ``shared.training.models`` (conv weights, GroupNorm
    affines, the classifier; a head's frozen backbone has none)."""
    c = int(image_shape[2]) if len(image_shape) > 2 else 1
    if model == "head":
        return table_params("mlp" if hidden > 0 else "logreg",
                            backbone_dim(backbone, image_shape), n_classes, hidden)

    def conv(i, o):
        return 9 * i * o + 2 * o  # 3x3 conv without bias, GroupNorm weight and bias

    w = width or (16 if model == "cnn" else 64)
    if model == "cnn":
        return conv(c, w) + conv(w, 2 * w) + conv(2 * w, 4 * w) + 4 * w * n_classes + n_classes
    return (conv(c, w) + conv(w, 2 * w) + 2 * conv(2 * w, 2 * w) + conv(2 * w, 4 * w)
            + conv(4 * w, 8 * w) + 2 * conv(8 * w, 8 * w) + 8 * w * n_classes)


def check_model_size(params: int, physical_batch: int, what: str) -> None:
    """The model (``params`` weights) and its per-sample gradients over a physical batch fit
    PARAMS_MAX and GRAD_MEMORY_BYTES_MAX."""
    if params > PARAMS_MAX:
        raise _error(f"{what} has about {params:,} parameters; at most {PARAMS_MAX:,} "
                     "(the datasite's memory): lower hidden or width")
    need = params * max(1, physical_batch) * 4
    if need > GRAD_MEMORY_BYTES_MAX:
        raise _error(f"{what} needs about {need / 2**30:.1f} GiB of per-sample gradients "
                     f"({params:,} parameters x batch {physical_batch}); at most "
                     f"{GRAD_MEMORY_BYTES_MAX / 2**30:g} GiB: lower batch_size (or set "
                     "physical_batch_size), hidden or width")
