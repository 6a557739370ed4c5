"""Certified data removal (Guo, Goldstein, Hannun, van der Maaten, ICML 2020) for L2-regularised
logistic regression, binary or one-vs-rest, on features of norm <= 1.

Training minimises, per class k (one model for two classes),

    L_k(w) = sum_i log(1 + exp(-y_ik w.x_i)) + (lam n / 2) |w|^2 + b_k.w,   b_k ~ N(0, s^2 I),

exactly (Newton's method until |grad| <= GRAD_TOL). Removing records takes one Newton step on
the remaining data; the model's *gradient residual* (|grad L(w)| on the remaining data, b
included) is bounded after every removal, and while that bound stays <= s * eps / c,
c = sqrt(2 ln(1.5 / delta)), the removal is (eps, delta)-certified: the released weights are
(eps, delta)-indistinguishable from a model retrained without the records (the paper's Thm 3).
Past the budget, the model is retrained on the remaining data with a fresh b.

How the residual is bounded (``RemovalSession``). A step w -> w + d with d = M v (M ~ H^-1,
v the known part of the gradient, see below) leaves the gradient

    grad(w + d) = [v + H(w) d]  +  U  +  T,      |T| <= GAMMA |X|_2 |d| |X d|

where H(w) is the exact Hessian at w on the remaining data, U the part of the residual that is
only known through its bound (the optimiser's leftover gradient <= GRAD_TOL, plus all earlier T),
and T the Taylor remainder the paper bounds (GAMMA = 1/4 >= max |l'''| of the logistic loss,
|x| <= 1). The bracket is computed exactly in O(n d) (two matrix-vector products), so M may be a
stale or approximate inverse (we keep the Hessian inverse at a reference point, downdated by
Woodbury for removed rows, refreshed when it becomes a poor preconditioner) without weakening
the certificate; the bracket is folded into the next step (iterative refinement), so it does not
accumulate. The certified bound is |known| + |U|, per class; the per-class residuals combine as
the root of the sum of squares, because the one-vs-rest weights are one vector in R^(d x K)
with an isotropic Gaussian b, and Thm 3 needs the norm of its joint gradient residual (the
paper's code adds the per-class bounds: also valid, looser).

|X|_2 is the exact spectral norm (eigvalsh of X^T X, plus a floating-point margin, capped by the
Frobenius norm) of the rows the session starts from: removing rows never increases it.

What a certificate covers: the weights, for the removed records, with the features taken as
given. Features from a fixed public map (public column scales, a frozen data-independent
backbone) do not depend on other records, so the removal is complete; a feature extractor
trained with DP on the records keeps the removed record's influence bounded only by its own DP
guarantee (``feature_source``).

Training privacy (:func:`training_epsilon`): the released weights are objective-perturbation
outputs, (eps_train, delta)-DP for the training records.
"""
from __future__ import annotations

import json
import math
import secrets
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from scipy import linalg, special

GAMMA = 0.25  # Lipschitz constant of the logistic loss' 2nd derivative bound used by the paper
GRAD_TOL = 1e-6  # training stops at |grad| <= this; it is charged to every certificate
_EPS64 = np.finfo(np.float64).eps
_MAX_NEWTON = 100


class RemovalError(ValueError):
    """A removal or training request cannot be carried out; the message says why."""


# -- privacy arithmetic ------------------------------------------------------------------------
def residual_budget(s: float, eps: float, delta: float) -> float:
    """Largest gradient residual an (eps, delta)-certified removal allows: s * eps / c,
    c = sqrt(2 ln(1.5 / delta)) (Guo et al., Thm 3)."""
    if not (s > 0 and eps > 0 and 0 < delta < 1):
        raise RemovalError(f"need s > 0, eps > 0 and 0 < delta < 1, got {s}, {eps}, {delta}")
    return s * eps / math.sqrt(2 * math.log(1.5 / delta))


