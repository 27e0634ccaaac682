"""arrseg's public entry points: speed, peak memory and float32 accuracy.

Each class is one sub-grid of method x backend x size x width x kernel size
x dtype (the whole product would take hours); see ../README.md.
"""

from __future__ import annotations

import itertools

import numpy as np

import arrseg

from .common import (BACKENDS, CONFIGS, DTYPES, EXPLICIT_METHODS, KERNEL_SIZES,
                     METHOD_NAMES, SEED_CONFIG, SIZES, WIDTHS, Config,
                     NetworkBenchmark, make_problem)


class Network(NetworkBenchmark):
    """Time of every method on every backend, over image size, width, dtype.

    N = 4 images, s = 3. Left out: method "fft" on PyTorch at 256 x 256,
    k = 64 (seconds a call, and "auto" covers the case).
    """

    params = (METHOD_NAMES, BACKENDS, SIZES, WIDTHS, DTYPES)
    param_names = ("method", "backend", "size", "width", "dtype")

    def config(self, p):
        return Config(4, p["size"], p["width"], 3, p["dtype"])

    def excluded(self, p):
        if (p["method"], p["backend"], p["size"], p["width"]) == ("fft", "torch", 256, 64):
            return "left out of the grid: fft on torch at size 256, width 64"
        return None

    def time_predict_proba(self, *_):
        self.predict_proba()

    def time_loss_and_grad(self, *_):
        self.loss_and_grad()


class NetworkMemory(NetworkBenchmark):
    """Peak memory of every explicit method on every backend, over the width.

    N = 4 images of 256 x 256, s = 3, float32: at 64 x 64 the figure is the
    interpreter's, and float64 doubles it. "auto" is left out: it runs one
    of the others (``SeedConfig`` has its figure). Whole-process peak RSS,
    inputs and interpreter included (see the README).
    """

    params = (EXPLICIT_METHODS, BACKENDS, WIDTHS)
    param_names = ("method", "backend", "width")

    def config(self, p):
        return Config(4, 256, p["width"], 3, "float32")

    def peakmem_predict_proba(self, *_):
        self.predict_proba()

    def peakmem_loss_and_grad(self, *_):
        self.loss_and_grad()


class KernelSize(NetworkBenchmark):
    """Time against the kernel size s, per method: the FFT / direct crossover.

    NumPy, float32, the seed configuration otherwise (N = 8, 256 x 256,
    k = 32). The direct method's work grows as s^2, the FFT's hardly at all;
    "auto" should follow the lower of the two.
    """

    params = (METHOD_NAMES, KERNEL_SIZES)
    param_names = ("method", "kernel_size")
    repeat = (2, 10, 10.0)

    def config(self, p):
        return SEED_CONFIG._replace(kernel_size=p["kernel_size"])

    def time_predict_proba(self, *_):
        self.predict_proba()

    def time_loss_and_grad(self, *_):
        self.loss_and_grad()


class SeedConfig(NetworkBenchmark):
    """arrseg on NumPy, method "auto", on the seed configuration and variants.

    ``config`` is a key of ``common.CONFIGS``: "seed" is N = 8, C = 3,
    256 x 256, k = 32, n_c = 4, s = 3, tanh, float32; "k=8", "k=64", "s=5",
    "s=7" change one setting. ``TorchReference`` (bench_torch_reference.py)
    runs PyTorch on the same configurations, so the ratios come from one run.
    """

    params = (tuple(CONFIGS),)
    param_names = ("config",)

    def config(self, p):
        return CONFIGS[p["config"]]

    def time_predict_proba(self, *_):
        self.predict_proba()

    def time_loss_and_grad(self, *_):
        self.loss_and_grad()

    def peakmem_predict_proba(self, *_):
        self.predict_proba()

    def peakmem_loss_and_grad(self, *_):
        self.loss_and_grad()


class GradientAccuracy(NetworkBenchmark):
    """How far the float32 gradient is from the float64 one.

    The float32 gradient in K of ``method`` on ``backend``, against the
    float64 gradient of method "direct" on NumPy from the same images and
    parameters (drawn in float64 and rounded to float32, so the difference
    is the float32 rounding error). N = 4. The float64 references are
    computed once, in ``setup_cache``. "auto" is left out: it runs one of
    the others.
    """

    params = (EXPLICIT_METHODS, BACKENDS, SIZES, WIDTHS[:2], KERNEL_SIZES[:2])
    param_names = ("method", "backend", "size", "width", "kernel_size")

    def setup_cache(self):
        """{(size, width, kernel_size): float64 NumPy dK of method "direct"}."""
        references = {}
        for size, width, kernel_size in itertools.product(*self.params[2:]):
            x, labels, theta = make_problem(
                np, Config(4, size, width, kernel_size, "float64"))
            references[size, width, kernel_size] = arrseg.loss_and_grad(
                x, labels, theta, method="direct")[1].K
        return references

    setup_cache.timeout = 300

    def setup(self, references, *params):
        super().setup(*params)
        self.reference = references[params[2:]]

    def config(self, p):
        return Config(4, p["size"], p["width"], p["kernel_size"], "float32")

    def warm_up(self):
        """Nothing is timed."""

    def track_grad_relative_error(self, *_):
        """max |dK32 - dK64| / max |dK64|."""
        dK = arrseg.loss_and_grad(self.x, self.labels, self.theta,
                                  method=self.method)[1].K
        self.sync()
        dK = dK.get() if hasattr(dK, "get") else np.asarray(dK)  # CuPy, or host
        err = np.max(np.abs(dK.astype(np.float64) - self.reference))
        return float(err / np.max(np.abs(self.reference)))

    track_grad_relative_error.unit = "relative error"
