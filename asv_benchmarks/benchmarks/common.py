"""What the benchmarks share: the grids, the backends and methods, the data,
the PyTorch reference network, and the base class of arrseg's benchmarks.

A backend that is not available (not installed, or no GPU for CuPy), or a
``method=`` this version of arrseg does not accept, makes ``setup`` raise
``NotImplementedError``, which asv reports as skipped (``n/a``).
``../side_by_side.py`` imports this module too, so that the script and the
suite time the same problems.
"""

from __future__ import annotations

import abc
import ctypes
from typing import Any, Callable, NamedTuple

import numpy as np

import arrseg
import arrseg.network

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
    "BACKENDS", "METHOD_NAMES", "EXPLICIT_METHODS", "SIZES", "WIDTHS", "KERNEL_SIZES", "DTYPES",
    "CHANNELS", "N_CLASSES", "Config", "SEED_CONFIG", "CONFIGS",
    "MEMORY_FORMATS", "Backend", "get_backend", "require_method",
    "make_problem", "reset_peak_rss", "TorchNetwork", "AsvSettings",
    "NetworkBenchmark", "torch", "torch_xp",
]

#: Array backends arrseg is benchmarked on.
BACKENDS = ("numpy", "torch", "cupy")
#: Values of ``method=`` benchmarked; those missing from
#: ``arrseg.network.METHODS`` are skipped, and so are those arrseg refuses
#: for a backend ("fused" off CuPy; see setup).
METHOD_NAMES = ("direct", "fft", "fused", "auto")
#: The methods "auto" chooses from: where a figure of "auto" is that of the
#: method it picks (memory, accuracy), it is not measured again.
EXPLICIT_METHODS = tuple(m for m in METHOD_NAMES if m != "auto")
#: Image height = width.
SIZES = (64, 256)
#: k, the number of feature channels.
WIDTHS = (8, 32, 64)
#: s, the kernel size (odd).
KERNEL_SIZES = (3, 5, 7, 9, 11, 13, 15)
DTYPES = ("float32", "float64")
#: C, image channels, and n_c, classes: the same in every benchmark.
CHANNELS = 3
N_CLASSES = 4


class Config(NamedTuple):
    """One problem: N images of size x size pixels, k kernels of s x s."""

    n_images: int
    size: int
    width: int
    kernel_size: int
    dtype: str

    def describe(self):
        return (f"N={self.n_images} C={CHANNELS} {self.size}x{self.size} "
                f"k={self.width} n_c={N_CLASSES} s={self.kernel_size} tanh "
                f"{self.dtype}")


#: The seed configuration: the problem arrseg's speed is judged on.
SEED_CONFIG = Config(n_images=8, size=256, width=32, kernel_size=3,
                     dtype="float32")
#: The seed configuration and its variants, by the name used as the asv
#: parameter ``config`` and by side_by_side.py's --configs.
CONFIGS = {
    "seed": SEED_CONFIG,
    "k=8": SEED_CONFIG._replace(width=8),
    "k=64": SEED_CONFIG._replace(width=64),
    "s=5": SEED_CONFIG._replace(kernel_size=5),
    "s=7": SEED_CONFIG._replace(kernel_size=7),
}

#: PyTorch memory layouts of the reference, by name.
MEMORY_FORMATS = ("NCHW", "channels_last")


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


def require_method(method):
    """Raise NotImplementedError unless arrseg accepts ``method=method``."""
    accepted = getattr(arrseg.network, "METHODS", ("auto",))
    if method not in accepted:
        raise NotImplementedError(
            f"arrseg {arrseg.__version__} has no method={method!r} "
            f"(arrseg.network.METHODS = {accepted})")


def make_problem(xp, config):
    """Synthetic images, labels and initial parameters in namespace ``xp``.

    The same seeds for every backend and dtype, so that runs differ only in
    where and in which precision they compute.

    Returns
    -------
    x : array, shape (N, CHANNELS, size, size)
    labels : int64 array, shape (N, size, size), values in [0, N_CLASSES)
    theta : arrseg.Params
    """
    x, labels = arrseg.data.make_shapes(
        n_images=config.n_images, size=config.size, n_classes=N_CLASSES,
        channels=CHANNELS, seed=0, dtype=config.dtype, xp=xp,
    )
    theta = arrseg.init_params(
        CHANNELS, config.width, N_CLASSES, config.kernel_size, seed=0,
        dtype=config.dtype, xp=xp,
    )
    return x, labels, theta


