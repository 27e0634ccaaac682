"""Properties of predict_proba and loss_and_grad over drawn problems (Hypothesis).

Problems (tests/property_strategies.py) vary the shapes (N 1-2, C 1-3, H
and W 1-12, k, n_c >= 2, s in {1, 3, 5}), the dtypes (float32, float64,
integer and bool images), the options, the label patterns (all one class,
all ignored, one labelled pixel, random with some ignored), the class
weights (zeros included) and the scales of images and parameters (1e-3 to
1e3, and up to the dtype's maximum in the large-scale properties).

Every comparison is against an independent NumPy float64 reference
(tests/reference.py for the convolution, the loss and its gradient written
out below), with a tolerance derived from the problem: a forward error
bound of the compute dtype, from the magnitudes of the images and the
parameters (:func:`tolerances`), so that one rule serves the well and the
badly conditioned problems, float32 and float64, and the direct, FFT and
fused paths.

The large-scale properties hold the overflow contract (arrseg/overflow.py):
a finite input gives a finite answer, or NonFiniteError naming the quantity
that overflowed. At moderate scales no error is allowed.

The "ci" profile (tests/conftest.py) runs 30 examples per property;
``HYPOTHESIS_PROFILE=long`` runs 2000. An example Hypothesis finds failing
is kept as an ``@example`` of its property, with a comment; one that shows
a library defect also has a minimal reproduction at the end of this file.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, event, example, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import reference  # noqa: E402
from conftest import _namespace as namespace, to_xp  # noqa: E402
from property_strategies import (  # noqa: E402
    LABELS,
    MODERATE_SCALES,
    WEIGHTS,
    Problem,
    problems,
)

import arrseg  # noqa: E402
from arrseg import core  # noqa: E402
from arrseg.cuda.limits import KernelConfig, supports  # noqa: E402
from arrseg.testing import to_numpy  # noqa: E402

NAMES = ("K", "b", "W", "c")


# --- namespaces --------------------------------------------------------------

def put(xp, a):
    """A NumPy array (or None) into namespace xp, dtype kept."""
    return None if a is None else to_xp(xp, a)


def call_args(problem, xp, arrays):
    """(x, labels, Params, class_weight) of a problem in namespace xp."""
    x, labels, p, cw = arrays
    if cw is not None:
        # in the compute dtype, as an array of the namespace or a list
        cw = cw.astype(problem.dtype)
        cw = cw.tolist() if problem.weight_type == "list" else put(xp, cw)
    return put(xp, x), put(xp, labels), arrseg.Params(*(put(xp, a) for a in p)), cw


def options(problem, method):
    return dict(activation=problem.activation, boundary=problem.boundary, method=method)


# --- the independent float64 reference -------------------------------------

def as64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def derivative(activation, Z):
    """sigma'(Z), written from the definitions."""
    if activation == "tanh":
        return 1.0 - np.tanh(Z) ** 2
    if activation == "relu":
        return (Z > 0).astype(np.float64)
    if activation == "sigmoid":
        sig = reference.ACTIVATIONS["sigmoid"](Z)
        return sig * (1.0 - sig)
    return np.ones_like(Z)


@dataclasses.dataclass
class Reference:
    """Forward quantities, loss and gradient of one problem, in float64."""

    Z: np.ndarray        # pre-activation (N, k, H, W)
    S: np.ndarray        # logits (N, n_c, H, W)
    P: np.ndarray
    loss: float
    grads: tuple         # (dK, db, dW, dc or None)


def reference_solution(problem, arrays):
    """The network on the inputs as rounded, in float64, from the definitions:
    tests/reference.py's convolution, a shifted log-softmax, and the
    gradient of the weighted mean cross-entropy by the chain rule."""
    x, labels, p, cw = arrays
    x = as64(x)
    K, b, Wc, c = (as64(a) for a in p)
    N, C, H, W = x.shape
    s = K.shape[2]
    Z = reference.conv2d(x, K, problem.boundary) + b[:, None, None]
    Y = reference.ACTIVATIONS[problem.activation](Z)
    S = np.einsum("kj,nkhw->njhw", Wc, Y)
    if c is not None:
        S = S + c[:, None, None]
    T = S - S.max(axis=1, keepdims=True)
    logP = T - np.log(np.exp(T).sum(axis=1, keepdims=True))
    P = np.exp(logP)

    n_c = Wc.shape[1]
    counted = labels != problem.ignore_index
    y = np.where(counted, labels, 0).astype(np.int64)
    w = np.ones(n_c) if cw is None else as64(cw)
    w_pix = np.where(counted, w[y], 0.0)  # (N, H, W)
    total = w_pix.sum()
    onehot = (y[:, None] == np.arange(n_c)[None, :, None, None]) & counted[:, None]
    nll = -np.take_along_axis(logP, y[:, None], axis=1)[:, 0]
    if total > 0:
        loss = float((w_pix * nll).sum() / total)
        dS = (P - onehot) * (w_pix / total)[:, None]
    else:
        loss, dS = 0.0, np.zeros_like(P)
    dW = np.einsum("nkhw,njhw->kj", Y, dS)
    dc = dS.sum(axis=(0, 2, 3)) if c is not None else None
    dZ = np.einsum("kj,njhw->nkhw", Wc, dS) * derivative(problem.activation, Z)
    db = dZ.sum(axis=(0, 2, 3))
    q = s // 2
    xp_ = np.pad(x, ((0, 0), (0, 0), (q, q), (q, q)), mode=reference.PAD_MODE[problem.boundary])
    dK = np.empty_like(K)
    for a in range(s):
        for bb in range(s):
            dK[:, :, a, bb] = np.einsum("nkhw,nchw->kc", dZ, xp_[:, :, a:a + H, bb:bb + W])
    return Reference(Z, S, P, loss, (dK, db, dW, dc))


