"""Public entry points of the network: :func:`predict_proba`, :func:`loss_and_grad`.

Each call is the public edge: it checks its arguments once
(:mod:`arrseg._validation`: one host synchronisation for every value check
together) and hands the checked values to the core (:mod:`arrseg.core`),
whose one dispatcher picks the implementation: the fused CUDA kernels on
CuPy arrays, the blocked, threaded path on NumPy arrays, or the array-API
implementation in :mod:`arrseg.numerics` (direct or FFT convolution).
"""

from __future__ import annotations

import numpy as np

from . import core
from ._validation import check_call, check_options, finish_calls, fit_options
from ._backend import float_name
from .overflow import NonFiniteError, diagnose, quiet_overflow, sum_probe, zero_probe
from .methods import METHODS
from .numerics.activations import ACTIVATIONS
from .numerics.convolution import BOUNDARIES
from .numerics.residual import LAYERS
from .params import params_like

__all__ = [
    "ACTIVATION_NAMES",
    "BOUNDARIES",
    "LAYERS",
    "METHODS",
    "loss_and_grad",
    "predict_proba",
]

#: Values accepted by ``activation=``.
ACTIVATION_NAMES = tuple(ACTIVATIONS)

#: PyTorch's default ignore label, so that labels can be exchanged as is.
DEFAULT_IGNORE_INDEX = -100


def predict_proba(x, params, *, activation="tanh", boundary="zeros", method="auto",
                  dilation=1, step=1.0, layer="residual"):
    """Per-pixel class probabilities P of a batch of images.

    ``P = softmax(W^T sigma(K(theta) x + B b) + c)``, the softmax taken over
    classes at every pixel; with residual layers (``params.depth > 0``)
    the features run through them before the classifier
    (:class:`arrseg.Params`).

    Parameters
    ----------
    x : array, shape (N, C, H, W)
        Images, in any array API namespace (NumPy, CuPy, PyTorch, ...).
        float32 and float64 are kept; integer and bool images are converted
        to the parameters' dtype as they are (no rescaling).
    params : Params
        From :func:`arrseg.init_params` or training, in x's namespace and on
        its device.
    activation : {"tanh", "relu", "sigmoid", "identity"}, default "tanh"
    boundary : {"zeros", "periodic"}, default "zeros"
        Zero padding, or wrap-around (circular convolution).
    method : {"auto", "direct", "fft", "fused"}, default "auto"
        How the network is computed (:mod:`arrseg.methods`): "direct" (on
        NumPy, the blocked and threaded fast path), "fft", "fused" (CuPy
        arrays: the fused CUDA kernels), or "auto": "fused" where it
        applies, else the one the cost model predicts faster.
    dilation : int, sequence of int, or "doubling", default 1
        The residual layers' dilations d_j: one for all, one per layer
        (``params.depth`` entries), or "doubling" for 1, 2, 4, ... (a
        :class:`arrseg.Segmenter`'s default). Unused at depth 0.
    step : float, default 1.0
        h > 0, the residual layers' step.
    layer : {"residual", "symmetric"}, default "residual"
        ``Y + h sigma(K_j Y + b_j)``, or the course's stable
        ``Y - h K_j^T sigma(K_j Y + b_j)``
        (:mod:`arrseg.numerics.residual`). Unused at depth 0.

    Returns
    -------
    P : array, shape (N, n_c, H, W)
        In x's namespace and device, with x's float dtype (the parameters'
        dtype for integer images). Computed in float64 if either x or the
        parameters are float64. Every entry is in [0, 1]; ``P.sum(axis=1)``
        is 1.

    Raises
    ------
    ValueError, TypeError
        For bad shapes, dtypes, non-finite values, mixed namespaces or
        unknown option names; the message names the argument.
    arrseg.NonFiniteError
        When finite inputs overflow (large parameters with "relu" or
        "identity", images near the dtype's largest value): the message
        names the quantity that overflowed (:mod:`arrseg.overflow`).

    Examples
    --------
    >>> import numpy as np, arrseg
    >>> params = arrseg.init_params(3, 8, 4, seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    >>> P = arrseg.predict_proba(x, params)
    >>> P.shape, P.dtype
    ((2, 4, 32, 32), dtype('float32'))
    >>> bool(np.allclose(P.sum(axis=1), 1, atol=1e-6))
    True
    """
    options = check_options(activation, boundary, method, dilation, step, layer)
    a = check_call(x, params, defer=True)
    options = fit_options(options, a.params.depth, params=a.params,
                          x_shape=a.x.shape)
    with quiet_overflow():                                 # checked below
        P = core.forward(a.x, a.params, options, a.xp, out_dtype=a.out_dtype)
        probe = sum_probe([P], a.xp)
    # the value checks and P's finiteness: the call's one read-back
    if not np.isfinite(finish_calls([a], probe, a.xp)).all():
        raise diagnose("predict_proba", a.x, a.params, options)
    return P