def reset_peak_rss():
    """Return freed heap memory to the OS, then reset the peak RSS to the
    current RSS (Linux with glibc; elsewhere, whatever of this applies).

    Called at the end of ``setup`` so that a ``peakmem_`` figure (asv reads
    ``getrusage``'s ``ru_maxrss``, which follows the reset) is the peak
    during the call, not a transient of the data's creation, and so that
    memory the allocator kept from setup does not differ between benchmarks.
    Returns whether the peak was reset.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux
        return False
    return True


class TorchNetwork:
    """arrseg's network in PyTorch on the CPU, eager: the reference.

    ``conv2d(x, K, b, padding=s // 2) -> tanh -> conv2d(., W^T as a 1 x 1
    kernel, c)`` gives the logits; :meth:`predict_proba` takes their softmax
    under ``torch.inference_mode``, :meth:`loss_and_grad` their
    ``cross_entropy`` (mean over pixels, as arrseg's) and autograd's gradient
    in (K, b, W, c). ``x`` and ``K`` are stored in ``memory_format``
    ("NCHW" or "channels_last"); PyTorch's default number of threads.
    Data and parameters are those of :func:`make_problem`.
    """

    def __init__(self, config, memory_format):
        if torch is None:
            raise NotImplementedError("PyTorch is not installed")
        fmt = {"NCHW": torch.contiguous_format,
               "channels_last": torch.channels_last}[memory_format]
        x, self.labels, theta = make_problem(torch_xp, config)
        self.x = x.contiguous(memory_format=fmt)
        self.K = theta.K.contiguous(memory_format=fmt).requires_grad_()
        self.b, self.W, self.c = (a.clone().requires_grad_()
                                  for a in (theta.b, theta.W, theta.c))
        self.padding = config.kernel_size // 2

    def _logits(self):
        features = torch.tanh(torch.nn.functional.conv2d(
            self.x, self.K, self.b, padding=self.padding))
        return torch.nn.functional.conv2d(
            features, self.W.T[:, :, None, None], self.c)

    def predict_proba(self):
        with torch.inference_mode():
            return torch.softmax(self._logits(), dim=1)

    def loss_and_grad(self):
        loss = torch.nn.functional.cross_entropy(self._logits(), self.labels)
        return loss, torch.autograd.grad(loss, (self.K, self.b, self.W, self.c))


class AsvSettings:
    """asv's timing attributes, shared by every benchmark class.

    Every call takes milliseconds to seconds, so one call per sample
    (``number = 1``); at least 3 and at most 10 samples per round, fewer once
    a round has taken 10 s; asv's 2 rounds (separate processes) by default.
    Note that asv re-runs ``setup`` before every sample. ``--quick`` runs
    ``setup`` and one call per benchmark and parameter set.
    """

    #: Seconds allowed to one round of one benchmark and parameter set.
    timeout = 300
    number = 1
    repeat = (3, 10, 10.0)
    #: One untimed call per round (asv's CPython default 0.1 s: the first
    #: call runs however long it takes).
    warmup_time = 0.1


class NetworkBenchmark(AsvSettings, abc.ABC):
    """Base of the benchmarks of arrseg's ``predict_proba`` / ``loss_and_grad``.

    ``setup(*params)`` reads the parameters by ``param_names``:

    - ``backend`` (default ``default_backend``): skipped when not available;
      left in ``self.xp`` and ``self.sync``.
    - ``method`` (default "auto"): skipped when arrseg does not accept it, or
      refuses it for this backend (an explicit method that cannot run a call
      raises ValueError); left in ``self.method``.

    then skips the combinations :meth:`excluded` names, and builds the data
    of the subclass's :meth:`config` once (``self.x``, ``self.labels``,
    ``self.theta``), so that the inputs exist before a ``peakmem_`` call.
    A prediction on a tiny problem of the same kind first starts thread
    pools and touches the code; on CuPy the real calls run once
    (compilation). The process's peak RSS is reset last
    (:func:`reset_peak_rss`). Timed methods call
    :meth:`predict_proba` / :meth:`loss_and_grad`, which end with
    ``self.sync()`` so that device work is included.

    Abstract, so that asv does not collect it; subclasses define
    :meth:`config` and their ``time_`` / ``peakmem_`` / ``track_`` methods.
    """

    default_backend = "numpy"

    @abc.abstractmethod
    def config(self, p):
        """The :class:`Config` of the parameters ``p`` (a dict by name)."""

    def excluded(self, p):
        """Why the parameters ``p`` are left out of the grid, or None."""
        return None

    def setup(self, *params):
        p = dict(zip(self.param_names, params))
        backend = get_backend(p.get("backend", self.default_backend))
        self.xp, self.sync = backend.xp, backend.sync
        self.method = p.get("method", "auto")
        require_method(self.method)
        reason = self.excluded(p)
        if reason is not None:
            raise NotImplementedError(reason)
        config = self.config(p)
        self._predict_tiny(config._replace(n_images=1, size=16))
        self.setup_problem(config)
        if backend.name == "cupy":
            self.warm_up()
        reset_peak_rss()

    def _predict_tiny(self, config):
        """Predict on a tiny problem; skip if arrseg refuses the method here."""
        x, _, theta = make_problem(self.xp, config)
        try:
            arrseg.predict_proba(x, theta, method=self.method)
        except ValueError as e:
            if "method=" not in str(e):
                raise
            raise NotImplementedError(str(e)) from None
        self.sync()

    def setup_problem(self, config):
        """Build the inputs of the measured calls."""
        self.x, self.labels, self.theta = make_problem(self.xp, config)

    def warm_up(self):
        """Run the measured calls once (on CuPy: compile the kernels)."""
        self.predict_proba()
        self.loss_and_grad()

    def predict_proba(self):
        arrseg.predict_proba(self.x, self.theta, method=self.method)
        self.sync()

    def loss_and_grad(self):
        arrseg.loss_and_grad(self.x, self.labels, self.theta, method=self.method)
        self.sync()

