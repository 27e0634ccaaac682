"""The network's forward pass and analytic backward pass, array-API only::

    Z1 = K(theta) Y0 + B b            (N, k, H, W)   pre-activation
    Y1 = sigma(Z1)                    (N, k, H, W)   features
    S  = W^T Y1 + c                   (N, n_c, H, W) logits, per pixel
    P  = softmax(S)                   over the class axis
    E  = weighted mean cross-entropy of P and the labels

The backward pass applies the transposed Jacobians in reverse order::

    dS  = dE/dS                       (P - onehot) * w / sum(w)
    dW  = Y1 dS^T,  dc = sum dS,  dY1 = W dS
    dZ1 = dY1 * sigma'(Z1)
    db  = sum dZ1 over pixels,  dtheta = J_theta(Y0)^T dZ1

With residual layers (``params.depth > 0``) Y1 runs through them to Y_L
before the classifier, and the backward pass runs their adjoint from
dY_L = W dS back to dY1 (:mod:`arrseg.numerics.residual`).

No automatic differentiation is involved. This is the reference
implementation: any other implementation is tested against it. Inputs are assumed
validated (see :mod:`arrseg._validation`).

The convolution products come from ``conv``, a module with the functions
``conv2d(Y, theta, boundary, xp)`` and
``conv2d_theta_vjp(Y, Z, kernel_size, boundary, xp)``:
:mod:`arrseg.numerics.convolution` (the direct method, the default) or
:mod:`arrseg.numerics.fft_convolution` (the FFT method).
"""

from __future__ import annotations

from .activations import activation, activation_and_derivative
from .classifier import classifier_backward, cross_entropy_and_grad, logits, softmax
from . import convolution as direct_convolution
from .residual import Trunk, trunk_backward, trunk_forward

__all__ = ["features", "forward", "loss_and_grad"]


def features(Y0, K, b, activation_name, boundary, xp, *, with_derivative=False,
             conv=direct_convolution, layers=None, trunk=Trunk()):
    """The classifier's input as (N, k, H*W): Y1 = sigma(K(theta) Y0 + B b),
    optionally with sigma'(Z1); with ``layers = (K_layers, b_layers)``, Y_L
    after the residual layers (no derivative)."""
    N, _, H, W = Y0.shape
    Z1 = conv.conv2d(Y0, K, boundary, xp) + b[:, None, None]
    if layers is not None and layers[0] is not None:
        Y1 = activation(activation_name, Z1, xp)
        Y = trunk_forward(Y1, layers[0], layers[1], activation_name, boundary, trunk,
                          xp, conv)
        return xp.reshape(Y, (N, K.shape[0], H * W))
    Z1 = xp.reshape(Z1, (N, K.shape[0], H * W))
    if with_derivative:
        return activation_and_derivative(activation_name, Z1, xp)
    return activation(activation_name, Z1, xp)


def forward(Y0, params, activation_name, boundary, xp, *, conv=direct_convolution,
            trunk=Trunk()):
    """Probabilities P, shape (N, n_c, H, W)."""
    N, _, H, W = Y0.shape
    Y = features(Y0, params.K, params.b, activation_name, boundary, xp, conv=conv,
                 layers=(params.K_layers, params.b_layers), trunk=trunk)
    P = softmax(logits(Y, params.W, params.c, xp), xp)
    return xp.reshape(P, (N, P.shape[1], H, W))


def loss_and_grad(Y0, labels, params, activation_name, boundary, class_weight,
                  ignore_index, xp, *, conv=direct_convolution, trunk=Trunk(),
                  extra_dS=None):
    """Loss (0-d) and its gradient in (K, b, W, c) as a tuple of 4 arrays,
    or of 6 with the residual layers' (dK_layers, db_layers) at depth > 0.

    ``labels`` has shape (N, H, W); the gradient for ``c`` is None when
    ``params.c`` is None. ``extra_dS`` (N, n_c, H, W), optional, is added to
    the loss's gradient in the logits before the backward pass.
    """
    N, _, H, W = Y0.shape
    k = params.K.shape[0]
    Y1, dY1_dZ1 = features(Y0, params.K, params.b, activation_name, boundary, xp,
                           with_derivative=True, conv=conv)
    deep = params.K_layers is not None
    Y = Y1
    if deep:   # (N, k, H*W) -> (N, k, H, W) -> Y_L, kept for the adjoint
        Y, tape = trunk_forward(xp.reshape(Y1, (N, k, H, W)), params.K_layers,
                                params.b_layers, activation_name, boundary, trunk, xp,
                                conv, keep=True)
        Y = xp.reshape(Y, (N, k, H * W))
    S = logits(Y, params.W, params.c, xp)
    loss, dS = cross_entropy_and_grad(
        S, xp.reshape(labels, (N, H * W)), class_weight, ignore_index, xp
    )
    if extra_dS is not None:
        dS = dS + xp.reshape(extra_dS, dS.shape)
    dW, dc, dY = classifier_backward(Y, params.W, dS, xp)
    layer_grads = ()
    if deep:
        dY, dK_layers, db_layers = trunk_backward(
            xp.reshape(dY, (N, k, H, W)), tape, params.K_layers, boundary, trunk, xp,
            conv)
        dY = xp.reshape(dY, (N, k, H * W))
        layer_grads = (dK_layers, db_layers)
    dZ1 = dY * dY1_dZ1  # (N, k, H*W)
    db = xp.sum(dZ1, axis=(0, 2))
    dK = conv.conv2d_theta_vjp(Y0, xp.reshape(dZ1, (N, k, H, W)), params.K.shape[2],
                          boundary, xp)
    return loss, (dK, db, dW, dc if params.c is not None else None, *layer_grads)
