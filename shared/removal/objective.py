"""The perturbed objective of certified removal and what its releases cost.

Training minimises, per class k (one model for two classes),

    L_k(w) = sum_i log(1 + exp(-y_ik w.x_i)) + (lam n / 2) |w|^2 + b_k.w,   b_k ~ N(0, s^2 I),

exactly (Newton's method until |grad| <= GRAD_TOL), on features of norm <= 1.

Training privacy (:func:`training_epsilon`): the released weights are objective-perturbation
outputs, (eps_train, delta)-DP for the training records. A removal is (eps, delta)-certified
while the gradient residual stays within :func:`residual_budget`.
"""
from __future__ import annotations

import math
import secrets

import numpy as np
from scipy import linalg, special

GAMMA = 0.25  # Lipschitz constant of the logistic loss' 2nd derivative bound used by the paper
GRAD_TOL = 1e-6  # training stops at |grad| <= this; it is charged to every certificate
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


# -- the objective -----------------------------------------------------------------------------
def combine_residuals(known: np.ndarray, taylor: np.ndarray) -> float:
    """Certified bound on the joint gradient residual: root-sum-square over classes of
    |known_k| + taylor_k."""
    per = np.linalg.norm(known, axis=0) + taylor
    return float(np.sqrt(np.sum(per * per)))


def class_signs(y: np.ndarray, n_models: int) -> np.ndarray:
    """(n, K) labels in {-1, +1}: binary -> class 1 is +1; OvR -> one column per class."""
    y = np.asarray(y)
    if n_models == 1:
        return np.where(y == 1, 1.0, -1.0)[:, None]
    return np.where(y[:, None] == np.arange(n_models)[None, :], 1.0, -1.0)


def check_xy(X: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(X float64, y int64) after the checks the certificate's assumptions need (|x| <= 1,
    labels in range), with a message a caller can act on otherwise."""
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


def minimise(X, ys, Lambda, b) -> np.ndarray:
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


def draw_b(s: float, shape, noise_seed: int | None, n_retrains: int) -> np.ndarray:
    """The perturbation b ~ N(0, s^2 I).

    b must stay secret: knowing it reveals the sum of the records' gradients. So it comes
    from OS entropy unless a test pins ``noise_seed`` (never a researcher's spec seed)."""
    seed = [int(noise_seed), int(n_retrains)] if noise_seed is not None else secrets.randbits(128)
    return s * np.random.default_rng(seed).standard_normal(shape)


def fit_weights(X, y, n_models, lam, s, noise_seed, n_retrains, n_reg=None) -> np.ndarray:
    """(d, K) exact minimisers of the perturbed objectives with a fresh b, which is not kept.

    ``n_reg``: the public record count of the regulariser (default ``len(X)``);
    ``noise_seed``, ``n_retrains``: see :func:`draw_b`."""
    ys = class_signs(y, n_models)
    Lambda = lam * (len(X) if n_reg is None else n_reg)  # n_reg: the public, planned count
    b = draw_b(s, (X.shape[1], n_models), noise_seed, n_retrains)
    W = np.column_stack([minimise(X, ys[:, k], Lambda, b[:, k]) for k in range(n_models)])
    del b  # never stored
    return W