# --- tolerances: a forward error bound of the compute dtype ----------------

#: max |sigma''| of the activations (relu: its derivative jumps at 0)
CURVATURE = {"tanh": 0.77, "sigmoid": 0.1, "relu": 0.0, "identity": 0.0}
#: max |sigma'|
SLOPE = {"tanh": 1.0, "sigmoid": 0.25, "relu": 1.0, "identity": 1.0}


@dataclasses.dataclass
class Tolerance:
    """Absolute error bounds of one problem's results, before the output's
    own rounding (added by :func:`assert_within`)."""

    Z: float
    P: float
    loss: float
    grads: tuple
    #: relu with a pre-activation within rounding of 0: sigma' may differ
    #: between two evaluations, so dK and db are not comparable
    kink: bool


def tolerances(problem, arrays, ref):
    """Bounds of |computed - exact| for P, the loss and the gradient.

    A running error analysis with the magnitudes of the data, in units of
    the compute dtype's epsilon: the pre-activation is a sum of C s^2 terms
    (or an FFT over H W points) bounded by A = max|x| max_k sum|K_k| +
    max|b|; the features by 1 (tanh, sigmoid) or A; the logits by
    max_j sum_k |W_kj| times that plus max|c|; the softmax and the
    cross-entropy are 2-Lipschitz in the logits (max norm); each gradient
    is a weighted mean over pixels of terms bounded by the data.
    """
    x, _, p, _ = arrays
    eps = float(np.finfo(problem.dtype).eps)
    x = as64(x)
    K, b, Wc, c = (as64(a) for a in p)
    N, C, H, W = x.shape
    k, _, s, _ = K.shape
    n_c = Wc.shape[1]
    act = problem.activation
    xmax = float(np.abs(x).max())
    A = xmax * float(np.abs(K).reshape(k, -1).sum(axis=1).max()) + float(np.abs(b).max())
    dZ = 4 * eps * (C * s * s + H * W + 2) * A
    Ymax = 1.0 if act in ("tanh", "sigmoid") else A
    dY = SLOPE[act] * dZ + 2 * eps * Ymax
    W_col = float(np.abs(Wc).sum(axis=0).max())
    W_row = float(np.abs(Wc).sum(axis=1).max())
    W_max = float(np.abs(Wc).max())
    c_max = 0.0 if c is None else float(np.abs(c).max())
    S_max = W_col * Ymax + c_max
    dS = W_col * dY + 4 * eps * (k + 2) * S_max
    dP = min(1.0, 2 * dS + 8 * n_c * eps)
    G = 4 * eps * (N * H * W + H * W + C * s * s + 4)  # sums over pixels
    loss = 2 * dS + G * (2 * S_max + math.log(n_c) + 1)
    r_max = 2 * SLOPE[act] * W_max                     # |dE/dZ| per pixel
    dr = SLOPE[act] * W_row * dP + 2 * W_max * CURVATURE[act] * dZ
    grads = (xmax * (dr + G * r_max),                  # dK
             dr + G * r_max,                           # db
             Ymax * dP + 2 * dY + 2 * G * Ymax,        # dW
             dP + 2 * G)                               # dc
    kink = act == "relu" and float(np.abs(ref.Z).min()) <= 2 * dZ
    return Tolerance(dZ, dP, loss, grads, kink)


def assert_within(got, want, tol, what, *, xp=None, dtype=None):
    """|got - want| <= tol + 2 eps |want|max (eps of got's dtype), after
    checking got's namespace, dtype and shape."""
    if xp is not None:
        from array_api_compat import array_namespace

        assert array_namespace(got) is xp, f"{what}: namespace {array_namespace(got)}"
    g = to_numpy(got)
    if dtype is not None:
        assert g.dtype == np.dtype(dtype), f"{what}: dtype {g.dtype} != {dtype}"
    want = np.asarray(want, dtype=np.float64)
    assert g.shape == want.shape, f"{what}: shape {g.shape} != {want.shape}"
    if want.size == 0:
        return
    scale = float(np.abs(want).max())
    bound = tol + 2 * float(np.finfo(g.dtype).eps) * scale
    err = float(np.abs(g.astype(np.float64) - want).max())
    assert err <= bound, (f"{what}: max error {err:.3e} > bound {bound:.3e} "
                          f"(tolerance {tol:.3e}, max |reference| {scale:.3e})")


