"""The estimator on NumPy: Segmenter.fit iterations and predict_proba of a
large image.

The same pairs run on CuPy in bench_public_gpu.py; here they guard the
NumPy path against slowing down when the layer above the kernels changes
(``tools/asv_compare_numpy.sh`` runs them on main and on the working tree
and compares).

- ``SegmenterFit``: ``Segmenter.fit`` for :data:`FIT_ITERS` iterations on a
  single-channel 512 x 1024 image, two classes, k = 16, s = 5, 256-pixel
  crops, 4 per step (2 steps per iteration), Adam with weight decay; and
  the same with whole images (a batch of 4 images of 128 x 128).
- ``SegmenterPredict``: ``Segmenter.predict_proba`` of one 2048 x 2048
  uint16 image (k = 16, s = 5).
"""

from __future__ import annotations

import numpy as np

from arrseg.segmenter import Segmenter

from .common import AsvSettings

FIT_ITERS = 3


def blobs(shape, seed, dtype=np.float32):
    """A smooth random image and its two-class labels (threshold at 0)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape)
    # smooth by a separable box filter of width 9, applied twice
    for _ in range(2):
        for axis in (-2, -1):
            noise = sum(np.roll(noise, d, axis=axis) for d in range(-4, 5)) / 9
    labels = (noise > 0).astype(np.int64)
    image = noise + 0.3 * rng.standard_normal(shape)
    if np.issubdtype(dtype, np.integer):
        lo, hi = image.min(), image.max()
        image = (image - lo) / (hi - lo) * np.iinfo(dtype).max
    return image.astype(dtype), labels


class SegmenterFit(AsvSettings):
    """Seconds per fit of FIT_ITERS iterations (divide for one iteration)."""

    params = (("crops", "whole images"),)
    param_names = ("batches",)

    def setup(self, batches):
        if batches == "crops":
            x, y = blobs((512, 1024), seed=0)
            self.x, self.y = x[None], y                  # (1, H, W), (H, W)
            self.kwargs = {"crop_size": 256, "batch_size": 4}
        else:
            x, y = blobs((4, 128, 128), seed=0)
            self.x, self.y = x[:, None], y               # (4, 1, H, W), (4, H, W)
            self.kwargs = {"batch_size": 4}
        # warm up: thread pools, code paths
        Segmenter(width=4, kernel_size=3, max_iter=1).fit(self.x, self.y)

    def time_fit(self, batches):
        Segmenter(width=16, kernel_size=5, max_iter=FIT_ITERS,
                  n_iter_no_change=FIT_ITERS + 1, tol=0.0, **self.kwargs).fit(self.x,
                                                                             self.y)


class SegmenterPredict(AsvSettings):
    """Segmenter.predict_proba of one 2048 x 2048 uint16 image."""

    def setup(self):
        small, labels = blobs((256, 256), seed=1, dtype=np.uint16)
        self.model = Segmenter(width=16, kernel_size=5, max_iter=2).fit(small, labels)
        self.big, _ = blobs((2048, 2048), seed=2, dtype=np.uint16)
        self.model.predict_proba(small)

    def time_predict_proba(self):
        self.model.predict_proba(self.big)

    def peakmem_predict_proba(self):
        self.model.predict_proba(self.big)
