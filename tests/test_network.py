"""predict_proba and loss_and_grad on every backend, against NumPy float64."""

import numpy as np
import pytest
from array_api_compat import array_namespace

import reference
from conftest import to_xp
import arrseg
from arrseg.testing import assert_close, check_derivative, to_numpy

ACTIVATIONS = ["tanh", "relu", "sigmoid", "identity"]
BOUNDARIES = ["zeros", "periodic"]


def random_problem(rng, N=2, C=3, H=7, W=6, k=5, n_c=4, s=3, bias=True):
    """Images, labels with some ignored pixels, and parameters with nonzero
    biases (init_params starts them at zero, which would hide bias bugs)."""
    x = rng.standard_normal((N, C, H, W))
    y = rng.integers(0, n_c, (N, H, W))
    y[rng.random((N, H, W)) < 0.2] = -100
    p = (rng.standard_normal((k, C, s, s)) / s, rng.standard_normal(k),
         rng.standard_normal((k, n_c)), rng.standard_normal(n_c) if bias else None)
    return x, y, p


def params_in(xp, p, dtype="float64"):
    return arrseg.Params(*(None if a is None else to_xp(xp, a, dtype) for a in p))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_predict_proba_matches_reference(xp, rng, dtype, boundary, activation):
    x, _, p = random_problem(rng)
    P = arrseg.predict_proba(to_xp(xp, x, dtype), params_in(xp, p, dtype),
                             activation=activation, boundary=boundary)
    want = reference.predict_proba(x, *p, activation, boundary)
    assert_close(P, want, xp=xp, dtype=dtype,
                 rtol=1e-5 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_probabilities_are_a_distribution(xp, rng, dtype):
    x, _, p = random_problem(rng, H=9, W=11)
    # large logits: the softmax must still sum to one exactly enough
    p = (p[0] * 30, p[1], p[2] * 30, p[3])
    P = to_numpy(arrseg.predict_proba(to_xp(xp, x, dtype), params_in(xp, p, dtype)))
    assert P.min() >= 0 and P.max() <= 1
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=0,
                               atol=10 * np.finfo(dtype).eps)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_loss_matches_reference(xp, rng, boundary, activation):
    x, y, p = random_problem(rng)
    w = rng.uniform(0.5, 2, 4)
    loss, _ = arrseg.loss_and_grad(to_xp(xp, x), to_xp(xp, y), params_in(xp, p),
                                   activation=activation, boundary=boundary,
                                   class_weight=to_xp(xp, w))
    P = reference.predict_proba(x, *p, activation, boundary)
    assert_close(loss, np.asarray(reference.cross_entropy(P, y, w)), xp=xp,
                 dtype="float64")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradient_passes_taylor_check(xp, rng, boundary, activation, bias):
    x, y, p = random_problem(rng, bias=bias)
    if activation == "relu":
        # keep pre-activations away from the kink at 0 within the steps taken
        p = (p[0], p[1] + 3.0, p[2], p[3])
    xx, yy, params = to_xp(xp, x), to_xp(xp, y), params_in(xp, p)

    def fun(q):
        return arrseg.loss_and_grad(xx, yy, q, activation=activation,
                                    boundary=boundary, class_weight=[1, 2, 3, 0.5])

    result = check_derivative(fun, params, h0=0.5 if activation != "relu" else 1e-2)
    assert result.passed, str(result)


def test_taylor_check_detects_a_wrong_gradient(rng):
    x, y, p = random_problem(rng)
    params = arrseg.Params(*p)

    def wrong(q):
        loss, g = arrseg.loss_and_grad(x, y, q)
        return loss, g._replace(K=g.K * 1.01)  # 1% off in one block

    assert not check_derivative(wrong, params).passed
    assert check_derivative(lambda q: arrseg.loss_and_grad(x, y, q), params).passed


@pytest.mark.parametrize("x_dtype,p_dtype", [("float32", "float32"),
                                             ("float64", "float64"),
                                             ("float32", "float64"),
                                             ("float64", "float32")])