def assert_results(P, loss, grads, ref, tol, problem, *, xp=None, label=""):
    """P, loss and gradient of one evaluation against the reference."""
    assert_within(P, ref.P, tol.P, f"{label} P", xp=xp, dtype=problem.out_dtype)
    assert_within(loss, ref.loss, tol.loss, f"{label} loss", xp=xp, dtype=problem.p_dtype)
    for name, g, want, t in zip(NAMES, grads, ref.grads, tol.grads):
        if want is None:
            assert g is None, f"{label} d{name} should be None"
            continue
        if tol.kink and name in ("K", "b"):
            continue
        assert_within(g, want, t, f"{label} d{name}", xp=xp, dtype=problem.p_dtype)


def referenced(problem, arrays):
    """(reference solution, tolerances) of a problem, noted for hypothesis."""
    ref = reference_solution(problem, arrays)
    tol = tolerances(problem, arrays, ref)
    describe(problem, tol)
    return ref, tol


def describe(problem, tol):
    note(f"{problem}")
    note(f"tolerances: Z {tol.Z:.2e}, P {tol.P:.2e}, loss {tol.loss:.2e}, "
         f"grads {', '.join(f'{t:.2e}' for t in tol.grads)}, kink {tol.kink}")
    if tol.kink:
        event("relu pre-activation within rounding of 0: dK, db not compared")
    event(f"P tolerance {'< 1e-3' if tol.P < 1e-3 else '>= 1e-3 (ill-conditioned)'}")


# --- the fused path on the CPU emulator -------------------------------------

#: The kernel builds the fused property draws from: each is one g++
#: compilation (about a second), so the property varies everything else
#: (N, H, W, image dtype and kind, scales, labels, weights) over these.
FUSED_CONFIGS = (
    KernelConfig("float64", 3, 2, 4, 3, "tanh", "zeros", True),
    KernelConfig("float64", 5, 1, 3, 2, "relu", "periodic", False),
    KernelConfig("float64", 1, 3, 5, 4, "sigmoid", "periodic", True),
    KernelConfig("float64", 3, 1, 2, 2, "identity", "zeros", True),
    KernelConfig("float32", 3, 3, 6, 2, "tanh", "periodic", True),
    KernelConfig("float32", 5, 2, 4, 3, "sigmoid", "zeros", False),
    KernelConfig("float32", 1, 1, 3, 4, "relu", "zeros", True),
    KernelConfig("float32", 3, 2, 5, 2, "identity", "periodic", True),
)


def fused_problems(**kwargs):
    """Problems of one of FUSED_CONFIGS (problems' other fields drawn)."""
    return st.sampled_from(FUSED_CONFIGS).flatmap(
        lambda config: problems(config=config, **kwargs))


@pytest.fixture(scope="session")
def emulated_kernels(request):
    """The emulator's kernels, every FUSED_CONFIGS build made up front (two
    compilers at a time); cached like tests/test_cuda_emulated.py's."""
    emulation = pytest.importorskip("arrseg.cuda.emulation")
    if emulation.find_compiler() is None:
        pytest.skip("no C++ compiler (g++ or $CXX) for the CUDA emulator")
    try:
        cache = request.config.cache.mkdir("arrseg-emulator")
    except AttributeError:  # -p no:cacheprovider
        cache = request.getfixturevalue("tmp_path_factory").mktemp("arrseg-emulator")
    kernels = emulation.EmulatedKernels(cache_dir=cache)
    kernels.prebuild(FUSED_CONFIGS, jobs=2)
    return kernels


# --- P is a distribution; the loss is finite and non-negative ---------------

NUMPY_METHODS = ("auto", "direct", "fft")
#: label conventions drawn by the properties that take labels: PyTorch's
#: -100, -1, a class index (class 0 then does not count), and 255 (uint8
#: label images)
LABEL_KWARGS = dict(ignore_indices=(-100, -1, 0, 255),
                    label_dtypes=("int64", "int32", "uint8"),
                    weight_types=("array", "list"))


def assert_distribution(P, problem):
    """P (any namespace) has P's shape and dtype, lies in [0, 1] and sums to
    1 over the classes within 2 (n_c + 1) eps of its dtype."""
    P = to_numpy(P)
    assert P.shape == (problem.N, problem.n_c, problem.H, problem.W)
    assert P.dtype == np.dtype(problem.out_dtype)
    assert np.all(P >= 0) and np.all(P <= 1), "P is not in [0, 1] (NaN?)"
    err = float(np.abs(P.sum(axis=1, dtype=np.float64) - 1).max())
    assert err <= 2 * (problem.n_c + 1) * float(np.finfo(P.dtype).eps), err


@given(problem=problems(), method=st.sampled_from(NUMPY_METHODS))
def test_probabilities_are_a_distribution(problem, method):
    x, _, p, _ = problem.arrays()
    assert_distribution(arrseg.predict_proba(x, arrseg.Params(*p),
                                             **options(problem, method)), problem)


def assert_finite_loss(problem, arrays, loss, grads):
    """loss finite and >= 0, gradients finite and shaped like the
    parameters; exactly 0 when no pixel counts."""
    _, labels, p, cw = arrays
    value = float(to_numpy(loss))
    assert math.isfinite(value) and value >= 0, value
    for name, g, a in zip(NAMES, grads, p):
        if a is None:
            assert g is None, name
            continue
        g = to_numpy(g)
        assert g.shape == a.shape and g.dtype == a.dtype, name
        assert np.all(np.isfinite(g)), f"d{name} is not finite"
    if not problem.counted(labels, cw):
        event("no pixel counts")
        assert value == 0.0
        assert all(not np.any(to_numpy(g)) for g in grads if g is not None)


