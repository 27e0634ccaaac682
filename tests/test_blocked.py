"""The NumPy fast path (arrseg.cpu.blocked) against the generic array-API path.

The public functions run the blocked path on NumPy arrays with
method="direct"; the generic path (arrseg.numerics.forward_backward) is the
specification it must match. Block boundaries, partial blocks, thread counts
and the thrown-away padding columns are what can go wrong here, so the
tests force small blocks and several threads.
"""

import tracemalloc

import array_api_compat.numpy as xp
import numpy as np
import pytest

import arrseg
from arrseg.cpu import blocked, threads
from arrseg.numerics import forward_backward
from arrseg.testing import assert_close

ACTIVATIONS = ["tanh", "relu", "sigmoid", "identity"]
BOUNDARIES = ["zeros", "periodic"]


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n}threads")
def n_threads(request, monkeypatch):
    monkeypatch.setenv("ARRSEG_NUM_THREADS", str(request.param))
    return request.param


@pytest.fixture(params=[None, 64], ids=["one-block", "small-blocks"])
def block_bytes(request, monkeypatch):
    # 64 bytes -> the minimum of 1024 pixels per block: several blocks per
    # image, the last one partial
    if request.param is not None:
        monkeypatch.setattr(blocked, "TARGET_BLOCK_BYTES", request.param)
        monkeypatch.setattr(blocked, "MIN_BLOCK_PIXELS", 1024)
    return request.param


def problem(rng, N, C, H, W, k, n_c, s, dtype, *, bias=True, scale=1.0):
    x = (scale * rng.standard_normal((N, C, H, W))).astype(dtype)
    params = arrseg.init_params(C, k, n_c, s, dtype=dtype, bias=bias,
                                seed=int(rng.integers(1000)))
    labels = rng.integers(0, n_c, (N, H, W))
    labels[rng.random((N, H, W)) < 0.2] = -100
    return x, params, labels


CASES = [
    # N, C, H, W, k, n_c, s
    (2, 3, 45, 37, 5, 3, 3),
    (1, 1, 50, 30, 4, 2, 1),
    (3, 2, 33, 41, 6, 4, 5),
    (2, 3, 9, 4, 3, 3, 7),  # halo wider than the image
    (1, 4, 70, 16, 8, 5, 7),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_matches_generic_path_float64(rng, case, boundary, n_threads, block_bytes):
    N, C, H, W, k, n_c, s = case
    x, params, labels = problem(rng, N, C, H, W, k, n_c, s, np.float64)
    for activation in ACTIVATIONS:
        P = arrseg.predict_proba(x, params, activation=activation,
                                 boundary=boundary, method="direct")
        assert_close(P, forward_backward.forward(x, params, activation,
                                                 boundary, xp),
                     xp=xp, rtol=1e-13, atol=1e-15)
        cw = rng.random(n_c) + 0.5
        loss, grads = arrseg.loss_and_grad(x, labels, params,
                                           activation=activation,
                                           boundary=boundary, class_weight=cw,
                                           method="direct")
        want_loss, want = forward_backward.loss_and_grad(
            x, labels, params, activation, boundary, cw, -100, xp)
        assert_close(loss, want_loss, xp=xp, rtol=1e-13)
        for name, g, w in zip(params._fields, grads, want):
            assert_close(g, w, xp=xp, rtol=1e-12,
                         atol=1e-14 * float(np.abs(w).max()),
                         err_msg=f"{activation} d{name}")


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_float32_stays_float32_and_close_to_float64(rng, boundary, block_bytes):
    x, params, labels = problem(rng, 2, 3, 40, 36, 16, 4, 3, np.float32,
                                scale=3.0)
    P = arrseg.predict_proba(x, params, boundary=boundary, method="direct")
    loss, grads = arrseg.loss_and_grad(x, labels, params, boundary=boundary,
                                       method="direct")
    assert P.dtype == loss.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads)
    p64 = arrseg.Params(*(a.astype(np.float64) for a in params))
    x64 = x.astype(np.float64)
    assert_close(P, forward_backward.forward(x64, p64, "tanh", boundary, xp),
                 xp=xp, dtype="float32", rtol=0, atol=2e-6)
    want_loss, want = forward_backward.loss_and_grad(
        x64, labels, p64, "tanh", boundary, None, -100, xp)
    assert abs(float(loss) - float(want_loss)) < 1e-6 * float(want_loss)
    for g, w in zip(grads, want):
        # relative to the gradient's largest entry (float32 rounding of
        # sums over 2880 pixels)
        assert float(np.abs(g - w).max()) < 1e-5 * float(np.abs(w).max())


def test_no_bias_ignore_index_as_class_and_all_ignored(rng, block_bytes):
    x, params, labels = problem(rng, 2, 2, 30, 20, 4, 3, 3, np.float64,
                                bias=False)
    # ignore_index = 1 is a class index: that class does not count
    labels[labels == -100] = 1
    loss, grads = arrseg.loss_and_grad(x, labels, params, ignore_index=1,
                                       method="direct")
    want_loss, want = forward_backward.loss_and_grad(
        x, labels, params, "tanh", "zeros", None, 1, xp)
    assert_close(loss, want_loss, xp=xp, rtol=1e-13)
    assert grads.c is None
    for g, w in zip(grads[:3], want[:3]):
        assert_close(g, w, xp=xp, rtol=1e-12, atol=1e-15)
    # no pixel counts: loss and gradient are 0, not NaN
    loss, grads = arrseg.loss_and_grad(x, np.full_like(labels, -100), params,
                                       method="direct")
    assert float(loss) == 0 and all(not np.any(g) for g in grads[:3])


