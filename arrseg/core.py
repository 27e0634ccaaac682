"""The checked core: the network's passes on checked arguments, and the one
dispatcher that picks their implementation.

Every caller checks its arguments once, at its public edge
(:mod:`arrseg._validation`), and then calls the functions here, which check
nothing and never read a value back to the host:

- :func:`arrseg.predict_proba` and :func:`arrseg.loss_and_grad`, once per call;
- :func:`arrseg.tiling.predict_proba_tiled`, once per call, then one
  :func:`forward` per tile;
- :class:`arrseg.Segmenter`, once per ``fit`` for the training set and once
  per ``predict`` call for new images, then one :func:`loss_and_grad` per
  training step or one :func:`forward` per tile;
- :class:`arrseg.optim.VarPro`, once in ``start``, then :func:`features`
  and :func:`loss_and_grad` per evaluation.

:func:`select_path` is the dispatcher: for a pass ("predict", "train" or
"features") and a problem it names the implementation, from the ``method``
option (:mod:`arrseg.methods` holds the "auto" cost model):

========== ===================================================== ==========
path       implementation                                        arrays
========== ===================================================== ==========
"fused"    the fused CUDA kernels, :mod:`arrseg.cuda.fused`      CuPy
"blocked"  the blocked, threaded NumPy path, :mod:`arrseg.cpu`   NumPy
"direct"   the array-API reference, direct convolution           any
"fft"      the array-API reference, FFT convolution              with fft
========== ===================================================== ==========

The fused kernels have no features pass (VarPro's): there "fused" and
"auto" choose between "direct"/"blocked" and "fft". They run the one-layer
network only: with residual layers (``params.depth > 0``) "auto" chooses
between "direct"/"blocked" and "fft" for every pass, and "fused" is refused.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

from array_api_compat import is_cupy_namespace, is_numpy_namespace

from .methods import resolve_method
from .numerics import forward_backward
from .numerics.residual import Trunk

__all__ = ["Options", "features", "forward", "fused_kernels_on_numpy",
           "loss_and_grad", "select_path"]


@dataclass(frozen=True)
class Options:
    """The network's options, checked (:func:`arrseg._validation.check_options`).

    Attributes
    ----------
    activation : {"tanh", "relu", "sigmoid", "identity"}
    boundary : {"zeros", "periodic"}
    method : {"auto", "direct", "fft", "fused"}
    dilation : tuple of int
        The residual layers' dilations, one per layer (empty at depth 0).
    step : float
        h, the residual layers' step.
    layer : {"residual", "symmetric"}
    """

    activation: str = "tanh"
    boundary: str = "zeros"
    method: str = "auto"
    dilation: tuple = ()
    step: float = 1.0
    layer: str = "residual"

    @property
    def trunk(self):
        """The residual layers' options, as a :class:`arrseg.numerics.residual.Trunk`."""
        return Trunk(self.dilation, self.step, self.layer)


# Kernels object (arrseg.cuda.emulation.EmulatedKernels) that runs the fused
# path on NumPy arrays, set only by fused_kernels_on_numpy (tests).
_numpy_fused_kernels = None


@contextlib.contextmanager
def fused_kernels_on_numpy(kernels):
    """Run the "fused" path on NumPy arrays with ``kernels``, inside the block.

    For tests without a GPU: with the CPU emulator's kernels
    (:class:`arrseg.cuda.emulation.EmulatedKernels`) the same dispatcher,
    launchers and value checks run as on CuPy, and their launches can be
    counted.
    """
    global _numpy_fused_kernels
    before, _numpy_fused_kernels = _numpy_fused_kernels, kernels
    select_path.cache_clear()
    try:
        yield kernels
    finally:
        _numpy_fused_kernels = before
        select_path.cache_clear()


def fused_kernels(xp):
    """The kernels object of the fused path on namespace xp, or None where
    that path cannot run (None on CuPy means CuPy's own, the default)."""
    if is_cupy_namespace(xp):
        return None
    if _numpy_fused_kernels is not None and is_numpy_namespace(xp):
        return _numpy_fused_kernels
    return None


def _fused_available(xp):
    return is_cupy_namespace(xp) or (_numpy_fused_kernels is not None
                                     and is_numpy_namespace(xp))