def loss_and_grad(
    x,
    labels,
    params,
    *,
    activation="tanh",
    boundary="zeros",
    class_weight=None,
    ignore_index=DEFAULT_IGNORE_INDEX,
    method="auto",
    dilation=1,
    step=1.0,
    layer="residual",
):
    """Mean cross-entropy over labelled pixels and its gradient in the parameters.

    ``E = sum_x w[y(x)] * (-log P_{y(x)}(x)) / sum_x w[y(x)]``, the sums over
    pixels whose label is not ``ignore_index``; ``w = 1`` without class
    weights. This is PyTorch's ``cross_entropy(weight=..., ignore_index=...)``
    with the default mean reduction, with one difference: when no pixel counts
    (all ignored, or only classes of weight 0), the loss and the gradient are
    0, not NaN.

    The gradient is computed analytically, from the convolution's
    transposed Jacobian (:func:`arrseg.numerics.convolution.conv2d_theta_vjp`)
    and the classifier's; no automatic differentiation is used.

    Parameters
    ----------
    x : array, shape (N, C, H, W)
        Images (see :func:`predict_proba`).
    labels : integer array, shape (N, H, W)
        Class indices in [0, n_c), or ``ignore_index`` for unlabelled pixels
        (sparse scribbles). Bool labels are read as 0/1.
    params : Params
    activation : {"tanh", "relu", "sigmoid", "identity"}, default "tanh"
    boundary : {"zeros", "periodic"}, default "zeros"
    class_weight : array or sequence, shape (n_c,), optional
        Non-negative, finite weight per class.
    ignore_index : int, default -100
        Label of pixels that do not count (PyTorch's default).
    method : {"auto", "direct", "fft", "fused"}, default "auto"
        How the network is computed (:mod:`arrseg.methods`): "direct" (on
        NumPy, the blocked and threaded fast path), "fft", "fused" (CuPy
        arrays: the fused CUDA kernels), or "auto": "fused" where it
        applies, else the one the cost model predicts faster.
    dilation : int, sequence of int, or "doubling", default 1
        The residual layers' dilations d_j: one for all, one per layer
        (``params.depth`` entries), or "doubling" for 1, 2, 4, ... (a
        :class:`arrseg.Segmenter`'s default). Unused at depth 0.
    step : float, default 1.0
        h > 0, the residual layers' step.
    layer : {"residual", "symmetric"}, default "residual"
        ``Y + h sigma(K_j Y + b_j)``, or the course's stable
        ``Y - h K_j^T sigma(K_j Y + b_j)``
        (:mod:`arrseg.numerics.residual`). Unused at depth 0.

    Returns
    -------
    loss : 0-d array
        In x's namespace and on its device (no host synchronisation), with
        the parameters' dtype.
    grads : Params
        Gradients of the loss, shaped and typed like ``params`` (with the
        residual layers' ``K_layers`` and ``b_layers`` at depth > 0);
        ``grads.c`` is None when ``params.c`` is.

    Raises
    ------
    ValueError, TypeError
        For bad shapes, dtypes, labels out of range, bad class weights,
        non-finite values, mixed namespaces or unknown option names.
    arrseg.NonFiniteError
        When finite inputs overflow: the message names the quantity (the
        pre-activations, the logits, the cross-entropy or a gradient) and
        what to change (:mod:`arrseg.overflow`).

    Examples
    --------
    >>> import numpy as np, arrseg
    >>> x, y = arrseg.data.make_shapes(n_images=2, size=24, seed=0)
    >>> params = arrseg.init_params(3, 8, 3, seed=0)
    >>> loss, grads = arrseg.loss_and_grad(x, y, params)
    >>> loss.shape, grads.K.shape == params.K.shape
    ((), True)
    """
    options = check_options(activation, boundary, method, dilation, step, layer)
    a = check_call(x, params, labels, class_weight, ignore_index, defer=True)
    options = fit_options(options, a.params.depth, params=a.params,
                          x_shape=a.x.shape)
    xp = a.xp
    with quiet_overflow():                                 # checked below
        loss, grads = core.loss_and_grad(a.x, a.labels, a.params, options,
                                         a.class_weight, a.ignore_index, xp)
        probe = zero_probe([loss, *grads], xp)             # 0 iff all finite
        if a.dtype != a.param_dtype:
            loss = xp.astype(loss, a.param_dtype)
            grads = tuple(None if g is None else xp.astype(g, a.param_dtype)
                          for g in grads)
            probe = xp.stack([probe, zero_probe([loss, *grads], xp)])
    # the value checks and the results' finiteness: the call's one read-back
    finite = np.isfinite(finish_calls([a], probe, xp))
    if not finite.all():
        if finite.flat[0]:  # finite in float64, not in the parameters' dtype
            raise NonFiniteError(
                f"loss_and_grad: the loss or its gradient, computed in float64 "
                f"(x is float64), exceeds the range of the parameters' dtype "
                f"{float_name(xp, a.param_dtype)}: pass float64 parameters")
        raise diagnose("loss_and_grad", a.x, a.params, options, labels=a.labels,
                       class_weight=a.class_weight, ignore_index=a.ignore_index)
    return loss, params_like(a.params, grads)
