"""The edge-aware smoothness of the logits on dask images, against memory.

The reference is the in-memory term (:mod:`arrseg.optim.edge_smoothness`,
tested against NumPy loops and PyTorch autograd in test_edge_smoothness.py)
on the computed arrays: each pair of neighbours must be counted by exactly
one block, with its weight, for any chunking (chunks smaller than the halo,
merged; one chunk per image; both boundaries, a periodic image narrower
than the halo evaluated whole). A Taylor test checks ChunkedVarPro's reduced
objective with the term against its gradient.
"""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import arrseg  # noqa: E402
from arrseg.core import Options  # noqa: E402
from arrseg.dask import edges  # noqa: E402
from arrseg.dask.cluster import ChunkedProblem  # noqa: E402
from arrseg.dask.training import ChunkedVarPro  # noqa: E402
from arrseg.numerics.residual import receptive_halo  # noqa: E402
from arrseg.optim.edge_smoothness import EdgeSmoothness, contrast_scale  # noqa: E402
from arrseg.optim.flat import flatten  # noqa: E402
from arrseg import core  # noqa: E402

IGNORE = -100


def _data(size=(19, 23), seed=0, labelled=0.1):
    x, y = arrseg.data.make_shapes(n_images=2, size=max(size), seed=seed)
    x = np.ascontiguousarray(x[:, :, :size[0], :size[1]], dtype=np.float64)
    y = y[:, :size[0], :size[1]]
    keep = np.random.default_rng(seed).random(y.shape) < labelled
    return x, np.where(keep, y, IGNORE).astype(np.int64)


def _options(depth, boundary):
    return Options(boundary=boundary, dilation=tuple(2 ** j for j in range(depth)))


def _params(depth, seed=1):
    p = arrseg.init_params(3, 4, 3, kernel_size=3, depth=depth, seed=seed,
                           dtype="float64")
    rng = np.random.default_rng(seed)      # biases and classifier away from 0
    return p._replace(b=rng.standard_normal(p.b.shape) * 0.3,
                      W=rng.standard_normal(p.W.shape), c=rng.standard_normal(p.c.shape))


def _problem(x, y, chunks, depth, boundary, sigma2):
    p = _params(depth)
    halo = receptive_halo(p.kernel_size, p.layer_kernel_size or 1,
                          _options(depth, boundary).dilation) + 1
    return ChunkedProblem(da.from_array(x, chunks=chunks), y, halo_width=halo,
                          ignore_index=IGNORE, boundary=boundary, edge_contrast=sigma2)


def _in_memory(x, y, p, options, sigma2, coefficient):
    """(alpha/n) M and the term's flat gradient, on the whole images."""
    term = EdgeSmoothness(x, coefficient, sigma2, n_pixels=1, labelled=y != IGNORE)
    layers = None if p.K_layers is None else (p.K_layers, p.b_layers)
    N, _, H, W = x.shape
    Y = core.features(x, p.K, p.b, options, np, layers).reshape(N, -1, H, W)
    S = np.einsum("kc,nkhw->nchw", p.W, Y) + p.c[None, :, None, None]
    _, dS = term.value_and_grad(S)
    _, grad = core.loss_and_grad(x, np.full(y.shape, IGNORE), p, options, None, IGNORE,
                                 np, flat=True, extra_dS=dS)
    return term.gram(Y), grad


def test_contrast_scale_equals_in_memory():
    x, _ = _data()
    for chunks in [(1, 3, 19, 23), (2, 3, 5, 7), (1, 1, 4, 23)]:
        np.testing.assert_allclose(edges.contrast_scale(da.from_array(x, chunks=chunks)),
                                   contrast_scale([x]), rtol=1e-13)
    assert edges.contrast_scale(da.zeros((1, 1, 4, 4), chunks=2)) == 1.0 / (2 * 20.0)


@pytest.mark.parametrize("chunks", [(1, 3, 19, 23), (2, 3, 6, 8), (1, 3, 2, 3),
                                    (2, 3, 19, 9)])
@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
@pytest.mark.parametrize("depth", [0, 2])
def test_gram_and_gradient_equal_in_memory(chunks, boundary, depth):
    x, y = _data()
    options, p, sigma2, coefficient = _options(depth, boundary), _params(depth), 0.05, 0.7
    want_gram, want_grad = _in_memory(x, y, p, options, sigma2, coefficient)
    with _problem(x, y, chunks, depth, boundary, sigma2) as problem:
        _, _, gram = problem.labelled_features(p, options, gram=coefficient)
        grad = problem.edge_gradient(p, options, coefficient)
    scale = np.abs(want_gram).max()
    np.testing.assert_allclose(gram, want_gram, rtol=1e-11, atol=1e-12 * scale)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10,
                               atol=1e-11 * np.abs(want_grad).max())
    assert np.abs(want_grad).max() > 0 and scale > 0


def test_a_periodic_image_narrower_than_the_halo_is_one_block():
    x, y = _data(size=(6, 7))
    options, p = _options(3, "periodic"), _params(3)       # halo 1 + 1 + 2 + 4 + 1
    want_gram, want_grad = _in_memory(x, y, p, options, 0.05, 0.7)
    with _problem(x, y, (1, 3, 3, 4), 3, "periodic", 0.05) as problem:
        assert problem.halo.whole
        _, _, gram = problem.labelled_features(p, options, gram=0.7)
        grad = problem.edge_gradient(p, options, 0.7)
    np.testing.assert_allclose(gram, want_gram, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-10, atol=1e-13)