@functools.lru_cache(maxsize=512)
def select_path(method, xp, x_shape, kernel_shape, n_classes, dtype, pass_,
                layers_shape=None):
    """The implementation that runs one pass: "fused", "blocked", "direct" or "fft".

    Parameters
    ----------
    method : {"auto", "direct", "fft", "fused"}
        Checked.
    xp : namespace
    x_shape : tuple (N, C, H, W)
    kernel_shape : tuple (k, C, s, s)
    n_classes : int
    dtype : dtype
        The compute dtype.
    pass_ : {"predict", "train", "features"}
    layers_shape : tuple (depth, k, k, s_r, s_r), optional
        The residual layers' kernels; None at depth 0.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If an explicitly requested method cannot run the pass (see
        :func:`arrseg.methods.resolve_method`).

    Notes
    -----
    Memoized on its arguments (all hashable): a training loop pays for the
    cost model once per shape.
    """
    if layers_shape is not None:
        return _deep_path(method, xp, x_shape, kernel_shape, n_classes, dtype, pass_,
                          layers_shape)
    fused_ok = _fused_available(xp) and pass_ != "features"
    if pass_ == "features" and method == "fused":
        method = "auto"
    chosen = resolve_method(method, xp, tuple(x_shape), tuple(kernel_shape),
                            train=pass_ == "train", n_classes=n_classes, dtype=dtype,
                            fused_available=fused_ok)
    if chosen == "direct" and is_numpy_namespace(xp):
        return "blocked"
    return chosen


def _deep_path(method, xp, x_shape, kernel_shape, n_classes, dtype, pass_,
               layers_shape):
    """:func:`select_path` with residual layers: "blocked", "direct" or "fft"."""
    if method == "fused":
        if pass_ == "features":
            method = "auto"
        else:
            raise ValueError(
                "method='fused' runs the one-layer network only (depth 0); this "
                f"network has {layers_shape[0]} residual layers: use method='auto', "
                "'direct' or 'fft'")
    if method == "auto":
        # the cost is the layers': compare the methods on one layer, whose
        # kernel spans its largest dilation's reach
        N, _, H, W = x_shape
        depth, k, _, s_r, _ = layers_shape
        method = resolve_method("auto", xp, (N, k, H, W), (k, k, s_r, s_r),
                                train=pass_ == "train", n_classes=n_classes,
                                dtype=dtype, fused_available=False)
    else:
        resolve_method(method, xp, tuple(x_shape), tuple(kernel_shape),
                       train=pass_ == "train", n_classes=n_classes, dtype=dtype,
                       fused_available=False)
    if method == "direct" and is_numpy_namespace(xp):
        return "blocked"
    return method


def _path(options, x, K, n_classes, xp, pass_, K_layers=None):
    return select_path(options.method, xp, tuple(x.shape), tuple(K.shape),
                       n_classes, x.dtype, pass_,
                       None if K_layers is None else tuple(K_layers.shape))


def _convolution(path):
    """The module of convolution products of an array-API path."""
    if path == "fft":
        from .numerics import fft_convolution

        return fft_convolution
    from .numerics import convolution

    return convolution


def forward(x, params, options, xp, *, out_dtype=None):
    """P = softmax(W^T sigma(K(theta) x + b) + c), on checked arguments.

    Parameters
    ----------
    x : array (N, C, H, W)
        In the compute dtype (float32 or float64).
    params : Params
        In x's dtype, namespace and device.
    options : Options
    xp : namespace
    out_dtype : dtype, optional
        The dtype of P (default x's); the NumPy path writes it directly.

    Returns
    -------
    P : array (N, n_c, H, W)
    """
    path = _path(options, x, params.K, params.W.shape[1], xp, "predict",
                 params.K_layers)
    if params.K_layers is not None:
        return _deep_forward(x, params, options, xp, path, out_dtype)
    if path == "fused":
        from .cuda import fused

        P = fused.fused_forward(x, params, options.activation, options.boundary,
                                kernels=fused_kernels(xp))
    elif path == "blocked":
        from .cpu import blocked

        return blocked.forward(x, params, options.activation, options.boundary,
                               out_dtype=out_dtype)
    else:
        P = forward_backward.forward(x, params, options.activation, options.boundary,
                                     xp, conv=_convolution(path))
    if out_dtype is not None and P.dtype != out_dtype:
        P = xp.astype(P, out_dtype)
    return P