def training_epsilon(lam: float, s: float, n: int, delta: float, n_models: int = 1,
                     interval: float | None = None) -> float:
    """Epsilon at ``delta`` of releasing the weights trained on ``n`` records (add/remove one
    record; the regulariser lam * n is fixed by the public record count, not by the data).

    Objective perturbation (Chaudhuri et al. 2011; Kifer, Smith, Thakurta 2012) analysed
    directly for the logistic loss, |x| <= 1. With Lambda = lam * n, the output w determines b,
    and for neighbours D, D' = D + {x} the log density ratio at w is
      * a Gaussian term: b_D'(w) = b_D(w) - c x with c = l'(w.x) = -y m, m in (0, 1) (the sign
        is the record's), so the term (|b - c x|^2 - |b|^2) / 2s^2 is convex in m and at most
        max(0, mu Z + mu^2 / 2), Z ~ N(0, 1), mu = 1 / s: the Gaussian mechanism's privacy loss,
        clipped at 0;
      * a Jacobian term: det(H + Lambda I + l'' x x^T) / det(H + Lambda I) <= 1 + 1 / (4 Lambda).
    Both directions have the same bound. One-vs-rest trains ``n_models`` independent models with
    independent b_k: the record's loss is the sum of the per-model bounds, composed here by
    dp_accounting's PLD (pessimistic discretisation at ``interval``). KST's Theorem 2 (Gaussian
    case) states this with a coarser split (b ~ N(0, (8 ln(2/delta) + 4 eps) / eps^2),
    Lambda >= 2 (1/4) / eps); its epsilon is never smaller than ours (tested).

    Any Lambda > 0 gives a finite epsilon; lam <= 0 cannot be priced and raises.
    """
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise RemovalError(f"n must be a positive number of records, got {n!r}")
    if not (lam > 0 and math.isfinite(lam)):
        raise RemovalError(f"lam must be a finite number > 0 (objective perturbation needs a "
                           f"strongly convex objective), got {lam}")
    if not (s > 0 and math.isfinite(s)):
        raise RemovalError(f"the perturbation s must be a finite number > 0, got {s}")
    if not 0 < delta < 1:
        raise RemovalError(f"delta must be in (0, 1), got {delta}")
    if not (isinstance(n_models, (int, np.integer)) and n_models >= 1):
        raise RemovalError(f"n_models must be >= 1, got {n_models}")
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    Lambda = lam * n
    eps_jac = math.log1p(1 / (4 * Lambda))
    mu = 1 / s
    # loss U = max(0, mu Z + mu^2/2) + eps_jac, rounded up to the grid (pessimistic)
    top = eps_jac + mu * 10 + mu * mu / 2
    if interval is None:  # fine enough to be tight, coarse enough to stay fast (any is valid)
        interval = max(1e-4, top / 20000)
    i_max = int(math.ceil(top / interval))
    t = np.arange(i_max + 1) * interval - eps_jac
    cdf = np.where(t >= 0, special.ndtr((t - mu * mu / 2) / mu), 0.0)
    pmf = np.diff(cdf, prepend=0.0)
    probs = {int(i): float(p) for i, p in enumerate(pmf) if p > 0}
    pld = pld_lib.PrivacyLossDistribution.create_from_rounded_probability(
        probs, infinity_mass=float(1 - cdf[-1]), value_discretization_interval=interval,
        pessimistic_estimate=True)
    if n_models > 1:
        pld = pld.self_compose(int(n_models))
    return float(pld.get_epsilon_for_delta(delta))


def kst_epsilon(lam: float, s: float, n: int, delta: float) -> float:
    """Epsilon from Kifer-Smith-Thakurta's Theorem 2 (Gaussian) for one model, smoothness 1/4:
    the smallest eps with s^2 >= (8 ln(2/delta) + 4 eps) / eps^2 and lam n >= 2 (1/4) / eps.
    A cross-check of :func:`training_epsilon` only."""
    a = 8 * math.log(2 / delta)
    eps_noise = (4 + math.sqrt(16 + 4 * s * s * a)) / (2 * s * s)
    return max(eps_noise, 0.5 / (lam * n))


# -- features ----------------------------------------------------------------------------------
def table_pipeline(feature_columns: Sequence[str], feature_scales: Sequence[float] | None) -> dict:
    """Feature map of a table: public column scales (clip(x / s_j, -1, 1)) when every column
    has one, else row-wise L2 normalisation; then an intercept feature, all times 1/sqrt(d+1)
    (public_scale) or 1/sqrt(2) (row normalised) so every row has norm <= 1."""
    d = len(feature_columns)
    if feature_scales is not None:
        return {"input": "table", "preprocessing": "public_scale",
                "feature_scales": [float(v) for v in feature_scales],
                "feature_columns": list(feature_columns), "intercept": True,
                "row_scale": 1 / math.sqrt(d + 1)}
    return {"input": "table", "preprocessing": "row_l2_normalise",
            "feature_columns": list(feature_columns), "intercept": True,
            "row_scale": 1 / math.sqrt(2)}


def unit_pipeline(source: str) -> dict:
    """Feature map of precomputed rows of norm <= 1 (e.g. a frozen backbone's): append an
    intercept feature, times 1/sqrt(2)."""
    return {"input": source, "preprocessing": "none", "intercept": True,
            "row_scale": 1 / math.sqrt(2)}


def make_features(X, pipeline: dict) -> np.ndarray:
    """float64 rows of norm <= 1 from raw table columns or unit-norm features (per ``pipeline``).
    Each row depends on its own record only."""
    from .training import public_scale, row_l2_normalise

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise RemovalError(f"features must be a 2-D array, got shape {X.shape}")
    prep = pipeline["preprocessing"]
    if prep == "public_scale":
        F = public_scale(X, pipeline["feature_scales"]).astype(np.float64)
    elif prep == "row_l2_normalise":
        F = row_l2_normalise(X).astype(np.float64)
    elif prep == "none":
        F = np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0)
        norms = np.linalg.norm(F, axis=1, keepdims=True)
        F = F / np.maximum(norms, 1.0)  # a backbone row of norm 1 + rounding: no-op
    else:
        raise RemovalError(f"unknown preprocessing {prep!r}")
    if pipeline.get("intercept", True):
        F = np.hstack([F, np.ones((len(F), 1))])
    F *= pipeline["row_scale"]
    norms = np.linalg.norm(F, axis=1, keepdims=True)
    return F / np.maximum(norms, 1.0)  # guards |x| <= 1 against rounding in the scale


