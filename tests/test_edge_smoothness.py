"""The edge-aware smoothness of the logits (arrseg.optim.edge_smoothness).

1. The term, its Laplacian and its Gram matrix against NumPy float64 loops
   over the pairs of neighbouring pixels.
2. The core's extra gradient in the logits (``extra_dS``) on every path:
   the blocked NumPy paths, the array-API paths and depth 0, against PyTorch
   autograd of ``cross_entropy + <extra_dS, S>`` in float64.
3. VarPro's reduced objective with the term: a Taylor test of its gradient.
4. The estimator: every optimizer trains with it, checked arguments, Dask
   refuses it, a model file keeps it.

Skipped without torch where torch is the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

import arrseg
from arrseg import core
from arrseg._validation import check_options, fit_options
from arrseg.optim import VarPro
from arrseg.optim.edge_smoothness import EdgeSmoothness, contrast_scale
from arrseg.testing import assert_close
from conftest import to_xp
from test_residual import random_case, torch_conv, torch_conv_transpose


def _pairs(H, W):
    """Every pair of 4-neighbours ((i, j), (i', j')) of an H x W grid."""
    for i in range(H):
        for j in range(W):
            if i + 1 < H:
                yield (i, j), (i + 1, j)
            if j + 1 < W:
                yield (i, j), (i, j + 1)


def _loop_reference(x, S, alpha, sigma2, labelled=None):
    """R(S) and dR/dS by loops in float64 (pairs of two labelled pixels
    left out)."""
    N, _, H, W = x.shape
    n = N * H * W
    value = 0.0
    grad = np.zeros_like(S)
    for m in range(N):
        for a, b in _pairs(H, W):
            if labelled is not None and labelled[m][a] and labelled[m][b]:
                continue
            w = np.exp(-np.sum((x[m, :, a[0], a[1]] - x[m, :, b[0], b[1]]) ** 2)
                       / (2 * sigma2))
            d = S[m, :, a[0], a[1]] - S[m, :, b[0], b[1]]
            value += alpha / (2 * n) * w * float(d @ d)
            grad[m, :, a[0], a[1]] += alpha / n * w * d
            grad[m, :, b[0], b[1]] -= alpha / n * w * d
    return value, grad


@pytest.mark.parametrize("masked", [False, True])
def test_value_and_gradient_match_loops(rng, masked):
    x = rng.standard_normal((2, 3, 5, 6))
    S = rng.standard_normal((2, 4, 5, 6))
    labelled = rng.random((2, 5, 6)) < 0.5 if masked else None
    sigma2 = contrast_scale([x], beta=0.5)    # weights of every size
    edges = EdgeSmoothness(x, 0.7, sigma2, labelled=labelled)
    value, grad = edges.value_and_grad(S)
    want_value, want_grad = _loop_reference(x, S, 0.7, sigma2, labelled)
    assert_close(value, np.asarray(want_value), dtype="float64")
    assert_close(grad, want_grad, dtype="float64")
    if masked:   # the mask matters: without it the value differs
        assert abs(EdgeSmoothness(x, 0.7, sigma2).value_and_grad(S)[0] - value) > 1e-3


def test_every_namespace_computes_the_same_term(xp, rng):
    """The term is array-API code: each namespace gives NumPy's values."""
    from arrseg._backend import to_numpy

    x = rng.standard_normal((2, 3, 5, 6))
    S = rng.standard_normal((2, 4, 5, 6))
    Y = rng.standard_normal((2, 3, 5, 6))
    sigma2 = contrast_scale([x], beta=0.5)    # weights of every size
    assert contrast_scale([to_xp(xp, x)], beta=0.5) == pytest.approx(sigma2, rel=1e-12)
    edges = EdgeSmoothness(to_xp(xp, x), 0.7, sigma2)
    value, grad = edges.value_and_grad(to_xp(xp, S))
    want_value, want_grad = EdgeSmoothness(x, 0.7, sigma2).value_and_grad(S)
    assert_close(to_numpy(value), want_value, dtype="float64")
    assert_close(to_numpy(grad), want_grad, dtype="float64")
    assert_close(to_numpy(edges.gram(to_xp(xp, Y))),
                 EdgeSmoothness(x, 0.7, sigma2).gram(Y), dtype="float64")