@given(problem=problems(**LABEL_KWARGS), method=st.sampled_from(NUMPY_METHODS))
def test_loss_is_finite_and_nonnegative(problem, method):
    # moderate scales (1e-3 to 1e3): no NonFiniteError, whatever the activation
    arrays = problem.arrays()
    x, labels, p, cw = arrays
    loss, grads = arrseg.loss_and_grad(x, labels, arrseg.Params(*p), class_weight=cw,
                                       ignore_index=problem.ignore_index,
                                       **options(problem, method))
    assert loss.shape == () and loss.dtype == np.dtype(problem.p_dtype)
    assert_finite_loss(problem, arrays, loss, grads)


# --- large scales: a finite answer or NonFiniteError -------------------------

#: Words one of which a NonFiniteError's message must contain: the quantity
#: that overflowed (arrseg/overflow.py).
QUANTITIES = ("pre-activation", "feature", "logit", "cross-entropy", "loss", "gradient",
              "probabilit", "weight")


def finite_or_raises(compute):
    """compute()'s result, or None if it raised NonFiniteError naming a
    quantity. No other error, no warning (they are errors here)."""
    try:
        return compute()
    except arrseg.NonFiniteError as err:
        assert isinstance(err, FloatingPointError)
        message = str(err).lower()
        assert any(q in message for q in QUANTITIES), f"unnamed quantity: {err}"
        assert "defect" not in message, str(err)
        event("NonFiniteError")
        return None


BACKEND_METHODS = [("numpy", m) for m in NUMPY_METHODS] + [
    ("array_api_strict", "direct"), ("array_api_strict", "fft")]


# What the large-scale properties found in the fast paths (each has a
# minimal reproduction at the end of this file, and the examples below):
#
# - fixed: the NumPy blocked path folded tanh's factor 2 into [K | b] in
#   float32, so |K| or |b| above 1.7e38 became inf (arrseg/cpu/blocked.py
#   now leaves such kernels unscaled and uses np.tanh);
# - limits of the fast paths, now named by NonFiniteError (before: "a
#   defect of the fast path", naming no quantity and advising the method
#   that failed): the fused kernels sum the logits from c on, so a partial
#   sum can overflow where the exact logits are finite; the blocked path and
#   the fused kernels sum a gradient over the pixels before dividing by the
#   loss's denominator; the FFT path's transforms sum over all pixels (or
#   taps) and overflow where the exact pre-activations are finite. The error
#   names the path's sums, the exact quantities, and what to change.


# found by the long run: the FFT path's pre-activations are NaN where the
# exact ones are at most 2.7e38
@example(problem=Problem(N=2, H=3, W=3, bias=False, x_dtype="int32",
                         p_dtype="float32", x_scale=1e10, conv_scale=1e30, seed=2),
         backend=("numpy", "fft"))
# found by the long run: P NaN on the blocked path; the FFT path gives
# (0.246, 0.754)
@example(problem=Problem(C=2, bias=False, x_dtype="float32", p_dtype="float32",
                         conv_scale=3e38, seed=1),
         backend=("numpy", "auto"))
@given(problem=problems(large=True, max_side=8),
       backend=st.sampled_from(BACKEND_METHODS))
def test_large_scale_probabilities_are_finite_or_raise(problem, backend):
    name, method = backend
    xp = namespace(name)
    x, _, params, _ = call_args(problem, xp, problem.arrays())
    P = finite_or_raises(lambda: arrseg.predict_proba(x, params,
                                                      **options(problem, method)))
    if P is not None:
        assert_distribution(P, problem)


# found by the long run: the FFT path's kernel spectrum (a sum over the 9
# taps of ~1e38) overflows; a 1 x 1 image sees only the centre tap
@example(problem=Problem(s=3, bias=False, x_dtype="float32", p_dtype="float32",
                         conv_scale=3e38, seed=0),
         backend=("numpy", "fft"))
@given(problem=problems(large=True, max_side=8, **LABEL_KWARGS),
       backend=st.sampled_from(BACKEND_METHODS))
def test_large_scale_loss_is_finite_or_raises(problem, backend):
    name, method = backend
    xp = namespace(name)
    arrays = problem.arrays()
    x, labels, params, cw = call_args(problem, xp, arrays)
    result = finite_or_raises(lambda: arrseg.loss_and_grad(
        x, labels, params, class_weight=cw, ignore_index=problem.ignore_index,
        **options(problem, method)))
    if result is not None:
        assert_finite_loss(problem, arrays, *result)


# found by the long run: the exact dK is -2.66e38, its sum over the two
# labelled pixels (before the division by 2) overflows float32
@example(problem=Problem(W=2, k=3, n_c=4, activation="relu", x_dtype="float32",
                         p_dtype="float32", x_scale=1e19, cls_scale=1e19, seed=3)
         )
