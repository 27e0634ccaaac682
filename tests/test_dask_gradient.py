"""arrseg.dask.loss_and_grad and ChunkedProblem (no cluster) against the
in-memory arrseg.loss_and_grad on the whole arrays.

The reference is the in-memory function (tested against PyTorch and finite
differences elsewhere): the per-chunk sums, added in a fixed-order tree and
normalised once, give the same loss and gradient up to round-off in float64,
for any chunking (chunks smaller than the halo included), either boundary,
at depth 0 and with residual layers, with class weights and ignore labels.
"""

from __future__ import annotations

import array_api_compat.numpy as xp
import numpy as np
import pytest

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import arrseg  # noqa: E402
import arrseg.dask  # noqa: E402
from arrseg import core  # noqa: E402
from arrseg._validation import check_options, fit_options  # noqa: E402
from arrseg.dask.cluster import ChunkedProblem  # noqa: E402
from arrseg.numerics.residual import receptive_halo  # noqa: E402
from arrseg.optim.flat import flatten  # noqa: E402

N, C, H, W, N_C = 3, 2, 23, 19, 3

# depth 0 with 5 x 5 kernels (halo 2); depth 2, symmetric, dilations 1, 2
# (halo 1 + 2 (1 + 2) = 7)
NETS = {
    "depth0": (dict(kernel_size=5), dict()),
    "deep": (dict(depth=2), dict(dilation="doubling", layer="symmetric")),
}


def _data(seed=0, labelled=0.7, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    y = rng.integers(0, N_C, (N, H, W))
    y[rng.random(y.shape) >= labelled] = -100
    return x, y


def _params(net, dtype="float64", seed=1):
    return arrseg.init_params(C, 4, N_C, seed=seed, dtype=dtype, **NETS[net][0])


def _assert_close(loss, grads, ref_loss, ref_grads, rtol):
    """Same type, dtype and shapes; values within rtol of the reference
    (absolute tolerance rtol * the field's largest magnitude)."""
    assert type(grads) is type(ref_grads)
    assert np.asarray(loss).shape == () and np.asarray(loss).dtype == ref_loss.dtype
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=0)
    for g, r in zip(grads, ref_grads):
        if r is None:
            assert g is None
            continue
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(g, r, rtol=rtol, atol=rtol * np.abs(r).max())


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
@pytest.mark.parametrize("chunks", [(1, 2, 8, 7),        # chunks in N, H and W
                                    (2, 1, 1, 2),        # smaller than the halo
                                    (3, 2, 23, 19)])     # one chunk
def test_equals_in_memory_float64(net, boundary, chunks):
    x, y = _data()
    params = _params(net)
    kw = dict(boundary=boundary, class_weight=[1.0, 2.5, 0.5], **NETS[net][1])
    ref_loss, ref_grads = arrseg.loss_and_grad(x, y, params, **kw)
    with dask.config.set(scheduler="sync"):
        yd = da.from_array(y, chunks=chunks[:1] + (5, 6))    # rechunked
        loss, grads = arrseg.dask.loss_and_grad(da.from_array(x, chunks=chunks), yd,
                                                params, **kw)
    _assert_close(loss, grads, ref_loss, ref_grads, 1e-12)


def test_periodic_image_narrower_than_the_halo():
    # halo 7 > H = 5: each image is one block, with the network's own wrap
    x, y = _data()
    x, y = x[:, :, :5, :], y[:, :5, :]
    params = _params("deep")
    kw = dict(boundary="periodic", **NETS["deep"][1])
    ref = arrseg.loss_and_grad(x, y, params, **kw)
    with dask.config.set(scheduler="threads"):
        xd = da.from_array(x, chunks=(1, 1, 2, 4))
        got = arrseg.dask.loss_and_grad(xd, y, params, **kw)
    _assert_close(*got, *ref, 1e-12)


