"""arrseg's public entry points: speed and peak memory, and float32 accuracy."""

from __future__ import annotations

import array_api_compat

import arrseg

from .common import (BACKENDS, DTYPES, GRID_NAMES, KERNEL_SIZES, SIZES, WIDTHS,
                     BackendBenchmark, make_problem)


class Network(BackendBenchmark):
    """predict_proba and loss_and_grad on a batch of synthetic images."""

    params = (BACKENDS, SIZES, WIDTHS, KERNEL_SIZES, DTYPES)
    param_names = ("backend",) + GRID_NAMES

    def setup_problem(self, size, width, kernel_size, dtype):
        self.x, self.labels, self.theta = make_problem(
            self.xp, size, width, kernel_size, dtype)

    def warm_up(self):
        arrseg.predict_proba(self.x, self.theta)
        arrseg.loss_and_grad(self.x, self.labels, self.theta)

    def time_predict_proba(self, *_):
        arrseg.predict_proba(self.x, self.theta)
        self.sync()

    def time_loss_and_grad(self, *_):
        arrseg.loss_and_grad(self.x, self.labels, self.theta)
        self.sync()

    def peakmem_loss_and_grad(self, *_):
        arrseg.loss_and_grad(self.x, self.labels, self.theta)
        self.sync()


class GradientAccuracy(BackendBenchmark):
    """How far the float32 gradient is from the float64 one.

    Both precisions start from the same images and parameters (drawn in
    float64 and rounded), so the difference is the float32 rounding error of
    the computation.
    """

    params = (BACKENDS, SIZES, WIDTHS, KERNEL_SIZES)
    param_names = ("backend",) + GRID_NAMES[:-1]

    def setup_problem(self, size, width, kernel_size):
        self.problems = {
            dtype: make_problem(self.xp, size, width, kernel_size, dtype)
            for dtype in ("float32", "float64")
        }

    def track_grad_relative_error(self, *_):
        """max |dK32 - dK64| / max |dK64|."""
        dK = {
            dtype: arrseg.loss_and_grad(x, labels, theta)[1].K
            for dtype, (x, labels, theta) in self.problems.items()
        }
        xp = array_api_compat.array_namespace(dK["float64"])
        err = xp.max(xp.abs(xp.astype(dK["float32"], xp.float64) - dK["float64"]))
        return float(err / xp.max(xp.abs(dK["float64"])))

    track_grad_relative_error.unit = "relative error"