# -- the model ---------------------------------------------------------------------------------
@dataclass
class RemovableModel:
    """Weights plus everything needed to update them and to certify the updates.

    ``weights``: (d, K) float64, K = 1 for two classes (scores of ``classes[1]``), else one
    column per class. Public (the released model): weights, classes, the hyper-parameters,
    ``feature_pipeline``, ``feature_source``. Owner-only after a removal (data-dependent, not
    DP): ``known_residual``, ``taylor_residual``, ``residual_used``. b is never kept.
    """

    weights: np.ndarray
    classes: list
    lam: float
    s: float
    eps: float  # removal certificate epsilon
    delta: float  # removal certificate delta
    train_delta: float  # delta of the training guarantee
    n_train: int  # records the weights are currently fitted on
    budget: float
    residual_used: float
    known_residual: np.ndarray  # (d, K): exactly known part of the gradient residual
    taylor_residual: np.ndarray  # (K,): bound on the rest (GRAD_TOL + Taylor remainders)
    n_removed: int = 0
    n_retrains: int = 0
    feature_pipeline: dict = field(default_factory=dict)
    feature_source: dict = field(default_factory=lambda: {"kind": "public"})
    noise_seed: int | None = None  # tests/benchmarks only: None = b from OS entropy
    # the public count in the regulariser, Lambda = lam * n_reg: a job's planned training-record
    # count (shared.data.n_train_records), never the realised split size; None: n_train
    n_reg: int | None = None

    @property
    def reg_count(self) -> int:
        """The record count in the regulariser lam * n (public; see ``n_reg``)."""
        return int(self.n_train if self.n_reg is None else self.n_reg)

    @property
    def n_models(self) -> int:
        return self.weights.shape[1]

    def to_dict(self) -> dict:
        """JSON-able state (numpy arrays as nested lists)."""
        d = asdict(self)
        for k in ("weights", "known_residual", "taylor_residual"):
            d[k] = np.asarray(d[k]).tolist()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "RemovableModel":
        d = dict(d)
        for k in ("weights", "known_residual", "taylor_residual"):
            d[k] = np.asarray(d[k], dtype=np.float64)
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "RemovableModel":
        return cls.from_dict(json.loads(text))

    def public_dict(self) -> dict:
        """What may be released with the model: no residual state."""
        d = self.to_dict()
        for k in ("known_residual", "taylor_residual", "residual_used", "noise_seed"):
            d.pop(k)
        # the realised training count is a count of private records: release the public one
        d["n_train"] = self.reg_count
        return d


def _combine(known: np.ndarray, taylor: np.ndarray) -> float:
    """Certified bound on the joint gradient residual: root-sum-square over classes of
    |known_k| + taylor_k."""
    per = np.linalg.norm(known, axis=0) + taylor
    return float(np.sqrt(np.sum(per * per)))


def _signs(y: np.ndarray, n_models: int) -> np.ndarray:
    """(n, K) labels in {-1, +1}: binary -> class 1 is +1; OvR -> one column per class."""
    y = np.asarray(y)
    if n_models == 1:
        return np.where(y == 1, 1.0, -1.0)[:, None]
    return np.where(y[:, None] == np.arange(n_models)[None, :], 1.0, -1.0)


