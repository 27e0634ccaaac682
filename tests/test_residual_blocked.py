"""The NumPy path of the residual network (arrseg.cpu.residual)
against the array-API reference, and against PyTorch's autograd.

The public functions run the blocked path on NumPy arrays with
method="direct" at depth > 0; the array-API code
(arrseg.numerics.forward_backward with numerics.residual) is the
specification it must match. What can go wrong here: block and band edges,
halos wider than a block or than the image, the pads of the periodic
boundary, the symmetric layer's adjoint, thread counts. So the tests force
small blocks and bands and run on 1 and 2 threads.
"""

import tracemalloc

import array_api_compat.numpy as xp
import numpy as np
import pytest

import arrseg
from arrseg.core import Options
from arrseg.cpu import residual as residual_blocked
from arrseg.cpu.residual import layers as residual_layers, prediction as residual_prediction
from arrseg.numerics import forward_backward
from arrseg.numerics.residual import Trunk, receptive_halo
from arrseg.testing import assert_close

ACTIVATIONS = ["tanh", "relu", "sigmoid", "identity"]
BOUNDARIES = ["zeros", "periodic"]
LAYERS = ["residual", "symmetric"]


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}threads")
def n_threads(request, monkeypatch):
    monkeypatch.setenv("ARRSEG_NUM_THREADS", str(request.param))
    return request.param


@pytest.fixture(params=["whole", "small"], ids=["whole-images", "small-blocks-bands"])
def blocking(request, monkeypatch):
    # "small": one or two rows per block and the narrowest bands the halo
    # allows (2 x halo rows), so that halos span several blocks and bands;
    # the products in slices of 4 pixels (batched, with a remainder slice
    # where a block's pixels are not a multiple of 4)
    if request.param == "small":
        small_slices(monkeypatch)
        monkeypatch.setattr(residual_layers, "BLOCK_PIXELS", 16)
        monkeypatch.setattr(residual_prediction, "BAND_BYTES", 64)
    return request.param


def small_slices(monkeypatch):
    """matmul_columns and matmul_slices in slices of 4 pixels."""
    monkeypatch.setattr(residual_layers, "SMALL_GEMM", 1)
    monkeypatch.setattr(residual_layers, "MIN_SLICE", 4)
    monkeypatch.setattr(residual_layers, "INNER_SLICE", 4)


def problem(rng, N, C, H, W, k, n_c, s, s_r, depth, dtype, *, bias=True, scale=1.0):
    x = (scale * rng.standard_normal((N, C, H, W))).astype(dtype)
    params = arrseg.init_params(C, k, n_c, s, depth=depth, layer_kernel_size=s_r,
                                dtype=dtype, bias=bias, seed=int(rng.integers(1000)))
    # nonzero biases, so that their gradients and the bias row are tested
    params = params._replace(
        b=(0.3 * rng.standard_normal(k)).astype(dtype),
        b_layers=(0.3 * rng.standard_normal((depth, k))).astype(dtype))
    labels = rng.integers(0, n_c, (N, H, W))
    labels[rng.random((N, H, W)) < 0.2] = -100
    return x, params, labels


CASES = [
    # N, C, H, W, k, n_c, s, s_r, dilation
    (2, 3, 23, 13, 4, 3, 3, 3, (1, 2, 4)),      # halo 8 > one-row blocks
    (1, 2, 37, 11, 3, 2, 5, 3, (3, 1)),         # several bands, odd sizes
    (3, 1, 9, 16, 5, 4, 1, 5, (2,)),            # 1x1 opening, s_r = 5
    (2, 2, 5, 6, 3, 3, 3, 5, (3, 1)),           # halo wider than the image
]


