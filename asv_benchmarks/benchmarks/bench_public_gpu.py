"""arrseg's public API on CuPy against the raw fused launchers it should cost.

Each goal is a *pair*: a public call (``arrseg.predict_proba``,
``arrseg.loss_and_grad``, ``Segmenter.fit``, ``Segmenter.predict_proba``,
method "auto") and the calls of the fused kernels
(:mod:`arrseg.cuda.fused`) that do the same arithmetic; the goal is an upper
bound on time(public) / time(raw):

====================  ===============================================  =====
pair                  public / raw                                     goal
====================  ===============================================  =====
seed                  predict_proba / fused_forward, and               1.5
                      loss_and_grad / fused_loss_and_grad, on
                      N = 8, C = 3, 256 x 256, k = 32, n_c = 4, s = 3
N=32 512x512          the same two, on N = 32, 512 x 512               1.1
fit                   Segmenter.fit, per iteration / the fused steps   1.3
                      of an iteration (1024 x 2048, C = 1, 2 classes,
                      k = 32, s = 7)
predict 8192x8192     Segmenter.predict_proba of one uint16 image /    1.5
                      one fused_forward over it (k = 16, s = 5)
====================  ===============================================  =====

Classes (all CuPy; without CuPy and a CUDA GPU, ``setup`` raises
NotImplementedError and asv reports them as skipped):

- ``PublicGPUNetwork``: params config x api {"public", "raw"}:
  ``time_predict_proba``, ``time_loss_and_grad``; the ratio is
  ``[config, public] / [config, raw]`` of one run.
- ``PublicGPUNetworkRatio``: params config: ``track_predict_proba_ratio``,
  ``track_loss_and_grad_ratio``, measured in one process (see
  :func:`measure_pair`).
- ``PublicGPUFit``: ``time_fit`` (:data:`FIT_ITERS` iterations of
  ``Segmenter.fit``), ``time_fused_steps`` (the fused steps of as many
  iterations), ``track_iteration_ratio``.
- ``PublicGPUPredictLarge``: ``time_segmenter_predict_proba``,
  ``time_fused_forward``, ``track_ratio``.

``setup`` builds the data on the device and runs every measured call once
(kernel compilation); every timed call ends with a stream synchronisation.
The pairs are plain functions of this module, so that
``tools/gpu_timings.py`` times the same problems outside asv.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, NamedTuple

import numpy as np

import arrseg
from arrseg.cuda import fused, supports

from .common import SEED_CONFIG, AsvSettings, get_backend, make_problem

__all__ = [
    "ACTIVATION", "BOUNDARY", "IGNORE_INDEX", "NETWORK_CONFIGS", "NETWORK_GOALS",
    "FIT_IMAGE", "FIT_ITERS", "FIT_MODEL", "FIT_GOAL", "LARGE_IMAGE", "LARGE_TRAIN_IMAGE",
    "LARGE_MODEL", "LARGE_GOAL", "Pair", "fit_schedule", "smooth_image", "network_pairs",
    "fit_pair", "predict_large_pair", "measure_pair",
]

ACTIVATION = "tanh"
BOUNDARY = "zeros"
IGNORE_INDEX = -100

#: The network problems (common.Config), by the asv parameter ``config``.
NETWORK_CONFIGS = {
    "seed": SEED_CONFIG,
    "N=32 512x512": SEED_CONFIG._replace(n_images=32, size=512),
}
#: Upper bound on public / raw, per network configuration.
NETWORK_GOALS = {"seed": 1.5, "N=32 512x512": 1.1}

#: Segmenter.fit: one single-channel float32 image of (H, W) pixels.
FIT_IMAGE = (1024, 2048)
#: Iterations per timed fit (max_iter); per-iteration figures divide by this.
FIT_ITERS = 10
FIT_MODEL = {"width": 32, "kernel_size": 7}
FIT_GOAL = 1.3

#: Segmenter.predict_proba: one uint16 image of LARGE_IMAGE^2 pixels, with a
#: model fitted briefly (LARGE_TRAIN_ITERS iterations) on LARGE_TRAIN_IMAGE^2.
LARGE_IMAGE = 8192
LARGE_TRAIN_IMAGE = 512
LARGE_TRAIN_ITERS = 3
LARGE_MODEL = {"width": 16, "kernel_size": 5}
LARGE_GOAL = 1.5


class Pair(NamedTuple):
    """One goal: a public call and the raw launcher calls it is held to.

    ``public()`` and ``raw()`` queue the work and may return before the
    device has finished; the caller synchronises. Times divided by ``per``
    are per ``unit`` (the fit pair covers FIT_ITERS iterations).
    """

    name: str
    public: Callable[[], Any]
    raw: Callable[[], Any]
    goal: float
    per: int = 1
    unit: str = "call"


# --- data -----------------------------------------------------------------------

def smooth_image(xp, height, width, dtype, seed=0):
    """A smooth pattern with a pixel-scale texture, and its 2-class labels.

    The pattern is a sum of four plane waves of random direction and
    wavelength (64 to 512 pixels, drawn from ``seed``); labels are
    ``pattern > 0`` (int64). The texture is a deterministic hash of the
    pixel coordinates, so the image is built on the device with no random
    generator of the namespace. ``dtype`` "uint16" maps the values onto the
    full 16-bit range; a float dtype keeps them (about -5 to 5).

    Returns
    -------
    image : array, shape (height, width)
    labels : int64 array, shape (height, width)
    """
    rng = np.random.default_rng(seed)
    yy = xp.arange(height, dtype=xp.float32)[:, None]
    xx = xp.arange(width, dtype=xp.float32)[None, :]
    pattern = xp.zeros((height, width), dtype=xp.float32)
    for _ in range(4):
        angle, phase = rng.uniform(0.0, math.pi), rng.uniform(0.0, 2 * math.pi)
        k = 2 * math.pi / rng.uniform(64.0, 512.0)
        pattern += xp.cos((k * math.cos(angle)) * xx + (k * math.sin(angle)) * yy + phase)
    labels = (pattern > 0).astype(xp.int64)
    texture = xp.sin(xx * 12.9898 + yy * 78.233) * 43758.5453
    pattern += texture - xp.floor(texture) - 0.5  # uniform-ish in [-0.5, 0.5)
    del texture
    if np.dtype(dtype) == np.uint16:
        scaled = xp.clip((pattern + 5.0) * (65535.0 / 10.0), 0.0, 65535.0)
        return scaled.astype(xp.uint16), labels
    return pattern.astype(getattr(xp, np.dtype(dtype).name)), labels


def _require_fused(x_shape, K_shape, n_classes, dtype):
    ok, reason = supports(x_shape, K_shape, n_classes, dtype)
    if not ok:
        raise NotImplementedError(f"the fused kernels do not run this problem: {reason}")


# --- the pairs --------------------------------------------------------------------

def network_pairs(xp, config_name, *, config=None, kernels=None):
    """{"predict_proba": Pair, "loss_and_grad": Pair} on one configuration.

    Public: ``arrseg.predict_proba(x, params)`` and
    ``arrseg.loss_and_grad(x, labels, params)`` (method "auto"); raw:
    ``fused_forward(x, params, "tanh", "zeros")`` and
    ``fused_loss_and_grad(x, labels, params, "tanh", "zeros", None, -100)``,
    on the data of ``common.make_problem``. ``config`` overrides
    NETWORK_CONFIGS[config_name] (small problems for a dry run);
    ``kernels`` goes to the launchers (the CPU emulator on NumPy).
    """
    config = NETWORK_CONFIGS[config_name] if config is None else config
    x, labels, theta = make_problem(xp, config)
    _require_fused(x.shape, theta.K.shape, theta.W.shape[1], x.dtype)
    goal = NETWORK_GOALS[config_name]
    return {
        "predict_proba": Pair(
            f"{config_name} predict_proba",
            lambda: arrseg.predict_proba(x, theta),
            lambda: fused.fused_forward(x, theta, ACTIVATION, BOUNDARY, kernels=kernels),
            goal),
        "loss_and_grad": Pair(
            f"{config_name} loss_and_grad",
            lambda: arrseg.loss_and_grad(x, labels, theta),
            lambda: fused.fused_loss_and_grad(x, labels, theta, ACTIVATION, BOUNDARY, None,
                                              IGNORE_INDEX, kernels=kernels),
            goal),
    }


def fit_schedule(n_images, height, width, batch_size, crop_size):
    """Mini-batch steps per iteration of ``Segmenter.fit`` ("sgd", "adam"),
    by the rule its documentation states (``arrseg.segmenter``'s module
    docstring and the ``crop_size`` parameter), for N images of H x W.

    Whole images when they are at most the crop size in both directions:
    ``ceil(N / batch)`` steps of ``batch = min(batch_size, N)`` images;
    else ``ceil(N H W / (batch * crop pixels))`` steps of ``batch`` crops,
    with no more crops per step than cover the pixels once.
    ``crop_size=None`` is ``arrseg.segmenter.DEFAULT_CROP_SIZE`` (512).

    Returns
    -------
    steps, batch : int
    crop : (int, int)
        The side of the crops (the image's size for whole images).

    Examples
    --------
    >>> fit_schedule(1, 1024, 2048, 4, None)
    (2, 4, (512, 512))
    >>> fit_schedule(3, 100, 80, 4, None)
    (1, 3, (100, 80))
    """
    if crop_size is None:
        crop_size = getattr(arrseg.segmenter, "DEFAULT_CROP_SIZE", 512)
    if height <= crop_size and width <= crop_size:
        batch = min(batch_size, n_images)
        return math.ceil(n_images / batch), batch, (height, width)
    crop = (min(crop_size, height), min(crop_size, width))
    pixels, crop_pixels = n_images * height * width, crop[0] * crop[1]
    batch = min(batch_size, math.ceil(pixels / crop_pixels))
    return math.ceil(pixels / (batch * crop_pixels)), batch, crop


def _crops(a, crop, count):
    """``count`` crops of a (..., H, W) array, from a row-major grid of
    crop-sized cells (cycled if it has fewer), stacked on a new axis 0."""
    H, W = a.shape[-2:]
    cells = [(r, c) for r in range(0, H - crop[0] + 1, crop[0])
             for c in range(0, W - crop[1] + 1, crop[1])]
    return [a[..., r:r + crop[0], c:c + crop[1]] for r, c in
            (cells[i % len(cells)] for i in range(count))]


def fit_pair(xp, *, shape=FIT_IMAGE, iters=FIT_ITERS, segmenter_options=None, kernels=None):
    """Segmenter.fit for ``iters`` iterations against the fused steps of as many.

    Public: ``Segmenter(width=32, kernel_size=7, max_iter=iters,
    n_iter_no_change=iters + 1, tol=0).fit(image, labels)`` on one (H, W)
    float32 image of :func:`smooth_image` (2 classes): exactly ``iters``
    iterations. Raw: ``iters * steps`` calls of ``fused_loss_and_grad`` on
    ``(batch, 1, crop, crop)`` normalised crops, steps / batch / crop from
    :func:`fit_schedule` with the Segmenter's defaults (1024 x 2048: 2 steps
    of 4 crops of 512 x 512). ``per = iters``: the table's figures are per
    iteration.
    """
    options = dict(FIT_MODEL, **(segmenter_options or {}))

    def model():
        return arrseg.Segmenter(**options, max_iter=iters, n_iter_no_change=iters + 1,
                                tol=0)

    height, width = shape
    image, labels = smooth_image(xp, height, width, "float32", seed=0)
    defaults = model().get_params()
    steps, batch, crop = fit_schedule(1, height, width, defaults["batch_size"],
                                      defaults["crop_size"])
    mean = float(xp.mean(image.astype(xp.float64)))
    std = float(xp.std(image.astype(xp.float64)))
    x = ((image - np.float32(mean)) / np.float32(std))[None, None]  # (1, 1, H, W)
    xb = xp.ascontiguousarray(xp.concatenate(_crops(x, crop, batch), axis=0))
    yb = xp.ascontiguousarray(xp.stack(_crops(labels, crop, batch), axis=0))
    n_c = 2
    params = arrseg.init_params(1, options["width"], n_c, options["kernel_size"], seed=0,
                                dtype="float32", xp=xp)
    _require_fused(xb.shape, params.K.shape, n_c, xb.dtype)

    def public():
        return model().fit(image, labels)

    def raw():
        for _ in range(iters * steps):
            out = fused.fused_loss_and_grad(xb, yb, params, ACTIVATION, BOUNDARY, None,
                                            IGNORE_INDEX, kernels=kernels)
        return out

    name = (f"fit {height}x{width} ({steps} steps of {batch}x{crop[0]}x{crop[1]})")
    return Pair(name, public, raw, FIT_GOAL, per=iters, unit="iteration")


def predict_large_pair(xp, *, size=LARGE_IMAGE, train_size=LARGE_TRAIN_IMAGE,
                       segmenter_options=None, kernels=None):
    """Segmenter.predict_proba of one large uint16 image against one fused_forward.

    The model (width 16, kernel size 5) is fitted for LARGE_TRAIN_ITERS
    iterations on a ``train_size``^2 uint16 image of :func:`smooth_image`;
    public: ``model.predict_proba(image)`` of a ``size``^2 one (tiled by the
    Segmenter); raw: ``fused_forward`` over the whole image, normalised as
    the Segmenter does, ``(x - mean_) / std_`` as float32 of shape
    (1, 1, size, size), computed in setup.
    """
    options = dict(LARGE_MODEL, **(segmenter_options or {}))
    small, small_labels = smooth_image(xp, train_size, train_size, "uint16", seed=1)
    model = arrseg.Segmenter(**options, max_iter=LARGE_TRAIN_ITERS).fit(small, small_labels)
    del small, small_labels
    image, labels = smooth_image(xp, size, size, "uint16", seed=2)
    del labels
    mean = xp.asarray(model.mean_, dtype=xp.float32)
    std = xp.asarray(model.std_, dtype=xp.float32)
    x = xp.ascontiguousarray(((image.astype(xp.float32) - mean[0]) / std[0])[None, None])
    params = model.params_
    _require_fused(x.shape, params.K.shape, params.W.shape[1], x.dtype)

    def public():
        return model.predict_proba(image)

    def raw():
        return fused.fused_forward(x, params, ACTIVATION, BOUNDARY, kernels=kernels)

    return Pair(f"Segmenter.predict_proba {size}x{size} uint16", public, raw, LARGE_GOAL)


# --- measuring a pair -------------------------------------------------------------

def _samples(fn, sync, xp, n_repeat, n_warmup, max_duration):
    """Seconds per call of ``fn``: CUDA events around each call on CuPy
    (``cupyx.profiler.benchmark``'s gpu_times: from before the call is
    queued to the end of its last kernel, so host work inside the call that
    keeps the device waiting counts), wall clock with ``sync`` elsewhere."""
    if xp.__name__ == "cupy":
        from cupyx.profiler import benchmark

        result = benchmark(fn, n_repeat=n_repeat, n_warmup=n_warmup,
                           max_duration=max_duration)
        return [float(t) for t in result.gpu_times[0]]
    for _ in range(n_warmup):
        fn()
        sync()
    out = []
    start = time.perf_counter()
    for _ in range(n_repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_duration:
            break
    return out


def measure_pair(pair, sync, xp, *, rounds=3, n_repeat=5, n_warmup=1, max_duration=5.0):
    """Median seconds of the public and the raw call, and their ratio.

    ``rounds`` alternations of public then raw, each ``n_repeat`` timed calls
    after ``n_warmup`` untimed ones (a side stops early after
    ``max_duration`` seconds in a round), so that a drift of the clocks
    affects both sides alike. Times are per call, not divided by
    ``pair.per``.

    Returns
    -------
    dict
        ``public_s``, ``raw_s`` (medians), ``ratio`` (public_s / raw_s),
        ``public_n``, ``raw_n`` (samples).
    """
    samples = {"public": [], "raw": []}
    for _ in range(rounds):
        for side in ("public", "raw"):
            samples[side] += _samples(getattr(pair, side), sync, xp, n_repeat, n_warmup,
                                      max_duration)
    public, raw = (statistics.median(samples[s]) for s in ("public", "raw"))
    return {"public_s": public, "raw_s": raw, "ratio": public / raw,
            "public_n": len(samples["public"]), "raw_n": len(samples["raw"])}


# --- asv ----------------------------------------------------------------------------

class _CupyPairs(AsvSettings):
    """Base: CuPy with a GPU or skipped; ``make_pairs(p)`` builds the pairs
    ({name: Pair}) of the parameters p (a dict by name); ``warm`` lists the
    (pair name, side) calls run once in setup (compilation)."""

    #: rounds / repeats of the track_ ratios (see measure_pair).
    ratio_rounds = 3
    ratio_repeat = 5

    def setup(self, *params):
        backend = get_backend("cupy")  # NotImplementedError without CuPy + GPU
        self.xp, self.sync = backend.xp, backend.sync
        p = dict(zip(getattr(self, "param_names", ()), params))
        self.pairs = self.make_pairs(p)
        for name, side in self.warm(p):
            getattr(self.pairs[name], side)()
        self.sync()

    def teardown(self, *params):
        self.pairs = None
        if getattr(self, "xp", None) is not None and self.xp.__name__ == "cupy":
            self.xp.get_default_memory_pool().free_all_blocks()

    def make_pairs(self, p):
        raise TypeError(f"{type(self).__name__} must define make_pairs")

    def warm(self, p):
        return [(name, side) for name in self.pairs for side in ("public", "raw")]

    def run(self, name, side):
        getattr(self.pairs[name], side)()
        self.sync()

    def ratio(self, name):
        return measure_pair(self.pairs[name], self.sync, self.xp, rounds=self.ratio_rounds,
                            n_repeat=self.ratio_repeat)["ratio"]


class PublicGPUNetwork(_CupyPairs):
    """arrseg.predict_proba / loss_and_grad (api "public", method "auto") and
    fused_forward / fused_loss_and_grad (api "raw") on CuPy.

    Goals: public / raw <= 1.5 on "seed" (N = 8, C = 3, 256 x 256, k = 32,
    n_c = 4, s = 3, float32), <= 1.1 on "N=32 512x512".
    """

    params = (tuple(NETWORK_CONFIGS), ("public", "raw"))
    param_names = ("config", "api")

    def make_pairs(self, p):
        return network_pairs(self.xp, p["config"])

    def warm(self, p):
        return [(name, p["api"]) for name in self.pairs]

    def setup(self, *params):
        super().setup(*params)
        self.api = params[1]

    def time_predict_proba(self, *_):
        self.run("predict_proba", self.api)

    def time_loss_and_grad(self, *_):
        self.run("loss_and_grad", self.api)


class PublicGPUNetworkRatio(_CupyPairs):
    """time(public) / time(raw) of PublicGPUNetwork's pairs, in one process
    (median of 3 alternating rounds of 5 calls each; CUDA events)."""

    params = (tuple(NETWORK_CONFIGS),)
    param_names = ("config",)

    def make_pairs(self, p):
        return network_pairs(self.xp, p["config"])

    def track_predict_proba_ratio(self, *_):
        return self.ratio("predict_proba")

    def track_loss_and_grad_ratio(self, *_):
        return self.ratio("loss_and_grad")

    track_predict_proba_ratio.unit = "public/raw"
    track_loss_and_grad_ratio.unit = "public/raw"


class PublicGPUFit(_CupyPairs):
    """Segmenter.fit against the fused steps it runs, on CuPy.

    One (1024, 2048) float32 image, 2 classes; ``Segmenter(width=32,
    kernel_size=7, max_iter=FIT_ITERS, n_iter_no_change=FIT_ITERS + 1,
    tol=0)``. ``time_fit`` is FIT_ITERS (10) iterations, ``time_fused_steps``
    the ``fused_loss_and_grad`` calls of as many (see :func:`fit_pair`):
    divide by FIT_ITERS for a figure per iteration. Goal: ratio <= 1.3.
    """

    ratio_rounds = 2
    ratio_repeat = 3

    def make_pairs(self, p):
        return {"fit": fit_pair(self.xp, iters=FIT_ITERS)}

    def time_fit(self):
        self.run("fit", "public")

    def time_fused_steps(self):
        self.run("fit", "raw")

    def track_iteration_ratio(self):
        return self.ratio("fit")

    track_iteration_ratio.unit = "public/raw"


class PublicGPUPredictLarge(_CupyPairs):
    """Segmenter.predict_proba of one 8192 x 8192 uint16 image (model: width
    16, kernel size 5, fitted for 3 iterations on a 512 x 512 image of the
    same kind) against one fused_forward over the normalised image, on CuPy.
    Goal: ratio <= 1.5."""

    ratio_rounds = 2
    ratio_repeat = 3

    def make_pairs(self, p):
        return {"predict": predict_large_pair(self.xp)}

    def time_segmenter_predict_proba(self):
        self.run("predict", "public")

    def time_fused_forward(self):
        self.run("predict", "raw")

    def track_ratio(self):
        return self.ratio("predict")

    track_ratio.unit = "public/raw"
