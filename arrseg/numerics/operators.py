"""The convolution's derived products, defined once from any forward product.

K(theta) Y is linear in Y and in theta, so two of the four products the
network needs follow from the forward product ``conv2d`` alone, whatever
computes it (the direct method of :mod:`arrseg.numerics.convolution` or the
FFT of :mod:`arrseg.numerics.fft_convolution`):

- the adjoint ``K(theta)^T Z``: for odd s and symmetric padding, the
  transpose of a cross-correlation is the cross-correlation with the kernel
  flipped in space and the input and output channels exchanged, under
  either boundary condition (:func:`adjoint_of`);
- the Jacobian in theta applied to a direction v, ``J_theta(Y) v = K(v) Y``:
  the forward product with theta replaced by v (:func:`theta_jvp_of`).

Each implementation module defines ``conv2d`` and ``conv2d_theta_vjp`` (the
one product whose fast form differs) and derives the other two here, so a
new method adds only what differs.
"""

from __future__ import annotations

from array_api_compat import device

__all__ = ["adjoint_of", "dilated_kernel", "theta_jvp_of"]


def dilated_kernel(theta, dilation, xp):
    """theta with d - 1 zeros between its taps: (k, C, s, s) -> (k, C, D, D).

    D = d (s - 1) + 1, odd when s is: the dilated cross-correlation is the
    plain one with this kernel. Methods whose cost does not grow with the
    kernel's size (the FFT) dilate this way.
    """
    if dilation == 1:
        return theta
    k, C, s = theta.shape[0], theta.shape[1], theta.shape[2]
    D = dilation * (s - 1) + 1
    out = xp.zeros((k, C, D, D), dtype=theta.dtype, device=device(theta))
    out[:, :, ::dilation, ::dilation] = theta
    return out


def adjoint_of(conv2d, method):
    """The adjoint product ``conv2d_adjoint(Z, theta, boundary, xp)`` of ``conv2d``.

    Parameters
    ----------
    conv2d : callable
        ``conv2d(Y, theta, boundary, xp)``, the forward product.
    method : str
        Named in the docstring ("direct", "FFT").

    Returns
    -------
    callable
    """

    def conv2d_adjoint(Z, theta, boundary, xp, dilation=1):
        theta_t = xp.permute_dims(xp.flip(theta, axis=(2, 3)), (1, 0, 2, 3))
        return conv2d(Z, theta_t, boundary, xp, dilation)

    conv2d_adjoint.__module__ = conv2d.__module__
    conv2d_adjoint.__doc__ = f"""Adjoint product K(theta)^T Z ({method} method).

    The transpose of a cross-correlation is the cross-correlation with the
    kernel flipped in space and with input and output channels exchanged
    (:mod:`arrseg.numerics.operators`); the halo handling is the forward's
    under either boundary condition.

    Parameters
    ----------
    Z : array, shape (N, k, H, W)
    theta : array, shape (k, C, s, s)
    boundary : {{"zeros", "periodic"}}
    xp : namespace
    dilation : int, default 1
        d, the spacing of the taps (flipping keeps it).

    Returns
    -------
    array, shape (N, C, H, W), Z's dtype
    """
    return conv2d_adjoint


def theta_jvp_of(conv2d, method):
    """The product ``conv2d_theta_jvp(Y, v, boundary, xp)`` = K(v) Y of ``conv2d``.

    Parameters
    ----------
    conv2d : callable
        ``conv2d(Y, theta, boundary, xp)``, the forward product.
    method : str
        Named in the docstring.

    Returns
    -------
    callable
    """

    def conv2d_theta_jvp(Y, v, boundary, xp, dilation=1):
        return conv2d(Y, v, boundary, xp, dilation)

    conv2d_theta_jvp.__module__ = conv2d.__module__
    conv2d_theta_jvp.__doc__ = f"""Jacobian-vector product in theta: J_theta(Y) v ({method} method).

    K(theta) Y is linear in theta, so its Jacobian applied to a direction v
    (shape of theta) is the forward product with theta replaced by v.

    Parameters
    ----------
    Y : array, shape (N, C, H, W)
    v : array, shape (k, C, s, s)
    boundary : {{"zeros", "periodic"}}
    xp : namespace
    dilation : int, default 1

    Returns
    -------
    array, shape (N, k, H, W)
    """
    return conv2d_theta_jvp