def _check_xy(X: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or len(X) != len(y):
        raise RemovalError(f"need X (n, d) and y (n,), got {X.shape} and {y.shape}")
    if len(X) == 0:
        raise RemovalError("no training records")
    if not np.all(np.isfinite(X)):
        raise RemovalError("features contain NaN or infinity")
    if np.linalg.norm(X, axis=1).max() > 1 + 1e-9:
        raise RemovalError("every feature row must have L2 norm <= 1 (use make_features)")
    if y.dtype.kind not in "iu" or (len(y) and (y.min() < 0 or y.max() >= n_classes)):
        raise RemovalError(f"labels must be integers in [0, {n_classes})")
    return X, y.astype(np.int64)


def _loss_grad_hess(w, X, ys, Lambda, b):
    """Objective, gradient and Hessian of one class' perturbed objective."""
    z = X @ w
    m = ys * z
    loss = np.logaddexp(0.0, -m).sum() + 0.5 * Lambda * w @ w + b @ w
    p = special.expit(-m)  # sigma(-y z)
    grad = X.T @ (-ys * p) + Lambda * w + b
    D = p * (1 - p)
    H = (X * D[:, None]).T @ X
    H[np.diag_indices_from(H)] += Lambda
    return loss, grad, H


def _minimise(X, ys, Lambda, b) -> np.ndarray:
    """Exact minimiser of one class' objective: damped Newton until |grad| <= GRAD_TOL."""
    w = np.zeros(X.shape[1])
    f, g, H = _loss_grad_hess(w, X, ys, Lambda, b)
    for _ in range(_MAX_NEWTON):
        if np.linalg.norm(g) <= GRAD_TOL:
            return w
        step = linalg.cho_solve(linalg.cho_factor(H), -g)
        t = 1.0
        while True:  # backtracking (Armijo); strongly convex, so it terminates
            w_new = w + t * step
            f_new, g_new, H_new = _loss_grad_hess(w_new, X, ys, Lambda, b)
            # near the optimum f stops resolving the decrease in float64: then a step that
            # shrinks the gradient is the right one (Newton converges quadratically there)
            if (f_new <= f + 1e-4 * t * (g @ step) or np.linalg.norm(g_new) < 0.5 * np.linalg.norm(g)
                    or t < 1e-10):
                break
            t *= 0.5
        w, f, g, H = w_new, f_new, g_new, H_new
    raise RemovalError(f"training did not reach |grad| <= {GRAD_TOL} in {_MAX_NEWTON} Newton "
                       f"steps (|grad| = {np.linalg.norm(g):.3g}); the certificate needs an "
                       "exact minimiser")


def _draw_b(s: float, shape, noise_seed: int | None, n_retrains: int) -> np.ndarray:
    # b must stay secret: knowing it reveals the sum of the records' gradients. So it comes
    # from OS entropy unless a test pins ``noise_seed`` (never a researcher's spec seed).
    seed = [int(noise_seed), int(n_retrains)] if noise_seed is not None else secrets.randbits(128)
    return s * np.random.default_rng(seed).standard_normal(shape)


def _fit(X, y, n_models, lam, s, noise_seed, n_retrains, n_reg=None) -> np.ndarray:
    ys = _signs(y, n_models)
    Lambda = lam * (len(X) if n_reg is None else n_reg)  # n_reg: the public, planned count
    b = _draw_b(s, (X.shape[1], n_models), noise_seed, n_retrains)
    W = np.column_stack([_minimise(X, ys[:, k], Lambda, b[:, k]) for k in range(n_models)])
    del b  # never stored
    return W


def train_removable(X, y, classes: Sequence, lam: float, s: float, eps: float, delta: float,
                    seed: int | None = None, train_delta: float | None = None,
                    feature_pipeline: dict | None = None,
                    feature_source: dict | None = None,
                    n_reg: int | None = None) -> RemovableModel:
    """Train a removal-enabled model on features ``X`` (rows of norm <= 1) and labels ``y``
    (integer positions in ``classes``).

    ``eps``, ``delta``: what each removal certificate guarantees (they set the residual budget
    s * eps / c). ``seed``: seeds b for reproducible tests and benchmarks only; None (the
    default, and what jobs use) draws b from OS entropy. ``train_delta``: delta of the training
    guarantee (recorded; default ``delta``). ``n_reg``: the public record count of the
    regulariser lam * n_reg (a job's planned count; default ``len(X)``).
    """
    classes = list(classes)
    if len(classes) < 2:
        raise RemovalError(f"need at least two classes, got {classes}")
    n_models = 1 if len(classes) == 2 else len(classes)
    X, y = _check_xy(X, y, len(classes))
    if not (lam > 0 and math.isfinite(lam)):
        raise RemovalError(f"lam must be a finite number > 0, got {lam}")
    budget = residual_budget(s, eps, delta)
    n_reg = len(X) if n_reg is None else int(n_reg)
    W = _fit(X, y, n_models, lam, s, seed, 0, n_reg)
    taylor = np.full(n_models, GRAD_TOL)
    known = np.zeros_like(W)
    return RemovableModel(
        weights=W, classes=classes, lam=float(lam), s=float(s), eps=float(eps),
        delta=float(delta), train_delta=float(train_delta if train_delta is not None else delta),
        n_train=len(X), budget=budget, residual_used=_combine(known, taylor),
        known_residual=known, taylor_residual=taylor,
        feature_pipeline=dict(feature_pipeline or {}),
        feature_source=dict(feature_source or {"kind": "public"}), noise_seed=seed,
        n_reg=n_reg)


def decision_function(model: RemovableModel, X) -> np.ndarray:
    """(n, K) scores w_k.x on features from :func:`make_features`."""
    return np.asarray(X, dtype=np.float64) @ model.weights


def predict_proba(model: RemovableModel, X) -> np.ndarray:
    """(n, n_classes) probabilities: sigmoid for two classes; one-vs-rest sigmoids normalised
    to sum to 1 for more."""
    z = decision_function(model, X)
    if model.n_models == 1:
        p1 = special.expit(z[:, 0])
        return np.column_stack([1 - p1, p1])
    p = special.expit(z)
    return p / p.sum(axis=1, keepdims=True)


def predict(model: RemovableModel, X) -> np.ndarray:
    """Predicted class positions (indices into ``model.classes``)."""
    z = decision_function(model, X)
    return (z[:, 0] > 0).astype(np.int64) if model.n_models == 1 else z.argmax(1)


def objective_gradient(model: RemovableModel, X, y, b: np.ndarray) -> np.ndarray:
    """(d, K) gradient of the perturbed objective at the weights: regulariser lam * (len(X) +
    the model's public offset reg_count - n_train), i.e. lam * reg_count on its own records."""
    X = np.asarray(X, dtype=np.float64)
    ys = _signs(np.asarray(y), model.n_models)
    Z = X @ model.weights
    P = special.expit(-ys * Z)
    n_reg = len(X) + model.reg_count - model.n_train
    return X.T @ (-ys * P) + model.lam * n_reg * model.weights + b


# -- removal -----------------------------------------------------------------------------------
def spectral_norm_bound(X: np.ndarray) -> float:
    """A true upper bound on |X|_2: sqrt of eigvalsh(X^T X)'s largest eigenvalue plus a margin
    for the rounding of X^T X and of the eigensolver, capped by the Frobenius norm."""
    n, d = X.shape
    fro2 = float(np.einsum("ij,ij->", X, X))
    lam_max = float(linalg.eigvalsh(X.T @ X, subset_by_index=[d - 1, d - 1])[0])
    margin = 4 * (n + d) * _EPS64 * fro2  # |fl(X^T X) - X^T X|_2 + solver error, generously
    return min(math.sqrt(max(lam_max, 0.0) + margin), math.sqrt(fro2) * (1 + 4 * n * d * _EPS64))


class RemovalSession:
    """Owner-side state for fast successive removals from one model and its training data.

    Keeps the features, a live-row mask, the scores X w, and per class an approximate Hessian
    inverse (exact at a reference point, Woodbury-downdated for removed rows). Each removal
    costs O(n d K + r d^2 K) for r removed rows (a retrain costs O(iterations n d^2 K)).
    ``remove`` returns a certificate and updates ``self.model``.
    """

    REFRESH_RATIO = 0.25  # refresh the Hessian when a step leaves > this fraction of v known

    def __init__(self, model: RemovableModel, X, y):
        X, y = _check_xy(X, y, len(model.classes))
        if len(X) != model.n_train:
            raise RemovalError(f"the model is fitted on {model.n_train} records but "
                               f"{len(X)} were given; pass exactly its current training records")
        if X.shape[1] != model.weights.shape[0]:
            raise RemovalError(f"features have {X.shape[1]} columns, the model {model.weights.shape[0]}")
        self.model = model
        self.X = X
        self.y = y
        self.ys = _signs(y, model.n_models)
        self.alive = np.ones(len(X), dtype=bool)
        # the regulariser counts lam once per live record plus this public constant (0 unless
        # the planned count differs from the realised one): removing r records lowers it by r
        self.reg_offset = model.reg_count - model.n_train
        self._reset_caches()

    # -- internals ---------------------------------------------------------------------------
    def _reset_caches(self) -> None:
        Xa = self.X[self.alive]
        self.x_norm = spectral_norm_bound(Xa)
        self.Z = self.X @ self.model.weights
        self._refresh()

    def _refresh(self) -> None:
        """Exact Hessian inverse at the current weights on the live rows."""
        W = self.model.weights
        Lambda = self.model.lam * (int(self.alive.sum()) + self.reg_offset)
        P = special.expit(-self.ys * self.Z)
        self.Dref = P * (1 - P) * self.alive[:, None]
        Xa = self.X[self.alive]
        self.Minv = []
        for k in range(W.shape[1]):
            H = (Xa * self.Dref[self.alive, k][:, None]).T @ Xa
            H[np.diag_indices_from(H)] += Lambda
            self.Minv.append(linalg.cho_solve(linalg.cho_factor(H), np.eye(len(H))))
        self.n_refresh_removals = 0

    def _downdate(self, rows: np.ndarray) -> None:
        """Remove ``rows``' curvature from the approximate inverses (Woodbury)."""
        for k, M in enumerate(self.Minv):
            V = self.X[rows].T * np.sqrt(self.Dref[rows, k])[None, :]  # (d, r)
            MV = M @ V
            S = np.eye(V.shape[1]) - V.T @ MV
            self.Minv[k] = M + MV @ np.linalg.solve(S, MV.T)
            self.Dref[rows, k] = 0.0

    def _step(self, W, Z, v, mask, Lambda):
        """One (quasi-)Newton step d = M v per class; returns new W, Z, the exact new known
        residual v + H(W) d, and the Taylor bound and float slack of the step, per class."""
        D = np.column_stack([M @ v[:, k] for k, M in enumerate(self.Minv)])  # (d, K)
        XD = self.X @ D * mask[:, None]  # live rows only
        P = special.expit(-self.ys * Z)
        curv = P * (1 - P) * mask[:, None]
        HD = self.X.T @ (curv * XD) + Lambda * D
        known = v - HD  # gradient after the step is grad(W) + H d = v - H d (d = M v: descent)
        dn = np.linalg.norm(D, axis=0)
        taylor = GAMMA * self.x_norm * dn * np.linalg.norm(XD, axis=0)
        n, d = self.X.shape
        slack = 8 * (n + d) * _EPS64 * (np.linalg.norm(v, axis=0)
                                        + (self.x_norm ** 2 / 4 + Lambda) * dn)
        return W - D, Z - XD, known, taylor + slack

    # -- public --------------------------------------------------------------------------------
    @property
    def live_rows(self) -> np.ndarray:
        """Positions (into the X given at construction) of the records the model now reflects."""
        return np.flatnonzero(self.alive)

    def remove(self, rows, cleanup_steps: int = 2) -> dict:
        """Remove the records at positions ``rows`` (into the X given at construction) in one
        Newton step; retrain with a fresh b if the certificate budget would be exceeded.
        Returns the certificate (see :func:`certificate`)."""
        rows = np.atleast_1d(np.asarray(rows))
        if rows.size == 0:
            raise RemovalError("nothing to remove: the batch is empty")
        if rows.dtype.kind not in "iu":
            raise RemovalError(f"record positions must be integers, got {rows.dtype}")
        if rows.min() < 0 or rows.max() >= len(self.X):
            raise RemovalError(f"record position(s) {sorted(set(rows[(rows < 0) | (rows >= len(self.X))].tolist()))} "
                               f"are not in the training data (0..{len(self.X) - 1})")
        if len(np.unique(rows)) != len(rows):
            raise RemovalError("a record appears twice in the batch")
        gone = rows[~self.alive[rows]]
        if len(gone):
            raise RemovalError(f"record position(s) {sorted(gone.tolist())} were already removed")
        m = self.model
        if int(self.alive.sum()) - len(rows) < 2:
            raise RemovalError("removing these would leave fewer than 2 training records")
        before = m.residual_used
        mask = self.alive.copy()
        mask[rows] = False
        Lambda = m.lam * (int(mask.sum()) + self.reg_offset)
        W, Z = m.weights, self.Z
        # Delta: gradient of what leaves the objective (the records' losses and lam/2 |w|^2 each)
        P = special.expit(-self.ys[rows] * Z[rows])
        delta_g = self.X[rows].T @ (-self.ys[rows] * P) + m.lam * len(rows) * W
        v = m.known_residual - delta_g  # known part of the new objective's gradient at W
        self._downdate(rows)
        W, Z, known, taylor_step = self._step(W, Z, v, mask, Lambda)
        taylor = m.taylor_residual + taylor_step
        for _ in range(cleanup_steps):  # iterative refinement of the known part: O(n d) each
            if np.linalg.norm(known) <= 0.1 * np.linalg.norm(taylor_step):
                break  # already negligible next to this removal's remainder: save the passes
            W2, Z2, known2, t2 = self._step(W, Z, known, mask, Lambda)
            if _combine(known2, taylor + t2) >= _combine(known, taylor):
                break
            W, Z, known, taylor = W2, Z2, known2, taylor + t2
        total = _combine(known, taylor)
        self.alive = mask
        retrained = total > m.budget
        if retrained:
            self._retrain()
        else:
            ratio = np.linalg.norm(known) / max(np.linalg.norm(v), 1e-300)
            m.weights, self.Z = W, Z
            m.known_residual, m.taylor_residual, m.residual_used = known, taylor, total
            m.n_train = int(mask.sum())
            m.n_reg = m.n_train + self.reg_offset
            self.n_refresh_removals += len(rows)
            if ratio > self.REFRESH_RATIO:
                self._refresh()
        m.n_removed += len(rows)
        return certificate(m, n_removed=len(rows), retrained=retrained,
                           residual_bound=m.residual_used - (0.0 if retrained else before))

    def _retrain(self) -> None:
        m = self.model
        m.n_retrains += 1
        Xa, ya = self.X[self.alive], self.y[self.alive]
        m.weights = _fit(Xa, ya, m.n_models, m.lam, m.s, m.noise_seed, m.n_retrains,
                         len(Xa) + self.reg_offset)
        m.known_residual = np.zeros_like(m.weights)
        m.taylor_residual = np.full(m.n_models, GRAD_TOL)
        m.residual_used = _combine(m.known_residual, m.taylor_residual)
        m.n_train = len(Xa)
        m.n_reg = m.n_train + self.reg_offset
        self._reset_caches()


def certificate(model: RemovableModel, n_removed: int, retrained: bool,
                residual_bound: float) -> dict:
    """The JSON-able removal certificate for ``model`` after a removal of ``n_removed`` records."""
    fs = dict(model.feature_source)
    if fs.get("kind") == "dp_extractor":
        covers = (f"the classifier weights, (eps={model.eps:g}, delta={model.delta:g})-certified; "
                  f"the feature extractor was trained with DP (eps={fs.get('epsilon')}, "
                  f"delta={fs.get('delta')}) and still holds the removed records' influence, "
                  "bounded only by that guarantee")
    else:
        covers = (f"the whole model: features are a fixed public map of each record alone, and "
                  f"the weights are (eps={model.eps:g}, delta={model.delta:g})-indistinguishable "
                  "from a model retrained without the removed records")
    out = {
        "residual_bound": float(residual_bound),
        "residual_used": float(model.residual_used),
        "budget": float(model.budget),
        "budget_left": float(model.budget - model.residual_used),
        "retrained": bool(retrained),
        "n_removed": int(n_removed),
        "n_removed_total": int(model.n_removed),
        "n_retrains": int(model.n_retrains),
        "n_train": int(model.n_train),
        "eps": float(model.eps),
        "delta": float(model.delta),
        "feature_source": fs,
        "covers": covers,
    }
    if retrained:
        out["retrain_note"] = ("the removal would have exceeded the residual budget, so the "
                               "model was retrained on the remaining records with a fresh "
                               "perturbation: a new objective-perturbation release")
        out["training_epsilon"] = training_epsilon(model.lam, model.s, model.reg_count,
                                                   model.train_delta, model.n_models)
    return out


def remove(model: RemovableModel, X, y, rows) -> tuple[RemovableModel, dict]:
    """Remove the records at positions ``rows`` of (X, y), the records ``model`` is currently
    fitted on. One-shot: builds a :class:`RemovalSession` (an O(n d^2 K) Hessian); keep a session
    for many removals. Returns (updated model, certificate); the input model is not changed.
    The caller drops ``rows`` from its data afterwards."""
    session = RemovalSession(RemovableModel.from_dict(model.to_dict()), X, y)
    cert = session.remove(rows)
    return session.model, cert


RELEASE_STREAM = 0x52454C  # names the private random stream of fresh releases ("REL")


def fresh_release(model: RemovableModel, X, y, stream: Sequence[int] = (),
                  n_reg: int | None = None) -> RemovableModel:
    """What may go to someone who holds an earlier version of ``model``: a new
    objective-perturbation training on (X, y) (the remaining records) with a fresh b, minimised
    exactly from the same start (0) as any training.

    Never a Newton update of a released model: its difference from the earlier release is a
    noiseless function of the removed records (Chen et al., CCS 2021). Given the data this
    release is the same function A(X, y, b) as a first training and independent of every
    earlier release, so it is (training_epsilon(n = n_reg), train_delta)-DP on its own, with
    ``n_reg`` the public planned count of the remaining records (default ``len(X)``).
    b comes from the OS (:func:`shared.randomness.secret_seed`; tests pin it); ``stream``
    names the release (model, version). Residual state: public constants only."""
    from .randomness import secret_seed

    X, y = _check_xy(X, y, len(model.classes))
    n_reg = len(X) if n_reg is None else int(n_reg)
    W = _fit(X, y, model.n_models, model.lam, model.s, secret_seed(RELEASE_STREAM, *stream), 0,
             n_reg)
    taylor = np.full(model.n_models, GRAD_TOL)
    known = np.zeros_like(W)
    return RemovableModel(
        weights=W, classes=list(model.classes), lam=model.lam, s=model.s, eps=model.eps,
        delta=model.delta, train_delta=model.train_delta, n_train=len(X), budget=model.budget,
        residual_used=_combine(known, taylor), known_residual=known, taylor_residual=taylor,
        n_removed=model.n_removed, n_retrains=0,  # the owner copy's retrains are not public
        feature_pipeline=dict(model.feature_pipeline),
        feature_source=dict(model.feature_source), noise_seed=None, n_reg=n_reg)


# -- the job -----------------------------------------------------------------------------------
def job_features(spec, data, meta, extractor: dict | None = None
                 ) -> tuple[np.ndarray, np.ndarray, dict, list | None]:
    """(X of norm <= 1, y as class indices, feature pipeline, table feature columns or None):
    the features a removal job trains on, computed the same way at training and at removal.
    ``extractor``: the released result of a DP-SGD job, for ``features="dp_extractor"``."""
    from .data import TABLE
    from .training import encode_labels, feature_columns

    if meta.kind == TABLE:
        from .schema import clip_table

        data = clip_table(data, meta)  # as in run_job: forget sees the features training saw
    labels = np.asarray(data[meta.label] if meta.kind == TABLE else data["labels"])
    y = encode_labels(labels, list(meta.labels))
    cols = None
    if spec.features == "dp_extractor":
        if extractor is None:
            raise RemovalError("features='dp_extractor' needs the extractor job's result")
        pipeline = unit_pipeline("dp_extractor")
        X = make_features(dp_extractor_features(extractor, data, meta), pipeline)
    elif meta.kind == TABLE:
        cols = feature_columns(data, meta.label)
        scales = meta.feature_scales or {}
        pipeline = table_pipeline(cols, [scales[c] for c in cols]
                                  if all(c in scales for c in cols) else None)
        X = make_features(data[cols].to_numpy(), pipeline)
    else:
        from .backbones import extract_features

        pipeline = unit_pipeline(spec.features)
        pipeline["backbone"] = spec.features
        X = make_features(extract_features(data["images"], spec.features), pipeline)
    return X, y, pipeline, cols


def dp_extractor_features(extractor: dict, data, meta) -> np.ndarray:
    """Penultimate-layer activations of a released DP model, rows scaled to norm <= 1 (a
    fixed per-record map once the model is fixed)."""
    import torch

    from .data import TABLE
    from .results import load_model
    from .training import preprocess

    model = load_model(extractor)
    if hasattr(model, "features"):  # cnn, resnet9: features then classifier
        body = model.features
    elif isinstance(model, torch.nn.Sequential):  # table logreg / mlp
        body = model[:-1]
    else:
        raise RemovalError(f"cannot take features from a {type(model).__name__}")
    config = extractor["model_config"]
    if meta.kind == TABLE:
        x = torch.from_numpy(preprocess(data[config["feature_columns"]].to_numpy(), config))
    else:
        from .backbones import images_to_tensor

        x = images_to_tensor(data["images"])
    with torch.no_grad():
        f = torch.cat([body(x[i:i + 512]).flatten(1) for i in range(0, len(x), 512)])
    f = f.double().numpy()
    return f / np.maximum(1.0, np.linalg.norm(f, axis=1, keepdims=True))


def extractor_source(extractor: dict) -> dict:
    """The certificate's statement about a DP-trained feature extractor."""
    p = extractor.get("privacy") or {}
    # the features depend on the records through training only (the metrics are another release)
    return {"kind": "dp_extractor", "epsilon": p.get("training_epsilon", p.get("epsilon")),
            "delta": p.get("delta"),
            "job": extractor.get("kind")}


def table_model_state(model: "RemovableModel", cols: list, pipeline: dict) -> tuple[bytes, dict]:
    """The model as a torch Linear (``model_state``, ``model_config``) that
    :func:`shared.results.load_model` rebuilds and predicts with on the table's columns."""
    import io

    import torch

    from .models import build_model, model_config

    classes = list(model.classes)
    d = len(cols)
    rs = pipeline["row_scale"]
    W = model.weights
    logits_w = np.zeros((len(classes), d + 1))
    if W.shape[1] == 1:
        logits_w[1] = W[:, 0]  # softmax([0, z]) = sigmoid(z)
    else:
        logits_w = W.T
    lin = build_model("logreg", d, len(classes))
    with torch.no_grad():
        lin[0].weight.copy_(torch.from_numpy(logits_w[:, :d] * rs))
        lin[0].bias.copy_(torch.from_numpy(logits_w[:, d] * rs))
    config = model_config("logreg", d, len(classes))
    config.update(classes=classes, feature_columns=list(cols),
                  **{k: v for k, v in pipeline.items() if k in ("preprocessing", "feature_scales")})
    buf = io.BytesIO()
    torch.save(lin.state_dict(), buf)
    return buf.getvalue(), config


def run_removal_job(spec, data, meta, progress=None, extractor: dict | None = None) -> dict:
    """Run a validated :class:`shared.jobs.removal.RemovalSpec` on a table (DataFrame) or an
    image payload; see that module for the result's keys."""
    from .accounting import approx_dp_event
    from .data import TABLE
    from .private_metrics import LAPLACE, metrics_sigma
    from .private_metrics import privacy_report as metrics_report
    from .data import n_train_records
    from .training import split_indices

    classes = list(meta.labels)
    n_models = 1 if len(classes) == 2 else len(classes)
    X, y, pipeline, cols = job_features(spec, data, meta, extractor)
    tr, te = split_indices(X, y, spec.test_fraction, spec.seed)
    # the regulariser and the price use the planned count, public; the realised one is not
    n_plan = n_train_records(meta.n_records, spec.test_fraction)
    if progress is not None:
        progress(0, 1)
    # b from OS entropy: the spec's seed is the researcher's, and knowing b undoes the privacy
    model = train_removable(X[tr], y[tr], classes, spec.lam, spec.perturbation,
                            spec.removal_epsilon, spec.removal_delta, seed=None,
                            train_delta=spec.delta, feature_pipeline=pipeline,
                            feature_source=extractor_source(extractor) if extractor else
                            {"kind": "public", "features": spec.features}, n_reg=n_plan)
    if progress is not None:
        progress(1, 1)
    eps_train = training_epsilon(spec.lam, spec.perturbation, n_plan, spec.delta, n_models)
    m_scale = metrics_sigma(spec, 1, LAPLACE)  # pure DP: training uses all of delta
    privacy = metrics_report(approx_dp_event(eps_train, spec.delta), m_scale, 1, spec.delta,
                             mechanism=LAPLACE)
    privacy.update(mechanism="objective_perturbation", lam=spec.lam,
                   regulariser=spec.lam * n_plan, perturbation=spec.perturbation,
                   n_models=n_models, n_train=int(n_plan),
                   neighbouring="add/remove one record; the regulariser lam * n uses the public "
                                "record count",
                   removal_budget=model.budget, removal_epsilon=spec.removal_epsilon,
                   removal_delta=spec.removal_delta)
    result = {
        # DP (priced above), or exact only on the public mock (shared.private_metrics)
        "metrics": _metrics(model, X, y, tr, te, classes, m_scale, spec.seed, n_plan,
                            meta.n_records - n_plan),
        "privacy": privacy,
        # fresh from training its residual state holds only public constants (0, GRAD_TOL)
        "removable_model": model.to_dict(),
        "_owner_training_rows": [int(i) for i in tr],
    }
    if meta.kind == TABLE and cols is not None:
        state, config = table_model_state(model, cols, pipeline)
        result.update(model_state=state, model_config=config)
    return result


def _metrics(model, X, y, tr, te, classes, sigma, seed, n_train, n_test) -> dict:
    """Test metrics through :mod:`shared.private_metrics` (Laplace of scale ``sigma``; exact on
    the mock)."""
    from .private_metrics import LAPLACE, NOISE_STREAM, release

    pred = predict(model, X[te]) if len(te) else np.zeros(0, dtype=np.int64)
    return release(y[te], pred, classes, sigma, stream=(seed, NOISE_STREAM, 0), n_train=n_train,
                   n_test=n_test,
                   mock_extras=lambda: {"train_accuracy": _acc(model, X[tr], y[tr])},
                   mechanism=LAPLACE)


def _acc(model, X, y) -> float | None:
    return float((predict(model, X) == y).mean()) if len(y) else None
