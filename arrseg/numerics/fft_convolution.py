"""The convolution K(theta) as a matrix-free linear operator (FFT method).

The same four products as :mod:`arrseg.numerics.convolution`, with the same
signatures and results, computed in the frequency domain through the
namespace's array API ``fft`` extension::

    (K(theta) Y)[n, i, h, w] = sum_{j, a, b} theta[i, j, a, b]
                               * Ypad[n, j, h + a, w + b]

Each block K_2D(theta_ij) is a cross-correlation, diagonalised by the 2-D
DFT on a grid of Fh x Fw points: with ``^`` the DFT and ``*`` the complex
conjugate::

    (K(theta) Y)^[n, i, f] = sum_j theta_ij^[f]* Y^[n, j, f]

where ``theta_ij`` is wrapped onto the grid first (tap (a, b) at the lag
((a - p) mod Fh, (b - p) mod Fw), p = s // 2; taps that land on the same
lag add up). Its spectrum is computed directly, as two small products with
matrices of exponentials (exact wrapping by their periodicity), not by an
FFT of the mostly-zero stamp. Per frequency f the contraction is a
(k, C) @ (C, N) matrix product: the frequency axes are moved first and all
F = Fh * (Fw // 2 + 1) products run as one batched ``matmul``.

=========================  ==========================================  ====
product                    in the frequency domain                     fn
=========================  ==========================================  ====
K(theta) Y                 theta^* Y^, contracted over C               conv2d
K(theta)^T Z               the same with theta flipped, C <-> k        conv2d_adjoint
J_theta(Y) v = K(v) Y      conv2d with theta = v                       conv2d_theta_jvp
J_theta(Y)^T Z             sum_n Z^* Y^, lags -p..p read off           conv2d_theta_vjp
=========================  ==========================================  ====

Grid (the padding rule, :func:`fft_shape`):

* ``boundary="periodic"``: the image's own H x W grid, Fh = H, Fw = W; the
  DFT product *is* the circular convolution (the course's convFFT), and a
  kernel wider than the image wraps around as many times as it needs.
* ``boundary="zeros"``: Y is zero-padded to Fh >= H + p, Fw >= W + p, each
  rounded up to the next 2,3,5-smooth size (:func:`next_fast_len`; a prime
  size such as 257 costs about twice as much). Outputs are read only at
  h < H, and the lags h + a - p reach from -p to H - 1 + p: the negative
  ones wrap to Fh - p .. Fh - 1 >= H, which hold zeros, so nothing wraps
  into the result and it equals the direct method's. (H + s - 1 is not
  needed: the rows beyond H + p would only serve outputs that are cut off.)

Cost, with F frequencies per channel and transforms of ~ F log F each:

====================  ================================  =====================
function              transforms                        products
====================  ================================  =====================
conv2d (adj., jvp)    N C forward, N k inverse          N k C F + k C s F
conv2d_theta_vjp      N (C + k) forward, k C inverse    N k C F
====================  ================================  =====================

that is ~ N (C + k) F log F + N k C F, independent of s, against the direct
method's N k C s^2 H W. Memory: the spectra, N (C + k) F complex numbers.
float32 inputs are transformed in complex64 and give float32; float64 gives
float64. The round-off is that of the FFT: relative to the largest values
of each transform, not to each output entry.

Every function takes ``xp`` explicitly and uses only the array API standard
and its ``fft`` extension; a namespace without it raises ``TypeError``.
Shapes: Y (N, C, H, W), theta (k, C, s, s) with s odd, Z (N, k, H, W).

Examples
--------
>>> import numpy as np
>>> import array_api_compat.numpy as xp
>>> from arrseg.numerics import convolution, fft_convolution
>>> rng = np.random.default_rng(0)
>>> Y, theta = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 5, 5))
>>> Z = fft_convolution.conv2d(Y, theta, "zeros", xp)
>>> Z.shape, bool(np.allclose(Z, convolution.conv2d(Y, theta, "zeros", xp)))
((2, 4, 9, 8), True)
"""

from __future__ import annotations

import math

from array_api_compat import device

from .convolution import BOUNDARIES
from .operators import adjoint_of, dilated_kernel, theta_jvp_of

__all__ = [
    "BOUNDARIES",
    "conv2d",
    "conv2d_adjoint",
    "conv2d_theta_jvp",
    "conv2d_theta_vjp",
    "fft_shape",
    "next_fast_len",
]


def next_fast_len(n):
    """The smallest 2,3,5-smooth integer >= n: a size every FFT does fast.

    pocketfft (NumPy), cuFFT (CuPy, PyTorch on a GPU) and PyTorch's CPU FFT
    all handle sizes 2^a 3^b 5^c with their fastest kernels; a prime size
    such as 257 goes through Bluestein's algorithm, about 4x slower.

    Parameters
    ----------
    n : int
        Minimum size, >= 1.

    Returns
    -------
    int

    Examples
    --------
    >>> from arrseg.numerics.fft_convolution import next_fast_len
    >>> [next_fast_len(n) for n in (1, 7, 257, 263, 271)]
    [1, 8, 270, 270, 288]
    """
    if n <= 1:
        return 1
    best = None
    p5 = 1
    while p5 < 2 * n:
        p35 = p5
        while p35 < 2 * n:
            # the smallest power of two bringing p35 to at least n
            m = p35
            while m < n:
                m *= 2
            if best is None or m < best:
                best = m
            p35 *= 3
        p5 *= 5
    return best