def test_gram_gives_the_term_of_the_classifier(rng):
    """(alpha/n) M from the features: 1/2 tr(W^T M W) is R(W^T Y) by loops."""
    x = rng.standard_normal((2, 2, 4, 5))
    Y = rng.standard_normal((2, 3, 4, 5))
    Wc = rng.standard_normal((3, 2))
    labelled = rng.random((2, 4, 5)) < 0.3
    sigma2 = contrast_scale([x], beta=0.5)    # weights of every size
    M = EdgeSmoothness(x, 1.3, sigma2, labelled=labelled).gram(Y)
    S = np.einsum("kc,nkhw->nchw", Wc, Y)
    want, _ = _loop_reference(x, S, 1.3, sigma2, labelled)
    assert_close(np.asarray(0.5 * np.trace(Wc.T @ M @ Wc)), np.asarray(want),
                 dtype="float64")
    assert_close(M, M.T, dtype="float64")


def test_contrast_scale_is_the_mean_squared_step_over_2_beta(rng):
    xs = [rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((2, 2, 5, 2))]
    steps = [float(np.sum((x[m, :, a[0], a[1]] - x[m, :, b[0], b[1]]) ** 2))
             for x in xs for m in range(x.shape[0]) for a, b in _pairs(*x.shape[2:])]
    assert contrast_scale(xs) == pytest.approx(np.mean(steps) / 40, rel=1e-12)
    assert contrast_scale(xs, beta=0.5) == pytest.approx(np.mean(steps), rel=1e-12)
    assert contrast_scale([np.ones((1, 1, 3, 3))]) == 1 / 40   # no contrast: m = 1


def test_weights_vanish_across_an_edge():
    x = np.zeros((1, 1, 4, 6))
    x[..., 3:] = 1.0
    edges = EdgeSmoothness(x, 1.0, 0.05)
    assert float(edges.wh[0, 0, 0, 2]) == pytest.approx(np.exp(-10))  # across the edge
    assert float(edges.wh[0, 0, 0, 0]) == 1.0          # a pair inside a region


# -- 2. the core's extra gradient against PyTorch ----------------------------

def _torch_with_extra(case, extra, *, activation, boundary, layer, depth):
    """CE + <extra, S> and its gradients by PyTorch autograd, float64."""
    torch = pytest.importorskip("torch", reason="torch is the autograd reference")
    F = torch.nn.functional
    sigma = {"tanh": torch.tanh, "relu": torch.relu}[activation]
    fields = case["fields"] if depth else case["fields"][:4]
    K, b, W, c, *rest = (None if a is None else torch.tensor(a, requires_grad=True)
                         for a in fields)
    Y = sigma(torch_conv(torch.tensor(case["x"]), K, boundary, 1, b))
    if depth:
        KL, bL = rest
        for j, d in enumerate(case["dilations"]):
            A = sigma(torch_conv(Y, KL[j], boundary, d, bL[j]))
            Y = (Y - case["step"] * torch_conv_transpose(A, KL[j], boundary, d)
                 if layer == "symmetric" else Y + case["step"] * A)
    S = F.conv2d(Y, W.T[:, :, None, None], c)
    weight = (None if case["class_weight"] is None
              else torch.tensor(case["class_weight"]))
    loss = F.cross_entropy(S, torch.tensor(case["labels"]), weight=weight,
                           ignore_index=case["ignore_index"])
    total = loss + (S * torch.tensor(extra)).sum()
    total.backward()
    grads = [None if a is None else a.grad.numpy() for a in (K, b, W, c, *rest)]
    return loss.item(), grads


@pytest.mark.parametrize("unlabelled", [False, True])
@pytest.mark.parametrize("depth, layer", [(0, "residual"), (1, "residual"),
                                          (1, "symmetric")],
                         ids=["depth0", "residual", "symmetric"])
