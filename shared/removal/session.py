"""Fast successive removals from one model (``RemovalSession``) and how each is certified.

Removing records takes one Newton step on the remaining data; the model's *gradient residual*
(|grad L(w)| on the remaining data, b included) is bounded after every removal, and while that
bound stays <= s * eps / c, c = sqrt(2 ln(1.5 / delta)), the removal is (eps, delta)-certified:
the released weights are (eps, delta)-indistinguishable from a model retrained without the
records (the paper's Thm 3). Past the budget, the model is retrained on the remaining data with
a fresh b.

How the residual is bounded. A step w -> w + d with d = M v (M ~ H^-1, v the known part of the
gradient, see below) leaves the gradient

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
"""
from __future__ import annotations

import math

import numpy as np
from scipy import linalg, special

from .certificate import certificate
from .model import RemovableModel
from .objective import (GAMMA, GRAD_TOL, RemovalError, check_xy, class_signs,
                        combine_residuals, fit_weights)

_EPS64 = np.finfo(np.float64).eps


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
        X, y = check_xy(X, y, len(model.classes))
        if len(X) != model.n_train:
            raise RemovalError(f"the model is fitted on {model.n_train} records but "
                               f"{len(X)} were given; pass exactly its current training records")
        if X.shape[1] != model.weights.shape[0]:
            raise RemovalError(f"features have {X.shape[1]} columns, the model {model.weights.shape[0]}")
        self.model = model
        self.X = X
        self.y = y
        self.ys = class_signs(y, model.n_models)
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
            if combine_residuals(known2, taylor + t2) >= combine_residuals(known, taylor):
                break
            W, Z, known, taylor = W2, Z2, known2, taylor + t2
        total = combine_residuals(known, taylor)
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
        m.weights = fit_weights(Xa, ya, m.n_models, m.lam, m.s, m.noise_seed, m.n_retrains,
                         len(Xa) + self.reg_offset)
        m.known_residual = np.zeros_like(m.weights)
        m.taylor_residual = np.full(m.n_models, GRAD_TOL)
        m.residual_used = combine_residuals(m.known_residual, m.taylor_residual)
        m.n_train = len(Xa)
        m.n_reg = m.n_train + self.reg_offset
        self._reset_caches()


def remove(model: RemovableModel, X, y, rows) -> tuple[RemovableModel, dict]:
    """Remove the records at positions ``rows`` of (X, y), the records ``model`` is currently
    fitted on. One-shot: builds a :class:`RemovalSession` (an O(n d^2 K) Hessian); keep a session
    for many removals. Returns (updated model, certificate); the input model is not changed.
    The caller drops ``rows`` from its data afterwards."""
    session = RemovalSession(RemovableModel.from_dict(model.to_dict()), X, y)
    cert = session.remove(rows)
    return session.model, cert
