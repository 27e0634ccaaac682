"""Prediction on dask arrays (arrseg.dask.predict_proba / predict, and the
Segmenter on dask input) equals arrseg.predict_proba on the computed array,
for both boundaries, at any depth and in any chunks; the halo machinery
(arrseg.dask.halo) against NumPy slicing and wrapping."""

import re

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import arrseg  # noqa: E402
import arrseg.dask  # noqa: E402
from arrseg.dask import halo  # noqa: E402
from arrseg.params import params_like  # noqa: E402
from arrseg.segmenter import NotFittedError, Segmenter  # noqa: E402


def raises(exc, *words):
    return pytest.raises(exc, match=".*".join(map(re.escape, words)))


def compute(a):
    return a.compute(scheduler="sync")


def problem(rng, *, N=2, C=3, H=13, W=11, s=3, depth=0, n_c=3, dtype="float64"):
    """Images and parameters with nonzero biases and strong kernels, so that
    a missing halo or a wrong padding changes the answer."""
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    p = arrseg.init_params(C, 4, n_c, s, depth=depth, seed=int(rng.integers(1000)),
                           dtype=dtype)
    p = p._replace(K=p.K * 2, b=rng.standard_normal(4).astype(dtype),
                   c=rng.standard_normal(n_c).astype(dtype))
    if depth:
        p = p._replace(K_layers=p.K_layers * 3,
                       b_layers=rng.standard_normal((depth, 4)).astype(dtype))
    return x, p


def tolerance(dtype):
    return ({"rtol": 1e-5, "atol": 1e-5} if dtype == "float32"
            else {"rtol": 1e-12, "atol": 1e-12})


# -- the halo, against NumPy ---------------------------------------------------


@pytest.mark.parametrize("chunks, width, want", [
    ((4, 4, 3), 3, (4, 4, 3)),          # all wide enough: kept
    ((1, 1, 1, 1, 1), 2, (2, 3)),       # merged; the last run joins its left
    ((5, 1, 5), 2, (5, 6)),
    ((1, 1), 5, (2,)),                  # narrower than the width: one chunk
    ((0, 3, 0, 2), 0, (0, 3, 0, 2)),    # width 0: nothing to merge
    ((0, 3, 0, 2), 1, (3, 2)),          # empty chunks merged away
])
def test_at_least(chunks, width, want):
    got = halo._at_least(chunks, width)
    assert got == want
    assert sum(got) == sum(chunks)


def test_plan():
    h = halo.plan(((3, 3, 1), (2, 2)), (7, 4), 2, "zeros")
    assert (h.width, h.periodic, h.whole, h.boundary) == (2, False, False, "zeros")
    assert h.chunks == ((3, 4), (2, 2))
    h = halo.plan(((1,) * 7, (4,)), (7, 4), 3, "periodic")
    assert (h.periodic, h.whole, h.boundary, h.chunks) == (True, False, "zeros",
                                                           ((3, 4), (4,)))
    # periodic and narrower than the halo in W: one block per image, no halo
    h = halo.plan(((3, 4), (2, 2)), (7, 4), 5, "periodic")
    assert (h.whole, h.width, h.boundary, h.chunks) == (True, 0, "periodic",
                                                        ((7,), (4,)))
    # zeros and narrower than the halo: one chunk, no Dask wrap needed
    h = halo.plan(((3, 4), (2, 2)), (7, 4), 5, "zeros")
    assert (h.whole, h.chunks) == (False, ((7,), (4,)))


def test_sides():
    h = halo.Halo(2, False, ((3, 3, 3), (5,)))
    assert halo.sides(h, 0, 0) == ((0, 2), (0, 0))
    assert halo.sides(h, 1, 0) == ((2, 2), (0, 0))
    assert halo.sides(h, 2, 0) == ((2, 0), (0, 0))
    h = halo.Halo(2, True, ((3, 3, 3), (5,)))
    assert halo.sides(h, 0, 0) == ((2, 2), (2, 2))
    assert halo.sides(halo.Halo(0, True, ((7,), (4,)), whole=True), 0, 0) == (
        (0, 0), (0, 0))