def test_same_bits_for_any_thread_count(rng, monkeypatch):
    # chunks of blocks are summed in a fixed order, whichever thread ran them
    x, params, labels = problem(rng, 4, 3, 64, 48, 8, 3, 3, np.float32)
    monkeypatch.setattr(blocked, "TARGET_BLOCK_BYTES", 64)
    results = []
    for n in (1, 2, 3, 2):
        monkeypatch.setenv("ARRSEG_NUM_THREADS", str(n))
        results.append(arrseg.loss_and_grad(x, labels, params, method="direct"))
    (l1, g1), *others = results
    for loss, grads in others:
        assert loss.tobytes() == l1.tobytes()
        assert all(a.tobytes() == b.tobytes() for a, b in zip(grads, g1))


def test_non_contiguous_inputs(rng):
    x, params, labels = problem(rng, 2, 3, 20, 24, 4, 3, 3, np.float64)
    xt = np.ascontiguousarray(np.swapaxes(x, 2, 3)).swapaxes(2, 3)  # F-order view
    lt = np.ascontiguousarray(labels.swapaxes(1, 2)).swapaxes(1, 2)
    loss, grads = arrseg.loss_and_grad(xt, lt, params, method="direct")
    want_loss, want = forward_backward.loss_and_grad(
        x, labels, params, "tanh", "zeros", None, -100, xp)
    assert_close(loss, want_loss, xp=xp, rtol=1e-13)
    assert_close(grads.K, want[0], xp=xp, rtol=1e-12, atol=1e-15)


def test_intermediates_do_not_grow_with_the_batch(rng, monkeypatch):
    # the blocked path allocates per-thread workspaces of a fixed size:
    # its peak traced memory, beyond the inputs, does not grow with N
    monkeypatch.setenv("ARRSEG_NUM_THREADS", "2")
    monkeypatch.setattr(blocked, "MAX_BLOCK_PIXELS", 2048)  # 20 rows per block
    peaks = []
    for N in (2, 8, 32):
        x, params, labels = problem(rng, N, 3, 96, 96, 16, 4, 3, np.float32)
        tracemalloc.start()
        blocked.loss_and_grad(x, labels, params, "tanh", "zeros", None, -100)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    bound = (2 * blocked.workspace_bytes(3, 96, 96, 16, 4, 3, 4)
             + blocked.partials_bytes(3, 16, 4, 3) + (1 << 18))
    assert max(peaks) <= bound, (peaks, bound)
    # the generic path keeps the (N, k, H, W) activations: at N = 32,
    # 19 MB in float32, against this bound of about 2 MB
    assert 5 * bound < 32 * 16 * 96 * 96 * 4


def test_num_threads_env(monkeypatch):
    monkeypatch.setenv("ARRSEG_NUM_THREADS", "3")
    assert threads.num_threads() == 3
    monkeypatch.setenv("ARRSEG_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="ARRSEG_NUM_THREADS must be a positive"):
        threads.num_threads()
    monkeypatch.delenv("ARRSEG_NUM_THREADS")
    assert threads.num_threads() >= 1


def test_workers_use_the_callers_errstate(monkeypatch):
    monkeypatch.setenv("ARRSEG_NUM_THREADS", "2")
    big = np.float32(3e38)

    def work(i):
        return big * np.float32(10)  # overflows

    with np.errstate(over="ignore"):
        assert np.isinf(threads.parallel_map(work, 4)).all()
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        threads.parallel_map(work, 4)


def test_worker_errors_propagate(monkeypatch):
    monkeypatch.setenv("ARRSEG_NUM_THREADS", "2")

    def work(i):
        raise RuntimeError(f"worker {i} failed")

    with pytest.raises(RuntimeError, match="worker 0 failed"):
        threads.parallel_map(work, 4)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_features_match_the_generic_path(rng, activation, boundary, block_bytes):
    x, params, _ = problem(rng, 2, 3, 37, 29, 6, 3, 5, np.float64)
    got = blocked.features(x, params.K, params.b, activation, boundary)
    want = forward_backward.features(x, params.K, params.b, activation,
                                     boundary, xp)
    assert_close(got, want, xp=xp, rtol=1e-13, atol=1e-15)


def test_concurrent_calls_restore_the_blas_threads(monkeypatch):
    # calls from two user threads run one after the other, each with BLAS on
    # one thread; afterwards BLAS has its thread count back
    import threading

    monkeypatch.setenv("ARRSEG_NUM_THREADS", "2")
    before = threads.blas_threads()
    inside = []

    def work(i):
        inside.append(threads.blas_threads())
        return i

    callers = [threading.Thread(target=threads.parallel_map, args=(work, 4))
               for _ in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(timeout=30)
    assert inside == [[1] * len(before)] * 12
    assert threads.blas_threads() == before