def loss_and_grad(x, labels, params, options, class_weight, ignore_index, xp, *,
                  flat=False, extra_dS=None):
    """Weighted mean cross-entropy and its gradient, on checked arguments.

    Parameters
    ----------
    x : array (N, C, H, W), the compute dtype
    labels : int64 array (N, H, W)
        Class indices or ``ignore_index``.
    params : Params, in x's dtype
    options : Options
    class_weight : array (n_c,) in x's dtype, or None
    ignore_index : int
    xp : namespace
    flat : bool, default False
        Return the gradient as one flat vector [dK, db, dW, dc]
        (:mod:`arrseg.optim.flat`): the fused kernels' own buffer, or the
        fields concatenated.
    extra_dS : array (N, n_c, H, W), optional
        A gradient in the logits S added to the loss's before the backward
        pass (a regulariser of the logits, :mod:`arrseg.optim.edge_smoothness`);
        the loss returned is the cross-entropy's alone. The fused kernels and
        the blocked one-layer path have no such input: at depth 0 it runs the
        array-API path.

    Returns
    -------
    loss : 0-d array, on the device
    grads : tuple (dK, db, dW, dc), or 1-D array with ``flat=True``
        In x's dtype; dc is None when params.c is.
    """
    path = _path(options, x, params.K, params.W.shape[1], xp, "train",
                 params.K_layers)
    if extra_dS is not None and path in ("fused", "blocked") and params.K_layers is None:
        path = "direct"
    if params.K_layers is not None:
        loss, grads = _deep_loss_and_grad(x, labels, params, options, class_weight,
                                          ignore_index, xp, path, extra_dS)
        if flat:
            return loss, xp.concat([xp.reshape(g, (-1,)) for g in grads
                                    if g is not None])
        return loss, grads
    if path == "fused":
        from .cuda import fused

        return fused.fused_loss_and_grad(x, labels, params, options.activation,
                                         options.boundary, class_weight, ignore_index,
                                         kernels=fused_kernels(xp), flat=flat)
    if path == "blocked":
        from .cpu import blocked

        loss, grads = blocked.loss_and_grad(x, labels, params, options.activation,
                                            options.boundary, class_weight,
                                            ignore_index)
    else:
        loss, grads = forward_backward.loss_and_grad(
            x, labels, params, options.activation, options.boundary, class_weight,
            ignore_index, xp, conv=_convolution(path), extra_dS=extra_dS)
    if flat:
        return loss, xp.concat([xp.reshape(g, (-1,)) for g in grads if g is not None])
    return loss, grads


def _deep_forward(x, params, options, xp, path, out_dtype):
    """P of a network with residual layers, on the path chosen."""
    if path == "blocked":
        from .cpu import residual

        return residual.forward(x, params, options, out_dtype=out_dtype)
    P = forward_backward.forward(x, params, options.activation, options.boundary, xp,
                                 conv=_convolution(path), trunk=options.trunk)
    if out_dtype is not None and P.dtype != out_dtype:
        P = xp.astype(P, out_dtype)
    return P


def _deep_loss_and_grad(x, labels, params, options, class_weight, ignore_index, xp,
                        path, extra_dS=None):
    """Loss and the 6 gradients of a network with residual layers."""
    if path == "blocked":
        from .cpu import residual

        return residual.loss_and_grad(x, labels, params, options, class_weight,
                                      ignore_index, extra_dS=extra_dS)
    return forward_backward.loss_and_grad(
        x, labels, params, options.activation, options.boundary, class_weight,
        ignore_index, xp, conv=_convolution(path), trunk=options.trunk,
        extra_dS=extra_dS)


def features(x, K, b, options, xp, layers=None):
    """The classifier's input as (N, k, H*W), on checked arguments.

    Y1 = sigma(K(theta) x + b), or with ``layers = (K_layers, b_layers)``
    Y_L after the residual layers. VarPro's features; the classifier is not
    applied. The path is chosen among "blocked"/"direct" and "fft" (the
    fused kernels have no features pass).
    """
    K_layers = None if layers is None else layers[0]
    # n_classes does not enter the features' cost; 2 keeps the cache small
    path = _path(options, x, K, 2, xp, "features", K_layers)
    if K_layers is not None:
        if path == "blocked":
            from .cpu import residual

            return residual.features(x, K, b, layers, options)
        return forward_backward.features(x, K, b, options.activation,
                                         options.boundary, xp, conv=_convolution(path),
                                         layers=layers, trunk=options.trunk)
    if path == "blocked":
        from .cpu import blocked

        return blocked.features(x, K, b, options.activation, options.boundary)
    return forward_backward.features(x, K, b, options.activation, options.boundary,
                                     xp, conv=_convolution(path))