@pytest.mark.parametrize("boundary, chunks, width", [
    (boundary, chunks, width) for boundary in ("zeros", "periodic")
    for chunks, width in [
        (((2, 3, 2), (4, 1, 4)), 2),
        (((1,) * 7, (9,)), 3),    # chunks smaller than the halo; one chunk in W
        (((7,), (9,)), 7),        # one chunk as wide as the halo (periodic wraps it)
    ]] + [
    ("zeros", ((3, 4), (5, 4)), 8),   # narrower than the halo: Dask refuses that depth
])
def test_extend_and_trim_against_numpy(boundary, chunks, width):
    """Every haloed block is the chunk with its neighbours' pixels (zeros:
    clipped at the image edge; periodic: wrapped), and trimming it by
    sides gives the chunk back."""
    H, W = 7, 9
    a = np.arange(2 * H * W, dtype=np.float64).reshape(2, H, W)
    plan = halo.plan(chunks, (H, W), width, boundary)
    assert not plan.whole
    x = da.from_array(a, chunks=((1, 1),) + chunks)
    haloed = halo.extend(x, plan)
    p = plan.width
    wrapped = np.pad(a, ((0, 0), (p, p), (p, p)), mode="wrap")
    rows = np.cumsum((0,) + plan.chunks[0])
    cols = np.cumsum((0,) + plan.chunks[1])
    for i in range(len(plan.chunks[0])):
        for j in range(len(plan.chunks[1])):
            block = compute(haloed.blocks[0, i, j])
            (t, b), (l, r) = halo.sides(plan, i, j)
            r0, r1, c0, c1 = rows[i], rows[i + 1], cols[j], cols[j + 1]
            if plan.periodic:
                want = wrapped[:1, r0:r1 + 2 * p, c0:c1 + 2 * p]
            else:
                want = a[:1, r0 - t:r1 + b, c0 - l:c1 + r]
            np.testing.assert_array_equal(block, want)
            np.testing.assert_array_equal(halo.trim(block, ((t, b), (l, r))),
                                          a[:1, r0:r1, c0:c1])


# -- predict_proba against the in-memory network ------------------------------

CASES = {
    # name: (problem kwargs, options, chunks (N, C, H, W))
    "s3-zeros-regular": (dict(s=3), dict(boundary="zeros"), (1, 3, 5, 4)),
    "s5-periodic-irregular": (dict(s=5), dict(boundary="periodic"),
                              ((1, 1), (2, 1), (6, 1, 6), (3, 5, 3))),
    "s5-zeros-1px": (dict(s=5), dict(boundary="zeros"), (2, 1, 1, 2)),
    "s5-periodic-1px": (dict(s=5), dict(boundary="periodic"), (1, 3, 1, 1)),
    "deep-doubling-zeros": (dict(depth=3), dict(dilation="doubling"),
                            ((2,), (3,), (4, 4, 5), (2, 7, 2))),
    "deep-doubling-periodic": (dict(depth=2, H=16, W=12),
                               dict(dilation="doubling", boundary="periodic"),
                               (1, 3, 2, 3)),
    "deep-symmetric-periodic": (dict(depth=2, H=20, W=14),
                                dict(layer="symmetric", boundary="periodic",
                                     step=0.5),
                                (1, 3, 6, 5)),
    "deep-symmetric-zeros": (dict(depth=2), dict(layer="symmetric", dilation=(1, 2)),
                             (1, 3, 4, 4)),
    # periodic with the halo (1 + 2 (1 + 2 + 4) = 15) wider than the image:
    # one block per image, the network's own wrap
    "periodic-halo-wider": (dict(depth=3, H=9, W=20),
                            dict(dilation="doubling", boundary="periodic"),
                            (1, 3, 3, 10)),
    # zeros with the halo (1 + 2 (1 + 2 + 4) = 15) wider than the image: one
    # chunk in H, which takes no halo
    "zeros-halo-wider": (dict(depth=3, H=9, W=20),
                         dict(dilation="doubling", layer="symmetric"),
                         (1, 3, 3, 10)),
    # kernel size 1 (no halo) and empty chunks
    "s1-empty-chunks": (dict(s=1, H=5, W=4), dict(boundary="periodic"),
                        ((0, 2, 0), (3,), (0, 5, 0), (4,))),
    "float32-deep-periodic": (dict(depth=2, dtype="float32"),
                              dict(dilation="doubling", boundary="periodic"),
                              (1, 3, 4, 3)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_predict_proba_equals_in_memory(name):
    kwargs, options, chunks = CASES[name]
    rng = np.random.default_rng(sorted(CASES).index(name))
    a, params = problem(rng, **kwargs)
    x = da.from_array(a, chunks=chunks)
    P = arrseg.dask.predict_proba(x, params, **options)
    want = arrseg.predict_proba(a, params, **options)
    assert P.shape == want.shape and P.dtype == want.dtype
    assert P.chunks == (x.chunks[0], (params.W.shape[1],)) + x.chunks[2:]
    assert type(P._meta) is np.ndarray
    got = compute(P)
    assert type(got) is np.ndarray and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, **tolerance(a.dtype.name))
    labels = arrseg.dask.predict(x, params, **options)
    assert labels.dtype == np.int64 and labels.chunks == (x.chunks[0],) + x.chunks[2:]
    np.testing.assert_array_equal(compute(labels), np.argmax(want, axis=1))


def test_threaded_scheduler_and_integer_images():
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, (2, 3, 24, 20), dtype=np.uint8)
    _, params = problem(rng, depth=1, dtype="float32")
    x = da.from_array(a, chunks=(1, 3, 8, 7))
    P = arrseg.dask.predict_proba(x, params, boundary="periodic")
    want = arrseg.predict_proba(a, params, boundary="periodic")
    assert P.dtype == want.dtype == np.float32        # the parameters' dtype
    np.testing.assert_allclose(P.compute(scheduler="threads"), want,
                               **tolerance("float32"))


