"""arrseg.optim: SGD, Adam, regularisers, Newton-CG for the classifier, VarPro.

References: PyTorch's torch.optim for the update rules (when installed),
finite differences and Taylor tests (arrseg.testing.check_derivative) for
every gradient and Hessian-vector product.
"""

import itertools
import math

import array_api_compat.numpy as xnp
import numpy as np
import pytest
from conftest import to_xp

import arrseg
from arrseg import Params
from arrseg.optim import (
    SGD,
    Adam,
    ClassifierProblem,
    NonFiniteLossError,
    Regularization,
    VarPro,
    newton_cg,
    smoothness,
    tikhonov,
)
from arrseg.optim.base import tree_map
from arrseg.segmenter import Segmenter
from arrseg.testing import assert_close, check_derivative, to_numpy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shapes(xp, n_images=2, size=16, dtype="float32"):
    return arrseg.data.make_shapes(n_images=n_images, size=size, seed=0, dtype=dtype,
                                   xp=xp)


def total_loss(x, y, params):
    return float(arrseg.loss_and_grad(x, y, params)[0])


# --- first-order optimizers ----------------------------------------------------

@pytest.mark.parametrize("make", [
    pytest.param(lambda: SGD(0.5, momentum=0.0), id="gd"),
    pytest.param(lambda: SGD(0.5, momentum=0.9), id="sgd-momentum"),
    pytest.param(lambda: SGD(0.5, momentum=0.9, nesterov=True), id="sgd-nesterov"),
    pytest.param(lambda: Adam(0.05), id="adam"),
])
def test_optimizer_decreases_the_loss(xp, make):
    x, y = shapes(xp)
    params = arrseg.init_params(3, 4, 3, seed=0, xp=xp)
    first = total_loss(x, y, params)
    opt = make()
    for _ in range(10):
        _, grads = arrseg.loss_and_grad(x, y, params)
        params = opt.step(params, grads)
    assert type(params.K) is type(x)
    assert total_loss(x, y, params) < 0.8 * first
    assert opt.n_steps == 10


def test_optimizers_do_not_modify_their_arguments():
    x, y = shapes(None)
    params = arrseg.init_params(3, 4, 3, seed=0)
    saved = [np.copy(a) for a in params]
    _, grads = arrseg.loss_and_grad(x, y, params)
    saved_g = [np.copy(a) for a in grads]
    for opt in (SGD(), SGD(nesterov=True), Adam()):
        opt.step(params, grads)
        opt.step(params, grads)
    for a, b in zip(params + grads, saved + saved_g):
        np.testing.assert_array_equal(a, b)