def reference(x, labels, params, activation, boundary, trunk, class_weight,
              ignore_index=-100):
    P = forward_backward.forward(x, params, activation, boundary, xp, trunk=trunk)
    loss, grads = forward_backward.loss_and_grad(
        x, labels, params, activation, boundary, class_weight, ignore_index, xp,
        trunk=trunk)
    return P, loss, grads


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:8])) + f"d{c[8]}")
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("layer", LAYERS)
def test_matches_reference_float64(rng, case, boundary, layer, n_threads, blocking):
    N, C, H, W, k, n_c, s, s_r, dilation = case
    x, params, labels = problem(rng, N, C, H, W, k, n_c, s, s_r, len(dilation),
                                np.float64)
    trunk = Trunk(dilation, 0.7, layer)
    options = dict(boundary=boundary, dilation=dilation, step=0.7, layer=layer,
                   method="direct")
    for activation in ACTIVATIONS:
        cw = rng.random(n_c) + 0.5
        P_ref, loss_ref, grads_ref = reference(x, labels, params, activation,
                                               boundary, trunk, cw)
        P = arrseg.predict_proba(x, params, activation=activation, **options)
        assert_close(P, P_ref, xp=xp, rtol=1e-12, atol=1e-14,
                     err_msg=f"{activation} P")
        loss, grads = arrseg.loss_and_grad(x, labels, params, activation=activation,
                                           class_weight=cw, **options)
        assert isinstance(grads, arrseg.ResidualParams)
        assert_close(loss, loss_ref, xp=xp, rtol=1e-12)
        for name, g, w in zip(params._fields, grads, grads_ref):
            assert_close(g, w, xp=xp, rtol=1e-11,
                         atol=1e-13 * float(np.abs(w).max()),
                         err_msg=f"{activation} d{name}")


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("layer", LAYERS)
def test_features_match_reference(rng, boundary, layer, blocking):
    x, params, _ = problem(rng, 2, 3, 29, 17, 4, 3, 3, 3, 3, np.float64)
    options = Options("sigmoid", boundary, "direct", (1, 4, 2), 0.5, layer)
    layers = (params.K_layers, params.b_layers)
    got = residual_blocked.features(x, params.K, params.b, layers, options)
    want = forward_backward.features(x, params.K, params.b, "sigmoid", boundary, xp,
                                     layers=layers, trunk=options.trunk)
    assert got.shape == (2, 4, 29 * 17)
    assert_close(got, want, xp=xp, rtol=1e-13, atol=1e-14)


def test_no_bias_ignore_index_as_class_and_all_ignored(rng, blocking):
    x, params, labels = problem(rng, 2, 2, 15, 12, 4, 3, 3, 3, 2, np.float64,
                                bias=False)
    labels[labels == -100] = 1  # ignore_index = 1 is a class: it does not count
    trunk = Trunk((1, 2), 1.0, "residual")
    loss, grads = arrseg.loss_and_grad(x, labels, params, ignore_index=1,
                                       dilation=(1, 2), method="direct")
    _, want_loss, want = reference(x, labels, params, "tanh", "zeros", trunk, None, 1)
    assert_close(loss, want_loss, xp=xp, rtol=1e-12)
    assert grads.c is None
    for g, w in zip(grads, want):
        if w is not None:
            assert_close(g, w, xp=xp, rtol=1e-11, atol=1e-15)
    # no pixel counts: loss and gradient are 0, not NaN
    loss, grads = arrseg.loss_and_grad(x, np.full_like(labels, -100), params,
                                       dilation=(1, 2), method="direct")
    assert float(loss) == 0
    assert all(not np.any(g) for g in grads if g is not None)


@pytest.mark.parametrize("layer", LAYERS)
def test_float32_stays_float32_and_close_to_float64(rng, layer, blocking):
    x, params, labels = problem(rng, 2, 3, 40, 36, 8, 4, 3, 3, 3, np.float32,
                                scale=2.0)
    options = dict(dilation=(1, 2, 4), step=0.5, layer=layer, method="direct")
    P = arrseg.predict_proba(x, params, **options)
    loss, grads = arrseg.loss_and_grad(x, labels, params, **options)
    assert P.dtype == loss.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads)
    p64 = arrseg.ResidualParams(*(a.astype(np.float64) for a in params))
    P64, loss64, grads64 = reference(x.astype(np.float64), labels, p64, "tanh",
                                     "zeros", Trunk((1, 2, 4), 0.5, layer), None)
    assert float(np.abs(P - P64).max()) < 1e-5
    assert abs(float(loss) - float(loss64)) < 1e-5 * float(loss64)
    for name, g, w in zip(params._fields, grads, grads64):
        # relative to the gradient's largest entry: float32 sums of 2880 pixels
        assert float(np.abs(g - w).max()) < 2e-5 * float(np.abs(w).max()), name