def counting_images(a, chunks):
    """A dask array of ``a`` made by a function that counts its calls."""
    calls = []

    def make(block_info=None):
        calls.append(1)
        loc = block_info[None]["array-location"]
        return a[tuple(slice(*s) for s in loc)]

    x = da.map_blocks(make, chunks=da.from_array(a, chunks=chunks).chunks,
                      dtype=a.dtype, meta=np.empty((0,) * 4, a.dtype))
    return x, calls


def test_lazy_graph_build_computes_nothing():
    rng = np.random.default_rng(3)
    a, params = problem(rng, depth=1, H=12, W=12)
    x, calls = counting_images(a, (1, 3, 6, 6))
    P = arrseg.dask.predict_proba(x, params, boundary="periodic")
    labels = arrseg.dask.predict(x, params)
    model = Segmenter(width=4, depth=1, max_iter=1).fit(a, rng.integers(0, 2, (2, 12, 12)))
    model.predict_proba(x)
    model.predict(x[0])
    assert calls == []
    np.testing.assert_allclose(compute(P), arrseg.predict_proba(
        a, params, boundary="periodic"), **tolerance("float64"))
    assert len(calls) == 8                                   # each chunk once
    compute(labels)
    assert len(calls) == 16


# -- the Segmenter on dask arrays ----------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    x, y = arrseg.data.make_shapes(n_images=3, size=24, seed=0)
    x = x.astype(np.float64)
    model = Segmenter(width=4, depth=2, kernel_size=3, max_iter=4, boundary="periodic")
    return model.fit(x[:2], y[:2]), x


@pytest.mark.parametrize("form", ["NCHW", "CHW", "HW"])
def test_segmenter_on_dask_equals_numpy(fitted, form):
    model, x = fitted
    if form == "HW":                  # a one-channel model for (H, W) images
        x = x[:, :1]
        model = Segmenter(width=4, depth=1, max_iter=3).fit(x[:2], (x[:2, 0] > 0.5)
                                                           .astype(int))
        a = x[2, 0]
        chunks = (5, 7)
    elif form == "CHW":
        a, chunks = x[2], (1, 10, 6)
    else:
        a, chunks = x, (2, 2, 7, 24)
    images = da.from_array(a, chunks=chunks)
    P, labels = model.predict_proba(images), model.predict(images)
    want_P, want_labels = model.predict_proba(a), model.predict(a)
    assert P.shape == want_P.shape and labels.shape == want_labels.shape
    assert P.chunks[-2:] == images.chunks[-2:] == labels.chunks[-2:]
    np.testing.assert_allclose(compute(P), want_P, **tolerance("float64"))
    np.testing.assert_array_equal(compute(labels), want_labels)


def test_segmenter_integer_images(fitted):
    model, x = fitted
    a = (x[2] * 255).clip(0, 255).astype(np.uint8)
    P = model.predict_proba(da.from_array(a, chunks=(3, 8, 8)))
    want = model.predict_proba(a)
    assert P.dtype == want.dtype
    np.testing.assert_allclose(compute(P), want, **tolerance("float64"))