@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("seed", range(2))
def test_extra_gradient_matches_torch(seed, method, boundary, layer, depth, unlabelled):
    """"direct" is the blocked NumPy path at depth > 0 (and the array-API
    path at depth 0, where the blocked one-layer path has no extra input);
    "fft" the array-API path. ``unlabelled``: no labelled pixel at all, the
    extra term alone."""
    case = random_case(7000 + 100 * seed + 10 * depth)
    if unlabelled:
        case["labels"] = np.full_like(case["labels"], case["ignore_index"])
    fields = case["fields"] if depth else case["fields"][:4]
    params = (arrseg.ResidualParams(*fields) if depth else arrseg.Params(*fields))
    rng = np.random.default_rng(seed)
    n_c = fields[2].shape[1]
    N, _, H, W = case["x"].shape
    extra = rng.standard_normal((N, n_c, H, W)) * 0.1
    dilation = case["dilation"] if depth else 1
    options = fit_options(check_options("tanh", boundary, method, dilation,
                                        case["step"], layer), params.depth)
    cw = case["class_weight"]
    loss, grads = core.loss_and_grad(case["x"], case["labels"], params, options,
                                     cw, case["ignore_index"], np, extra_dS=extra)
    want_loss, want_grads = _torch_with_extra(case, extra, activation="tanh",
                                              boundary=boundary, layer=layer,
                                              depth=params.depth)
    if not unlabelled:   # PyTorch's mean over no pixel is NaN, arrseg's 0
        assert_close(loss, np.asarray(want_loss), dtype="float64")
    for name, g, w in zip(type(params)._fields, grads, want_grads):
        if w is None:
            assert g is None
        elif unlabelled and name in ("W", "c"):
            continue   # PyTorch's NaN from the empty mean again
        else:
            assert_close(g, w, dtype="float64", err_msg=f"d{name}")


# -- 3. VarPro with the term --------------------------------------------------

@pytest.mark.parametrize("depth", [0, 2])
def test_varpro_reduced_gradient_taylor(depth):
    """Phi(z + h d) - Phi(z) - h <grad, d> falls as h^2: the reduced
    gradient of the objective with the edge term (in the inner problem and
    in the outer gradient) is exact."""
    x, y = arrseg.data.make_shapes(n_images=2, size=14, seed=0)
    x = x.astype(np.float64)
    y = np.where(np.random.default_rng(0).random(y.shape) < 0.15, y, -100)
    p = arrseg.init_params(3, 4, 3, depth=depth, seed=0, dtype="float64")
    vp = VarPro(edge_smoothness=0.5, dilation=1, inner_tol=1e-13, inner_max_iter=50,
                cg_max_iter=50)
    vp.start(x, y, p)
    z, phi0 = vp.params, vp.loss
    g = vp.reduced_gradient(z)
    rng = np.random.default_rng(1)
    d = [None if (a is None or name in ("W", "c")) else rng.standard_normal(a.shape)
         for name, a in zip(type(z)._fields, z)]
    slope = sum(float(np.vdot(a, b)) for a, b in zip(g, d) if b is not None)
    errors = []
    for h in (1e-2, 1e-3):
        t = type(z)(*[a if b is None else a + h * b for a, b in zip(z, d)])
        layers = None if depth == 0 else (t.K_layers, t.b_layers)
        phi = vp.reduced_loss(t.K, t.b, z.W, z.c, layers=layers)[0]
        errors.append(abs(phi - phi0 - h * slope))
    assert errors[1] < errors[0] / 50, errors     # second order: / 100


def _scribbled_shapes(n_images, size, seed, fraction=0.2):
    x, y = arrseg.data.make_shapes(n_images=n_images, size=size, seed=seed)
    keep = np.random.default_rng(seed).random(y.shape) < fraction
    return x.astype(np.float64), np.where(keep, y, -100)


def test_varpro_term_is_in_the_objective():
    """With the term, Phi is the cross-entropy problem plus R_E at W*: the
    same objective evaluated from its parts."""
    x, y = _scribbled_shapes(1, 12, 1)
    p = arrseg.init_params(3, 4, 3, depth=1, seed=0, dtype="float64")
    vp = VarPro(edge_smoothness=2.0, weight_decay=1e-3, inner_tol=1e-13)
    params, phi = vp.start(x, y, p)
    loss, _ = arrseg.loss_and_grad(x, y, params)
    Y = core.features(x, params.K, params.b, vp._options, np,
                      layers=(params.K_layers, params.b_layers))
    S = np.einsum("kc,nkp->ncp", params.W, Y).reshape(1, 3, 12, 12)
    value, _ = EdgeSmoothness(x, 2.0, contrast_scale([x]),
                              labelled=y != -100).value_and_grad(S)
    decay = 0.5e-3 * sum(float(np.sum(a * a)) for a in (params.K, params.W,
                                                        params.K_layers))
    assert phi == pytest.approx(float(loss) + float(value) + decay, rel=1e-10)