def fft_shape(H, W, kernel_size, boundary):
    """The DFT grid (Fh, Fw) the FFT method uses for an H x W image.

    Under ``"periodic"``, the image's own grid; under ``"zeros"``, at least
    H + p by W + p (p = kernel_size // 2) so that nothing wraps into the
    result, rounded up by :func:`next_fast_len`. Cost models can count
    ``Fh * (Fw // 2 + 1)`` frequencies per channel from it.

    Parameters
    ----------
    H, W : int
        Image size.
    kernel_size : int
        s, odd.
    boundary : {"zeros", "periodic"}

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> from arrseg.numerics.fft_convolution import fft_shape
    >>> fft_shape(256, 100, 5, "zeros"), fft_shape(256, 100, 5, "periodic")
    ((270, 108), (256, 100))
    """
    if boundary == "periodic":
        return H, W
    p = kernel_size // 2
    return next_fast_len(H + p), next_fast_len(W + p)


# --- helpers ---------------------------------------------------------------

def _fft(xp):
    """The namespace's fft extension, or a TypeError naming the namespace."""
    fft = getattr(xp, "fft", None)
    if fft is None:
        name = getattr(xp, "__name__", type(xp).__name__)
        raise TypeError(
            f"method='fft' needs the array API fft extension; the namespace "
            f"{name} has none (use method='direct')"
        )
    return fft


def _complex_dtype(dtype, xp):
    return xp.complex64 if dtype == xp.float32 else xp.complex128


def _fourier_matrix(F, n_freq, s, dtype, dev, xp):
    """E[u, a] = exp(+2 pi i u (a - p) / F), u < n_freq, a < s, p = s // 2.

    The phase u (a - p) is reduced modulo F in integers and the angle taken
    in float64, then rounded once to ``dtype``'s complex type: every entry is
    within half an ulp (a float32 angle near 2 pi would be off by ~2 pi eps).
    E is periodic in the lag a - p: a kernel wider than the grid wraps by
    itself.
    """
    p = s // 2
    u = xp.arange(n_freq, dtype=xp.int64, device=dev)
    d = xp.arange(-p, s - p, dtype=xp.int64, device=dev)
    angle = xp.astype((u[:, None] * d[None, :]) % F, xp.float64) * (2 * math.pi / F)
    cdt = _complex_dtype(dtype, xp)
    return xp.astype(xp.cos(angle), cdt) + 1j * xp.astype(xp.sin(angle), cdt)


def _kernel_spectrum(theta, Fh, Fw, xp):
    """The conjugate DFT of the kernels' circulant stamps, frequencies first.

    ``A[u, v, i, j] = sum_{a, b} theta[i, j, a, b]
    * exp(+2 pi i (u (a - p) / Fh + v (b - p) / Fw))``, shape (Fh, Fw//2 + 1,
    k, C): the spectrum of the Fh x Fw stamp that carries tap (a, b) at lag
    ((a - p) mod Fh, (b - p) mod Fw), conjugated, as the correlation needs.
    Computed as two small matrix products (cost k C s F) rather than an FFT
    of the mostly-zero stamp (k C F log F); taps sharing a lag (s > H under
    ``"periodic"``) add up through the periodicity of the exponentials.
    """
    k, C, s = theta.shape[0], theta.shape[1], theta.shape[2]
    Fr = Fw // 2 + 1
    dev = device(theta)
    Ew = _fourier_matrix(Fw, Fr, s, theta.dtype, dev, xp)   # (Fr, s)
    Eh = _fourier_matrix(Fh, Fh, s, theta.dtype, dev, xp)   # (Fh, s)
    t = xp.reshape(xp.permute_dims(theta, (2, 3, 0, 1)), (s, s, k * C))
    t = xp.matmul(Ew, xp.astype(t, Ew.dtype))               # (s, Fr, k C)
    A = xp.matmul(Eh, xp.reshape(t, (s, Fr * k * C)))       # (Fh, Fr k C)
    return xp.reshape(A, (Fh, Fr, k, C))


def _real(X_hat, Fh, Fw, axes, dtype, xp):
    """Inverse real 2-D DFT over ``axes``, in ``dtype`` (cast back if the
    namespace upcast)."""
    X = _fft(xp).irfftn(X_hat, s=(Fh, Fw), axes=axes)
    return X if X.dtype == dtype else xp.astype(X, dtype)


# --- the four products -----------------------------------------------------

