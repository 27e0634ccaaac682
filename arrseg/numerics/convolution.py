"""The convolution K(theta) as a matrix-free linear operator (direct method).

K(theta) is the block matrix of 2-D convolutions K_2D(theta_ij), i = 1..k
output channels, j = 1..C input channels. Each block applies a
cross-correlation (PyTorch's ``conv2d``, cuDNN)::

    (K(theta) Y)[n, i, h, w] = sum_{j, a, b} theta[i, j, a, b]
                               * Ypad[n, j, h + a, w + b]

where ``Ypad`` is Y padded by p = s // 2 on each side, with zeros
(``boundary="zeros"``) or by wrapping around (``"periodic"``, the course's
convFFT). The four products the network needs, all matrix-free:

=========================  =====================================  ==========
product                    what it is                              function
=========================  =====================================  ==========
K(theta) Y                 forward                                 conv2d
K(theta)^T Z               adjoint (transpose) in Y                conv2d_adjoint
J_theta(Y) v = K(v) Y      Jacobian in theta times a direction v   conv2d_theta_jvp
J_theta(Y)^T Z             its transpose: the gradient in theta    conv2d_theta_vjp
=========================  =====================================  ==========

Every function takes the namespace ``xp`` explicitly and uses only the array
API standard: this module is the specification of the operator, the
reference any other implementation of it is tested against. Shapes:
Y (N, C, H, W), theta (k, C, s, s), Z (N, k, H, W).

With a dilation d > 1 (the residual layers, :mod:`arrseg.numerics.residual`)
the taps are d pixels apart: offset (a, b) reads ``Ypad[n, j, h + d a,
w + d b]`` with p = d (s // 2), the kernel of PyTorch's
``conv2d(..., dilation=d, padding=d * (s // 2))``.

The work is a loop over the s*s kernel offsets, each a batched matrix
product (k, C) @ (N, C, H*W): memory stays at one shifted copy of the input
rather than the s*s-fold im2col matrix.
"""

from __future__ import annotations

from array_api_compat import device

from .operators import adjoint_of, theta_jvp_of

__all__ = [
    "BOUNDARIES",
    "pad",
    "conv2d",
    "conv2d_adjoint",
    "conv2d_theta_jvp",
    "conv2d_theta_vjp",
]

#: The boundary conditions the convolutions support.
BOUNDARIES = ("zeros", "periodic")


def pad(Y, p, boundary, xp):
    """Pad the two trailing (spatial) axes of Y by p on each side.

    Parameters
    ----------
    Y : array, shape (..., H, W)
    p : int
        Halo width, s // 2.
    boundary : {"zeros", "periodic"}
        Zero padding, or wrap-around. Periodic padding wraps as many times
        as needed, so p may exceed H or W.
    xp : namespace

    Returns
    -------
    array, shape (..., H + 2p, W + 2p)
    """
    if p == 0:
        return Y
    H, W = Y.shape[-2], Y.shape[-1]
    if boundary == "zeros":
        lead = tuple(Y.shape[:-2])
        rows = xp.zeros(lead + (p, W), dtype=Y.dtype, device=device(Y))
        Y = xp.concat([rows, Y, rows], axis=-2)
        cols = xp.zeros(lead + (H + 2 * p, p), dtype=Y.dtype, device=device(Y))
        return xp.concat([cols, Y, cols], axis=-1)
    # periodic: gather with indices taken modulo the size, made on the
    # device (no host-to-device copy)
    ih = xp.arange(-p, H + p, device=device(Y)) % H
    iw = xp.arange(-p, W + p, device=device(Y)) % W
    Y = xp.take(Y, ih, axis=Y.ndim - 2)
    return xp.take(Y, iw, axis=Y.ndim - 1)


def _offsets(s):
    return [(a, b) for a in range(s) for b in range(s)]


def _shifted(Ypad, a, b, H, W, xp):
    """The padded input seen at kernel offset (a, b): shape (N, C, H*W)."""
    N, C = Ypad.shape[0], Ypad.shape[1]
    return xp.reshape(Ypad[:, :, a : a + H, b : b + W], (N, C, H * W))


def conv2d(Y, theta, boundary, xp, dilation=1):
    """Forward product K(theta) Y.

    Parameters
    ----------
    Y : array, shape (N, C, H, W)
    theta : array, shape (k, C, s, s), s odd
    boundary : {"zeros", "periodic"}
    xp : namespace
    dilation : int, default 1
        d, the spacing of the taps.

    Returns
    -------
    Z : array, shape (N, k, H, W)
    """
    N, C, H, W = Y.shape
    k, s, d = theta.shape[0], theta.shape[2], dilation
    Ypad = pad(Y, d * (s // 2), boundary, xp)
    Z = None
    for a, b in _offsets(s):
        # (k, C) @ (N, C, H*W) -> (N, k, H*W)
        term = xp.matmul(theta[:, :, a, b], _shifted(Ypad, d * a, d * b, H, W, xp))
        Z = term if Z is None else Z + term
    return xp.reshape(Z, (N, k, H, W))


def conv2d_theta_vjp(Y, Z, kernel_size, boundary, xp, dilation=1):
    """Transposed Jacobian product in theta: J_theta(Y)^T Z.

    ``dtheta[i, j, a, b] = sum_{n, h, w} Z[n, i, h, w] * Ypad[n, j, h+a, w+b]``;
    with Z the gradient of a loss in K(theta) Y, this is the loss's gradient
    in theta.

    Parameters
    ----------
    Y : array, shape (N, C, H, W)
    Z : array, shape (N, k, H, W)
    kernel_size : int
        s, odd.
    boundary : {"zeros", "periodic"}
    xp : namespace
    dilation : int, default 1
        d, the spacing of the taps (``Ypad[n, j, h + d a, w + d b]``).

    Returns
    -------
    array, shape (k, C, s, s)
    """
    N, C, H, W = Y.shape
    k, s, d = Z.shape[1], kernel_size, dilation
    Ypad = pad(Y, d * (s // 2), boundary, xp)
    Zf = xp.reshape(Z, (N, k, H * W))
    blocks = []
    for a, b in _offsets(s):
        # per image (k, H*W) @ (H*W, C) -> (k, C), then the sum over images:
        # each dot product runs over one image's pixels, not the batch's
        Ys = xp.matrix_transpose(_shifted(Ypad, d * a, d * b, H, W, xp))
        blocks.append(xp.sum(xp.matmul(Zf, Ys), axis=0))
    # (s*s, k, C) -> (k, C, s, s)
    dtheta = xp.reshape(xp.stack(blocks, axis=0), (s, s, k, C))
    return xp.permute_dims(dtheta, (2, 3, 0, 1))


# the derived products (arrseg.numerics.operators): defined once, from conv2d
conv2d_adjoint = adjoint_of(conv2d, "direct")
conv2d_theta_jvp = theta_jvp_of(conv2d, "direct")