def test_segmenter_errors(fitted):
    model, x = fitted
    with raises(NotFittedError, "not fitted", "predict_proba"):
        Segmenter().predict_proba(da.zeros((3, 8, 8)))
    with raises(ValueError, "images have 2 channel(s)", "fitted on images with 3"):
        model.predict(da.zeros((2, 8, 8)))
    with raises(ValueError, "images must be one image", "shape (1, 1, 3, 8, 8)"):
        model.predict(da.zeros((1, 1, 3, 8, 8)))
    bad = Segmenter(**{**model.get_params(), "boundary": "mirror"})
    bad.__dict__.update({k: v for k, v in model.__dict__.items() if k.endswith("_")})
    with raises(ValueError, "boundary", "mirror"):
        bad.predict(da.zeros((3, 8, 8)))
    a = x[2].copy()
    a[1, 17, 6] = np.nan   # in no other chunk's (wrapped) halo
    P = model.predict_proba(da.from_array(a, chunks=(3, 12, 12)))   # lazy: no error
    with raises(ValueError, "Segmenter.predict_proba", "must be finite",
                "rows 12:24, columns 0:12"):
        compute(P)


# -- errors of arrseg.dask.predict_proba -----------------------------------------


def test_errors_name_the_argument():
    rng = np.random.default_rng(1)
    a, params = problem(rng)
    x = da.from_array(a, chunks=(1, 3, 5, 5))
    with raises(TypeError, "x must be a dask array", "ndarray"):
        arrseg.dask.predict_proba(a, params)
    with raises(ValueError, "x must have shape (N, C, H, W)", "ndim 3", "x[None]"):
        arrseg.dask.predict_proba(x[0], params)
    with raises(ValueError, "x has 2 channels", "(2, 2, 13, 11)", "C = 3"):
        arrseg.dask.predict_proba(x[:, :2], params)
    with raises(ValueError, "x must not be empty"):
        arrseg.dask.predict_proba(x[:, :, :0], params)
    with raises(ValueError, "unknown chunk sizes"):
        arrseg.dask.predict_proba(x[x[:, 0, 0, 0] > 0], params)
    with raises(ValueError, "boundary", "mirror"):
        arrseg.dask.predict_proba(x, params, boundary="mirror")
    with raises(ValueError, "step"):
        arrseg.dask.predict_proba(x, params, step=0)
    with raises(TypeError, "x must be float32 or float64", "float16"):
        arrseg.dask.predict_proba(x.astype(np.float16), params)
    with raises(ValueError, "params.b must have shape"):
        arrseg.dask.predict_proba(x, params._replace(b=params.b[:2]))
    with raises(ValueError, "params.K must be finite"):
        arrseg.dask.predict_proba(x, params._replace(K=params.K * np.nan))
    deep = problem(rng, depth=2)[1]
    with raises(ValueError, "dilation must have one entry per residual layer"):
        arrseg.dask.predict_proba(x, deep, dilation=(1, 2, 4))


def test_nan_chunk_raises_when_computed():
    rng = np.random.default_rng(2)
    a, params = problem(rng, H=12, W=12)
    a[1, 2, 7, 1] = np.nan
    P = arrseg.dask.predict_proba(da.from_array(a, chunks=(1, 3, 6, 6)), params)
    with raises(ValueError, "arrseg.dask.predict_proba", "x must be finite",
                "images 1:2, rows 6:12, columns 0:6"):
        compute(P)


def test_cupy_chunks_keep_their_type():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no GPU")
    except Exception:
        pytest.skip("no GPU")
    rng = np.random.default_rng(4)
    a, params = problem(rng, depth=2, dtype="float32")
    gp = params_like(params, (None if v is None else cp.asarray(v)
                                     for v in params))
    x = da.from_array(cp.asarray(a), chunks=(1, 3, 5, 4), asarray=False)
    P = arrseg.dask.predict_proba(x, gp, boundary="periodic", dilation="doubling")
    assert type(P._meta) is cp.ndarray
    got = compute(P)
    assert type(got) is cp.ndarray
    want = arrseg.predict_proba(a, params, boundary="periodic", dilation="doubling")
    np.testing.assert_allclose(cp.asnumpy(got), want, **tolerance("float32"))
