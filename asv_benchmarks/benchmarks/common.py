"""What the benchmarks share: the parameter grid, the array backends, the data.

Every benchmark class is parametrised over (a subset of) the same grid, so
that arrseg's timings and PyTorch's reference timings line up in one run.
A backend that is not available (not installed, or no GPU for CuPy) makes
``setup`` raise ``NotImplementedError``, which asv reports as a skip.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

import arrseg

# PyTorch is imported here, once, rather than in every setup(): with
# asv.conf.json's "launch_method": "forkserver", asv forks the benchmark
# processes from a server that has imported this module. Nothing here runs a
# PyTorch op (which would start its thread pool) before the fork. CuPy is only
# imported in setup(): a CUDA context must not be created before a fork.
try:
    import torch
    import array_api_compat.torch as torch_xp  # torch, array-API conforming
except ImportError:  # benchmarks that need it are skipped
    torch = torch_xp = None

__all__ = [
    "BACKENDS", "SIZES", "WIDTHS", "KERNEL_SIZES", "DTYPES", "GRID_NAMES",
    "N_IMAGES", "TIMEOUT", "Backend", "get_backend", "make_problem",
    "BackendBenchmark", "torch", "torch_xp",
]

#: Array backends arrseg is benchmarked on.
BACKENDS = ("numpy", "torch", "cupy")
#: Image height = width.
SIZES = (64, 256)
#: k, the number of feature channels.
WIDTHS = (8, 32)
#: s, the kernel size.
KERNEL_SIZES = (3, 5)
DTYPES = ("float32", "float64")
#: Names of the grid (after the backend) that every benchmark uses.
GRID_NAMES = ("size", "width", "kernel_size", "dtype")

#: N, images per batch: small, to bound the time of the reference
#: implementation (a 256 x 256, k = 32, s = 5 float64 call takes seconds).
N_IMAGES = 4
N_CLASSES = 3
CHANNELS = 3
#: Seconds asv allows one benchmark (all its repeats) before giving up.
TIMEOUT = 300


def _no_sync():
    """Host backends compute eagerly: nothing to wait for."""


class Backend(NamedTuple):
    """An array namespace and how to wait for its queued work."""

    name: str
    xp: Any
    #: Blocks until the device has finished; called inside every timed call.
    sync: Callable[[], None]


def get_backend(name):
    """The backend called ``name``.

    Raises
    ------
    NotImplementedError
        If the backend is not available here (asv then skips the benchmark).
    ValueError
        For an unknown name.
    """
    if name == "numpy":
        return Backend(name, np, _no_sync)
    if name == "torch":
        if torch is None:
            raise NotImplementedError("PyTorch is not installed")
        return Backend(name, torch_xp, _no_sync)
    if name == "cupy":
        try:
            import cupy
        except ImportError:
            raise NotImplementedError("CuPy is not installed") from None
        try:
            n_devices = cupy.cuda.runtime.getDeviceCount()
        except Exception:  # CUDARuntimeError: no driver, no device
            n_devices = 0
        if n_devices == 0:
            raise NotImplementedError("CuPy needs a CUDA GPU; none found")
        return Backend(name, cupy, cupy.cuda.get_current_stream().synchronize)
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def make_problem(xp, size, width, kernel_size, dtype):
    """Synthetic images, labels and initial parameters in namespace ``xp``.

    The same seeds for every backend and dtype, so that runs differ only in
    where and in which precision they compute.

    Returns
    -------
    x : array, shape (N_IMAGES, CHANNELS, size, size)
    labels : int64 array, shape (N_IMAGES, size, size)
    theta : arrseg.Params
    """
    x, labels = arrseg.data.make_shapes(
        n_images=N_IMAGES, size=size, n_classes=N_CLASSES, channels=CHANNELS,
        seed=0, dtype=dtype, xp=xp,
    )
    theta = arrseg.init_params(
        CHANNELS, width, N_CLASSES, kernel_size, seed=0, dtype=dtype, xp=xp,
    )
    return x, labels, theta


class BackendBenchmark:
    """Base of the benchmarks whose first parameter is the array backend.

    ``setup(backend, *grid)`` resolves the backend (skipping it if it is not
    available), leaves it in ``self.xp`` and ``self.sync``, and calls the
    subclass's ``setup_problem(*grid)`` to build the data. On CuPy it then
    calls ``warm_up()`` so that kernel compilation is not timed. Timed methods
    end with ``self.sync()`` so that device work is included.
    """

    timeout = TIMEOUT

    def setup(self, backend, *grid):
        b = get_backend(backend)
        self.xp, self.sync = b.xp, b.sync
        self.setup_problem(*grid)
        if b.name == "cupy":
            self.warm_up()
            self.sync()

    def setup_problem(self, *grid):
        """Build the inputs of the timed calls (in a subclass)."""
        raise TypeError(f"{type(self).__name__} must define setup_problem")

    def warm_up(self):
        """Run the timed calls once (in a subclass), outside the timing."""
