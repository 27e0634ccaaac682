"""Regularisers of the parameters, each a value and its gradient.

* Tikhonov (weight decay) on the kernels and the classifier weights::

      R_T(theta, W) = alpha/2 (||theta||^2 + ||W||^2),
      grad = (alpha theta, 0, alpha W, 0)

  The biases b and c are not penalised.

  With residual layers (:class:`~arrseg.ResidualParams`) their kernels
  K_layers are decayed too, their biases b_layers are not.

* Smoothness of each kernel (the course's regulariser on theta)::

      R_S(theta) = alpha/2 sum_{i,j} (||D_1 theta_ij||^2 + ||D_2 theta_ij||^2),
      grad = alpha (D_1^T D_1 + D_2^T D_2) theta

  where theta_ij is the s x s kernel from input channel j to feature i and
  D_1, D_2 are forward differences along its two spatial axes
  ((D_1 t)[a, b] = t[a + 1, b] - t[a, b], a = 0..s-2: no boundary term, so
  constant kernels cost nothing). For s = 1 it is 0.

  It applies to every kernel of the network: the opening layer's theta_ij
  and, with residual layers, each s_r x s_r kernel of K_layers (a dilated
  kernel's taps are d_j pixels apart, but the regulariser compares
  neighbouring taps all the same: it asks each layer's filter to vary
  slowly over its own support). Smoothness *between* layers (in the
  ODE's time) is not part of it.

Values are 0-d arrays in the parameters' namespace (no host transfer), like
the loss of :func:`arrseg.loss_and_grad`, so they can be added to it.
"""

from __future__ import annotations

import math

from array_api_compat import array_namespace, device

from ..params import Params, ResidualParams

__all__ = ["Regularization", "smoothness", "tikhonov"]


def _check_alpha(name, alpha):
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a non-negative number, got {alpha!r}") from None
    if not (a >= 0 and math.isfinite(a)):
        raise ValueError(f"{name} must be a non-negative finite number, got {alpha!r}")
    return a


def tikhonov(params, alpha):
    """Weight decay ``alpha/2 (||K||^2 + ||W||^2 + ||K_layers||^2)`` and its gradient.

    Parameters
    ----------
    params : Params
    alpha : float
        Non-negative.

    Returns
    -------
    value : 0-d array
    grads : Params
        ``(alpha K, 0, alpha W, 0, alpha K_layers, 0)``; the c field is None
        when ``params.c`` is, and the layers' fields at depth 0.

    Examples
    --------
    >>> import arrseg
    >>> from arrseg.optim.regularization import tikhonov
    >>> p = arrseg.init_params(3, 4, 2, seed=0, dtype="float64")
    >>> value, g = tikhonov(p, 0.1)
    >>> bool(abs(value - 0.05 * ((p.K**2).sum() + (p.W**2).sum())) < 1e-12)
    True
    """
    alpha = _check_alpha("alpha", alpha)
    xp = array_namespace(params.K)
    K, b, W, c = params[:4]
    K_layers = params.K_layers
    value = (alpha / 2) * (xp.sum(K * K) + xp.sum(W * W))
    if K_layers is not None:  # the residual layers' kernels too, not biases
        value = value + (alpha / 2) * xp.sum(K_layers * K_layers)
    grads = Params(alpha * K, xp.zeros_like(b), alpha * W,
                   None if c is None else xp.zeros_like(c))
    if K_layers is not None:
        grads = ResidualParams(*grads, alpha * K_layers, xp.zeros_like(params.b_layers))
    return value, grads


def _forward_differences(K, axis, xp):
    """D K along a spatial axis (-2 or -1): shape with that axis one shorter."""
    s = K.shape[axis]
    if axis == -2:
        return K[..., 1:, :] - K[..., : s - 1, :]
    return K[..., 1:] - K[..., : s - 1]


def _forward_differences_transposed(D, axis, xp):
    """D^T applied to differences D: the axis one longer again.

    (D^T d)[a] = d[a - 1] - d[a], with d[-1] = d[s-1] = 0.
    """
    shape = list(D.shape)
    shape[axis] = 1
    zero = xp.zeros(tuple(shape), dtype=D.dtype, device=device(D))
    return xp.concat([zero, D], axis=axis) - xp.concat([D, zero], axis=axis)


def smoothness(K, alpha):
    """Smoothness regulariser of the kernels and its gradient.

    ``alpha/2 sum ||grad theta_ij||^2`` with forward differences inside each
    s x s kernel (see the module docstring).

    Parameters
    ----------
    K : array, shape (..., s, s)
        The kernels: (k, C, s, s) of the opening layer, or the residual
        layers' (depth, k, k, s_r, s_r); the differences are taken along the
        last two axes.
    alpha : float
        Non-negative.

    Returns
    -------
    value : 0-d array
    dK : array, K's shape

    Examples
    --------
    >>> import numpy as np
    >>> from arrseg.optim.regularization import smoothness
    >>> K = np.zeros((1, 1, 3, 3)); K[0, 0, 1, 1] = 1.0   # a single spike
    >>> value, dK = smoothness(K, 1.0)
    >>> float(value)                   # four unit differences, halved
    2.0
    >>> dK[0, 0]
    array([[ 0., -1.,  0.],
           [-1.,  4., -1.],
           [ 0., -1.,  0.]])
    """
    alpha = _check_alpha("alpha", alpha)
    xp = array_namespace(K)
    if K.shape[-1] == 1:
        return xp.sum(K * 0), xp.zeros_like(K)
    value, grad = None, None
    for axis in (-2, -1):
        D = _forward_differences(K, axis, xp)
        v = (alpha / 2) * xp.sum(D * D)
        g = alpha * _forward_differences_transposed(D, axis, xp)
        value = v if value is None else value + v
        grad = g if grad is None else grad + g
    return value, grad


class Regularization:
    """Tikhonov (weight decay) plus smoothness, as one value and gradient.

    ``R(params) = weight_decay/2 (||K||^2 + ||W||^2 + ||K_layers||^2)
    + smoothness/2 sum ||grad theta_ij||^2``, the last sum over every kernel
    (the residual layers' included).

    Parameters
    ----------
    weight_decay : float, default 0.0
    smoothness : float, default 0.0

    Examples
    --------
    >>> import arrseg
    >>> from arrseg.optim import Regularization
    >>> reg = Regularization(weight_decay=1e-3, smoothness=1e-2)
    >>> value, grads = reg(arrseg.init_params(3, 4, 2, seed=0))
    >>> grads.K.shape, bool(value > 0)
    ((4, 3, 3, 3), True)
    """

    def __init__(self, weight_decay=0.0, smoothness=0.0):
        self.weight_decay = _check_alpha("weight_decay", weight_decay)
        self.smoothness = _check_alpha("smoothness", smoothness)

    @property
    def active(self):
        """True unless both coefficients are zero."""
        return self.weight_decay > 0 or self.smoothness > 0

    def __call__(self, params):
        """``(value, grads)``; grads is a Params shaped like params."""
        value, grads = tikhonov(params, self.weight_decay)
        if self.smoothness > 0:
            v, dK = smoothness(params.K, self.smoothness)
            value = value + v
            grads = grads._replace(K=grads.K + dK)
            if params.K_layers is not None:
                v, dK = smoothness(params.K_layers, self.smoothness)
                value = value + v
                grads = grads._replace(K_layers=grads.K_layers + dK)
        return value, grads

    def __repr__(self):
        return (f"Regularization(weight_decay={self.weight_decay!r}, "
                f"smoothness={self.smoothness!r})")