def test_sparse_labels_blocks_without_labels_and_all_ignored():
    rng = np.random.default_rng(3)
    x, _ = _data()
    y = rng.integers(0, N_C, (N, H, W)).astype(np.uint8)
    y[rng.random(y.shape) >= 0.02] = 255                  # 2% labelled
    y[1] = 255                                            # image 1: no label
    y[0, :12, :10] = 255                                  # a chunk without label
    assert (y != 255).sum() > 0
    params = _params("deep")
    kw = dict(ignore_index=255, class_weight=np.array([1.0, 0.0, 3.0]),
              **NETS["deep"][1])
    xd = da.from_array(x, chunks=(1, 2, 12, 10))
    ref = arrseg.loss_and_grad(x, y, params, **kw)
    with dask.config.set(scheduler="threads"):
        got = arrseg.dask.loss_and_grad(xd, y, params, **kw)
        _assert_close(*got, *ref, 1e-12)
        # nothing counts: 0 loss and gradient, as in memory
        none = np.full_like(y, 255)
        loss, grads = arrseg.dask.loss_and_grad(xd, none, params, **kw)
    assert float(loss) == 0.0 and all(not np.any(g) for g in grads)
    ref_loss, ref_grads = arrseg.loss_and_grad(x, none, params, **kw)
    assert float(ref_loss) == 0.0


def test_two_chunkings_and_two_schedulers_agree():
    x, y = _data(seed=4)
    params = _params("deep")
    kw = dict(class_weight=[2.0, 1.0, 1.0], **NETS["deep"][1])
    out = []
    for chunks, scheduler in [((1, 2, 6, 19), "sync"), ((3, 2, 23, 4), "threads"),
                              ((3, 2, 23, 4), "sync")]:
        with dask.config.set(scheduler=scheduler):
            out.append(arrseg.dask.loss_and_grad(da.from_array(x, chunks=chunks), y,
                                                 params, **kw))
    _assert_close(*out[0], *out[1], 1e-12)
    # the fixed tree: the same chunking gives the same bits with any scheduler
    assert np.asarray(out[1][0]) == np.asarray(out[2][0])
    for a, b in zip(out[1][1], out[2][1]):
        np.testing.assert_array_equal(a, b)


def test_float32():
    x, y = _data()
    params = _params("deep", dtype="float32")
    p64 = type(params)(*(a.astype(np.float64) for a in params))
    ref_loss, ref_grads = arrseg.loss_and_grad(x, y, p64, **NETS["deep"][1])
    with dask.config.set(scheduler="threads"):
        loss, grads = arrseg.dask.loss_and_grad(
            da.from_array(x.astype(np.float32), chunks=(1, 2, 8, 8)), y, params,
            **NETS["deep"][1])
    assert loss.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-4 * np.abs(r).max())


def test_float64_images_float32_params_and_integer_images():
    x, y = _data()
    params = _params("depth0", dtype="float32")
    ref = arrseg.loss_and_grad(x, y, params)             # float64, cast to float32
    with dask.config.set(scheduler="sync"):
        got = arrseg.dask.loss_and_grad(da.from_array(x, chunks=(2, 2, 9, 9)), y,
                                        params)
    _assert_close(*got, *ref, 1e-6)
    xi = (np.abs(x) * 50).astype(np.uint8)
    p64 = _params("depth0")
    ref = arrseg.loss_and_grad(xi, y, p64)
    with dask.config.set(scheduler="sync"):
        got = arrseg.dask.loss_and_grad(da.from_array(xi, chunks=(2, 2, 9, 9)), y, p64)
    _assert_close(*got, *ref, 1e-12)