def test_namespace_and_dtypes_are_preserved(xp, rng, x_dtype, p_dtype):
    x, y, p = random_problem(rng)
    xx, params = to_xp(xp, x, x_dtype), params_in(xp, p, p_dtype)
    P = arrseg.predict_proba(xx, params)
    assert array_namespace(P) is array_namespace(xx)
    assert P.dtype == xx.dtype
    loss, grads = arrseg.loss_and_grad(xx, to_xp(xp, y), params)
    assert array_namespace(loss) is array_namespace(xx)
    assert loss.shape == () and loss.dtype == params.K.dtype
    for g, a in zip(grads, params):
        assert g.shape == a.shape and g.dtype == a.dtype
        assert array_namespace(g) is array_namespace(xx)
    # mixed precision computes in float64: the float32 side is only rounded
    want = reference.predict_proba(x.astype(x_dtype), *(a.astype(p_dtype) for a in p),
                                   "tanh", "zeros")
    assert_close(P, want, rtol=2e-6 if "float32" in (x_dtype, p_dtype) else 1e-12)


@pytest.mark.parametrize("image_dtype", ["uint8", "int16", "bool"])
def test_integer_and_bool_images_are_converted_as_is(xp, rng, image_dtype):
    x = rng.integers(0, 2 if image_dtype == "bool" else 200, (1, 3, 5, 6))
    x = x.astype(image_dtype)
    _, _, p = random_problem(rng, H=5, W=6)
    P = arrseg.predict_proba(to_xp(xp, x), params_in(xp, p, "float32"))
    assert P.dtype == xp.float32
    want = reference.predict_proba(x.astype(np.float64), *p, "tanh", "zeros")
    assert_close(P, want, rtol=1e-5)


def test_extreme_logits_give_finite_loss_and_gradients(xp, rng):
    # logits of +-1e4 in float32: a naive softmax overflows exp()
    x, y, _ = random_problem(rng, C=1, k=2, n_c=3, s=1)
    y[y < 0] = 0
    p = (np.ones((2, 1, 1, 1)), np.zeros(2),
         np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]]), np.zeros(3))
    x = np.sign(x) * 10.0  # tanh saturates: features are +-1
    loss, grads = arrseg.loss_and_grad(to_xp(xp, x, "float32"), to_xp(xp, y),
                                       params_in(xp, p, "float32"))
    assert np.isfinite(float(loss))
    for g in grads:
        assert np.all(np.isfinite(to_numpy(g)))
    # the loss is the exact one: pixels labelled with the winning class cost 0,
    # the others cost the margin of 2e4 (or 1e4 for class 2)
    S = np.einsum("kj,nkhw->njhw", p[2], np.tanh(x.astype(np.float64))[:, [0, 0]])
    logP = S - S.max(1, keepdims=True)
    logP -= np.log(np.exp(logP).sum(1, keepdims=True))
    want = -np.mean(np.take_along_axis(logP, y[:, None], 1))
    assert_close(loss, np.asarray(want, dtype=np.float32), rtol=1e-6)


def test_no_labelled_pixel_gives_zero_not_nan(xp, rng):
    x, y, p = random_problem(rng)
    y[:] = -100
    loss, grads = arrseg.loss_and_grad(to_xp(xp, x), to_xp(xp, y), params_in(xp, p))
    assert float(loss) == 0.0
    assert all(np.all(to_numpy(g) == 0) for g in grads)
    # likewise when only classes of weight zero are labelled
    y[:] = 1
    loss, grads = arrseg.loss_and_grad(to_xp(xp, x), to_xp(xp, y), params_in(xp, p),
                                       class_weight=to_xp(xp, np.array([1.0, 0, 1, 1])))
    assert float(loss) == 0.0
    assert all(np.all(to_numpy(g) == 0) for g in grads)


def test_ignore_index_may_be_a_class_index(xp, rng):
    # ignore_index=0 drops class 0 from the loss, as PyTorch does
    x, y, p = random_problem(rng)
    y[y < 0] = 0
    loss, _ = arrseg.loss_and_grad(to_xp(xp, x), to_xp(xp, y), params_in(xp, p),
                                   ignore_index=0)
    P = reference.predict_proba(x, *p, "tanh", "zeros")
    assert_close(loss, np.asarray(reference.cross_entropy(P, y, ignore_index=0)))