def test_none_fields_stay_none():
    params = arrseg.init_params(3, 4, 3, seed=0, bias=False)
    x, y = shapes(None)
    _, grads = arrseg.loss_and_grad(x, y, params)
    for opt in (SGD(), Adam()):
        assert opt.step(params, grads).c is None


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adam"])
def test_updates_match_torch_optim(name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    p0 = Params(rng.standard_normal((2, 1, 3, 3)), rng.standard_normal(2),
                rng.standard_normal((2, 3)), rng.standard_normal(3))
    grads = [Params(*(rng.standard_normal(a.shape) for a in p0)) for _ in range(4)]
    ours = {"sgd": SGD(0.1, 0.9), "nesterov": SGD(0.1, 0.9, nesterov=True),
            "adam": Adam(0.01, 0.8, 0.99, 1e-6)}[name]
    leaves = [torch.tensor(a, requires_grad=True) for a in p0]
    theirs = {"sgd": lambda: torch.optim.SGD(leaves, lr=0.1, momentum=0.9),
              "nesterov": lambda: torch.optim.SGD(leaves, lr=0.1, momentum=0.9,
                                                  nesterov=True),
              "adam": lambda: torch.optim.Adam(leaves, lr=0.01, betas=(0.8, 0.99),
                                               eps=1e-6)}[name]()
    p = p0
    for g in grads:
        p = ours.step(p, g)
        for t, gi in zip(leaves, g):
            t.grad = torch.tensor(gi)
        theirs.step()
    for a, t in zip(p, leaves):
        np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_adam_first_step_has_the_learning_rate_per_entry():
    rng = np.random.default_rng(0)
    p = Params(*(rng.standard_normal(s) for s in [(2, 1, 3, 3), (2,), (2, 3), (3,)]))
    g = Params(*(1e3 * rng.standard_normal(a.shape) for a in p))
    new = Adam(0.01).step(p, g)
    for a, b, gi in zip(new, p, g):
        np.testing.assert_allclose(a - b, -0.01 * np.sign(gi), rtol=1e-6)


@pytest.mark.parametrize("make, match", [
    (lambda: SGD(learning_rate=0), "learning_rate"),
    (lambda: SGD(learning_rate=float("nan")), "learning_rate"),
    (lambda: SGD(momentum=1.0), "momentum"),
    (lambda: SGD(momentum=0, nesterov=True), "nesterov"),
    (lambda: Adam(beta1=1.0), "beta1"),
    (lambda: Adam(beta2=-0.1), "beta2"),
    (lambda: Adam(eps=0), "eps"),
])
def test_optimizer_argument_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --- regularisation ------------------------------------------------------------

def test_smoothness_gradient_passes_the_taylor_test(xp):
    rng = np.random.default_rng(0)
    K = to_xp(xp, rng.standard_normal((3, 2, 5, 5)), "float64")
    res = check_derivative(lambda K: smoothness(K, 0.7), K)
    assert res.passed, str(res)


def test_smoothness_is_half_alpha_squared_forward_differences():
    rng = np.random.default_rng(0)
    K = rng.standard_normal((2, 3, 3, 3))
    d1 = np.diff(K, axis=2)
    d2 = np.diff(K, axis=3)
    value, _ = smoothness(K, 0.3)
    np.testing.assert_allclose(value, 0.15 * (np.sum(d1**2) + np.sum(d2**2)))
    # constant kernels and 1 x 1 kernels cost nothing
    assert float(smoothness(np.ones((2, 3, 5, 5)), 1.0)[0]) == 0
    value, grad = smoothness(rng.standard_normal((2, 3, 1, 1)), 1.0)
    assert float(value) == 0 and not np.any(grad)


def test_tikhonov_value_and_gradient(xp):
    params = arrseg.init_params(3, 4, 2, seed=0, dtype="float64", xp=xp)
    value, grads = tikhonov(params, 0.1)
    K, W = to_numpy(params.K), to_numpy(params.W)
    assert_close(value, 0.05 * (np.sum(K**2) + np.sum(W**2)), xp=xp)
    assert_close(grads.K, 0.1 * K, xp=xp)
    assert_close(grads.W, 0.1 * W, xp=xp)
    assert not np.any(to_numpy(grads.b)) and not np.any(to_numpy(grads.c))
    res = check_derivative(lambda p: tikhonov(p, 0.1), params)
    assert res.passed, str(res)


def test_regularization_combines_both_terms():
    params = arrseg.init_params(3, 4, 2, seed=0, dtype="float64")
    value, grads = Regularization(weight_decay=0.1, smoothness=0.2)(params)
    v1, g1 = tikhonov(params, 0.1)
    v2, g2 = smoothness(params.K, 0.2)
    np.testing.assert_allclose(value, v1 + v2)
    np.testing.assert_allclose(grads.K, g1.K + g2)
    assert not Regularization().active
    with pytest.raises(ValueError, match="smoothness"):
        Regularization(smoothness=-1)


# --- Newton-CG for the classifier -----------------------------------------------

def classifier_problem(xp, rng, *, bias=True, sparse=False, weighted=False,
                       weight_decay=1e-3):
    N, k, P, n_c = 2, 5, 40, 3
    Y1 = np.tanh(rng.standard_normal((N, k, P)))
    labels = rng.integers(0, n_c, (N, P))
    if sparse:
        labels[rng.random((N, P)) < 0.5] = -100
    cw = to_xp(xp, [1.0, 2.0, 0.5], "float64") if weighted else None
    problem = ClassifierProblem(to_xp(xp, Y1, "float64"), to_xp(xp, labels), n_c,
                                class_weight=cw, weight_decay=weight_decay)
    W = to_xp(xp, rng.standard_normal((k, n_c)), "float64")
    c = to_xp(xp, rng.standard_normal(n_c), "float64") if bias else None
    return problem, Params(None, None, W, c), (Y1, labels, cw)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sparse", [False, True])
def test_classifier_problem_matches_the_network_loss(rng, bias, sparse):
    """E(W, c) on given features is the loss of loss_and_grad at those
    features (with an identity 1 x 1 'convolution' producing them)."""
    problem, x, (Y1, labels, _) = classifier_problem(xnp, rng, bias=bias,
                                                     sparse=sparse, weight_decay=0)
    N, k, P = Y1.shape
    # K = identity 1 x 1 kernels, identity activation: the features are x itself
    params = Params(np.eye(k)[:, :, None, None], np.zeros(k), x.W, x.c)
    loss, grads = arrseg.loss_and_grad(Y1.reshape(N, k, 5, P // 5),
                                       labels.reshape(N, 5, P // 5), params,
                                       activation="identity")
    value, g, _ = problem.evaluate(x.W, x.c)
    np.testing.assert_allclose(value, loss, rtol=1e-12)
    np.testing.assert_allclose(g.W, grads.W, rtol=1e-10, atol=1e-14)
    if bias:
        np.testing.assert_allclose(g.c, grads.c, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("bias", [True, False])
def test_hessian_vector_product_matches_differences_of_the_gradient(xp, rng, bias):
    problem, x, _ = classifier_problem(xp, rng, bias=bias, sparse=True,
                                       weighted=True)
    _, _, P = problem.evaluate(x.W, x.c)
    v = Params(None, None, *(None if a is None else
                             to_xp(xp, rng.standard_normal(a.shape), "float64")
                             for a in (x.W, x.c)))
    Hv = problem.hessp(P, v.W, v.c)
    h = 1e-5
    gp = problem.evaluate(*tree_map(lambda a, b: a + h * b, x, v)[2:])[1]
    gm = problem.evaluate(*tree_map(lambda a, b: a - h * b, x, v)[2:])[1]
    for name in ("W", "c") if bias else ("W",):
        fd = (to_numpy(getattr(gp, name)) - to_numpy(getattr(gm, name))) / (2 * h)
        assert_close(getattr(Hv, name), fd, xp=xp, rtol=1e-7, atol=1e-9)
    assert Hv.c is None if not bias else Hv.c is not None


def test_hessian_vector_product_passes_a_taylor_test_of_the_gradient(rng):
    """g(x + h v) - g(x) - h H v = O(h^2): the Taylor test applied to
    phi(x) = <g(x), u>, whose gradient is H u (H symmetric)."""
    problem, x, _ = classifier_problem(xnp, rng, weighted=True)
    u = Params(None, None, rng.standard_normal(x.W.shape), rng.standard_normal(3))

    def phi(z):
        _, g, P = problem.evaluate(z.W, z.c)
        return (g.W * u.W).sum() + (g.c * u.c).sum(), problem.hessp(P, u.W, u.c)

    res = check_derivative(phi, x)
    assert res.passed, str(res)


def test_loss_gradient_passes_the_taylor_test(rng):
    problem, x, _ = classifier_problem(xnp, rng, sparse=True, weighted=True)
    res = check_derivative(lambda z: problem.evaluate(z.W, z.c)[:2], x)
    assert res.passed, str(res)


@pytest.mark.parametrize("bias", [True, False])
def test_newton_cg_reaches_a_small_gradient(xp, rng, bias):
    N, k, P, n_c = 2, 6, 60, 4
    Y1 = np.tanh(rng.standard_normal((N, k, P)))
    labels = rng.integers(0, n_c, (N, P))
    labels[:, ::3] = -100
    args = (to_xp(xp, Y1, "float64"), to_xp(xp, labels),
            to_xp(xp, np.zeros((k, n_c)), "float64"),
            to_xp(xp, np.zeros(n_c), "float64") if bias else None)
    options = dict(class_weight=to_xp(xp, [1.0, 1.5, 0.5, 2.0], "float64"),
                   weight_decay=1e-2, cg_max_iter=40)
    # The tolerance is sqrt(eps) relative to the starting gradient (0.28 with
    # the bias, 0.14 without: tol = 4.2e-9 and 2.0e-9), not a fixed 1e-10.
    # Newton-CG accepts a step by comparing float64 losses of about 1.2,
    # whose rounding (and its backend-dependent summation order) is
    # eps |loss| ~ 3e-16, while a step from gradient norm |g| lowers the loss
    # by about g^T H^{-1} g / 2 ~ |g|^2 / (2 lambda_max), lambda_max ~ 3 here:
    # below |g| ~ 1e-7 the line search can no longer see its own progress,
    # and where the last visible step lands (1.1e-10 on NumPy without the
    # bias, 1.03e-10 on CuPy, an H200) is a matter of the last bits. Any
    # bound down to O(sqrt(eps) |g0|), where function values stop resolving
    # the minimiser, holds on every backend; 1e-10 did not.
    g0 = newton_cg(*args, **options, max_iter=0).grad_norm
    tol = math.sqrt(np.finfo(np.float64).eps) * g0
    res = newton_cg(*args, **options, tol=tol, max_iter=30)
    assert res.converged and res.grad_norm <= tol
    assert res.n_iter < 15  # quadratic convergence, not a crawl
    assert (res.c is None) == (not bias)
    assert type(res.W) is type(to_xp(xp, Y1))


def test_newton_cg_without_weight_decay_on_separable_data_still_decreases(rng):
    Y1 = rng.standard_normal((1, 3, 30))
    labels = (Y1[:, 0] > 0).astype(np.int64)  # separable by the first feature
    start = np.zeros((3, 2))
    res = newton_cg(Y1, labels, start, np.zeros(2), max_iter=5)
    assert res.loss < math.log(2) / 4 and np.all(np.isfinite(res.W))


# --- VarPro ----------------------------------------------------------------------

def test_varpro_reduced_gradient_passes_the_taylor_test():
    x, y = shapes(None, dtype="float64")
    y[:, ::2] = -100  # sparse labels
    p0 = arrseg.init_params(3, 4, 3, seed=0, dtype="float64")
    vp = VarPro(weight_decay=1e-3, smoothness=1e-2, class_weight=[1.0, 2.0, 1.0],
                inner_tol=1e-11, inner_rtol=0, inner_max_iter=50, cg_max_iter=50)
    vp.set_data(x, y, p0)

    def phi(z):
        value, grad, _, _ = vp.reduced_loss_and_grad(z.K, z.b, p0.W, p0.c)
        return value, grad

    res = check_derivative(phi, Params(p0.K, p0.b, None, None), h0=0.5)
    assert res.passed, str(res)


def test_varpro_reduced_objective_is_the_loss_at_the_inner_minimiser():
    x, y = shapes(None, dtype="float64")
    p0 = arrseg.init_params(3, 4, 3, seed=0, dtype="float64")
    vp = VarPro(weight_decay=1e-3, inner_tol=1e-11, inner_rtol=0, inner_max_iter=50,
                cg_max_iter=50)
    vp.set_data(x, y, p0)
    phi, W, c = vp.reduced_loss(p0.K, p0.b, p0.W, p0.c)
    loss, grads = arrseg.loss_and_grad(x, y, Params(p0.K, p0.b, W, c))
    reg, _ = tikhonov(Params(p0.K, p0.b, W, c), 1e-3)
    np.testing.assert_allclose(phi, loss + reg, rtol=1e-10)
    # (W, c) is stationary: the gradient of the regularised loss vanishes there
    assert np.linalg.norm(grads.W + 1e-3 * W) < 1e-10
    assert np.linalg.norm(grads.c) < 1e-10


def test_varpro_decreases_the_loss(xp):
    x, y = shapes(xp, size=12)
    params = arrseg.init_params(3, 4, 3, seed=0, xp=xp)
    vp = VarPro()
    params, first = vp.start(x, y, params)
    losses = [first]
    for _ in range(5):
        params, loss = vp.step()
        losses.append(loss)
    assert all(b <= a for a, b in itertools.pairwise(losses))  # monotone
    assert losses[-1] < 0.7 * losses[0]
    assert type(params.W) is type(x)


def test_varpro_on_groups_of_different_sizes_equals_the_pooled_loss():
    xa, ya = arrseg.data.make_shapes(n_images=1, size=12, seed=0, dtype="float64")
    xb, yb = arrseg.data.make_shapes(n_images=2, size=(10, 14), seed=1,
                                     dtype="float64")
    p0 = arrseg.init_params(3, 4, 3, seed=0, dtype="float64")
    vp = VarPro(weight_decay=0.0, inner_tol=1e-12, inner_rtol=0)
    vp.set_data([xa, xb], [ya, yb], p0)
    phi = vp._inner_problem(p0.K, p0.b).value(p0.W, p0.c)
    # the pooled mean over all 12*12 + 2*10*14 labelled pixels
    la, _ = arrseg.loss_and_grad(xa, ya, p0)
    lb, _ = arrseg.loss_and_grad(xb, yb, p0)
    pooled = (144 * float(la) + 280 * float(lb)) / 424
    np.testing.assert_allclose(phi, pooled, rtol=1e-12)
    _, grad, _, _ = vp.reduced_loss_and_grad(p0.K, p0.b, p0.W, p0.c)
    assert grad.K.shape == p0.K.shape and grad.W is None


def test_varpro_step_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="start"):
        VarPro().step()


# --- reproducibility and divergence -------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "adam", "varpro"])
def test_same_seed_gives_the_same_parameters(xp, optimizer):
    x, y = shapes(xp, n_images=3, size=12)
    # one residual layer: its halo (2) fits the 8-pixel crops
    opts = {"width": 3, "optimizer": optimizer, "max_iter": 4, "crop_size": 8,
            "batch_size": 2, "depth": 1}
    a = Segmenter(seed=3, **opts).fit(x, y).params_
    b = Segmenter(seed=3, **opts).fit(x, y).params_
    for u, v in zip(a, b):
        np.testing.assert_array_equal(to_numpy(u), to_numpy(v))
    c = Segmenter(seed=4, **opts).fit(x, y).params_
    assert not np.array_equal(to_numpy(a.K), to_numpy(c.K))


def test_non_finite_loss_stops_training_and_names_the_iteration():
    x, y = shapes(None)
    model = Segmenter(width=4, optimizer="sgd", learning_rate=1e30,
                             max_iter=50)
    with pytest.raises(NonFiniteLossError, match=r"at iteration \d+") as info:
        model.fit(x, y)
    err = info.value
    assert err.iteration >= 1
    assert all(np.all(np.isfinite(a)) for a in err.params)
    # the model keeps the last good parameters and can still predict
    assert model.params_ is err.params
    assert model.predict(x).shape == (2, 16, 16)
    assert isinstance(err, FloatingPointError)


# --- the flat form used by the Segmenter's training loop ------------------------

@pytest.mark.parametrize("make", [
    lambda: arrseg.optim.SGD(0.3, momentum=0.0),
    lambda: arrseg.optim.SGD(0.3, momentum=0.9),
    lambda: arrseg.optim.SGD(0.3, momentum=0.9, nesterov=True),
    lambda: arrseg.optim.Adam(0.05),
], ids=["sgd", "momentum", "nesterov", "adam"])
@pytest.mark.parametrize("bias", [True, False])
def test_flat_step_equals_the_step_on_params(xp, make, bias):
    from arrseg.optim.flat import flatten, layout_of, unflatten

    x, y = arrseg.data.make_shapes(n_images=2, size=12, seed=0, xp=xp)
    params = arrseg.init_params(3, 4, 3, seed=1, dtype="float64", bias=bias, xp=xp)
    tree_opt, flat_opt = make(), make()
    layout = layout_of(params)
    theta = flatten(params, xp)
    assert layout.size == theta.shape[0]
    for _ in range(4):
        _, grads = arrseg.loss_and_grad(x, y, params)
        params = tree_opt.step(params, grads)
        theta = flat_opt.flat_step(theta, flatten(grads, xp))
    for a, b in zip(params, unflatten(theta, layout, xp)):
        if a is None:
            assert b is None
        else:
            np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=1e-13, atol=1e-15)
