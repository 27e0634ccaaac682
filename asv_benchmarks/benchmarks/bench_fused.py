"""The fused CUDA kernels (arrseg.cuda.fused): prediction and a training step.

CuPy only: without a CUDA GPU, ``setup`` raises NotImplementedError (in
common.get_backend) and asv reports the benchmarks as skipped. ``setup``
compiles the kernels (the first call on a device runs NVRTC; CuPy caches
the cubin on disk) by running each timed call once; every timed call ends by
synchronising the stream, so the device's work is what is measured.

The launchers are called directly, as ``method="fused"`` will call them, so
that these figures exist before the method is wired into arrseg.network.
The "seed" configuration is the one of the performance model in
docs/cuda.rst (N = 8, C = 3, 256 x 256, k = 32, n_c = 4, s = 3, float32):
a run on an H100 can be set against the predicted time.
"""

from __future__ import annotations

import arrseg
from arrseg.cuda import fused, supports

from .common import CONFIGS, DTYPES, NetworkBenchmark

ACTIVATION = "tanh"
BOUNDARY = "zeros"
IGNORE_INDEX = -100


class Fused(NetworkBenchmark):
    """Time of the fused kernels on the suite's configurations."""

    default_backend = "cupy"
    params = (tuple(CONFIGS), DTYPES)
    param_names = ("config", "dtype")

    def config(self, p):
        return CONFIGS[p["config"]]._replace(dtype=p["dtype"])

    def setup_problem(self, config):
        super().setup_problem(config)
        ok, reason = supports(self.x.shape, self.theta.K.shape, self.theta.W.shape[1],
                              self.x.dtype)
        if not ok:
            raise NotImplementedError(reason)

    def predict_proba(self):
        fused.fused_forward(self.x, self.theta, ACTIVATION, BOUNDARY)
        self.sync()

    def loss_and_grad(self):
        fused.fused_loss_and_grad(self.x, self.labels, self.theta, ACTIVATION, BOUNDARY,
                                  None, IGNORE_INDEX)
        self.sync()

    def time_predict_proba(self, *_):
        self.predict_proba()

    def time_loss_and_grad(self, *_):
        self.loss_and_grad()

    def track_loss_relative_error(self, *_):
        """|loss_fused - loss_direct| / loss_direct, direct being the
        array-API reference on the same CuPy arrays."""
        loss, _ = fused.fused_loss_and_grad(self.x, self.labels, self.theta, ACTIVATION,
                                            BOUNDARY, None, IGNORE_INDEX)
        ref, _ = arrseg.loss_and_grad(self.x, self.labels, self.theta,
                                      activation=ACTIVATION, boundary=BOUNDARY,
                                      method="direct")
        return abs(float(loss) - float(ref)) / float(ref)

    track_loss_relative_error.unit = "relative error"
