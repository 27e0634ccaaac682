"""Hypothesis strategies of the network's property tests (tests/test_properties.py).

A drawn problem is a :class:`Problem`: a frozen record of small integers,
option names, dtype names and decade scales. :meth:`Problem.arrays` builds
its NumPy arrays from ``seed`` with NumPy's generator, so an example that
fails is one readable line to keep as ``@example(problem=Problem(...))``,
and Hypothesis shrinks it field by field (toward the first entry of each
list below: one image, one channel, 1x1 pixels, kernel size 1, scale 1,
float64, tanh, zeros).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import strategies as st

ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")
BOUNDARIES = ("zeros", "periodic")
FLOAT_DTYPES = ("float64", "float32")
#: image dtypes: kept floats, and integer/bool images converted as they are
IMAGE_DTYPES = FLOAT_DTYPES + ("uint8", "int16", "int32", "int64", "bool")
KERNEL_SIZES = (1, 3, 5)
#: How the image's values are laid out.
IMAGE_KINDS = ("normal", "uniform", "zeros", "constant", "one_hot_pixel")
#: Label patterns.
LABELS = ("random", "some_ignored", "one_class", "single_pixel", "all_ignored")
#: Class-weight patterns ("with_zeros": some classes weigh 0; "all_zero": no
#: labelled pixel counts).
WEIGHTS = ("none", "random", "ones", "with_zeros", "all_zero")

#: Decades of the moderate scales, 1 first (the shrink target).
MODERATE_SCALES = (1.0, 0.1, 10.0, 1e-3, 1e-2, 100.0, 1e3)
#: Scales that may overflow on the way (float32's maximum is 3.4e38).
LARGE_SCALES = {
    "float32": (1e5, 1e10, 1e19, 1e30, 3e38),
    "float64": (1e5, 1e10, 1e19, 1e30, 3e38, 1e100, 1e154, 1e200, 1e300, 1.7e308),
}
#: Largest magnitude of integer images, by dtype.
INT_LIMITS = {"uint8": 255, "int16": 2**15 - 1, "int32": 2**31 - 1,
              "int64": 2**63 - 1, "bool": 1}


def compute_dtype(x_dtype, p_dtype):
    """The documented compute dtype: float64 if x or the parameters are."""
    return "float64" if "float64" in (x_dtype, p_dtype) else "float32"


def output_dtype(x_dtype, p_dtype):
    """The documented dtype of P: x's float dtype, else the parameters'."""
    return x_dtype if x_dtype in FLOAT_DTYPES else p_dtype


def _scaled(z, scale, dtype):
    """z * scale in ``dtype``, clipped so that every value stays finite."""
    top = float(np.finfo(dtype).max) / scale
    return (np.clip(z, -top, top) * scale).astype(dtype)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One call of the network: shapes, options, dtypes, scales, patterns."""

    N: int = 1
    C: int = 1
    H: int = 1
    W: int = 1
    k: int = 1
    n_c: int = 2
    s: int = 1
    bias: bool = True
    activation: str = "tanh"
    boundary: str = "zeros"
    x_dtype: str = "float64"
    p_dtype: str = "float64"
    x_kind: str = "normal"
    #: magnitude of the images (integer images: of their range)
    x_scale: float = 1.0
    #: magnitude of (K, b) relative to LeCun's initialisation, and of (W, c)
    conv_scale: float = 1.0
    cls_scale: float = 1.0
    labels: str = "random"
    weights: str = "none"
    weight_scale: float = 1.0
    ignore_index: int = -100
    #: dtype of the labels (uint8 only with an ignore_index it can hold)
    label_dtype: str = "int64"
    #: pass class_weight as an array of the namespace, or as a Python list
    weight_type: str = "array"
    seed: int = 0

    @property
    def dtype(self):
        """The compute dtype."""
        return compute_dtype(self.x_dtype, self.p_dtype)

    @property
    def out_dtype(self):
        return output_dtype(self.x_dtype, self.p_dtype)

    def arrays(self):
        """(x, labels, params, class_weight) as NumPy arrays.

        x in ``x_dtype``, labels (N, H, W) in ``label_dtype``, params a tuple (K, b, W, c)
        in ``p_dtype`` (c None without bias), class_weight float64 (n_c,) or
        None. Every value is finite in its dtype.
        """
        rng = np.random.default_rng(self.seed)
        N, C, H, W, k, n_c, s = self.N, self.C, self.H, self.W, self.k, self.n_c, self.s
        x = self._image(rng, (N, C, H, W))
        labels = self._labels(rng, (N, H, W)).astype(self.label_dtype)
        pd = self.p_dtype
        K = _scaled(rng.standard_normal((k, C, s, s)) / np.sqrt(C * s * s),
                    self.conv_scale, pd)
        b = _scaled(rng.standard_normal(k), self.conv_scale, pd)
        Wc = _scaled(rng.standard_normal((k, n_c)) / np.sqrt(k), self.cls_scale, pd)
        c = _scaled(rng.standard_normal(n_c), self.cls_scale, pd) if self.bias else None
        return x, labels, (K, b, Wc, c), self._class_weight(rng)

    def _image(self, rng, shape):
        dt = self.x_dtype
        if dt == "bool":
            return rng.random(shape) < 0.5
        if dt not in FLOAT_DTYPES:
            top = min(INT_LIMITS[dt], max(1, int(self.x_scale)))
            low = 0 if dt == "uint8" else -top
            return rng.integers(low, top, shape, endpoint=True, dtype=dt)
        if self.x_kind == "normal":
            z = rng.standard_normal(shape)
        elif self.x_kind == "uniform":
            z = rng.random(shape)
        elif self.x_kind == "zeros":
            z = np.zeros(shape)
        elif self.x_kind == "constant":
            z = np.ones(shape)
        else:  # one_hot_pixel: a single nonzero value
            z = np.zeros(shape)
            z[tuple(int(rng.integers(0, n)) for n in shape)] = 1.0
        return _scaled(z, self.x_scale, dt)

    def _labels(self, rng, shape):
        n_c, ignore = self.n_c, self.ignore_index
        y = rng.integers(0, n_c, shape)
        if self.labels == "some_ignored":
            y[rng.random(shape) < 0.3] = ignore
        elif self.labels == "one_class":
            y[:] = rng.integers(0, n_c)
        elif self.labels == "single_pixel":
            one = tuple(int(rng.integers(0, n)) for n in shape)
            keep = y[one]
            y[:] = ignore
            y[one] = keep
        elif self.labels == "all_ignored":
            y[:] = ignore
        return y

    def _class_weight(self, rng):
        n_c = self.n_c
        if self.weights == "none":
            return None
        if self.weights == "ones":
            w = np.ones(n_c)
        elif self.weights == "random":
            w = rng.uniform(0.1, 2.0, n_c)
        elif self.weights == "with_zeros":
            w = rng.uniform(0.1, 2.0, n_c)
            w[rng.random(n_c) < 0.5] = 0.0
        else:
            w = np.zeros(n_c)
        return _scaled(w, self.weight_scale, self.dtype).astype(np.float64)

    def counted(self, labels, class_weight):
        """Whether some labelled pixel has a positive weight."""
        mask = labels != self.ignore_index
        if not mask.any():
            return False
        if class_weight is None:
            return True
        return bool(np.any(class_weight[labels[mask]] > 0))