def test_sparse_labels_change_only_the_labelled_terms(rng):
    # a scribble: the loss over a few labelled pixels equals the mean over them
    x, y, p = random_problem(rng, N=1, H=12, W=12)
    y[y < 0] = 1
    sparse = np.full_like(y, -100)
    sparse[0, 3, 2:9] = y[0, 3, 2:9]
    loss, _ = arrseg.loss_and_grad(x, sparse, arrseg.Params(*p))
    P = reference.predict_proba(x, *p, "tanh", "zeros")
    want = -np.mean(np.log(P[0, y[0, 3, 2:9], 3, np.arange(2, 9)]))
    assert_close(loss, np.asarray(want))


def test_init_params_is_reproducible_across_backends(xp):
    import array_api_compat.numpy as xnp

    a = arrseg.init_params(3, 6, 4, 5, seed=7, dtype="float64", xp=xp)
    b = arrseg.init_params(3, 6, 4, 5, seed=7, dtype="float64", xp=xnp)
    for u, v in zip(a, b):
        assert_close(u, v, xp=xp, rtol=0, atol=0)
    c = arrseg.init_params(3, 6, 4, 5, seed=8, dtype="float64", xp=xnp)
    assert not np.array_equal(to_numpy(c.K), to_numpy(b.K))


def test_loss_falls_under_gradient_descent(xp):
    x, y = arrseg.data.make_shapes(n_images=2, size=24, seed=3, xp=xp)
    params = arrseg.init_params(3, 6, 3, 3, seed=3, xp=xp)
    losses = []
    for _ in range(30):
        loss, g = arrseg.loss_and_grad(x, y, params)
        losses.append(float(loss))
        params = arrseg.Params(*(a - 1.0 * d for a, d in zip(params, g)))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("label_dtype", ["uint8", "int16", "int32", "bool"])
def test_label_dtypes(xp, rng, label_dtype):
    x, y, p = random_problem(rng, n_c=2)
    y[y < 0] = 0
    y = y.astype(label_dtype)
    loss, _ = arrseg.loss_and_grad(to_xp(xp, x), to_xp(xp, y), params_in(xp, p))
    P = reference.predict_proba(x, *p, "tanh", "zeros")
    assert_close(loss, np.asarray(reference.cross_entropy(P, y.astype(np.int64))))


def test_non_contiguous_inputs(rng):
    # views with negative and non-unit strides give the same result as copies
    x, y, p = random_problem(rng, H=8, W=10)
    xv = np.swapaxes(np.swapaxes(x, 2, 3).copy(), 2, 3)[:, ::-1]
    yv = y[:, ::-1][:, ::-1]
    pv = arrseg.Params(np.asfortranarray(p[0]), p[1][::-1][::-1], p[2].T.copy().T, p[3])
    loss_v, g_v = arrseg.loss_and_grad(xv, yv, pv)
    loss, g = arrseg.loss_and_grad(np.ascontiguousarray(xv), y, arrseg.Params(*p))
    assert_close(loss_v, loss)
    for a, b in zip(g_v, g):
        assert_close(a, b)


@pytest.mark.parametrize("shift", [(2, 0), (-1, 3)])
def test_periodic_network_is_translation_equivariant(xp, rng, shift):
    # under the periodic boundary, shifting the images shifts P and leaves
    # the loss of equally shifted labels unchanged
    x, y, p = random_problem(rng, H=8, W=9, s=5)
    xx, yy, params = to_xp(xp, x), to_xp(xp, y), params_in(xp, p)
    xs, ys = xp.roll(xx, shift, axis=(2, 3)), xp.roll(yy, shift, axis=(1, 2))
    P = arrseg.predict_proba(xx, params, boundary="periodic")
    Ps = arrseg.predict_proba(xs, params, boundary="periodic")
    assert_close(Ps, xp.roll(P, shift, axis=(2, 3)), xp=xp)
    loss, g = arrseg.loss_and_grad(xx, yy, params, boundary="periodic")
    loss_s, g_s = arrseg.loss_and_grad(xs, ys, params, boundary="periodic")
    assert_close(loss_s, loss, xp=xp)
    assert_close(g_s.K, g.K, xp=xp)
    # the zero boundary is not equivariant: the border pixels change
    Pz = to_numpy(arrseg.predict_proba(xs, params, boundary="zeros"))
    Pz0 = to_numpy(xp.roll(arrseg.predict_proba(xx, params, boundary="zeros"),
                           shift, axis=(2, 3)))
    assert not np.allclose(Pz, Pz0)