@pytest.mark.parametrize("layer", LAYERS)
def test_same_bits_for_any_thread_count(rng, layer, monkeypatch):
    # per pass, blocks are grouped into chunks fixed by the shapes, and the
    # chunks' sums are added in order, whichever thread ran them
    x, params, labels = problem(rng, 3, 3, 40, 24, 8, 3, 3, 3, 3, np.float32)
    monkeypatch.setattr(residual_layers, "BLOCK_PIXELS", 48)
    monkeypatch.setattr(residual_prediction, "BAND_BYTES", 64)
    small_slices(monkeypatch)
    options = dict(boundary="periodic", dilation=(1, 2, 4), layer=layer, method="direct")
    results = []
    for n in (1, 2, 3, 2):
        monkeypatch.setenv("ARRSEG_NUM_THREADS", str(n))
        P = arrseg.predict_proba(x, params, **options)
        results.append((P, *arrseg.loss_and_grad(x, labels, params, **options)))
    (P1, l1, g1), *others = results
    for P, loss, grads in others:
        assert P.tobytes() == P1.tobytes()
        assert loss.tobytes() == l1.tobytes()
        assert all(a.tobytes() == b.tobytes() for a, b in zip(grads, g1))


@pytest.mark.parametrize("layer", LAYERS)
def test_tape_of_a_periodic_call_reused_by_a_zeros_call(rng, layer, monkeypatch):
    # a training call leaves its arrays to the next one (layers.Tape): the
    # wrapped pads and the interior of a periodic call must not leak into a
    # zero-padded call of the same shapes
    x, params, labels = problem(rng, 2, 3, 21, 14, 4, 3, 3, 3, 2, np.float64)
    options = dict(dilation=(1, 2), step=0.7, layer=layer, method="direct")
    arrseg.loss_and_grad(x + 5, labels, params, boundary="periodic", **options)
    spares = [id(a[0]) for a in residual_layers.Tape._spares]
    assert spares
    loss, grads = arrseg.loss_and_grad(x, labels, params, boundary="zeros", **options)
    assert set(spares) & {id(a[0]) for a in residual_layers.Tape._spares}  # reused
    _, want_loss, want = reference(x, labels, params, "tanh", "zeros",
                                   Trunk((1, 2), 0.7, layer), None)
    assert_close(loss, want_loss, xp=xp, rtol=1e-12)
    for name, g, w in zip(params._fields, grads, want):
        assert_close(g, w, xp=xp, rtol=1e-11, atol=1e-13 * float(np.abs(w).max()),
                     err_msg=f"d{name}")
    # the spares kept are at most SPARE_BYTES
    limit = 5 * 4 * 25 * 18 * 8
    monkeypatch.setattr(residual_layers, "SPARE_BYTES", limit)
    arrseg.loss_and_grad(x, labels, params, **options)
    kept = sum(a[0].nbytes for a in residual_layers.Tape._spares)
    assert 0 < kept <= limit


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_matches_pytorch_autograd(rng, layer, boundary):
    # an independent reference: PyTorch's dilated convolutions and autograd
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    N, C, H, W, k, n_c, dilation, h = 2, 3, 17, 14, 4, 3, (1, 3), 0.6
    x, params, labels = problem(rng, N, C, H, W, k, n_c, 3, 3, 2, np.float64)
    mode = "zeros" if boundary == "zeros" else "circular"
    t = [torch.tensor(np.asarray(a), requires_grad=True) for a in params]

    def conv(Y, K, b, d, transpose=False):
        Y = F.pad(Y, (d,) * 4, mode="constant" if mode == "zeros" else mode)
        if transpose:  # the adjoint of the padded convolution
            return F.conv2d(Y, K.transpose(0, 1).flip(2, 3), b, dilation=d)
        return F.conv2d(Y, K, b, dilation=d)

    Y = torch.tanh(conv(torch.tensor(x), t[0], t[1], 1))
    for j, d in enumerate(dilation):
        A = torch.tanh(conv(Y, t[4][j], t[5][j], d))
        Y = Y - h * conv(A, t[4][j], None, d, True) if layer == "symmetric" else Y + h * A
    S = F.conv2d(Y, t[2].T[:, :, None, None], t[3])
    loss = F.cross_entropy(S, torch.tensor(labels), ignore_index=-100)
    loss.backward()
    got_loss, grads = arrseg.loss_and_grad(x, labels, params, boundary=boundary,
                                           dilation=dilation, step=h, layer=layer,
                                           method="direct")
    P = arrseg.predict_proba(x, params, boundary=boundary, dilation=dilation, step=h,
                             layer=layer, method="direct")
    assert_close(P, torch.softmax(S, 1).detach().numpy(), xp=xp, rtol=1e-12,
                 atol=1e-14)
    assert abs(float(got_loss) - loss.item()) < 1e-12 * loss.item()
    for name, g, a in zip(params._fields, grads, t):
        assert_close(g, a.grad.numpy(), xp=xp, rtol=1e-10,
                     atol=1e-13 * float(a.grad.abs().max()), err_msg=name)