# -- 4. the estimator -----------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["varpro", "adam", "sgd"])
def test_every_optimizer_trains_with_it(optimizer):
    x, y = _scribbled_shapes(2, 24, 0)
    lr = {"sgd": 0.05}.get(optimizer)
    m = arrseg.Segmenter(edge_smoothness=0.3, optimizer=optimizer, learning_rate=lr,
                         max_iter=8, seed=0).fit(x, y)
    assert m.loss_curve_[-1] < m.loss_curve_[0]
    P = np.asarray(m.predict_proba(x))
    assert np.allclose(P.sum(axis=1), 1, atol=1e-5)


def test_first_order_objective_includes_the_term():
    """Adam's batches: the loss is the cross-entropy plus the term, and the
    flat gradient passes a Taylor test."""
    from arrseg.estimator.settings import check_settings
    from arrseg.estimator.training import CropBatches
    from arrseg.optim.flat import flatten, layout_of, unflatten

    x, y = _scribbled_shapes(1, 16, 2)
    est = arrseg.Segmenter(edge_smoothness=1.0, optimizer="adam", depth=1)
    s = check_settings(est)
    p = arrseg.init_params(3, 8, 3, depth=1, seed=0, dtype="float64")
    batches = CropBatches([x], [y], [y], None, s, np.random.default_rng(0), np, "cpu")
    layout = layout_of(p)
    theta = flatten(p, np)
    loss0, g = batches.loss_and_grad(unflatten(theta, layout, np))
    d = np.random.default_rng(3).standard_normal(theta.shape)
    errors = []
    for h in (1e-3, 1e-4):
        loss, _ = batches.loss_and_grad(unflatten(theta + h * d, layout, np))
        errors.append(abs(float(loss) - float(loss0) - h * float(g @ d)))
    assert errors[1] < errors[0] / 50, errors
    ce, _ = core.loss_and_grad(x, y, p, s.options, None, s.ignore_index, np)
    assert float(loss0) > float(ce)     # the term is added, and positive


@pytest.mark.parametrize("optimizer", ["varpro", "adam"])
def test_with_every_pixel_labelled_it_changes_nothing(optimizer):
    """No pair has an unlabelled pixel: the fit has the bits of
    edge_smoothness=0."""
    x, y = arrseg.data.make_shapes(n_images=2, size=20, seed=3)
    a, b = (arrseg.Segmenter(edge_smoothness=e, optimizer=optimizer, max_iter=4).fit(x, y)
            for e in (0.0, 5.0))
    for u, v in zip(a.params_, b.params_):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    y[0, 0, 0] = -100                                  # one unlabelled pixel
    c = arrseg.Segmenter(edge_smoothness=5.0, optimizer=optimizer, max_iter=4).fit(x, y)
    assert not np.array_equal(np.asarray(c.params_.K), np.asarray(a.params_.K))


@pytest.mark.parametrize("value", [-0.1, float("nan"), "a"])
def test_bad_values_are_refused(value):
    x, y = arrseg.data.make_shapes(n_images=1, size=12, seed=0)
    with pytest.raises((ValueError, TypeError), match="edge_smoothness"):
        arrseg.Segmenter(edge_smoothness=value, max_iter=1).fit(x, y)


def test_dask_images_refuse_it_with_first_order_optimizers():
    da = pytest.importorskip("dask.array")
    x, y = arrseg.data.make_shapes(n_images=1, size=16, seed=0)
    with pytest.raises(ValueError, match="edge_smoothness=0.3 with dask images trains "
                       "with optimizer='varpro' only, got optimizer='adam'"):
        arrseg.Segmenter(edge_smoothness=0.3, optimizer="adam", max_iter=1).fit(
            da.from_array(x, chunks=(1, 3, 8, 8)), da.from_array(y, chunks=(1, 8, 8)))


