"""The NumPy path of networks with residual layers.

Interface of the core (:mod:`arrseg.core`) for ``params.depth > 0`` on
NumPy arrays: :func:`forward`, :func:`loss_and_grad`, :func:`features`.
(Work in progress: for now the array-API implementation on NumPy.)
"""

from __future__ import annotations

import array_api_compat.numpy as xp

from ..numerics import convolution, forward_backward

__all__ = ["features", "forward", "loss_and_grad"]


def forward(x, params, options, *, out_dtype=None):
    """P (N, n_c, H, W) of a network with residual layers."""
    P = forward_backward.forward(x, params, options.activation, options.boundary, xp,
                                 conv=convolution, trunk=options.trunk)
    return P if out_dtype is None else P.astype(out_dtype, copy=False)


def loss_and_grad(x, labels, params, options, class_weight, ignore_index):
    """Loss and (dK, db, dW, dc, dK_layers, db_layers)."""
    return forward_backward.loss_and_grad(
        x, labels, params, options.activation, options.boundary, class_weight,
        ignore_index, xp, conv=convolution, trunk=options.trunk)


def features(x, K, b, layers, options):
    """Y_L as (N, k, H*W)."""
    return forward_backward.features(x, K, b, options.activation, options.boundary,
                                     xp, conv=convolution, layers=layers,
                                     trunk=options.trunk)