# found by the long run: the exact logits are (1.78e308, 8.6e307, -1.28e308),
# the fused kernel's partial sums overflow
@example(problem=Problem(C=2, k=4, n_c=3, s=3, x_dtype="bool", conv_scale=10.0,
                         cls_scale=1.7e308, seed=328)
         )
@settings(max_examples=max(1, 2 * settings().max_examples // 3))  # slow: two calls
@given(problem=fused_problems(large=True, max_side=8))
def test_large_scale_fused_is_finite_or_raises(emulated_kernels, problem):
    arrays = problem.arrays()
    x, labels, p, cw = arrays
    params = arrseg.Params(*p)
    with core.fused_kernels_on_numpy(emulated_kernels):
        P = finite_or_raises(lambda: arrseg.predict_proba(x, params,
                                                          **options(problem, "fused")))
        result = finite_or_raises(lambda: arrseg.loss_and_grad(
            x, labels, params, class_weight=cw, ignore_index=problem.ignore_index,
            **options(problem, "fused")))
    if P is not None:
        assert_distribution(P, problem)
    if result is not None:
        assert_finite_loss(problem, arrays, *result)


# --- the gradient: a Taylor check in float64 --------------------------------

@dataclasses.dataclass
class Taylor:
    """|E(theta + h v) - E(theta) - h <g, v>| for h = h0, h0/2, ..."""

    h: list
    first: list
    noise: float

    def orders(self):
        """log2 of successive ratios where both errors are resolved."""
        out = []
        for e0, e1 in zip(self.first, self.first[1:]):
            if e0 > self.noise and e1 > self.noise:
                out.append(math.log2(e0 / e1))
        return out

    def verdict(self):
        """"second order", "first order" (a wrong gradient), "unsettled" or
        "unresolved" (fewer than two ratios above the noise).

        The asymptotic regime is at the small steps, so the last resolved
        orders decide: a wrong gradient's error a h + b h^2 shows order 1
        there, steadily, whatever the larger steps show; a right one tends
        to 2 (from below or above, as the higher-order terms fade). Erratic
        orders (steps still outside the asymptotic regime when the errors
        reach the noise) settle nothing.
        """
        orders = self.orders()
        if len(orders) < 2:
            return "unresolved"
        tail = orders[-3:]
        if all(0.6 <= o <= 1.4 for o in tail[-2:]):
            return "first order"
        if sorted(tail)[len(tail) // 2] >= 1.8 or tail[-1] >= 1.8:
            return "second order"
        return "unsettled"

    def __str__(self):
        rows = [f"h={h:.3e}  err={e:.3e}" for h, e in zip(self.h, self.first)]
        return "\n".join(rows + [f"noise {self.noise:.3e}, orders {self.orders()}"])


def taylor(loss_of, theta, grads, direction, h0, noise, n_steps=30):
    """The Taylor errors of loss_of around theta along ``direction``.

    theta, grads, direction: tuples of NumPy float64 arrays (None skipped).
    Stops once three steps in a row are below ``noise`` after one above it.
    """
    slope = sum(float(np.vdot(g, v)) for g, v in zip(grads, direction) if v is not None)
    E0 = loss_of(theta)
    hs, first = [], []
    below = 0
    for j in range(n_steps):
        h = h0 * 2.0 ** -j
        moved = tuple(None if a is None else a + h * v for a, v in zip(theta, direction))
        err = abs(loss_of(moved) - E0 - h * slope)
        hs.append(h)
        first.append(err)
        below = below + 1 if err <= noise else 0
        if below >= 3 and any(e > noise for e in first):
            break
    return Taylor(hs, first, noise)


def unit_direction(theta, seed):
    rng = np.random.default_rng(seed)
    v = [None if a is None else rng.standard_normal(a.shape) for a in theta]
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in v if d is not None))
    return tuple(None if d is None else d / norm for d in v)


def relu_step_limit(problem, arrays, ref, direction):
    """Largest h for which no relu pre-activation crosses 0 along the
    direction (the loss is smooth on that segment): half the smallest
    |Z| / |dZ|, dZ = the directional derivative of Z."""
    x = as64(arrays[0])
    vK, vb = direction[0], direction[1]
    dZ = reference.conv2d(x, vK, problem.boundary) + vb[:, None, None]
    moving = np.abs(dZ) > 0
    if not moving.any():
        return 1.0
    return 0.5 * float(np.min(np.abs(ref.Z[moving]) / np.abs(dZ[moving])))


# found by the long run: orders 7.4, -8.3, 1.0 before the noise (tanh
# saturated by images up to 1000): judged "first order" from the last two
# orders alone, erratic as they were
@example(problem=Problem(N=2, H=3, W=7, s=3, bias=False, x_dtype="int16",
                         x_scale=1000.0, cls_scale=10.0, labels="some_ignored",
                         seed=279),
         method="direct")
# found by the long run: orders 1.12, 1.25 at errors within 10x of the
# round-off bound, before the asymptotic regime (saturated sigmoid logits,
# cls_scale 100): judged "first order" when the orders were read from
# errors above 1x the bound
@example(problem=Problem(C=2, W=6, n_c=3, s=3, bias=False, activation="sigmoid",
                         boundary="periodic", x_dtype="uint8", x_scale=100.0,
                         conv_scale=10.0, cls_scale=100.0, labels="one_class",
                         seed=4677),
         method="direct")
# found by the long run: orders 1.18, 1.36, 1.58, 1.76, 1.87 rising to 2
# before the errors reach the noise (saturated sigmoid logits, cls_scale
# 100): a right gradient outside its asymptotic regime, once judged "first
# order" by a median-of-the-tail rule
@example(problem=Problem(N=1, C=3, H=3, W=3, k=3, n_c=3, s=3, bias=False,
                         activation="sigmoid", x_dtype="uint8", conv_scale=0.1,
                         cls_scale=100.0, labels="single_pixel", seed=1779),
         method="direct")
# found by the long run: a first-order error of 2e-9, far within the
# gradient's tolerance of 4e-7 (the verdict now weighs it)
@example(problem=Problem(N=2, C=1, H=2, W=7, k=1, n_c=3, s=1, bias=False,
                         x_dtype="uint8", x_scale=1000.0, conv_scale=0.1,
                         cls_scale=100.0, labels="single_pixel", seed=65536),
         method="direct")
@given(problem=problems(x_dtypes=("float64", "uint8", "int16", "bool"),
                        p_dtypes=("float64",), scales=MODERATE_SCALES,
                        labels=LABELS[:4], weights=WEIGHTS[:4], **LABEL_KWARGS),
       method=st.sampled_from(("direct", "fft")))
def test_gradient_passes_taylor_check(problem, method):
    arrays = problem.arrays()
    x, labels, p, cw = arrays
    # E = 0 identically when no pixel counts (test_loss_is_finite_and_nonnegative)
    assume(problem.counted(labels, cw))
    theta = tuple(as64(a) for a in p)

    def loss_and_grad(q):
        return arrseg.loss_and_grad(x, labels, arrseg.Params(*q), class_weight=cw,
                                    ignore_index=problem.ignore_index,
                                    **options(problem, method))

    def loss_of(q):
        return float(loss_and_grad(q)[0])

    _, grads = loss_and_grad(theta)
    ref, tol = referenced(problem, arrays)
    v = unit_direction(theta, problem.seed + 1)
    h0 = 1.0
    if problem.activation == "relu":
        h0 = min(h0, relu_step_limit(problem, arrays, ref, v))
        assume(h0 > 1e-9)
    # an order is read from two differences of losses, each within 2 tol.loss
    # of the exact one: above 10 tol.loss it is known to about +-0.3
    result = taylor(loss_of, theta, tuple(map(as64, grads)), v, h0,
                    noise=10 * tol.loss)
    note(str(result))
    verdict = result.verdict()
    if verdict == "first order":
        # a first-order term within the gradient's own tolerance (an
        # ill-conditioned problem: uint8 images of 1000, logits of 100) is
        # round-off, not a wrong gradient: |<g - g_exact, v>| <= sum tol |v|
        slope_tol = sum(t * float(np.abs(d).sum())
                        for t, d in zip(tol.grads, v) if d is not None)
        if result.first[-1] / result.h[-1] <= slope_tol:
            verdict = "first order within the gradient's tolerance"
    event(f"Taylor check: {verdict}")
    assert verdict != "first order", str(result)


def test_taylor_check_detects_a_wrong_gradient():
    # the check above would catch a gradient 1% off in one block
    problem = Problem(N=2, C=2, H=6, W=5, k=3, n_c=3, s=3, seed=4)
    arrays = problem.arrays()
    x, labels, p, _ = arrays
    theta = tuple(as64(a) for a in p)

    def loss_of(q):
        return float(arrseg.loss_and_grad(x, labels, arrseg.Params(*q))[0])

    _, grads = arrseg.loss_and_grad(x, labels, arrseg.Params(*theta))
    v = unit_direction(theta, 0)
    tol = tolerances(problem, arrays, reference_solution(problem, arrays))
    right = taylor(loss_of, theta, tuple(map(as64, grads)), v, 1.0, 10 * tol.loss)
    assert right.verdict() == "second order", str(right)
    wrong = (grads[0] * 1.01,) + tuple(map(as64, grads[1:]))
    assert taylor(loss_of, theta, wrong, v, 1.0, 10 * tol.loss).verdict() == "first order"


# --- direct, FFT and fused agree (with the reference) ------------------------

@given(problem=problems(max_side=10, **LABEL_KWARGS),
       backend=st.sampled_from(BACKEND_METHODS))
def test_methods_agree_with_the_reference(problem, backend):
    name, method = backend
    xp = namespace(name)
    arrays = problem.arrays()
    ref, tol = referenced(problem, arrays)
    x, labels, params, cw = call_args(problem, xp, arrays)
    P = arrseg.predict_proba(x, params, **options(problem, method))
    loss, grads = arrseg.loss_and_grad(x, labels, params, class_weight=cw,
                                       ignore_index=problem.ignore_index,
                                       **options(problem, method))
    assert_results(P, loss, grads, ref, tol, problem, xp=xp, label=f"{name}/{method}")
    assert_distribution(P, problem)


# up to 17 pixels a side: two tile rows and two tile columns (8 x 16)
@given(problem=fused_problems(max_side=17, **LABEL_KWARGS))
def test_fused_path_agrees_with_the_reference(emulated_kernels, problem):
    arrays = problem.arrays()
    x, labels, p, cw = arrays
    assert supports(x.shape, p[0].shape, problem.n_c, problem.dtype)[0]
    ref, tol = referenced(problem, arrays)
    params = arrseg.Params(*p)
    with core.fused_kernels_on_numpy(emulated_kernels):
        # "auto" picks the fused kernels wherever they apply
        P = arrseg.predict_proba(x, params, **options(problem, "auto"))
        loss, grads = arrseg.loss_and_grad(x, labels, params, class_weight=cw,
                                           ignore_index=problem.ignore_index,
                                           **options(problem, "fused"))
    assert_results(P, loss, grads, ref, tol, problem, label="fused")
    assert_distribution(P, problem)


# --- periodic translation equivariance ---------------------------------------

@given(problem=problems(boundaries=("periodic",), **LABEL_KWARGS),
       shift=st.tuples(st.integers(-13, 13), st.integers(-13, 13)),
       backend=st.sampled_from(BACKEND_METHODS))
def test_periodic_network_is_translation_equivariant(problem, shift, backend):
    name, method = backend
    xp = namespace(name)
    arrays = problem.arrays()
    ref, tol = referenced(problem, arrays)
    x, labels, params, cw = call_args(problem, xp, arrays)
    x_s = put(xp, np.roll(arrays[0], shift, axis=(2, 3)))
    labels_s = put(xp, np.roll(arrays[1], shift, axis=(1, 2)))
    opts = options(problem, method)
    P = to_numpy(arrseg.predict_proba(x, params, **opts))
    P_s = arrseg.predict_proba(x_s, params, **opts)
    # both are within tol.P of the exact values, which are equivariant
    assert_within(P_s, np.roll(P, shift, axis=(2, 3)), 2 * tol.P, "rolled P", xp=xp,
                  dtype=problem.out_dtype)
    kwargs = dict(class_weight=cw, ignore_index=problem.ignore_index, **opts)
    loss, grads = arrseg.loss_and_grad(x, labels, params, **kwargs)
    loss_s, grads_s = arrseg.loss_and_grad(x_s, labels_s, params, **kwargs)
    assert_within(loss_s, to_numpy(loss), 2 * tol.loss, "loss of rolled labels", xp=xp)
    for name_, g_s, g, t in zip(NAMES, grads_s, grads, tol.grads):
        if g is None or (tol.kink and name_ in ("K", "b")):
            continue
        assert_within(g_s, to_numpy(g), 2 * t, f"d{name_} of rolled labels", xp=xp)


# --- namespace and dtype are kept ---------------------------------------------

@given(problem=problems(max_side=6, max_k=4, labels=LABELS[:2], **LABEL_KWARGS),
       backend=st.sampled_from(("numpy", "array_api_strict", "torch")))
def test_namespace_and_dtype_are_kept(problem, backend):
    xp = namespace(backend)
    arrays = problem.arrays()
    ref = reference_solution(problem, arrays)
    # the tolerance of the documented compute dtype: a float32 evaluation of
    # a float64 problem would exceed it wherever the problem is not
    # trivially conditioned
    tol = tolerances(problem, arrays, ref)
    describe(problem, tol)
    x, labels, params, cw = call_args(problem, xp, arrays)
    P = arrseg.predict_proba(x, params, **options(problem, "auto"))
    loss, grads = arrseg.loss_and_grad(x, labels, params, class_weight=cw,
                                       ignore_index=problem.ignore_index,
                                       **options(problem, "auto"))
    assert tuple(P.shape) == (problem.N, problem.n_c, problem.H, problem.W)
    assert tuple(loss.shape) == ()
    assert P.dtype == getattr(xp, problem.out_dtype)
    assert loss.dtype == getattr(xp, problem.p_dtype)
    for g, a in zip(grads, params):
        assert (g is None) == (a is None)
        if g is not None:
            assert g.dtype == a.dtype and tuple(g.shape) == tuple(a.shape)
    assert_results(P, loss, grads, ref, tol, problem, xp=xp, label=backend)


# --- minimal reproductions of what the properties found -----------------------
#
# Each passes when the call gives the exact answer, or a NonFiniteError that
# names the quantity that overflowed (the contract of arrseg/overflow.py).

def answer_or_named_error(compute, check):
    """check(compute()), unless compute() raises a NonFiniteError that names
    a quantity and does not advise the method that failed."""
    try:
        result = compute()
    except arrseg.NonFiniteError as err:
        message = str(err).lower()
        assert any(q in message for q in QUANTITIES), f"unnamed quantity: {err}"
        assert "defect" not in message, str(err)
        return
    check(result)


@pytest.mark.parametrize("method", ["direct", "auto"])
def test_blocked_float32_tanh_takes_kernels_up_to_the_largest_float(method):
    # z = K x + b = 2e38 * 0 + 0 = 0 exactly: tanh 0 = 0, logits (0, 0)
    x = np.zeros((1, 1, 1, 1), np.float32)
    params = arrseg.Params(K=np.full((1, 1, 1, 1), 2e38, np.float32),
                           b=np.zeros(1, np.float32),
                           W=np.array([[1.0, -1.0]], np.float32))
    labels = np.zeros((1, 1, 1), np.int64)
    assert arrseg.predict_proba(x, params, method="fft").ravel().tolist() == [0.5, 0.5]
    answer_or_named_error(
        lambda: arrseg.predict_proba(x, params, method=method),
        lambda P: np.testing.assert_array_equal(P.ravel(), [0.5, 0.5]))
    answer_or_named_error(
        lambda: arrseg.loss_and_grad(x, labels, params, method=method)[0],
        lambda loss: np.testing.assert_allclose(float(loss), math.log(2), rtol=1e-6))


def test_fused_logits_do_not_overflow_where_the_exact_ones_are_finite(emulated_kernels):
    # one of FUSED_CONFIGS (no compilation): features y = tanh(20) = 1, exact
    # logits S = W^T y + c = (1e308 - 1e308) + (1e308, 0, 0) = (1e308, 0, 0);
    # summed from c on, c_0 + W_00 y_0 = 2e308 overflows
    x = np.zeros((1, 2, 1, 1))
    W = np.zeros((4, 3))
    W[0, 0], W[1, 0] = 1e308, -1e308
    params = arrseg.Params(K=np.zeros((4, 2, 3, 3)), b=np.full(4, 20.0), W=W,
                           c=np.array([1e308, 0.0, 0.0]))
    labels = np.zeros((1, 1, 1), np.int64)
    assert arrseg.predict_proba(x, params, method="fft").ravel().tolist() == [1, 0, 0]
    with core.fused_kernels_on_numpy(emulated_kernels):
        answer_or_named_error(
            lambda: arrseg.predict_proba(x, params, method="fused"),
            lambda P: np.testing.assert_array_equal(P.ravel(), [1, 0, 0]))
        answer_or_named_error(
            lambda: arrseg.loss_and_grad(x, labels, params, method="fused")[0],
            lambda loss: np.testing.assert_array_equal(float(loss), 0.0))


@pytest.mark.parametrize("backend, method", [
    ("array_api_strict", "direct"),  # the array-API reference: the control
    ("numpy", "direct"),
    ("numpy", "fused"),
    ("numpy", "fft"),
])
def test_a_finite_mean_gradient_does_not_overflow_as_a_sum(emulated_kernels, backend,
                                                          method):
    # one of FUSED_CONFIGS (no compilation): y = 1e-19 * 1e19 = 1 at 4 pixels,
    # logits (1e19, 0), all labelled 1: loss 1e19, and
    # dK[0, 0, 1, 1] = mean of x * W_00 * (P_0 - 0) = 1e19 * 1e19 = 1e38,
    # whose sum over the pixels, 4e38, is beyond float32's 3.4e38
    xp = namespace(backend)
    x = np.zeros((1, 2, 1, 4), np.float32)
    x[0, 0] = 1e19
    K = np.zeros((5, 2, 3, 3), np.float32)
    K[0, 0, 1, 1] = 1e-19
    W = np.zeros((5, 2), np.float32)
    W[0, 0] = 1e19
    params = arrseg.Params(*(put(xp, a) for a in (K, np.zeros(5, np.float32), W,
                                                   np.zeros(2, np.float32))))
    labels = put(xp, np.ones((1, 1, 4), np.int64))

    def check(result):
        loss, grads = result
        np.testing.assert_allclose(float(loss), 1e19, rtol=1e-5)
        np.testing.assert_allclose(float(to_numpy(grads.K)[0, 0, 1, 1]), 1e38,
                                   rtol=1e-5)

    with core.fused_kernels_on_numpy(emulated_kernels):
        answer_or_named_error(lambda: arrseg.loss_and_grad(
            put(xp, x), labels, params, activation="identity", boundary="periodic",
            method=method), check)


@pytest.mark.parametrize("spectrum", ["image", "kernel"])
def test_fft_pre_activations_overflowing_in_the_transform_are_named(spectrum):
    # the exact pre-activations are at most 3e38 < 3.4e38; the transform's
    # sums are not. The answer: a distribution (the FFT's error is relative
    # to the largest value, so not necessarily the direct method's P) or a
    # NonFiniteError naming the quantity
    if spectrum == "image":    # z = K x = (0, 0, 3e38)
        x = np.zeros((1, 1, 1, 3), np.float32)
        x[0, 0, 0, 2] = 3e9
        K = np.full((1, 1, 1, 1), 1e29, np.float32)
    else:                      # one pixel: z = the centre tap = 1.5e38
        x = np.ones((1, 1, 1, 1), np.float32)
        K = np.full((1, 1, 3, 3), 1.5e38, np.float32)
    params = arrseg.Params(K=K, b=np.zeros(1, np.float32),
                           W=np.array([[1.0, -1.0]], np.float32))
    problem = Problem(W=x.shape[3], x_dtype="float32", p_dtype="float32")
    answer_or_named_error(lambda: arrseg.predict_proba(x, params, method="fft"),
                          lambda P: assert_distribution(P, problem))
