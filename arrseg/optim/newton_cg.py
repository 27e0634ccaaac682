"""Newton-CG for the classifier (W, c) on fixed features Y1.

The features are whatever feeds the classifier: the opening layer's Y1, or
Y_L after the residual layers (:func:`arrseg.core.features`); the problem
in (W, c) is the same at every depth, so this module knows nothing of the
layers (VarPro, :mod:`arrseg.optim.varpro`, optimises those).

With the features Y1 (N, k, P) fixed, the objective in (W, c)::

    E(W, c) = sum_x omega(x) (-log P_{y(x)}(x)) + alpha/2 ||W||^2,
    P(x) = softmax(W^T Y1(x) + c),   omega(x) = w[y(x)] / sum_x' w[y(x')]

(sums over labelled pixels; the weighted mean cross-entropy of
:func:`arrseg.loss_and_grad` plus Tikhonov) is convex: it is multinomial
logistic regression. Its Hessian is applied matrix-free: for a direction
(V, v) the logits move by ``dS = V^T Y1 + v`` and, per pixel,

    H_S dS = omega (P * dS - P (P^T dS))        (diag(P) - P P^T) dS
    H (V, v) = (Y1 (H_S dS)^T + alpha V,  sum_x H_S dS(x))

so a product costs two matrix products over the pixels, like a gradient.

The Newton direction solves ``H d = -g`` by truncated conjugate gradients
(stopped at ``||H d + g|| <= eta ||g||`` with eta = min(0.5, sqrt(||g||)),
or after ``cg_max_iter`` iterations, or at non-positive curvature); the
step length comes from an Armijo backtracking line search starting at 1.

Without weight decay the Hessian is singular along W -> W + u 1^T (adding
the same vector to every class's logits changes nothing); the gradient is
orthogonal to that direction and CG does not leave it, so the iteration is
well defined, but the minimiser is unique only for ``weight_decay > 0``
(and may be at infinity on separable data).

Unlabelled pixels are dropped before the iteration (one host transfer of
the labels), so sparse labels make the solve cheap. The pixels are held side
by side in one (k, M) matrix; on NumPy the solve runs with one BLAS thread
(threadpoolctl), as the thin products are several times slower split over
threads.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import array_namespace, device, is_numpy_namespace

from .._backend import to_numpy
from ..numerics.classifier import cross_entropy_and_grad, logits, softmax
from ..params import Params
from .base import tree_axpy, tree_dot, tree_norm, tree_scale

__all__ = [
    "ClassifierProblem",
    "NewtonCGResult",
    "gather_pixels",
    "labelled_pixels",
    "newton_cg",
    "pixels_last",
]


class NewtonCGResult(NamedTuple):
    """Result of :func:`newton_cg`.

    Attributes
    ----------
    W : array, shape (k, n_c)
    c : array, shape (n_c,), or None
    grad_norm : float
        ``||grad E(W, c)||`` at the returned point.
    loss : float
        ``E(W, c)`` (with the weight-decay term).
    n_iter : int
        Newton iterations taken.
    n_cg : int
        Hessian-vector products taken, in all.
    converged : bool
        ``grad_norm <= tol``.
    """

    W: Any
    c: Any
    grad_norm: float
    loss: float
    n_iter: int
    n_cg: int
    converged: bool


def _single_threaded_blas(xp):
    """One BLAS thread for NumPy's products during a solve.

    The products are (n_c, k) x (k, M) and (k, M) x (M, n_c): thin, and
    much slower (and erratic on a busy machine) when BLAS splits them over
    threads. A no-op for other namespaces, or without threadpoolctl.
    """
    if is_numpy_namespace(xp):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            return threadpool_limits(limits=1, user_api="blas")
    return contextlib.nullcontext()


def labelled_pixels(labels, ignore_index):
    """Flat indices (NumPy) of the labelled pixels of ``labels`` (any shape,
    read in C order, so (N, P) is image-major), or None when every pixel is
    labelled."""
    keep = to_numpy(labels).reshape(-1) != ignore_index
    if keep.all():
        return None
    return np.flatnonzero(keep)


def pixels_last(A, xp):
    """A (N, m, P) -> (m, N P): the pixels of all images side by side, image
    after image (a view when N = 1)."""
    N, m, P = A.shape
    if N == 1:
        return A[0, ...]
    return xp.reshape(xp.permute_dims(A, (1, 0, 2)), (m, N * P))


def gather_pixels(A, index, xp):
    """A (m, M) -> (m, len(index)): the pixels (columns) ``index``."""
    idx = xp.asarray(index, dtype=xp.int64, device=device(A))
    return xp.take(A, idx, axis=1)


def _pixel_weights(labels, n_c, class_weight, ignore_index, dtype, xp):
    """omega (M,): w[y(x)] / sum w on labelled pixels, 0 elsewhere."""
    classes = xp.arange(n_c, dtype=labels.dtype, device=device(labels))
    onehot = labels[None, :] == classes[:, None]
    if 0 <= ignore_index < n_c:
        onehot = onehot & (labels != ignore_index)[None, :]
    onehot = xp.astype(onehot, dtype)
    if class_weight is None:
        w_pix = xp.sum(onehot, axis=0)
    else:
        w_pix = xp.sum(onehot * class_weight[:, None], axis=0)
    total = xp.sum(w_pix)
    return w_pix / xp.where(total > 0, total, xp.ones_like(total))


class ClassifierProblem:
    """The convex problem in (W, c) for fixed features: values, gradients and
    Hessian-vector products.

    The pixels are held as one matrix Y of shape (k, M), all images side by
    side (two-dimensional matrix products are the fastest on every backend).

    Parameters
    ----------
    Y1 : array, shape (N, k, P), or (k, M)
        Features (P pixels per image), or features already laid out as
        pixels side by side.
    labels : integer array, shape (N, P), (N, H, W) with H W = P, or (M,)
        Class indices or ``ignore_index``, in the pixels' order.
    n_classes : int
    class_weight : array, shape (n_c,), optional
        In Y1's namespace and dtype.
    ignore_index : int, default -100
    weight_decay : float, default 0.0
        alpha of the term ``alpha/2 ||W||^2``.
    penalty : array, shape (k, k), optional
        A symmetric positive semi-definite M of the term ``1/2 tr(W^T M W)``
        (the edge-aware smoothness of the logits,
        :meth:`arrseg.optim.edge_smoothness.EdgeSmoothness.gram`).
    index : "auto", None or integer array, default "auto"
        Pixels to keep: "auto" drops the unlabelled ones (one host
        transfer of the labels), None keeps every pixel, an array gives the
        flat indices to keep (from :func:`labelled_pixels`).
    """

    def __init__(self, Y1, labels, n_classes, *, class_weight=None,
                 ignore_index=-100, weight_decay=0.0, penalty=None, index="auto"):
        xp = array_namespace(Y1)
        Y = pixels_last(Y1, xp) if Y1.ndim == 3 else Y1
        labels = xp.reshape(labels, (-1,))
        if isinstance(index, str):
            index = labelled_pixels(labels, ignore_index)
        if index is not None:
            Y = gather_pixels(Y, index, xp)
            labels = gather_pixels(labels[None, :], index, xp)[0, ...]
        self.xp = xp
        self.Y, self.labels = Y, labels
        self.n_classes = int(n_classes)
        self.class_weight = class_weight
        self.ignore_index = int(ignore_index)
        self.weight_decay = float(weight_decay)
        self.penalty = penalty
        self.omega = _pixel_weights(labels, self.n_classes, class_weight,
                                    self.ignore_index, Y.dtype, xp)

    def _loss_and_dS(self, W, c):
        xp = self.xp
        S = logits(self.Y, W, c, xp)  # (n_c, M)
        loss, dS = cross_entropy_and_grad(S[None, ...], self.labels[None, ...],
                                          self.class_weight, self.ignore_index, xp)
        if self.weight_decay:
            loss = loss + (self.weight_decay / 2) * xp.sum(W * W)
        if self.penalty is not None:
            loss = loss + 0.5 * xp.sum(W * xp.matmul(self.penalty, W))
        return S, loss, dS[0, ...]

    def evaluate(self, W, c):
        """Value and gradient at (W, c).

        Returns
        -------
        loss : float
        grad : Params
            ``Params(None, None, dW, dc)``.
        P : array, shape (n_c, M)
            The probabilities, for :meth:`hessp`.
        """
        xp = self.xp
        S, loss, dS = self._loss_and_dS(W, c)
        dW = xp.matmul(self.Y, xp.matrix_transpose(dS))
        if self.weight_decay:
            dW = dW + self.weight_decay * W
        if self.penalty is not None:
            dW = dW + xp.matmul(self.penalty, W)
        dc = None if c is None else xp.sum(dS, axis=1)
        return float(loss), Params(None, None, dW, dc), softmax(S[None, ...], xp)[0, ...]

    def value(self, W, c):
        """E(W, c) as a float."""
        return float(self._loss_and_dS(W, c)[1])

    def hessp(self, P, V, v):
        """Hessian (at the point whose probabilities are P) times (V, v).

        Returns ``Params(None, None, H_W, H_c)``; ``H_c`` is None when v is.
        """
        xp = self.xp
        dS = logits(self.Y, V, v, xp)  # V^T Y + v: (n_c, M)
        HS = self.omega[None, :] * (P * dS - P * xp.sum(P * dS, axis=0,
                                                        keepdims=True))
        HW = xp.matmul(self.Y, xp.matrix_transpose(HS))
        if self.weight_decay:
            HW = HW + self.weight_decay * V
        if self.penalty is not None:
            HW = HW + xp.matmul(self.penalty, V)
        Hc = None if v is None else xp.sum(HS, axis=1)
        return Params(None, None, HW, Hc)

    def _hessian_at(self, P):
        """u -> H u at the point of probabilities P, on Params(None, None, V, v)."""
        return lambda u: self.hessp(P, u.W, u.c)

    def solve(self, W, c=None, *, tol=1e-6, max_iter=20, cg_max_iter=20,
              cg_rtol=None, c1=1e-4, max_backtracks=30):
        """Newton-CG from (W, c); see :func:`newton_cg`."""
        with _single_threaded_blas(self.xp):
            return self._solve(W, c, tol, max_iter, cg_max_iter, cg_rtol, c1,
                               max_backtracks)

    def _solve(self, W, c, tol, max_iter, cg_max_iter, cg_rtol, c1, max_backtracks):
        x = Params(None, None, W, c)
        loss, g, P = self.evaluate(W, c)
        gnorm = tree_norm(g)
        n_iter = n_cg = 0
        while gnorm > tol and n_iter < max_iter:
            eta = min(0.5, math.sqrt(gnorm)) if cg_rtol is None else cg_rtol
            d, used = _truncated_cg(self._hessian_at(P), g, eta, cg_max_iter)
            n_cg += used
            slope = tree_dot(g, d)
            if not slope < 0:  # not a descent direction: fall back
                d, slope = tree_scale(-1.0, g), -gnorm * gnorm
            t = 1.0
            for _ in range(max_backtracks):
                trial = tree_axpy(x, t, d)
                new_loss = self.value(trial.W, trial.c)
                if math.isfinite(new_loss) and new_loss <= loss + c1 * t * slope:
                    break
                t *= 0.5
            else:
                break  # no decrease at round-off level: stop where we are
            x = trial
            n_iter += 1
            loss, g, P = self.evaluate(x.W, x.c)
            gnorm = tree_norm(g)
        return NewtonCGResult(x.W, x.c, gnorm, loss, n_iter, n_cg, gnorm <= tol)


def _truncated_cg(hessp, g, eta, max_iter):
    """Approximately solve H d = -g; return (d, number of products)."""
    r = tree_scale(-1.0, g)
    d = tree_scale(0.0, g)
    p = r
    rr = tree_dot(r, r)
    target = (eta * eta) * rr
    used = 0
    for _ in range(max_iter):
        Hp = hessp(p)
        used += 1
        curvature = tree_dot(p, Hp)
        if not curvature > 1e-30 * tree_dot(p, p):
            if used == 1:  # flat or negative along -g: steepest descent
                d = r
            break
        a = rr / curvature
        d = tree_axpy(d, a, p)
        r = tree_axpy(r, -a, Hp)
        rr_new = tree_dot(r, r)
        if rr_new <= target:
            break
        p = tree_axpy(r, rr_new / rr, p)
        rr = rr_new
    return d, used


def newton_cg(Y1, labels, W, c=None, *, class_weight=None, ignore_index=-100,
              weight_decay=0.0, tol=1e-6, max_iter=20, cg_max_iter=20,
              cg_rtol=None):
    """Minimise the classifier's loss in (W, c) for fixed features by Newton-CG.

    Parameters
    ----------
    Y1 : array, shape (N, k, P)
        Features, for example ``arrseg.numerics.forward_backward.features``.
    labels : integer array, shape (N, P) or (N, H, W)
        Class indices in [0, n_c) or ``ignore_index``.
    W : array, shape (k, n_c)
        Starting point (warm start).
    c : array, shape (n_c,), optional
        Starting bias; None fits no bias.
    class_weight : array, shape (n_c,), optional
        In Y1's namespace and dtype.
    ignore_index : int, default -100
    weight_decay : float, default 0.0
        alpha of ``alpha/2 ||W||^2``; > 0 makes the problem strictly convex.
    tol : float, default 1e-6
        Stop when the gradient norm is at most ``tol``.
    max_iter : int, default 20
        Newton iterations.
    cg_max_iter : int, default 20
        CG iterations (Hessian-vector products) per Newton iteration.
    cg_rtol : float, optional
        CG's relative residual; default min(0.5, sqrt(||g||)).

    Returns
    -------
    NewtonCGResult
        ``(W, c, grad_norm, loss, n_iter, n_cg, converged)``.

    Examples
    --------
    >>> import numpy as np
    >>> from arrseg.optim import newton_cg
    >>> rng = np.random.default_rng(0)
    >>> Y1 = rng.standard_normal((2, 4, 50))
    >>> labels = rng.integers(0, 3, (2, 50))
    >>> res = newton_cg(Y1, labels, np.zeros((4, 3)), np.zeros(3),
    ...                 weight_decay=1e-2, tol=1e-10)
    >>> res.converged, res.n_iter < 10
    (True, True)
    """
    n_c = int(W.shape[1])
    problem = ClassifierProblem(Y1, labels, n_c, class_weight=class_weight,
                                ignore_index=ignore_index,
                                weight_decay=weight_decay)
    return problem.solve(W, c, tol=tol, max_iter=max_iter,
                         cg_max_iter=cg_max_iter, cg_rtol=cg_rtol)