def conv2d(Y, theta, boundary, xp, dilation=1):
    """Forward product K(theta) Y, by FFT.

    Parameters
    ----------
    Y : array, shape (N, C, H, W)
    theta : array, shape (k, C, s, s), s odd
    boundary : {"zeros", "periodic"}
    xp : namespace
        With the array API ``fft`` extension.
    dilation : int, default 1
        d: the kernel is spread to d (s - 1) + 1 taps with zeros between
        (:func:`arrseg.numerics.operators.dilated_kernel`); the transforms
        cost the same.

    Returns
    -------
    Z : array, shape (N, k, H, W), Y's dtype

    Raises
    ------
    TypeError
        If ``xp`` has no ``fft`` extension.

    Examples
    --------
    >>> import numpy as np
    >>> import array_api_compat.numpy as xp
    >>> from arrseg.numerics.fft_convolution import conv2d
    >>> Y = np.zeros((1, 1, 4, 4)); Y[0, 0, 0, 0] = 1.0
    >>> theta = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> Z = conv2d(Y, theta, "periodic", xp)  # the flipped kernel, wrapped
    >>> np.round(Z[0, 0], 12) + 0.0  # (+ 0.0 turns round-off's -0. into 0.)
    array([[4., 3., 0., 5.],
           [1., 0., 0., 2.],
           [0., 0., 0., 0.],
           [7., 6., 0., 8.]])
    """
    _fft(xp)
    theta = dilated_kernel(theta, dilation, xp)
    H, W, s = Y.shape[2], Y.shape[3], theta.shape[2]
    Fh, Fw = fft_shape(H, W, s, boundary)
    A = _kernel_spectrum(theta, Fh, Fw, xp)                  # (Fh, Fr, k, C)
    Y_hat = _fft(xp).rfftn(Y, s=(Fh, Fw), axes=(2, 3))      # (N, C, Fh, Fr)
    # per frequency: (k, C) @ (C, N) -> (k, N), one batched matmul
    Z_hat = xp.matmul(A, xp.permute_dims(Y_hat, (2, 3, 1, 0)))
    # back to (N, k, Fh, Fr) as a view: the FFT reads it strided, cheaper
    # than a transposing copy
    Z = _real(xp.permute_dims(Z_hat, (3, 2, 0, 1)), Fh, Fw, (2, 3), Y.dtype, xp)
    return Z[:, :, :H, :W] if (Fh, Fw) != (H, W) else Z


def conv2d_theta_vjp(Y, Z, kernel_size, boundary, xp, dilation=1):
    """Transposed Jacobian product in theta, J_theta(Y)^T Z, by FFT.

    ``dtheta[i, j, a, b] = sum_{n, h, w} Z[n, i, h, w] * Ypad[n, j, h+a, w+b]``
    is the cross-correlation of Z and Y summed over the images, read at the
    lags (a - p, b - p). In the frequency domain it is, per frequency,
    conj(Z^) (k, N) @ Y^ (N, C): the sum over images is part of the matrix
    product. One inverse transform per (i, j), then the s x s lags are
    gathered (modulo Fh, Fw: under ``"periodic"`` with s > H several taps
    read the same lag, as they share one entry of the circulant).

    Parameters
    ----------
    Y : array, shape (N, C, H, W)
    Z : array, shape (N, k, H, W)
    kernel_size : int
        s, odd.
    boundary : {"zeros", "periodic"}
    xp : namespace
        With the array API ``fft`` extension.
    dilation : int, default 1
        d: the lags read are d a - p for a < s, p = d (s // 2).

    Returns
    -------
    array, shape (k, C, s, s), Y's dtype
    """
    _fft(xp)
    H, W = Y.shape[2], Y.shape[3]
    d = dilation
    s, p = d * (kernel_size - 1) + 1, d * (kernel_size // 2)
    Fh, Fw = fft_shape(H, W, s, boundary)
    Y_hat = _fft(xp).rfftn(Y, s=(Fh, Fw), axes=(2, 3))      # (N, C, Fh, Fr)
    Z_hat = _fft(xp).rfftn(Z, s=(Fh, Fw), axes=(2, 3))      # (N, k, Fh, Fr)
    # per frequency: conj(Z^) (k, N) @ Y^ (N, C) -> (k, C), the sum over the
    # images inside the product; conjugating Y^ and the result rather than
    # the larger Z^
    G_hat = xp.conj(xp.matmul(xp.permute_dims(Z_hat, (2, 3, 1, 0)),
                              xp.conj(xp.permute_dims(Y_hat, (2, 3, 0, 1)))))
    G = _real(G_hat, Fh, Fw, (0, 1), Y.dtype, xp)           # (Fh, Fw, k, C)
    lags_h = xp.arange(-p, s - p, d, device=device(Y)) % Fh
    lags_w = xp.arange(-p, s - p, d, device=device(Y)) % Fw
    dtheta = xp.take(xp.take(G, lags_h, axis=0), lags_w, axis=1)  # (s, s, k, C)
    return xp.permute_dims(dtheta, (2, 3, 0, 1))


# the derived products (arrseg.numerics.operators): defined once, from conv2d
conv2d_adjoint = adjoint_of(conv2d, "FFT")
conv2d_theta_jvp = theta_jvp_of(conv2d, "FFT")