def test_each_pair_is_owned_by_one_block():
    """The blocks' weights, added up, are the image's: every pair of
    neighbours once (checked with the features Y = the pixel's position, so
    that each pair's Gram matrix tells which pair it is)."""
    x, y = _data()
    N, _, H, W = x.shape
    with _problem(x, y, (1, 3, 5, 6), 1, "periodic", 0.05) as problem:
        blocks = problem._blocks
        total = 0.0
        for (xb, _, (wv, wh)), (n, i, j) in zip(blocks, problem.index):
            total += float(wv.sum() + wh.sum())
    term = EdgeSmoothness(x, 1.0, 0.05, labelled=y != IGNORE)
    np.testing.assert_allclose(total, float(term.wv.sum() + term.wh.sum()), rtol=1e-12)


def test_chunked_varpro_reduced_gradient_taylor():
    """Phi(z + h v) - Phi(z) - h <grad, v> = O(h^2) with the term in the
    inner problem and in the reduced gradient."""
    x, y = _data(size=(14, 15))
    p = _params(1)
    options = _options(1, "zeros")
    with _problem(x, y, (1, 3, 6, 7), 1, "zeros", contrast_scale([x])) as problem:
        vp = ChunkedVarPro(edge_smoothness=2.0, dilation=options.dilation,
                           weight_decay=1e-3, inner_tol=1e-12, inner_rtol=0)
        vp.set_data(problem, None, p)
        assert vp._edge_coefficient is not None
        layers = (p.K_layers, p.b_layers)
        phi0, grad, W, c = vp.reduced_loss_and_grad(p.K, p.b, p.W, p.c, layers=layers)
        rng = np.random.default_rng(5)
        v = [rng.standard_normal(a.shape) for a in (p.K, p.b, p.K_layers, p.b_layers)]
        slope = sum(float(np.sum(g * d)) for g, d in zip(
            (grad.K, grad.b, grad.K_layers, grad.b_layers), v))
        errors = []
        for h in (1e-2, 5e-3, 2.5e-3):
            K, b, Kl, bl = (a + h * d for a, d in zip(
                (p.K, p.b, p.K_layers, p.b_layers), v))
            phi, _, _ = vp.reduced_loss(K, b, W, c, layers=(Kl, bl))
            errors.append(abs(phi - phi0 - h * slope))
    # second order: halving h quarters the error
    assert errors[0] / errors[1] > 3.3 and errors[1] / errors[2] > 3.3, errors


def test_the_term_is_left_out_when_every_pixel_is_labelled():
    x, y = _data(labelled=1.0)
    with _problem(x, y, (1, 3, 10, 12), 0, "zeros", 0.05) as problem:
        vp = ChunkedVarPro(edge_smoothness=1.0)
        vp.set_data(problem, None, _params(0))
        assert vp._edge_coefficient is None
    # the fit builds no weights then, and gives the bits of edge_smoothness=0
    xd = da.from_array(x, chunks=(1, 3, 10, 12))
    kw = dict(width=4, depth=1, max_iter=3)
    a = arrseg.Segmenter(**kw).fit(xd, y)
    b = arrseg.Segmenter(**kw, edge_smoothness=0.0).fit(xd, y)
    for p, q in zip(a.params_, b.params_):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))


@pytest.mark.parametrize("chunks, boundary, depth", [
    ((1, 3, 10, 13), "zeros", 0), ((2, 3, 7, 9), "periodic", 2), ((1, 3, 24, 24),
                                                                    "zeros", 1)])
def test_segmenter_fit_with_the_term_equals_in_memory(chunks, boundary, depth):
    x, y = _data(size=(24, 24), labelled=0.05)
    x = x * 40.0 + 7.0
    kw = dict(width=4, depth=depth, boundary=boundary, max_iter=4, seed=3)
    ref = arrseg.Segmenter(**kw).fit(x, y)          # "auto": 1 in memory and on dask
    est = arrseg.Segmenter(**kw).fit(da.from_array(x, chunks=chunks), y)
    without = arrseg.Segmenter(**kw, edge_smoothness=0.0).fit(x, y)
    assert est.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(est.loss_curve_, ref.loss_curve_, rtol=1e-7)
    for a, b in zip(est.params_, ref.params_):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())
    assert not np.allclose(without.loss_curve_, ref.loss_curve_, rtol=1e-3)


def test_gram_and_edge_gradient_need_the_contrast():
    x, y = _data()
    p, options = _params(0), _options(0, "zeros")
    with ChunkedProblem(da.from_array(x, chunks=(1, 3, 10, 12)), y, halo_width=2,
                        ignore_index=IGNORE) as problem:
        with pytest.raises(ValueError, match="gram needs a problem made with "
                           "edge_contrast"):
            problem.labelled_features(p, options, gram=1.0)
        with pytest.raises(ValueError, match="edge_gradient needs a problem made with "
                           "edge_contrast"):
            problem.edge_gradient(p, options, 1.0)


def test_flat_layout_of_the_gradient():
    x, y = _data()
    p, options = _params(1), _options(1, "zeros")
    with _problem(x, y, (1, 3, 10, 12), 1, "zeros", 0.05) as problem:
        grad = problem.edge_gradient(p, options, 0.5)
    assert grad.shape == flatten(p, np).shape and grad.dtype == np.float64