@st.composite
def problems(draw, *, activations=ACTIVATIONS, boundaries=BOUNDARIES,
             x_dtypes=IMAGE_DTYPES, p_dtypes=FLOAT_DTYPES, kernel_sizes=KERNEL_SIZES,
             max_N=2, max_C=3, max_side=12, max_k=6, max_classes=4, scales=None,
             large=False, labels=LABELS, weights=WEIGHTS, ignore_indices=(-100,),
             label_dtypes=("int64",), weight_types=("array",), config=None):
    """A :class:`Problem`.

    ``scales``: the decades of x_scale, conv_scale and cls_scale (default
    :data:`MODERATE_SCALES`; with ``large=True`` they and
    :data:`LARGE_SCALES` of the compute dtype, and class weights may be
    large too). ``config``: a :class:`arrseg.cuda.limits.KernelConfig` that
    fixes (compute dtype, s, C, k, n_c, activation, boundary, bias); the
    image and parameter dtypes are then drawn to give that compute dtype.
    """
    if config is not None:
        s, C, k, n_c = config.s, config.C, config.k, config.n_c
        activation, boundary, bias = config.activation, config.boundary, config.has_c
        if config.dtype == "float32":
            p_dtype = "float32"
            x_dtype = draw(st.sampled_from(
                [d for d in x_dtypes if d != "float64"]))
        else:
            p_dtype, x_dtype = draw(st.sampled_from(
                [("float64", d) for d in x_dtypes] + [("float32", "float64")]))
    else:
        x_dtype = draw(st.sampled_from(x_dtypes))
        p_dtype = draw(st.sampled_from(p_dtypes))
        s = draw(st.sampled_from(kernel_sizes))
        C = draw(st.integers(1, max_C))
        k = draw(st.integers(1, max_k))
        n_c = draw(st.integers(2, max_classes))
        activation = draw(st.sampled_from(activations))
        boundary = draw(st.sampled_from(boundaries))
        bias = draw(st.booleans())
    dtype = compute_dtype(x_dtype, p_dtype)
    if scales is None:
        scales = MODERATE_SCALES + (LARGE_SCALES[dtype] if large else ())
    scale = st.sampled_from(scales)
    weight_scales = (1.0,) + ((1e30, 3e38) if large else ())
    if large and dtype == "float64":
        weight_scales += (1e300,)
    ignore_index = draw(st.sampled_from(ignore_indices))
    label_dtype = draw(st.sampled_from(
        [d for d in label_dtypes if d != "uint8" or 0 <= ignore_index <= 255]))
    return Problem(
        N=draw(st.integers(1, max_N)), C=C,
        H=draw(st.integers(1, max_side)), W=draw(st.integers(1, max_side)),
        k=k, n_c=n_c, s=s, bias=bias, activation=activation, boundary=boundary,
        x_dtype=x_dtype, p_dtype=p_dtype,
        x_kind=draw(st.sampled_from(IMAGE_KINDS)),
        x_scale=draw(scale), conv_scale=draw(scale), cls_scale=draw(scale),
        labels=draw(st.sampled_from(labels)), weights=draw(st.sampled_from(weights)),
        weight_scale=draw(st.sampled_from(weight_scales)),
        ignore_index=ignore_index, label_dtype=label_dtype,
        weight_type=draw(st.sampled_from(weight_types)),
        seed=draw(st.integers(0, 2**16)),
    )
