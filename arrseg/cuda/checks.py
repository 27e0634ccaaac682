"""The value checks of a public call in one CUDA kernel: :func:`value_flags`.

The public functions refuse non-finite images and parameters, labels that are
neither a class nor ``ignore_index``, and class weights that are not finite and
non-negative (:mod:`arrseg._validation`). On a GPU, reading the outcome back is
a synchronisation; :func:`value_flags` queues every check of the call as one
kernel (``check_values.cu``) writing one int32 flag per check, so the caller
reads back one small array, once::

    flags = value_flags(x, params, labels, class_weight, ignore_index)
    failed = [name for name, f in zip(CHECK_NAMES, flags.get()) if f]

The kernels come from ``kernels`` as in :mod:`arrseg.cuda.fused`: by default
CuPy's (CuPy arrays), or :class:`arrseg.cuda.emulation.EmulatedKernels`
(NumPy arrays, the same kernel on the CPU).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .fused import _array_module, _contiguous, _on_device_of, default_kernels
from .limits import DTYPES

__all__ = ["CHECK_NAMES", "MAX_BLOCKS", "THREADS", "CheckConfig", "grid_blocks", "value_flags"]

#: The checks, in the order of the flags (``enum CheckIndex`` of check_values.cu).
CHECK_NAMES = ("x", "params.K", "params.b", "params.W", "params.c", "labels",
               "class_weight")
#: Threads per block of ``arrseg_check_values`` (``-DARRSEG_CHECK_THREADS``).
THREADS = 256
#: Most blocks of a launch; each thread then loops over every (blocks x THREADS)-th
#: element. 1024 blocks of 256 threads about fill an H100 or H200 (132 SMs x 8).
MAX_BLOCKS = 1024


class CheckConfig(NamedTuple):
    """The compile-time constants of ``check_values.cu``: the dtype only.

    ``dtype`` is ``"float32"`` or ``"float64"``. With the device, the key of
    the compiled-module cache (and of the emulator's libraries).
    """

    dtype: str

    def defines(self):
        """The ``-D`` options of this build, for NVRTC and g++ alike."""
        return (f"-DARRSEG_DOUBLE={int(self.dtype == 'float64')}",
                f"-DARRSEG_CHECK_THREADS={THREADS}")

    @classmethod
    def of(cls, dtype):
        """The build for arrays of ``dtype``; ValueError if not float32/64."""
        name = np.dtype(dtype).name
        if name not in DTYPES:
            raise ValueError(f"the value-check kernel takes {' or '.join(DTYPES)} "
                             f"arrays, got {name}")
        return cls(name)


def grid_blocks(length):
    """Blocks of a launch whose longest array has ``length`` elements."""
    return max(1, min(-(-length // THREADS), MAX_BLOCKS))


def _ignore_index(ignore_index):
    # (value, has_ignore): an ignore_index beyond int64 matches no label, and
    # the kernel then compares none with the value (-1 here, a bad label)
    ignore_index = int(ignore_index)
    if -(2**63) <= ignore_index < 2**63:
        return np.int64(ignore_index), np.int32(1)
    return np.int64(-1), np.int32(0)


def value_flags(x, params, labels, class_weight, ignore_index, *, kernels=None):
    """Queue one kernel that checks every value of a call; return the flags.

    Parameters
    ----------
    x : array, shape (N, C, H, W), float32 or float64
        Already in the compute dtype.
    params : Params or tuple (K, b, W, c)
        In x's dtype (converted if not); c may be None.
    labels : integer array, shape (N, H, W), or None
        Converted to int64.
    class_weight : array, shape (n_c,), or None
        In x's dtype (converted if not).
    ignore_index : int
        Any Python int; one beyond int64 matches no label.
    kernels : object, optional
        Where the kernel comes from (see :mod:`arrseg.cuda.fused`).

    Returns
    -------
    flags : int32 array, shape (len(CHECK_NAMES),), on x's device
        ``flags[i] != 0`` when the check ``CHECK_NAMES[i]`` failed: a NaN or
        infinite value; for labels a value outside ``[0, n_c)`` that is not
        ``ignore_index``; for class_weight a non-finite or negative value.
        The entries of absent arrays are 0. Nothing is read back: the caller
        does that (one transfer); this function never synchronises.

    Notes
    -----
    One memset (the zeroed flags) and one launch of ``arrseg_check_values``
    (:func:`grid_blocks` blocks of :data:`THREADS` threads), whatever the
    arrays' sizes. A non-contiguous array or one of another dtype is copied
    first.

    Examples
    --------
    >>> import cupy  # doctest: +SKIP
    >>> from arrseg import Params  # doctest: +SKIP
    >>> x = cupy.zeros((1, 3, 8, 8), cupy.float32)  # doctest: +SKIP
    >>> x[0, 0, 0, 0] = cupy.nan  # doctest: +SKIP
    >>> p = Params(cupy.zeros((4, 3, 3, 3), cupy.float32), cupy.zeros(4, cupy.float32),
    ...            cupy.zeros((4, 2), cupy.float32), None)  # doctest: +SKIP
    >>> value_flags(x, p, None, None, -100).get().tolist()  # doctest: +SKIP
    [1, 0, 0, 0, 0, 0, 0]
    """
    with _on_device_of(x):
        xp = _array_module(x)
        config = CheckConfig.of(x.dtype)
        dtype = x.dtype
        K, b, W, c = params[:4]
        n_classes = W.shape[1]
        reals = tuple(_contiguous(xp, a, dtype) for a in (x, K, b, W, c))
        labels = None if labels is None else xp.ascontiguousarray(labels, dtype=xp.int64)
        class_weight = _contiguous(xp, class_weight, dtype)
        arrays = (*reals, labels, class_weight)
        lengths = [0 if a is None else a.size for a in arrays]
        value, has_ignore = _ignore_index(ignore_index)
        flags = xp.zeros(len(CHECK_NAMES), dtype=xp.int32)

        kernels = default_kernels() if kernels is None else kernels
        kernel = kernels.function(config, "check_values.cu", "arrseg_check_values")
        args = []
        for a, n in zip(arrays, lengths):
            args += [a, np.int64(n)]
        kernel((grid_blocks(max(lengths)), 1, 1), (THREADS, 1, 1),
               (*args, np.int32(n_classes), value, has_ignore, flags),
               shared_mem=0)
    return flags