def test_bad_arguments_name_the_argument():
    x, y = _data()
    xd = da.from_array(x, chunks=(1, 2, 12, 10))
    params = _params("depth0")
    f = arrseg.dask.loss_and_grad
    with pytest.raises(TypeError, match="x must be a dask array"):
        f(x, y, params)
    with pytest.raises(ValueError, match="x must have shape"):
        f(xd[0], y, params)
    with pytest.raises(ValueError, match="x has 2 channels"):
        f(xd, y, arrseg.init_params(3, 4, N_C, dtype="float64"))
    with pytest.raises(ValueError, match="labels must have shape"):
        f(xd, y[:, 1:], params)
    with pytest.raises(TypeError, match="labels must be an integer array"):
        f(xd, y.astype(np.float64), params)
    with pytest.raises(TypeError, match="labels must be a dask array or a NumPy"):
        f(xd, y.tolist(), params)
    with pytest.raises(ValueError, match="class_weight must have shape"):
        f(xd, y, params, class_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="class_weight must be finite and non-neg"):
        f(xd, y, params, class_weight=[1.0, -2.0, 1.0])
    with pytest.raises(ValueError, match="activation"):
        f(xd, y, params, activation="softplus")
    with pytest.raises(ValueError, match="fused"):
        f(xd, y, params, method="fused")
    with pytest.raises(ValueError, match="dilation must have one entry per residual"):
        f(xd, y, _params("deep"), dilation=(1, 2, 4))
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        f(xd, y, params, ignore_index=1.5)
    with pytest.raises(ValueError, match="params.K must be finite"):
        f(xd, y, params._replace(K=np.full_like(params.K, np.nan)))
    # values: checked per chunk when computed, the chunk named
    bad = x.copy()
    bad[2, 1, 20, 3] = np.inf
    with pytest.raises(ValueError, match=r"x must be finite.*images 2:3, rows 12:23, "
                                         r"columns 0:10"):
        f(da.from_array(bad, chunks=(1, 2, 12, 10)), y, params)
    wrong = y.copy()
    wrong[0, 0, 15] = N_C
    with pytest.raises(ValueError, match=r"labels must be class indices.*images 0:1, "
                                         r"rows 0:12, columns 10:19"):
        f(xd, wrong, params)


# -- ChunkedProblem without a cluster: this process, dask's local scheduler --


def _options(net, params):
    kw = dict(NETS[net][1])
    o = check_options("tanh", "zeros", "auto", kw.get("dilation", 1), 1.0,
                      kw.get("layer", "residual"))
    return fit_options(o, params.depth)