def test_method_direct_on_numpy_dispatches_here(rng, monkeypatch):
    x, params, labels = problem(rng, 1, 2, 12, 10, 3, 2, 3, 3, 2, np.float64)
    calls = []

    def spy(name):
        real = getattr(residual_blocked, name)

        def wrapper(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        monkeypatch.setattr(residual_blocked, name, wrapper)

    for name in ("forward", "loss_and_grad", "features"):
        spy(name)
    arrseg.predict_proba(x, params, dilation=(1, 2), method="direct")
    arrseg.loss_and_grad(x, labels, params, dilation=(1, 2), method="direct")
    from arrseg import core
    core.features(x, params.K, params.b, Options(method="direct", dilation=(1, 2)),
                  xp, layers=(params.K_layers, params.b_layers))
    assert calls == ["forward", "loss_and_grad", "features"]


def test_prediction_memory_does_not_grow_with_the_height(rng, monkeypatch):
    # bands of rows through every layer: the intermediates (peak traced
    # memory beyond the output P: the threads' band buffers and im2col
    # blocks) stay about the same for 32 times the rows
    monkeypatch.setenv("ARRSEG_NUM_THREADS", "2")
    monkeypatch.setattr(residual_prediction, "BAND_BYTES", 1 << 16)
    dilation = (1, 2, 4)
    assert receptive_halo(3, 3, dilation) == 8
    peaks = []
    for H in (64, 2048):
        x, params, _ = problem(rng, 2, 3, H, 48, 8, 3, 3, 3, 3, np.float32)
        options = Options("tanh", "zeros", "direct", dilation, 1.0, "residual")
        tracemalloc.start()
        P = residual_blocked.forward(x, params, options)
        peaks.append(tracemalloc.get_traced_memory()[1] - P.nbytes)
        tracemalloc.stop()
    assert peaks[1] < 2 * peaks[0], peaks
    # one (N, k, H, W) array of features at H = 2048 is 6.3 MB
    assert peaks[1] < 0.4 * 2 * 8 * 2048 * 48 * 4, peaks


def test_bands_are_balanced_and_keep_the_result(rng, monkeypatch):
    # one 64-row image: one band by the buffer, four by the balancing; the
    # probabilities equal those of one band (and of the array-API reference)
    balanced = residual_prediction._balanced_rows
    assert balanced(1, 512, 512, 8) == 128            # 4 bands of 4 halos
    assert balanced(1, 1040, 484, 8) == 260           # 3 bands -> 4
    assert balanced(2, 512, 256, 8) == 256            # 4 bands already
    assert balanced(1, 60, 60, 8) == 60               # thinner than 4 halos: kept
    x, params, _ = problem(rng, 1, 3, 64, 20, 4, 3, 3, 3, 2, np.float64)
    options = dict(dilation=(1, 2), method="direct")
    P = arrseg.predict_proba(x, params, **options)
    monkeypatch.setattr(residual_prediction, "BAND_MULTIPLE", 1)
    whole = arrseg.predict_proba(x, params, **options)
    ref = arrseg.predict_proba(x, params, method="fft", dilation=(1, 2))
    np.testing.assert_allclose(P, whole, rtol=0, atol=1e-14)
    np.testing.assert_allclose(P, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sliced_products_match_float64(rng, dtype, monkeypatch):
    # matmul_columns: one batched matmul over whole column slices plus the
    # remainder; matmul_slices: products of slices of the summed dimension,
    # summed; both against a float64 product, with and without a remainder
    small_slices(monkeypatch)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    for n in (4, 12, 13, 3):
        A = rng.standard_normal((5, 7)).astype(dtype)
        B = rng.standard_normal((7, n)).astype(dtype)
        out = np.full((5, n), np.nan, dtype)
        residual_layers.matmul_columns(A, B, out)
        want = A.astype(np.float64) @ B.astype(np.float64)
        assert np.abs(out - want).max() < tol * np.abs(want).max()
        C = rng.standard_normal((6, n)).astype(dtype)
        D = rng.standard_normal((n, 3)).astype(dtype)
        got = residual_layers.matmul_slices(C, D)
        want = C.astype(np.float64) @ D.astype(np.float64)
        assert got.dtype == np.float64 and got.shape == (6, 3)
        assert np.abs(got - want).max() < tol * max(np.abs(want).max(), 1.0)