def test_model_file_keeps_it(tmp_path):
    x, y = arrseg.data.make_shapes(n_images=1, size=16, seed=0)
    m = arrseg.Segmenter(edge_smoothness=0.25, max_iter=2).fit(x, y)
    m.save(tmp_path / "m.npz")
    back = arrseg.Segmenter.load(tmp_path / "m.npz")
    assert back.get_params()["edge_smoothness"] == 0.25
    np.testing.assert_array_equal(np.asarray(back.predict(x)), np.asarray(m.predict(x)))


def test_a_file_without_it_was_trained_without_it(tmp_path, monkeypatch):
    """Files written before 0.9.0 lack edge_smoothness: it reads as 0, the
    value they were trained with, whatever the current default is."""
    import json

    monkeypatch.setitem(arrseg.Segmenter.__init__.__kwdefaults__, "edge_smoothness", 0.5)
    assert arrseg.Segmenter().edge_smoothness == 0.5

    x, y = arrseg.data.make_shapes(n_images=1, size=16, seed=0)
    m = arrseg.Segmenter(edge_smoothness=0.25, max_iter=2).fit(x, y)
    m.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as f:
        arrays = dict(f)
    meta = json.loads(arrays["metadata"].tobytes())     # JSON as uint8
    del meta["hyper_parameters"]["edge_smoothness"]
    arrays["metadata"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    assert arrseg.Segmenter.load(tmp_path / "old.npz").edge_smoothness == 0.0


def test_chunked_varpro_needs_the_problems_edge_weights():
    da = pytest.importorskip("dask.array")
    from arrseg.dask.cluster import ChunkedProblem
    from arrseg.dask.training import ChunkedVarPro

    x, y = arrseg.data.make_shapes(n_images=1, size=16, seed=0)
    y = np.where(np.random.default_rng(0).random(y.shape) < 0.2, y, -100)
    p = arrseg.init_params(3, 4, 3, seed=0)
    with ChunkedProblem(da.from_array(x, chunks=(1, 3, 8, 8)), y,
                        halo_width=1) as problem:
        with pytest.raises(ValueError, match="needs a ChunkedProblem made with "
                           "edge_contrast"):
            ChunkedVarPro(edge_smoothness=0.1).set_data(problem, None, p)


def test_auto_is_the_documented_value_in_memory_and_on_dask_with_varpro():
    from arrseg.estimator.settings import AUTO_EDGE_SMOOTHNESS, check_settings

    assert arrseg.Segmenter().edge_smoothness == "auto"
    assert check_settings(arrseg.Segmenter()).edge_smoothness == AUTO_EDGE_SMOOTHNESS
    with pytest.raises(ValueError, match="edge_smoothness must be 'auto' or a non-neg"):
        check_settings(arrseg.Segmenter(edge_smoothness="on"))
    da = pytest.importorskip("dask.array")
    x, y = arrseg.data.make_shapes(n_images=1, size=16, seed=0)
    y = np.where(np.random.default_rng(0).random(y.shape) < 0.2, y, -100)

    def fit(**kw):
        return arrseg.Segmenter(max_iter=2, **kw).fit(
            da.from_array(x, chunks=(1, 3, 8, 8)), da.from_array(y, chunks=(1, 8, 8)))

    def same(a, b):
        return all(np.array_equal(np.asarray(p), np.asarray(q))
                   for p, q in zip(a.params_, b.params_))

    # VarPro: the value of memory; Adam and SGD: 0 (not available)
    assert same(fit(), fit(edge_smoothness=AUTO_EDGE_SMOOTHNESS))
    assert not same(fit(), fit(edge_smoothness=0.0))
    assert same(fit(optimizer="adam"), fit(optimizer="adam", edge_smoothness=0.0))


def test_varpro_with_it_runs_on_every_namespace(xp):
    """The term in VarPro is array-API code: every namespace follows NumPy's
    iteration (float64, three steps)."""
    x, y = _scribbled_shapes(2, 16, 0)
    want = VarPro(edge_smoothness=1.0)
    want.start(x, y, arrseg.init_params(3, 4, 3, depth=1, seed=0, dtype="float64"))
    got = VarPro(edge_smoothness=1.0)
    got.start(to_xp(xp, x), to_xp(xp, y),
              arrseg.init_params(3, 4, 3, depth=1, seed=0, dtype="float64", xp=xp))
    for _ in range(3):
        want.step()
        got.step()
    assert got.loss == pytest.approx(want.loss, rel=1e-9)
