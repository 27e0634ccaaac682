"""Finite inputs give finite answers, or :class:`NonFiniteError`.

Every public call checks that its inputs are finite (:mod:`arrseg._validation`).
Finite inputs can still overflow on the way: relu or identity features of
large parameters, logits beyond the float32 range, images near 1e300 in
float64. The result would be NaN or inf with at most a RuntimeWarning;
instead arrseg raises :class:`NonFiniteError`, naming the quantity that
overflowed and what to change.

Where the check lives, and what it costs
-----------------------------------------
The fast paths compute as before; the check looks at their *results* only:

- ``P`` of a forward pass: ``sum(P)`` (every entry is in [0, 1], so the sum
  cannot overflow; it is NaN exactly when an entry is), one reduction of
  the output;
- ``loss_and_grad``: ``loss * 0 + sum(g * 0)`` over the gradients, which is
  0 exactly when all are finite; the gradients are parameter-sized.

Each is one number, read back once per public call. Only when it is not
finite does :func:`diagnose` recompute the pass stage by stage, on the host
with the array-API reference in NumPy, to name the first quantity that
overflowed: the pre-activations ``K x + b``, the logits ``W^T y + c``, the
cross-entropy, or one of the gradients. The error path may be slow; the
fast path pays one reduction.

Class weights cannot overflow the loss: the loss is a ratio of weighted
sums, unchanged when every weight is scaled by one factor, and
:func:`scaled_class_weight` divides them by their largest before use.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._backend import to_numpy

__all__ = ["NonFiniteError", "diagnose", "is_finite", "quiet_overflow",
           "scaled_class_weight", "sum_probe", "zero_probe"]


class NonFiniteError(FloatingPointError):
    """Finite inputs gave a non-finite result (NaN or inf).

    The message names the quantity that overflowed first (the
    pre-activations ``K x + b``, the logits ``W^T y + c``, the loss, a
    gradient) and what to change (scale the images, use float64, smaller
    parameters or a bounded activation). A subclass of
    :class:`FloatingPointError`, the error NumPy raises under
    ``np.errstate(all="raise")``.
    """


def quiet_overflow():
    """``np.errstate`` without overflow and invalid-value warnings: for a
    pass whose result is checked afterwards (the warning would only precede
    the :class:`NonFiniteError` that names the cause)."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def scaled_class_weight(class_weight, xp):
    """Class weights divided by the largest (all zero stays all zero).

    The weighted mean cross-entropy is a ratio of sums weighted by the
    class weights: scaling them changes nothing but the range of the sums,
    which this keeps within [0, number of pixels]. Device arithmetic only.
    """
    if class_weight is None:
        return None
    with quiet_overflow():  # unchecked (deferred) weights may be inf or NaN
        top = xp.max(class_weight)
        return class_weight / xp.where(top > 0, top, xp.ones_like(top))


def sum_probe(arrays, xp):
    """0-d ``sum`` of every array, in its own dtype: finite iff all entries
    are, for arrays whose entries are bounded (probabilities: the sum is at
    most the number of pixels)."""
    return xp.stack([xp.astype(xp.sum(a), xp.float64) for a in arrays])


def zero_probe(arrays, xp):
    """0-d ``sum(a * 0)`` over every array: 0 iff all entries are finite
    (``0 * inf`` and ``0 * NaN`` are NaN; finite products are 0)."""
    return sum(xp.sum(xp.astype(a * 0, xp.float64)) for a in arrays if a is not None)


def is_finite(probe):
    """Read a probe back (the call's one synchronisation): is it finite?"""
    return bool(np.all(np.isfinite(to_numpy(probe))))


def _largest(a):
    with np.errstate(invalid="ignore"):
        finite = a[np.isfinite(a)]
    return float(np.max(np.abs(finite))) if finite.size else float("nan")


def _stage(name, a, dtype, advice):
    bad = ~np.isfinite(a)
    if not bad.any():
        return None
    return (f"{name} overflowed {np.dtype(dtype).name} (whose largest value is "
            f"{np.finfo(dtype).max:.3g}) at {int(bad.sum())} of {a.size} entries; "
            f"{advice}")


