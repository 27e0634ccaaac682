"""The residual layers: the network read as a discretised ODE (array API).

After the opening layer ``Y1 = sigma(K(theta) Y0 + B b)`` the network runs
``depth`` layers on the k feature channels, j = 1 .. depth, each of the
step h (the course's forward Euler step) and one of two kinds::

    "residual":   Y_{j+1} = Y_j + h A_j,            A_j = sigma(Z_j)
    "symmetric":  Y_{j+1} = Y_j - h K_j^T A_j,      Z_j = K_j Y_j + b_j

K_j is a k x k block of s_r x s_r convolutions with dilation d_j (taps d_j
pixels apart, padding d_j (s_r // 2) under either boundary), so the
receptive field grows by 2 d_j (s_r // 2) a layer: doubling dilations
(1, 2, 4, ...) grow it geometrically with the same parameters.

The symmetric layer is the course's stable variant: its Jacobian in Y_j is
``I - h K_j^T D_j K_j`` with D_j = diag(sigma'(Z_j)) in [0, 1] for tanh and
sigmoid, symmetric and with eigenvalues in [1 - h ||K_j||^2, 1]: the
forward propagation cannot amplify perturbations when
h ||K_j||^2 <= 2 (no exploding features or gradients at any depth).

The backward pass is the adjoint of the layer recursion, from the
convolution's products (``conv.conv2d``, ``conv.conv2d_adjoint``,
``conv.conv2d_theta_vjp``), with G_j = dE/dY_j from G_{L} = W dS::

    residual:   dZ_j = h G_{j+1} * sigma'(Z_j)
                dK_j = J(Y_j)^T dZ_j,   db_j = sum dZ_j
                G_j  = G_{j+1} + K_j^T dZ_j
    symmetric:  dZ_j = -h (K_j G_{j+1}) * sigma'(Z_j)
                dK_j = J(Y_j)^T dZ_j - h J(G_{j+1})^T A_j,   db_j = sum dZ_j
                G_j  = G_{j+1} + K_j^T dZ_j

Memory: the forward keeps Y_j, A_j and sigma'(Z_j) of every layer, three
(N, k, H, W) arrays a layer, for the backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from .activations import activation, activation_and_derivative

__all__ = ["LAYERS", "Trunk", "trunk_backward", "trunk_forward", "receptive_halo"]

#: The kinds of residual layer (``layer=``).
LAYERS = ("residual", "symmetric")


@dataclass(frozen=True)
class Trunk:
    """The residual layers' options, checked.

    Attributes
    ----------
    dilation : tuple of int
        d_j, one per layer (length depth).
    step : float
        h, the step of every layer.
    layer : {"residual", "symmetric"}
    """

    dilation: tuple = ()
    step: float = 1.0
    layer: str = "residual"


def receptive_halo(kernel_size, layer_kernel_size=None, dilation=(), layer="residual"):
    """The network's halo: how far an output pixel reads, in pixels.

    ``s // 2`` for the opening layer plus ``d_j (s_r // 2)`` for each
    residual layer (twice that for a symmetric one, which convolves twice).
    Tiles overlapping by this much give the untiled result.

    Examples
    --------
    >>> from arrseg.numerics.residual import receptive_halo
    >>> receptive_halo(3), receptive_halo(3, 3, (1, 2, 4))
    (1, 8)
    >>> receptive_halo(3, 3, (1, 2, 4), "symmetric")
    15
    """
    per_layer = 2 if layer == "symmetric" else 1
    return kernel_size // 2 + per_layer * sum(d * (layer_kernel_size // 2)
                                              for d in dilation)


def _one_layer(Y, K, b, activation_name, boundary, d, xp, conv, with_derivative):
    Z = conv.conv2d(Y, K, boundary, xp, d) + b[:, None, None]
    if with_derivative:
        return activation_and_derivative(activation_name, Z, xp)
    return activation(activation_name, Z, xp), None


def trunk_forward(Y, K_layers, b_layers, activation_name, boundary, trunk, xp, conv,
                  *, keep=False):
    """Y_L from Y1 through the residual layers.

    Parameters
    ----------
    Y : array (N, k, H, W)
        Y1, the opening layer's features.
    K_layers : array (depth, k, k, s_r, s_r)
    b_layers : array (depth, k)
    activation_name : str
    boundary : {"zeros", "periodic"}
    trunk : Trunk
    xp : namespace
    conv : module
        Of :mod:`arrseg.numerics.convolution`'s products.
    keep : bool, default False
        Also return the tape the backward pass reads.

    Returns
    -------
    Y_L : array (N, k, H, W)
    tape : list of (Y_j, A_j, sigma'(Z_j)), only with ``keep``
    """
    h = trunk.step
    tape = []
    for j, d in enumerate(trunk.dilation):
        K = K_layers[j, ...]
        A, dA = _one_layer(Y, K, b_layers[j, ...], activation_name, boundary, d, xp,
                           conv, keep)
        if keep:
            tape.append((Y, A, dA))
        if trunk.layer == "symmetric":
            Y = Y - h * conv.conv2d_adjoint(A, K, boundary, xp, d)
        else:
            Y = Y + h * A
    return (Y, tape) if keep else Y


def trunk_backward(G, tape, K_layers, boundary, trunk, xp, conv):
    """The adjoint of :func:`trunk_forward`: dE/dY1 and the layers' gradients.

    Parameters
    ----------
    G : array (N, k, H, W)
        dE/dY_L.
    tape : list
        From ``trunk_forward(..., keep=True)``.
    K_layers : array (depth, k, k, s_r, s_r)
    boundary, trunk, xp, conv
        As for the forward pass.

    Returns
    -------
    G1 : array (N, k, H, W)
        dE/dY1.
    dK_layers : array (depth, k, k, s_r, s_r)
    db_layers : array (depth, k)
    """
    h = trunk.step
    s_r = K_layers.shape[3]
    dKs, dbs = [], []
    for j in reversed(range(len(tape))):
        Y, A, dA = tape[j]
        K, d = K_layers[j, ...], trunk.dilation[j]
        if trunk.layer == "symmetric":
            dZ = (-h) * conv.conv2d(G, K, boundary, xp, d) * dA
            dK = (conv.conv2d_theta_vjp(Y, dZ, s_r, boundary, xp, d)
                  - h * conv.conv2d_theta_vjp(G, A, s_r, boundary, xp, d))
        else:
            dZ = h * G * dA
            dK = conv.conv2d_theta_vjp(Y, dZ, s_r, boundary, xp, d)
        dKs.append(dK)
        dbs.append(xp.sum(dZ, axis=(0, 2, 3)))
        G = G + conv.conv2d_adjoint(dZ, K, boundary, xp, d)
    dKs.reverse()
    dbs.reverse()
    return G, xp.stack(dKs, axis=0), xp.stack(dbs, axis=0)