@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
def test_problem_equals_in_memory(boundary):
    x, y = _data(seed=5)
    params = _params("deep")
    options = _options("deep", params)
    width = receptive_halo(3, 3, options.dilation, options.layer)
    cw = np.array([1.0, 3.0, 0.5])
    ref_loss, ref_grads = arrseg.loss_and_grad(x, y, params, boundary=boundary,
                                               class_weight=cw, **NETS["deep"][1])
    xd = da.from_array(x, chunks=(1, 2, 8, 10))
    with dask.config.set(scheduler="threads"), ChunkedProblem(
            xd, da.from_array(y, chunks=(2, 4, 4)), halo_width=width,
            boundary=boundary) as problem:
        assert problem.n_blocks == 3 * 3 * 2
        loss, grad, D = problem.loss_and_grad(params, options, cw)
        weights = problem.block_weights(cw)
        # a mini-batch: the blocks of image 1 are the loss over image 1
        per_image = problem.n_blocks // N
        sub = problem.loss_and_grad(params, options, cw,
                                    blocks=range(per_image, 2 * per_image))
    assert isinstance(loss, float) and grad.dtype == np.float64
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    ref = flatten(ref_grads, np)
    np.testing.assert_allclose(grad, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    labelled = y[y != -100]
    assert D == pytest.approx(cw[labelled].sum(), rel=1e-14)
    assert weights.shape == (problem.n_blocks,) and weights.sum() == pytest.approx(D)
    one_loss, one_grads = arrseg.loss_and_grad(x[1:2], y[1:2], params,
                                               boundary=boundary, class_weight=cw,
                                               **NETS["deep"][1])
    np.testing.assert_allclose(sub[0], one_loss, rtol=1e-12)
    ref = flatten(one_grads, np)
    np.testing.assert_allclose(sub[1], ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    assert sub[2] == pytest.approx(cw[y[1][y[1] != -100]].sum(), rel=1e-14)


def test_problem_labelled_features_are_the_in_memory_features():
    x, y = _data(seed=6, labelled=0.1)
    params = _params("deep")
    options = _options("deep", params)
    layers = (params.K_layers, params.b_layers)
    Y = core.features(x, params.K, params.b, options, xp, layers)   # (N, k, H W)
    flat_labels = y.reshape(N, -1)
    with dask.config.set(scheduler="sync"), ChunkedProblem(
            da.from_array(x, chunks=(1, 2, 12, 10)), y, halo_width=7) as problem:
        got, lab = problem.labelled_features(params, options)
    # the same (feature vector, label) pairs, in block order rather than
    # image order: compare as sets of rows, sorted
    ref = np.moveaxis(Y, 1, 0)[:, flat_labels != -100]
    ref_lab = flat_labels[flat_labels != -100]
    assert got.shape == ref.shape and lab.shape == ref_lab.shape
    order_got = np.lexsort(np.vstack([got, lab]))
    order_ref = np.lexsort(np.vstack([ref, ref_lab]))
    np.testing.assert_array_equal(lab[order_got], ref_lab[order_ref])
    np.testing.assert_allclose(got[:, order_got], ref[:, order_ref], rtol=1e-12,
                               atol=1e-13)


def test_problem_bad_arguments():
    x, y = _data()
    xd = da.from_array(x, chunks=(1, 2, 12, 10))
    params = _params("deep")
    options = _options("deep", params)
    bad = x.copy()
    bad[1, 0, 13, 11] = np.nan
    with pytest.raises(ValueError, match=r"x must be finite.*images 1:2, rows 12:23"):
        ChunkedProblem(da.from_array(bad, chunks=(1, 2, 12, 10)), y, halo_width=7)
    neg = y.copy()
    neg[0, 0, 0] = -1
    with pytest.raises(ValueError, match="labels must be class indices >= 0"):
        ChunkedProblem(xd, neg, halo_width=7)
    stray = y.copy()
    stray[1, 5, 5] = 2**31 - 1          # an "unlabelled" marker: refused, not counted
    with pytest.raises(ValueError, match=r"value 2147483647.*pass it as ignore_index"):
        ChunkedProblem(xd, stray, halo_width=7)
    marked = np.where(stray == -100, 2**31 - 1, stray)
    with ChunkedProblem(xd, marked, halo_width=7, ignore_index=2**31 - 1) as problem:
        assert problem.counts.shape[1] == y.max() + 1
        assert problem.counts.sum() == np.count_nonzero(marked != 2**31 - 1)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        ChunkedProblem(xd.astype(np.int32), y, halo_width=7)
    with pytest.raises(ValueError, match="labels must have shape"):
        ChunkedProblem(xd, y[:2], halo_width=7)
    with pytest.raises(ValueError, match="halo_width"):
        ChunkedProblem(xd, y, halo_width=-1)
    with ChunkedProblem(xd, y, halo_width=2) as problem:
        with pytest.raises(ValueError, match="halo of halo_width = 2"):
            problem.loss_and_grad(params, options)
        small = _params("depth0")
        with pytest.raises(ValueError, match="blocks must be distinct indices"):
            problem.loss_and_grad(small, _options("depth0", small), blocks=[0, 0])
        with pytest.raises(ValueError, match="blocks must be distinct indices"):
            problem.loss_and_grad(small, _options("depth0", small), blocks=[99])
        two = arrseg.init_params(C, 4, 2, kernel_size=5, dtype="float64")
        with pytest.raises(ValueError, match="labels holds the class 2"):
            problem.loss_and_grad(two, _options("depth0", two))