def diagnose(where, x, params, options, *, labels=None, class_weight=None,
             ignore_index=-100):
    """The error of a non-finite result from finite inputs: which quantity
    overflowed first, and what to change.

    Recomputes the pass with the array-API reference
    (:mod:`arrseg.numerics`) on the host, in the compute dtype, stage by
    stage. Called only on the error path.

    Parameters
    ----------
    where : str
        The public call, e.g. ``"predict_proba"``.
    x : array (N, C, H, W), checked, the compute dtype
    params : Params, checked, in x's dtype
    options : arrseg.core.Options
    labels, class_weight, ignore_index
        As for :func:`arrseg.core.loss_and_grad`; labels None for a
        forward pass.

    Returns
    -------
    NonFiniteError
    """
    from .numerics import convolution
    from .numerics.activations import activation_and_derivative
    from .numerics.classifier import (classifier_backward, cross_entropy_and_grad,
                                      logits, softmax)

    if params.depth:
        return _diagnose_deep(where, x, params, options, labels, class_weight,
                              ignore_index)
    xp = np
    X = to_numpy(x)
    K, b, W, c = (None if a is None else to_numpy(a) for a in params[:4])
    dtype = X.dtype
    sizes = (f"largest |x| = {_largest(X):.3g}, |K| = {_largest(K):.3g}, "
             f"|W| = {_largest(W):.3g}")
    scale = ("scale the images (to unit variance, as Segmenter does) or use "
             "smaller parameters" + ("" if dtype == np.float64 else
                                     ", or compute in float64"))
    bounded = ("" if options.activation in ("tanh", "sigmoid") else
               f", or use a bounded activation ('tanh', 'sigmoid') instead of "
               f"{options.activation!r}")
    N, _, H, Wd = X.shape
    with np.errstate(all="ignore"):
        Z1 = convolution.conv2d(X, K, options.boundary, xp) + b[:, None, None]
        Z1 = Z1.reshape(N, K.shape[0], H * Wd)
        reason = _stage("the pre-activations K x + b", Z1, dtype, f"{sizes}: {scale}")
        if reason is None:
            Y1, dY1 = activation_and_derivative(options.activation, Z1, xp)
            S = logits(Y1, W, c, xp)
            reason = _stage("the logits W^T y + c", S, dtype,
                            f"{sizes}, largest |y| = {_largest(Y1):.3g}: use smaller "
                            f"parameters W, c{bounded}"
                            + ("" if dtype == np.float64 else ", or float64"))
        if reason is None and labels is None:
            reason = _stage("the probabilities P", softmax(S, xp), dtype,
                            "please report this: the logits are finite")
        if reason is None and labels is not None:
            y = to_numpy(labels).reshape(N, H * Wd)
            cw = None if class_weight is None else to_numpy(class_weight)
            loss, dS = cross_entropy_and_grad(S, y, cw, ignore_index, xp)
            reason = _stage(
                "the cross-entropy", np.asarray(loss), dtype,
                f"the logits of a pixel span up to {np.ptp(S, axis=1).max():.3g}, and "
                "-log P as much, summed over the pixels: use smaller parameters W, c"
                + ("" if dtype == np.float64 else ", or float64"))
            grads = {}
            if reason is None:
                dW, dc, dY = classifier_backward(Y1, W, dS, xp)
                dZ = dY * dY1
                grads = {"the gradient in W": dW, "the gradient in c": dc,
                         "the gradient in b": dZ.sum(axis=(0, 2)),
                         "the gradient in K": convolution.conv2d_theta_vjp(
                             X, dZ.reshape(N, K.shape[0], H, Wd), K.shape[2],
                             options.boundary, xp)}
                if c is None:
                    del grads["the gradient in c"]
                for name, g in grads.items():
                    reason = _stage(name, g, dtype, f"{sizes}: {scale}")
                    if reason is not None:
                        break
    if reason is None:
        reason = _intermediate(x, params, options, labels is not None, dtype,
                               [Z1, S] + ([np.asarray(loss), *grads.values()]
                                          if labels is not None else []))
    return NonFiniteError(f"{where}: finite inputs gave a non-finite result: {reason}")


