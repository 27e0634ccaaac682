"""Variable projection (VarPro) for the network: eliminate the classifier.

The classifier (W, c) enters the loss through a convex problem once the
features are fixed, so following Newman, Ruthotto, Hart & van Bloemen
Waanders, "Train Like a (Var)Pro: Efficient Training of Neural Networks
with Variable Projection" (SIAM J. Math. Data Sci., 2021), training
minimises the reduced objective of the feature parameters alone,
theta = (K, b) of the one-layer network or theta = (K, b, K_layers,
b_layers) with residual layers::

    Phi(theta) = min_{W, c} E(theta, W, c) + alpha/2 ||W||^2 + R_E(theta, W)
                 + alpha/2 (||K||^2 + ||K_layers||^2) + R_S(K, K_layers)

(E the weighted mean cross-entropy, alpha the weight decay, R_S the
smoothness regulariser of :mod:`arrseg.optim.regularization`, on every
kernel, R_E the edge-aware smoothness of the logits of
:mod:`arrseg.optim.edge_smoothness`, quadratic in W, on the pairs of
neighbouring pixels with at least one unlabelled).

* Inner problem: for the current features, Y1 = sigma(K Y0 + b) or Y_L
  after the residual layers (:func:`arrseg.core.features`), the minimiser
  (W*, c*) is found by Newton-CG (:mod:`arrseg.optim.newton_cg`),
  warm-started from the previous (W*, c*), on the labelled pixels only.
  E depends on theta only through the features, so the inner problem is
  the same convex classifier problem at every depth. R_E adds
  1/2 tr(W^T M W), M from the features of every pixel.
* Reduced gradient: Phi(theta) = F(theta, W*(theta), c*(theta)), so
  dPhi/dtheta = d_theta F + (d_{W,c} F) dW*/dtheta, and d_{W,c} F = 0 at
  the inner minimiser: the gradient of Phi is the partial gradient of the
  regularised loss in theta at (theta, W*, c*), which
  :func:`arrseg.loss_and_grad` computes (its (K, b, K_layers, b_layers)
  fields; the (W, c) fields are the inner gradient, ~0, and are dropped).
  With an inexact inner solve the error is of the order of the inner
  gradient's norm, which the inner tolerance ties to the outer gradient's.
* Outer step: the paper uses Gauss-Newton-Krylov; here it is **L-BFGS**
  (memory ``memory``, initial scaling s^T y / y^T y) with an **Armijo
  backtracking line search** on Phi, starting at step 1. A trial point is
  accepted only when it decreases Phi enough, so the iteration cannot
  diverge; when the L-BFGS direction fails to give a decrease, the memory is
  dropped and the steepest-descent direction is tried; when that fails too,
  the iteration has stalled at the accuracy of the inner solves and stops.

Every iteration evaluates Phi at one or more trial points (each a feature
computation and a warm-started inner solve) and the reduced gradient once.
It uses the full batch; the iteration is deterministic.
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import array_namespace

from .. import core
from .._backend import to_numpy
from .._validation import check_call, check_options, fit_options
from ..network import DEFAULT_IGNORE_INDEX
from ..params import Params, ResidualParams, params_like
from .base import (
    NonFiniteLossError,
    all_finite,
    tree_axpy,
    tree_dot,
    tree_map,
    tree_norm,
    tree_scale,
)
from .edge_smoothness import EdgeSmoothness, contrast_scale
from .newton_cg import ClassifierProblem, gather_pixels, labelled_pixels, pixels_last
from .regularization import smoothness as smoothness_term

__all__ = ["VarPro"]


class VarPro:
    """Variable projection with an L-BFGS outer iteration on the feature
    parameters: (K, b), and (K_layers, b_layers) with residual layers.

    Parameters
    ----------
    activation, boundary, method, dilation, layer
        As for :func:`arrseg.loss_and_grad` (the last two are the residual
        layers', unused at depth 0; ``dilation`` is fitted to the
        parameters' depth in :meth:`set_data`).
    layer_step : float, default 1.0
        h, the residual layers' step: ``step=`` of :func:`arrseg.loss_and_grad`
        (named apart from :meth:`step`, the outer iteration).
    class_weight : array or sequence, shape (n_c,), optional
    ignore_index : int, default -100
    weight_decay : float, default 1e-4
        alpha of ``alpha/2 (||K||^2 + ||W||^2 + ||K_layers||^2)``; it also
        makes the inner problem strictly convex, so keep it positive.
    smoothness : float, default 0.0
        Coefficient of the kernels' smoothness regulariser (every kernel,
        K_layers included).
    edge_smoothness : float, default 0.0
        Coefficient of the edge-aware smoothness of the logits
        (:class:`~arrseg.optim.edge_smoothness.EdgeSmoothness`), on the pairs
        of neighbouring training pixels with at least one unlabelled; 0
        leaves it out (and so does a fully labelled training set).
    contrast : float, optional
        Its contrast scale sigma^2 (default: the training images',
        :func:`~arrseg.optim.edge_smoothness.contrast_scale`).
    memory : int, default 10
        L-BFGS pairs kept.
    inner_tol : float, optional
        Gradient norm at which the inner Newton-CG stops (default: the square
        root of the dtype's epsilon, 3.5e-4 in float32 and 1.5e-8 in float64:
        the gradient's round-off floor is not far below) ...
    inner_rtol : float, default 0.1
        ... or, if larger, this times the norm of the current reduced
        gradient: the inner problem is solved more accurately as the outer
        iteration converges (0 for a fixed tolerance).
    inner_max_iter : int, default 20
        Newton iterations per inner solve.
    cg_max_iter : int, default 10
        CG iterations per Newton iteration.
    c1 : float, default 1e-4
        Armijo's sufficient-decrease constant.
    max_backtracks : int, default 20
        Halvings of the step before a direction is given up.

    Attributes
    ----------
    params : Params or ResidualParams
        Current (K, b, W*, c*[, K_layers, b_layers]).
    loss : float
        Phi at ``params``.
    grad_norm : float
        Norm of the reduced gradient at ``params``.
    stalled : bool
        True when no direction gave a decrease: the iteration has converged
        to the accuracy of the inner solves; further steps change nothing.
    n_evaluations : int
        Inner solves done so far.

    Examples
    --------
    >>> import arrseg
    >>> from arrseg.optim import VarPro
    >>> x, y = arrseg.data.make_shapes(n_images=2, size=16, seed=0)
    >>> vp = VarPro(weight_decay=1e-4)
    >>> params, first = vp.start(x, y, arrseg.init_params(3, 4, 3, seed=0))
    >>> for _ in range(5):
    ...     params, loss = vp.step()
    >>> loss < first
    True
    """

    def __init__(self, *, activation="tanh", boundary="zeros", method="auto",
                 dilation=1, layer_step=1.0, layer="residual",
                 class_weight=None, ignore_index=DEFAULT_IGNORE_INDEX,
                 weight_decay=1e-4, smoothness=0.0, edge_smoothness=0.0, contrast=None,
                 memory=10, inner_tol=None,
                 inner_rtol=1e-1, inner_max_iter=20, cg_max_iter=10, c1=1e-4, max_backtracks=20):
        self.activation, self.boundary, self.method = activation, boundary, method
        self.dilation, self.layer_step, self.layer = dilation, layer_step, layer
        self.class_weight = class_weight
        self.ignore_index = int(ignore_index)
        self.weight_decay = float(weight_decay)
        self.smoothness = float(smoothness)
        self.edge_smoothness = float(edge_smoothness)
        self.contrast = None if contrast is None else float(contrast)
        self.memory = int(memory)
        self.inner_tol = None if inner_tol is None else float(inner_tol)
        self.inner_rtol = float(inner_rtol)
        self.inner_max_iter = int(inner_max_iter)
        self.cg_max_iter = int(cg_max_iter)
        self.c1 = float(c1)
        self.max_backtracks = int(max_backtracks)
        self.params = None

    # -- data ----------------------------------------------------------------

    def set_data(self, x, labels, params):
        """Validate and keep the training data.

        ``x`` is an array (N, C, H, W) with labels (N, H, W), or lists of such
        arrays of different sizes (one group per size), all used at every
        iteration.
        """
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        ys = list(labels) if isinstance(labels, (list, tuple)) else [labels]
        if len(xs) != len(ys):
            raise ValueError(f"x and labels must have the same number of groups, "
                             f"got {len(xs)} and {len(ys)}")
        self._groups = []
        self._options = fit_options(
            check_options(self.activation, self.boundary, self.method, self.dilation,
                          self.layer_step, self.layer), params.depth)
        n_c = params.n_classes
        all_valid = []
        for xg, yg in zip(xs, ys):
            # the data's one check; every evaluation then runs the core
            a = check_call(xg, params, yg, self.class_weight, self.ignore_index)
            lab = to_numpy(a.labels).reshape(a.labels.shape[0], -1)
            cw = (np.ones(n_c) if a.class_weight is None
                  else to_numpy(a.class_weight).astype(np.float64))
            valid = (lab != self.ignore_index) & (lab >= 0) & (lab < n_c)
            all_valid.append(valid)
            weight = float(cw[lab[valid]].sum())
            index = labelled_pixels(a.labels, self.ignore_index)
            self._groups.append((a.x, a.labels, weight, index))
        self._edges = None
        # with every pixel labelled no pair counts: the term is left out
        if self.edge_smoothness > 0 and any(not bool(np.all(v)) for v in all_valid):
            images = [g[0] for g in self._groups]
            sigma2 = self.contrast if self.contrast else contrast_scale(images)
            n_pixels = sum(int(x.shape[0]) * int(x.shape[2]) * int(x.shape[3])
                           for x in images)
            self._edges = [EdgeSmoothness(x, self.edge_smoothness, sigma2, n_pixels,
                                          labelled=lab != self.ignore_index)
                           for x, lab, *_ in self._groups]
        self._cached = (None, None)   # (K, L_w Y of each group at K)
        self._class_weight = a.class_weight
        self._xp = a.xp
        self._dtype = a.dtype
        self._total_weight = sum(g[2] for g in self._groups)
        self._n_classes = n_c

    def _inner_problem(self, K, b, layers=None):
        """The classifier problem on the features of (K, b[, layers])."""
        xp = self._xp
        Ys, labs = [], []
        penalty = None
        laplacians = []
        for g, (x, lab, _, index) in enumerate(self._groups):
            Y = self._features(x, K, b, layers, xp)    # (N, k, H*W)
            if self._edges is not None:   # M from Y and L_w Y; L_w Y kept
                N, _, H, W = x.shape
                Y4 = xp.reshape(Y, (N, Y.shape[1], H, W))
                LY = self._edges[g].laplacian(Y4)
                laplacians.append(LY)
                M = self._edges[g].gram(Y4, LY)
                penalty = M if penalty is None else penalty + M
            Y = pixels_last(Y, xp)
            lab = xp.reshape(lab, (-1,))
            if index is not None:
                Y = gather_pixels(Y, index, xp)
                lab = gather_pixels(lab[None, :], index, xp)[0, ...]
            Ys.append(Y)
            labs.append(lab)
        if self._edges is not None:
            self._cached = (K, laplacians)
        if len(Ys) > 1:
            Ys, labs = [xp.concat(Ys, axis=1)], [xp.concat(labs, axis=0)]
        return ClassifierProblem(Ys[0], labs[0], self._n_classes,
                                 class_weight=self._class_weight,
                                 ignore_index=self.ignore_index,
                                 weight_decay=self.weight_decay, penalty=penalty,
                                 index=None)

    def _edge_gradients(self, params):
        """dR_E/dS = (alpha / n) L_w S = (alpha / n) W^T L_w Y of each group at
        params, (N, n_c, H, W) each: from L_w Y of the last inner problem when
        it was set up at params' kernels (the accepted trial point), else
        computed anew."""
        xp = self._xp
        K, laplacians = self._cached
        if K is not params.K:
            layers = None if params.K_layers is None else (params.K_layers, params.b_layers)
            laplacians = []
            for (x, *_), edges in zip(self._groups, self._edges):
                N, _, H, W = x.shape
                Y = self._features(x, params.K, params.b, layers, xp)
                laplacians.append(edges.laplacian(xp.reshape(Y, (N, Y.shape[1], H, W))))
        grads = []
        for edges, LY in zip(self._edges, laplacians):
            N, k, H, W = LY.shape
            dS = xp.matmul(xp.matrix_transpose(params.W), xp.reshape(LY, (N, k, H * W)))
            grads.append(xp.reshape(dS, (N, dS.shape[1], H, W)) * edges.coefficient)
        return grads

    def _features(self, x, K, b, layers, xp):
        """The classifier's input (N, k, H*W): Y1, or Y_L after the residual
        layers ``layers = (K_layers, b_layers)``, on the path the one
        dispatcher picks (:func:`arrseg.core.features`)."""
        return core.features(x, K, b, self._options, xp, layers=layers)

    def _kernel_regularization(self, K):
        """Weight decay and smoothness of one kernel array: (0-d value, grad)."""
        xp = array_namespace(K)
        value = (self.weight_decay / 2) * xp.sum(K * K)
        grad = self.weight_decay * K
        if self.smoothness > 0:
            v, g = smoothness_term(K, self.smoothness)
            value, grad = value + v, grad + g
        return value, grad

    def _outer_regularization(self, z):
        """The regularisers of the outer variables z: (float value, dK,
        dK_layers or None); the biases are not penalised."""
        value, dK = self._kernel_regularization(z.K)
        dK_layers = None
        if z.K_layers is not None:
            v, dK_layers = self._kernel_regularization(z.K_layers)
            value = value + v
        return float(value), dK, dK_layers

    # -- the reduced objective ----------------------------------------------

    @staticmethod
    def _outer(K, b, layers):
        """The outer variables as a parameter tuple with W and c None."""
        if layers is None:
            return Params(K, b, None, None)
        return ResidualParams(K, b, None, None, *layers)

    def reduced_loss(self, K, b, W0, c0, *, layers=None):
        """Phi(K, b[, K_layers, b_layers]) and the inner minimiser, from the
        start (W0, c0).

        Parameters
        ----------
        K, b : arrays
        W0, c0 : arrays
            The inner solve's start; c0 None fits no bias.
        layers : (K_layers, b_layers), optional
            The residual layers' parameters (depth > 0).

        Returns
        -------
        phi : float
        W, c : arrays
            (W*, c*); c is None when c0 is.
        """
        return self._phi(self._outer(K, b, layers), W0, c0)

    def _phi(self, z, W0, c0):
        """:meth:`reduced_loss` at the outer variables z."""
        tol = self.inner_tol
        K = z.K
        if tol is None:
            tol = math.sqrt(float(array_namespace(K).finfo(K.dtype).eps))
        if self.params is not None and self.inner_rtol > 0:
            tol = max(tol, self.inner_rtol * self.grad_norm)
        layers = None if z.K_layers is None else (z.K_layers, z.b_layers)
        res = self._inner_problem(z.K, z.b, layers).solve(
            W0, c0, tol=tol, max_iter=self.inner_max_iter,
            cg_max_iter=self.cg_max_iter)
        self.n_evaluations = getattr(self, "n_evaluations", 0) + 1
        return res.loss + self._outer_regularization(z)[0], res.W, res.c

    def reduced_gradient(self, params):
        """grad Phi in the outer variables at params = (K, b, W*, c*[,
        K_layers, b_layers]): the partial gradient of the regularised loss in
        (K, b[, K_layers, b_layers]), as a parameter tuple of params' class
        with W and c None (``Params(dK, db, None, None)`` at depth 0)."""
        g_outer = None
        extras = (self._edge_gradients(params) if self._edges is not None
                  else [None] * len(self._groups))
        for (x, lab, weight, _), extra in zip(self._groups, extras):
            share = weight / self._total_weight if self._total_weight else 0.0
            if extra is not None and share == 0:
                # no labelled pixel here: the logits' term alone, unscaled
                lab = self._xp.full_like(lab, self.ignore_index)
                share = 1.0
            elif extra is not None:
                extra = extra * (1.0 / share)   # the core's gradient is scaled by share
            _, g = core.loss_and_grad(x, lab, params, self._options, self._class_weight,
                                      self.ignore_index, self._xp, extra_dS=extra)
            g = params_like(params, g)._replace(W=None, c=None)
            g_outer = (tree_scale(share, g) if g_outer is None
                       else tree_axpy(g_outer, share, g))
        _, dK, dK_layers = self._outer_regularization(params)
        g_outer = g_outer._replace(K=g_outer.K + dK)
        if dK_layers is not None:
            g_outer = g_outer._replace(K_layers=g_outer.K_layers + dK_layers)
        return g_outer

    def reduced_loss_and_grad(self, K, b, W0, c0=None, *, layers=None):
        """``(phi, grad, W*, c*)`` at (K, b[, layers]), the inner problem
        solved from (W0, c0); grad is ``Params(dK, db, None, None)``, or a
        ResidualParams with the layers' gradients when ``layers = (K_layers,
        b_layers)`` is given. Needs :meth:`set_data` (or :meth:`start`)
        first."""
        z = self._outer(K, b, layers)
        phi, W, c = self._phi(z, W0, c0)
        return phi, self.reduced_gradient(z._replace(W=W, c=c)), W, c

    # -- the outer iteration --------------------------------------------------

    def start(self, x, labels, params):
        """Keep the data, solve the inner problem at params' feature
        parameters from params' (W, c); return ``(params with W*, c*, Phi)``."""
        self.set_data(x, labels, params)
        if params.K.dtype != self._dtype:  # the core computes in the data's dtype
            params = params_like(params, (None if v is None
                                          else self._xp.astype(v, self._dtype)
                                          for v in params))
        self.params = None  # the first inner solve uses inner_tol alone
        self.n_evaluations = 0
        self.n_iter = 0
        z = params._replace(W=None, c=None)
        phi, W, c = self._phi(z, params.W, params.c)
        grad = self.reduced_gradient(z._replace(W=W, c=c))
        self.params = z._replace(W=W, c=c)
        if not (math.isfinite(phi) and all_finite(*grad)):
            raise NonFiniteLossError(
                f"the VarPro objective is {phi} at the starting point "
                "(iteration 0)", iteration=0, loss=phi, params=params)
        self.loss, self._grad = phi, grad
        self.grad_norm = tree_norm(grad)
        self._pairs = []
        self.stalled = False
        return self.params, self.loss

    def _direction(self, g):
        """-H g by the L-BFGS two-loop recursion."""
        q = g
        alphas = []
        for s, y, rho in reversed(self._pairs):
            a = rho * tree_dot(s, q)
            q = tree_axpy(q, -a, y)
            alphas.append(a)
        if self._pairs:
            s, y, _ = self._pairs[-1]
            gamma = tree_dot(s, y) / tree_dot(y, y)
        else:  # first step: at most unit length
            gamma = min(1.0, 1.0 / max(tree_norm(g), 1e-30))
        r = tree_scale(gamma, q)
        for (s, y, rho), a in zip(self._pairs, reversed(alphas)):
            beta = rho * tree_dot(y, r)
            r = tree_axpy(r, a - beta, s)
        return tree_scale(-1.0, r)

    def step(self):
        """One outer iteration; returns ``(params, Phi)``.

        When no decrease can be found, :attr:`stalled` is set and the
        parameters are returned unchanged.
        """
        if self.params is None:
            raise RuntimeError("call VarPro.start(x, labels, params) before step()")
        if self.stalled:
            return self.params, self.loss
        p, g = self.params, self._grad
        z = p._replace(W=None, c=None)
        for attempt in ("lbfgs", "gradient"):
            if attempt == "lbfgs":
                d = self._direction(g)
            else:  # a unit step along -g
                d = tree_scale(-1.0 / max(tree_norm(g), 1e-30), g)
            slope = tree_dot(g, d)
            if not slope < 0:
                self._pairs = []
                continue
            t = 1.0
            for _ in range(self.max_backtracks):
                trial = tree_axpy(z, t, d)
                phi, W, c = self._phi(trial, p.W, p.c)
                if math.isfinite(phi) and phi <= self.loss + self.c1 * t * slope:
                    break
                t *= 0.5
            else:
                self._pairs = []  # no decrease along d
                continue
            new = trial._replace(W=W, c=c)
            g_new = self.reduced_gradient(new)
            s = tree_scale(t, d)
            y = tree_map(lambda u, v: u - v, g_new, g)
            sy = tree_dot(s, y)
            if sy > 1e-10 * tree_norm(s) * tree_norm(y):  # curvature condition
                self._pairs = (self._pairs + [(s, y, 1.0 / sy)])[-self.memory:]
            self.params, self.loss, self._grad = new, phi, g_new
            self.grad_norm = tree_norm(g_new)
            self.n_iter += 1
            return self.params, self.loss
        self.stalled = True
        return self.params, self.loss

    def minimize(self, x, labels, params, *, max_iter=50, tol=1e-6):
        """:meth:`start`, then up to ``max_iter`` steps, stopping when the
        reduced gradient norm is at most ``tol`` or the iteration stalls.

        Returns
        -------
        Params
        """
        self.start(x, labels, params)
        for _ in range(max_iter):
            if self.grad_norm <= tol or self.stalled:
                break
            self.step()
        return self.params

    def __repr__(self):
        return (f"VarPro(weight_decay={self.weight_decay!r}, "
                f"smoothness={self.smoothness!r}, memory={self.memory!r})")
