"""Which implementation runs a call: the ``method=`` argument and its "auto" choice.

- ``"direct"``: on NumPy arrays, the blocked, threaded NumPy path
  (:mod:`arrseg.cpu.blocked`); on any other namespace, the array-API
  reference (:mod:`arrseg.numerics`).
- ``"fft"``: the array-API reference with the FFT convolution
  (:mod:`arrseg.numerics.fft_convolution`), on every namespace with an
  ``fft`` extension.
- ``"fused"``: on CuPy arrays, the fused CUDA kernels (:mod:`arrseg.cuda`),
  within their limits (:func:`arrseg.cuda.limits.supports`).
- ``"auto"``: "fused" wherever it applies; otherwise the faster of "direct"
  and "fft" by :func:`predicted_seconds`, with a preference for "direct" on
  small problems (:data:`FFT_MIN_SECONDS`).

An explicit method that cannot run a call raises ValueError; only "auto"
falls back. The cost model is in the spirit of
``scipy.signal.choose_conv_method``: a formula per method with
coefficients fitted to timings of this operation on one machine
(``tools/calibrate_methods.py`` measures them and prints the table below).
"""

from __future__ import annotations

import math

from array_api_compat import is_cupy_namespace, is_numpy_namespace

__all__ = ["COST_COEFFICIENTS", "METHODS", "predicted_seconds", "resolve_method"]

#: Values accepted by ``method=``.
METHODS = ("auto", "direct", "fft", "fused")

#: Seconds per unit of work, per (method, backend kind, pass), fitted by
#: ``tools/calibrate_methods.py``. The units are in :func:`_work`.
COST_COEFFICIENTS = {
    # (method, kind, train): seconds per call, per kernel tap (s*s: the
    # array-API direct method loops over them), per pixel*channel, per FLOP
    # of the products, per im2col entry, per FFT butterfly (F log2 F per
    # channel)
    ('direct', 'generic', False): (0.000456, 6.28e-05, 2.31e-09, 9.44e-11, 0.0, 0.0),
    ('direct', 'generic', True): (0.000868, 0.000118, 4.89e-09, 1.16e-10, 3.74e-10, 0.0),
    ('direct', 'numpy', False): (0.000478, 2.07e-06, 1.9e-09, 5.2e-12, 2.95e-10, 0.0),
    ('direct', 'numpy', True): (0.00065, 3.69e-06, 4.52e-09, 9.23e-12, 5.1e-10, 0.0),
    ('fft', 'generic', False): (0.000758, 0.0, 0.0, 4.35e-10, 0.0, 8.59e-11),
    ('fft', 'generic', True): (0.00144, 0.0, 0.0, 9.66e-10, 0.0, 1.14e-10),
    ('fft', 'numpy', False): (0.00044, 0.0, 0.0, 6.36e-11, 0.0, 7.61e-10),
    ('fft', 'numpy', True): (0.000706, 0.0, 2.88e-09, 3.77e-10, 0.0, 2.03e-09),
}


#: "auto" takes the FFT only where the direct method is predicted to take
#: longer than this, and the FFT to be faster by the factor FFT_MIN_GAIN:
#: on small problems the two differ by fractions of a millisecond, and the
#: direct method's rounding error is the smaller (it is relative to each
#: output, the FFT's to the largest output of a transform).
FFT_MIN_SECONDS = 2e-3
FFT_MIN_GAIN = 0.9


def _kind(xp):
    return "numpy" if is_numpy_namespace(xp) else "generic"


def _work(method, N, C, H, W, k, s, boundary="zeros"):
    """Units of work: (calls, kernel taps, pixel-channels, FLOPs of the
    products, im2col entries, FFT butterflies)."""
    pixels = N * H * W
    if method == "direct":
        taps = C * s * s + 1
        return (1.0, float(s * s), pixels * k, 2.0 * pixels * k * taps,
                pixels * taps, 0.0)
    from .numerics.fft_convolution import fft_shape

    Fh, Fw = fft_shape(H, W, s, boundary)
    F = Fh * Fw
    # frequency-domain products: k*C complex multiply-adds per frequency
    flops = 8.0 * N * k * C * (Fh * (Fw // 2 + 1))
    butterflies = N * (C + k) * F * math.log2(max(F, 2))
    return 1.0, 0.0, pixels * k, flops, 0.0, butterflies


def predicted_seconds(method, xp, x_shape, kernel_shape, *, train):
    """The cost model: predicted time of one call on this machine.

    Parameters
    ----------
    method : {"direct", "fft"}
    xp : namespace
    x_shape : tuple (N, C, H, W)
    kernel_shape : tuple (k, C, s, s)
    train : bool
        loss_and_grad (True) or predict_proba (False).

    Returns
    -------
    float
        Seconds, as fitted on the calibration machine; only their ratio
        between methods is used.
    """
    N, C, H, W = x_shape
    k, s = kernel_shape[0], kernel_shape[2]
    coeffs = COST_COEFFICIENTS[(method, _kind(xp), bool(train))]
    return sum(c * u for c, u in zip(coeffs, _work(method, N, C, H, W, k, s)))


def _unavailable(method, xp, x_shape=None, kernel_shape=None, n_classes=None,
                 dtype=None, fused_available=None):
    """Why ``method`` cannot run on namespace xp, or None if it can."""
    if method == "fused":
        if fused_available is None:
            fused_available = is_cupy_namespace(xp)
        if not fused_available:
            return ("the fused CUDA kernels take CuPy arrays, got namespace "
                    f"{getattr(xp, '__name__', xp)!r}")
        from .cuda.limits import supports

        ok, reason = supports(x_shape, kernel_shape, n_classes, dtype)
        return None if ok else reason
    if method == "fft" and not hasattr(xp, "fft"):
        return (f"the namespace {getattr(xp, '__name__', xp)!r} has no fft "
                "extension")
    return None


def resolve_method(method, xp, x_shape, kernel_shape, *, train, n_classes=None,
                   dtype=None, fused_available=None):
    """The concrete method ("direct", "fft" or "fused") that runs a call.

    Parameters
    ----------
    method : {"auto", "direct", "fft", "fused"}
        Already checked to be one of :data:`METHODS`.
    xp : namespace
    x_shape, kernel_shape : tuple
    train : bool
    n_classes : int, optional
    dtype : dtype, optional
        The compute dtype; with n_classes, what "fused" needs to check its
        limits.
    fused_available : bool, optional
        Whether the fused kernels can run on xp's arrays at all (default:
        xp is CuPy). :func:`arrseg.core.select_path`, the dispatcher every
        caller goes through, passes it.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If an explicitly requested method cannot run the call.
    """
    details = (x_shape, kernel_shape, n_classes, dtype, fused_available)
    if method != "auto":
        reason = _unavailable(method, xp, *details)
        if reason is not None:
            raise ValueError(f"method={method!r} cannot run this call: {reason}; "
                             "use method='auto' or 'direct'")
        return method
    if _unavailable("fused", xp, *details) is None:
        return "fused"
    if _unavailable("fft", xp) is not None:
        return "direct"
    direct = predicted_seconds("direct", xp, x_shape, kernel_shape, train=train)
    fft = predicted_seconds("fft", xp, x_shape, kernel_shape, train=train)
    # the FFT's rounding error is relative to the largest values of a whole
    # transform: take it only where it saves time that counts
    if direct > FFT_MIN_SECONDS and fft < FFT_MIN_GAIN * direct:
        return "fft"
    return "direct"