def _diagnose_deep(where, x, params, options, labels, class_weight, ignore_index):
    """:func:`diagnose` for a network with residual layers: the opening
    layer, each residual layer, the logits, then the loss and gradients."""
    import array_api_compat.numpy as xp

    from .numerics import convolution, forward_backward
    from .numerics.activations import activation
    from .numerics.classifier import logits, softmax
    from .numerics.residual import trunk_forward

    p = type(params)(*(None if a is None else to_numpy(a) for a in params))
    X = to_numpy(x)
    dtype = X.dtype
    N, _, H, Wd = X.shape
    scale = ("scale the images (to unit variance, as Segmenter does), use "
             "smaller parameters or a smaller step" + ("" if dtype == np.float64 else
                                                      ", or compute in float64"))
    if options.activation not in ("tanh", "sigmoid"):
        scale += (f", or use a bounded activation ('tanh', 'sigmoid') instead of "
                  f"{options.activation!r}")
    trunk = options.trunk
    with np.errstate(all="ignore"):
        Z1 = convolution.conv2d(X, p.K, options.boundary, xp) + p.b[:, None, None]
        reason = _stage("the pre-activations K x + b", Z1, dtype, scale)
        Y = activation(options.activation, Z1, xp)
        for j in range(p.depth):
            if reason is not None:
                break
            one = dataclasses.replace(trunk, dilation=trunk.dilation[j:j + 1])
            Y = trunk_forward(Y, p.K_layers[j:j + 1], p.b_layers[j:j + 1],
                              options.activation, options.boundary, one, xp, convolution)
            reason = _stage(f"the features of residual layer {j + 1} of {p.depth}",
                            Y, dtype, scale)
        if reason is None:
            S = logits(np.reshape(Y, (N, Y.shape[1], H * Wd)), p.W, p.c, xp)
            reason = _stage("the logits W^T y + c", S, dtype, scale)
        if reason is None and labels is None:
            reason = _stage("the probabilities P", softmax(S, xp), dtype,
                            "please report this: the logits are finite")
        if reason is None and labels is not None:
            loss, grads = forward_backward.loss_and_grad(
                X, to_numpy(labels), p, options.activation, options.boundary,
                None if class_weight is None else to_numpy(class_weight),
                ignore_index, xp, conv=convolution, trunk=trunk)
            reason = _stage("the cross-entropy", np.asarray(loss), dtype, scale)
            for name, g in zip(type(p)._fields, grads):
                if reason is not None:
                    break
                if g is not None:
                    reason = _stage(f"the gradient in {name}", g, dtype, scale)
    if reason is None:
        reason = (f"a sum inside the {options.method!r} path overflowed "
                  f"{np.dtype(dtype).name}, although the reference's quantities are "
                  f"finite: {scale}")
    return NonFiniteError(f"{where}: finite inputs gave a non-finite result: {reason}")


#: What overflows inside each path when its exact quantities are finite.
_INTERMEDIATES = {
    "fft": ("the FFT convolution's transforms (sums over all pixels, or over "
            "all kernel taps)"),
    "fused": "the fused kernels' partial sums",
    "blocked": "the NumPy path's sums over pixels (before the mean)",
    "direct": "the array-API path's sums",
}


def _intermediate(x, params, options, train, dtype, exact):
    """The reason when the reference's quantities are all finite: a sum
    inside the path that ran overflowed. Names the path and the largest
    exact quantity."""
    from array_api_compat import array_namespace

    from . import core

    path = core.select_path(options.method, array_namespace(x), tuple(x.shape),
                            tuple(params.K.shape), int(params.W.shape[1]), x.dtype,
                            "train" if train else "predict")
    largest = max(_largest(np.asarray(a)) for a in exact)
    top = float(np.finfo(dtype).max)
    advice = ("scale the images or the parameters down" if dtype == np.float64
              else "compute in float64, or scale the images or the parameters down")
    if path == "fft":
        advice += ", or pass method='direct'"
    quantities = ("pre-activations, logits, cross-entropy and gradients" if train
                  else "pre-activations and logits")
    return (f"{_INTERMEDIATES[path]} overflowed {np.dtype(dtype).name}, although the "
            f"exact {quantities} are finite (the largest, {largest:.3g}, is "
            f"{largest / top:.2g} of the dtype's largest value): {advice}")
