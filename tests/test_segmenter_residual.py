"""The Segmenter with residual layers (issue 12): hyper-parameters, every
optimizer on a deep model, VarPro's reduced gradient, crops and tiles with
the whole receptive halo, model files, and depth 0 as before.

References: the public :func:`arrseg.loss_and_grad` (itself checked against
PyTorch), NumPy loops for the regularisers, finite differences of the
reduced objective, untiled prediction, and predictions stored by the
release before the residual layers (``tests/data``, made by
``tests/data/make_v1_fixtures.py``).
"""

import json
import pathlib

import numpy as np
import pytest

import arrseg
from arrseg import model_file
from arrseg.estimator.crops import CropSampler
from arrseg.estimator.settings import check_settings
from arrseg.numerics.residual import receptive_halo
from arrseg.optim import VarPro
from arrseg.segmenter import Segmenter
from arrseg.testing import check_derivative
from arrseg.tiling import predict_proba_tiled

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def shapes():
    """Three 24 x 24 images: two to train on, one held out."""
    return arrseg.data.make_shapes(n_images=3, size=24, seed=0)


def normalised(model, x):
    """(x - mean_) / std_ per channel, in float64 (the reference's input)."""
    x = np.asarray(x, dtype=np.float64)
    return (x - model.mean_[:, None, None]) / model.std_[:, None, None]


def smoothness_reference(K, alpha):
    """alpha/2 sum of squared forward differences along the last two axes,
    and its gradient, by loops over the kernel's rows and columns."""
    K = np.asarray(K, dtype=np.float64)
    s = K.shape[-1]
    value, grad = 0.0, np.zeros_like(K)
    for a in range(s - 1):
        d = K[..., a + 1, :] - K[..., a, :]
        value += 0.5 * alpha * np.sum(d * d)
        grad[..., a + 1, :] += alpha * d
        grad[..., a, :] -= alpha * d
        d = K[..., :, a + 1] - K[..., :, a]
        value += 0.5 * alpha * np.sum(d * d)
        grad[..., :, a + 1] += alpha * d
        grad[..., :, a] -= alpha * d
    return value, grad


# --- hyper-parameters ----------------------------------------------------------------

def test_new_hyper_parameters_are_stored_and_cloned():
    model = Segmenter(depth=3, dilation="doubling", step=0.5, layer="symmetric",
                      layer_kernel_size=5)
    params = model.get_params()
    assert {k: params[k] for k in ("depth", "dilation", "step", "layer",
                                   "layer_kernel_size")} == {
        "depth": 3, "dilation": "doubling", "step": 0.5, "layer": "symmetric",
        "layer_kernel_size": 5}
    assert Segmenter(**params).get_params() == params
    assert model.set_params(dilation=[1, 3, 1]).dilation == [1, 3, 1]
    assert repr(Segmenter(depth=2)) == "Segmenter(depth=2)"
    s = check_settings(Segmenter(depth=4, dilation="doubling"))
    assert s.dilation == (1, 2, 4, 8) and s.options.dilation == (1, 2, 4, 8)
    assert check_settings(Segmenter(depth=2, dilation=3)).dilation == (3, 3)
    assert check_settings(Segmenter()).dilation == (1, 2, 4)     # the defaults
    assert check_settings(Segmenter(depth=0)).dilation == ()
    assert s.halo == 1 + 1 + 2 + 4 + 8


@pytest.mark.parametrize("kwargs, error, words", [
    ({"depth": -1}, ValueError, "depth must be >= 0, got -1"),
    ({"depth": 1.5}, TypeError, "depth must be an integer"),
    ({"depth": True}, TypeError, "depth must be an integer"),
    ({"depth": 2, "dilation": 0}, ValueError, "dilation must be >= 1, got 0"),
    ({"depth": 2, "dilation": 1.0}, TypeError, "dilation must be an integer >= 1"),
    ({"depth": 2, "dilation": "halving"}, ValueError, "got 'halving'"),
    ({"depth": 3, "dilation": [1, 2]}, ValueError,
     "dilation must have one entry per residual layer (depth = 3)"),
    ({"depth": 2, "dilation": [1, 0]}, ValueError, "dilation[1] must be >= 1"),
    ({"depth": 2, "dilation": [1, "2"]}, TypeError, "dilation[1] must be an integer"),
    ({"depth": 2, "step": 0}, ValueError, "step must be a finite number in (0, inf)"),
    ({"depth": 2, "step": float("nan")}, ValueError, "step must be a finite number"),
    ({"depth": 2, "step": "1"}, TypeError, "step must be a number"),
    ({"depth": 2, "layer": "sym"}, ValueError,
     "layer must be one of 'residual', 'symmetric'; got 'sym'"),
    ({"depth": 2, "layer_kernel_size": 2}, ValueError,
     "layer_kernel_size must be odd"),
    ({"depth": 2, "layer_kernel_size": 0}, ValueError, "layer_kernel_size must be >= 1"),
    # the crop keeps a pixel inside its border of the whole halo: 1 + 1 + 2
    ({"depth": 2, "dilation": "doubling", "crop_size": 8}, ValueError,
     "crop_size must be >= 9, got 8"),
    ({"depth": 2, "dilation": "doubling", "layer": "symmetric", "crop_size": 14},
     ValueError, "crop_size must be >= 15, got 14"),
])
def test_bad_hyper_parameters_name_the_argument(shapes, kwargs, error, words):
    x, y = shapes
    with pytest.raises(error) as info:
        Segmenter(max_iter=1, **kwargs).fit(x[:1], y[:1])
    assert str(info.value).startswith("Segmenter: ")
    assert words in str(info.value)


def test_prediction_checks_the_layer_options_against_the_fitted_depth(shapes):
    x, y = shapes
    model = Segmenter(width=3, depth=2, max_iter=1).fit(x[:1], y[:1])
    model.set_params(dilation=[1, 2, 4])
    with pytest.raises(ValueError, match=r"dilation must have one entry per residual "
                                         r"layer \(depth = 2\)"):
        model.predict(x[0])
    model.set_params(dilation=2, step=-1.0)
    with pytest.raises(ValueError, match="Segmenter: step must be"):
        model.predict(x[0])


# --- every optimizer trains a deep model ------------------------------------------------

@pytest.mark.parametrize("layer", ["residual", "symmetric"])
@pytest.mark.parametrize("optimizer, extra", [
    ("sgd", {"learning_rate": 0.2}),
    ("sgd", {"learning_rate": 0.2, "nesterov": True}),
    ("adam", {}),
    ("adam", {"crop_size": 17, "batch_size": 2, "boundary": "periodic"}),
    ("varpro", {}),
])
def test_every_optimizer_lowers_the_loss_of_a_deep_model(shapes, optimizer, extra,
                                                         layer):
    x, y = shapes
    model = Segmenter(width=4, depth=2, dilation="doubling", layer=layer, step=0.5,
                      optimizer=optimizer, max_iter=10, smoothness=1e-3, seed=0,
                      **extra).fit(x[:2], y[:2])
    p = model.params_
    assert isinstance(p, arrseg.ResidualParams) and p.depth == 2
    p0 = arrseg.init_params(3, 4, 3, depth=2, seed=0)
    assert not np.array_equal(p.K_layers, p0.K_layers)   # the layers were trained
    assert not np.array_equal(p.b_layers, p0.b_layers)
    # the unregularised training loss, by the public function
    xn = normalised(model, x[:2])
    options = dict(dilation=(1, 2), layer=layer, step=0.5,
                   boundary=extra.get("boundary", "zeros"))
    before = float(arrseg.loss_and_grad(xn, y[:2], p0.__class__(
        *(a.astype(np.float64) for a in p0)), **options)[0])
    after = float(arrseg.loss_and_grad(
        xn, y[:2], p.__class__(*(a.astype(np.float64) for a in p)), **options)[0])
    assert after < 0.8 * before
    assert model.loss_curve_[-1] < model.loss_curve_[0]
    assert model.predict(x[2]).shape == (24, 24)


@pytest.mark.parametrize("layer", ["residual", "symmetric"])
def test_one_sgd_step_decays_the_layer_kernels_and_smooths_them(layer):
    """The training objective and its first step, against the public loss
    and gradient plus NumPy-loop regularisers: weight decay on K, W and
    K_layers (not on the biases), smoothness on K and K_layers."""
    x, y = arrseg.data.make_shapes(n_images=2, size=16, seed=3, dtype="float64")
    wd, smooth, lr = 1e-2, 1e-1, 0.1
    model = Segmenter(width=3, depth=2, dilation="doubling", layer=layer, step=0.7,
                      optimizer="sgd", momentum=0.0, learning_rate=lr, max_iter=1,
                      batch_size=2, weight_decay=wd, smoothness=smooth,
                      seed=0).fit(x, y)
    p0 = arrseg.init_params(3, 3, 3, depth=2, seed=0, dtype="float64")  # fit's start
    xn = normalised(model, x)
    loss, g = arrseg.loss_and_grad(xn, y, p0, dilation=(1, 2), layer=layer, step=0.7)
    rK, gK = smoothness_reference(p0.K, smooth)
    rL, gL = smoothness_reference(p0.K_layers, smooth)
    objective = (float(loss) + rK + rL + wd / 2 * sum(
        float(np.sum(a * a)) for a in (p0.K, p0.W, p0.K_layers)))
    np.testing.assert_allclose(model.loss_curve_[0], objective, rtol=1e-10)
    expected = {
        "K": p0.K - lr * (g.K + wd * p0.K + gK),
        "b": p0.b - lr * g.b,
        "W": p0.W - lr * (g.W + wd * p0.W),
        "c": p0.c - lr * g.c,
        "K_layers": p0.K_layers - lr * (g.K_layers + wd * p0.K_layers + gL),
        "b_layers": p0.b_layers - lr * g.b_layers,
    }
    for name, want in expected.items():
        np.testing.assert_allclose(getattr(model.params_, name), want, rtol=1e-9,
                                   atol=1e-13, err_msg=name)


def test_early_stopping_divergence_and_overflow_keep_deep_parameters(shapes):
    from arrseg.estimator.training import DivergenceWarning
    from arrseg.optim import NonFiniteLossError

    x, y = shapes
    deep = dict(width=4, depth=2, dilation="doubling", seed=0)
    model = Segmenter(early_stopping=True, max_iter=30, n_iter_no_change=3,
                      **deep).fit(x[:2], y[:2])
    assert isinstance(model.params_, arrseg.ResidualParams)
    assert len(model.validation_scores_) == model.n_iter_
    # keep-best after a divergence: the parameters of the lowest loss
    with pytest.warns(DivergenceWarning, match="diverged"):
        model = Segmenter(optimizer="sgd", momentum=0.0, learning_rate=50.0,
                          max_iter=6, **deep).fit(x[:2], y[:2])
    best = int(np.argmin(model.loss_curve_))
    assert isinstance(model.params_, arrseg.ResidualParams) and best == 0
    # an overflow names the iteration and keeps the last finite parameters
    with pytest.raises(NonFiniteLossError, match="iteration 2") as info:
        Segmenter(optimizer="sgd", momentum=0.0, learning_rate=1e20,
                  activation="relu", max_iter=6, **deep).fit(x[:2], y[:2])
    kept = info.value.params
    assert isinstance(kept, arrseg.ResidualParams)
    assert all(np.isfinite(a).all() for a in kept)


# --- VarPro -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deep_varpro_problem():
    x, y = arrseg.data.make_shapes(n_images=2, size=14, seed=1, dtype="float64")
    p = arrseg.init_params(3, 3, 3, depth=2, seed=2, dtype="float64")
    rng = np.random.default_rng(0)
    p = p._replace(b=0.1 * rng.standard_normal(p.b.shape),
                   b_layers=0.1 * rng.standard_normal(p.b_layers.shape))
    return x, y, p


@pytest.mark.parametrize("layer", ["residual", "symmetric"])
def test_varpro_reduced_gradient_of_a_deep_model_matches_finite_differences(
        deep_varpro_problem, layer):
    x, y, p = deep_varpro_problem
    vp = VarPro(dilation=[1, 2], layer=layer, layer_step=0.6, weight_decay=1e-2,
                smoothness=1e-2, inner_tol=1e-13, inner_rtol=0, inner_max_iter=100,
                cg_max_iter=60)
    vp.set_data(x, y, p)
    layers = (p.K_layers, p.b_layers)
    phi, grad, W, c = vp.reduced_loss_and_grad(p.K, p.b, p.W, p.c, layers=layers)
    assert isinstance(grad, arrseg.ResidualParams)
    assert grad.W is None and grad.c is None
    assert grad.K_layers.shape == p.K_layers.shape
    # the classifier is eliminated: the inner gradient vanishes at (W*, c*)
    _, full = arrseg.loss_and_grad(x, y, p._replace(W=W, c=c), dilation=(1, 2),
                                   layer=layer, step=0.6)
    assert np.abs(full.W + 1e-2 * W).max() < 1e-10 and np.abs(full.c).max() < 1e-10

    def reduced(z):
        return vp.reduced_loss(z.K, z.b, p.W, p.c, layers=(z.K_layers, z.b_layers))[0]

    z = p._replace(W=None, c=None)
    rng = np.random.default_rng(1)
    v = z.__class__(*(None if a is None else rng.standard_normal(a.shape) for a in z))
    h = 1e-5
    plus = z.__class__(*(None if a is None else a + h * d for a, d in zip(z, v)))
    minus = z.__class__(*(None if a is None else a - h * d for a, d in zip(z, v)))
    fd = (reduced(plus) - reduced(minus)) / (2 * h)
    slope = sum(float(np.sum(g * d)) for g, d in zip(grad, v) if g is not None)
    assert abs(fd - slope) <= 1e-6 * abs(slope)
    # each field on its own (a wrong layers' gradient cannot hide in the sum)
    for i, name in enumerate(z._fields):
        if z[i] is None:
            continue
        vi = z.__class__(*(d if j == i else (None if a is None else 0 * a)
                           for j, (a, d) in enumerate(zip(z, v))))
        plus = z.__class__(*(None if a is None else a + h * d for a, d in zip(z, vi)))
        minus = z.__class__(*(None if a is None else a - h * d for a, d in zip(z, vi)))
        fd = (reduced(plus) - reduced(minus)) / (2 * h)
        slope = float(np.sum(grad[i] * vi[i]))
        assert abs(fd - slope) <= 1e-6 * abs(slope) + 1e-11, name
    # and the course's Taylor test of the reduced objective
    check = check_derivative(
        lambda t: vp.reduced_loss_and_grad(t.K, t.b, p.W, p.c,
                                           layers=(t.K_layers, t.b_layers))[:2],
        z, h0=0.5, n_steps=8)
    assert check.passed, str(check)


def test_varpro_minimizes_a_deep_model_monotonically(deep_varpro_problem):
    x, y, p = deep_varpro_problem
    vp = VarPro(dilation=2, layer_step=0.5)
    params, first = vp.start(x, y, p)
    losses = [first]
    for _ in range(6):
        params, loss = vp.step()
        losses.append(loss)
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.8 * losses[0]
    assert isinstance(params, arrseg.ResidualParams)
    assert params.K_layers.dtype == np.float64


# --- crops and tiles: the whole receptive halo ---------------------------------------------

@pytest.mark.parametrize("layer", ["residual", "symmetric"])
def test_crop_border_is_the_whole_receptive_halo(layer):
    x, y = arrseg.data.make_shapes(n_images=2, size=40, seed=0)
    est = Segmenter(depth=3, dilation="doubling", layer=layer, layer_kernel_size=3,
                    kernel_size=5, crop_size=33, batch_size=3, boundary="periodic")
    s = check_settings(est)
    halo = receptive_halo(5, 3, (1, 2, 4), layer)
    assert s.halo == halo == (2 + 7 if layer == "residual" else 2 + 14)
    sampler = CropSampler([x], [y], [y], s, np.random.default_rng(0), np,
                          "cpu")
    _, yb = sampler.batch()
    ignore = s.ignore_index
    # periodic: every side gets the border, and not a pixel more
    for border in (yb[:, :halo], yb[:, -halo:], yb[:, :, :halo], yb[:, :, -halo:]):
        assert (border == ignore).all()
    inner = yb[:, halo:-halo, halo:-halo]
    assert (inner != ignore).all()


@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
@pytest.mark.parametrize("layer", ["residual", "symmetric"])
@pytest.mark.parametrize("tile_size", [1, 4, (7, 30), 16])
def test_tiled_prediction_of_a_deep_model_equals_untiled(boundary, layer, tile_size):
    rng = np.random.default_rng(0)
    p = arrseg.init_params(3, 4, 3, 3, depth=3, layer_kernel_size=3, seed=1,
                           dtype="float64")
    p = p._replace(b=0.3 * rng.standard_normal(4),
                   b_layers=0.3 * rng.standard_normal((3, 4)))
    x = rng.standard_normal((2, 3, 27, 22))
    options = dict(boundary=boundary, layer=layer, dilation=(1, 2, 4), step=0.8)
    halo = receptive_halo(3, 3, (1, 2, 4), layer)
    assert halo > 4     # tiles of 1 and 4 pixels are smaller than the halo
    P = arrseg.predict_proba(x, p, **options)
    T = predict_proba_tiled(x, p, tile_size=tile_size, **options)
    np.testing.assert_allclose(T, P, rtol=0, atol=1e-13)


def test_planned_tiles_of_a_deep_model_equal_untiled():
    rng = np.random.default_rng(1)
    p = arrseg.init_params(3, 4, 2, 3, depth=2, seed=1, dtype="float64")
    x = rng.standard_normal((1, 3, 150, 140))
    P = arrseg.predict_proba(x, p, dilation=[3, 5], boundary="periodic")
    T = predict_proba_tiled(x, p, dilation=[3, 5], boundary="periodic",
                            memory_budget=2**20)
    np.testing.assert_allclose(T, P, rtol=0, atol=1e-13)


def test_segmenter_tiles_a_deep_model_like_one_pass(shapes):
    x, y = shapes
    model = Segmenter(width=4, depth=2, dilation="doubling", layer="symmetric",
                      max_iter=3).fit(x[:2], y[:2])
    whole = model.predict_proba(x)
    tiled = model.set_params(tile_size=5).predict_proba(x)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=2e-6)


# --- model files ---------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adam", "varpro"])
def test_deep_model_round_trip_is_bitwise(shapes, tmp_path, optimizer):
    x, y = shapes
    model = Segmenter(width=4, depth=2, dilation=[2, 1], step=0.75, layer="symmetric",
                      layer_kernel_size=5, optimizer=optimizer, max_iter=3).fit(
        x[:2], y[:2])
    path = tmp_path / "deep.npz"
    model.save(path)
    params, meta = model_file.load(path)
    assert meta["format_version"] == model_file.FORMAT_VERSION == 2
    with np.load(path) as f:
        assert sorted(f.files) == ["K", "K_layers", "W", "b", "b_layers", "c",
                                   "metadata"]
    loaded = Segmenter.load(path)
    assert isinstance(loaded.params_, arrseg.ResidualParams)
    for a, b in zip(loaded.params_, model.params_):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert loaded.get_params() == {**model.get_params(), "dilation": [2, 1]}
    assert np.array_equal(loaded.predict_proba(x), model.predict_proba(x))


# --- depth 0 is the network of the previous release ------------------------------------------

@pytest.mark.parametrize("name", ["adam", "varpro"])
def test_depth_0_fit_gives_the_bits_of_the_previous_release(name):
    """Refit with the settings of the version-1 fixture: the same
    parameters and predictions, bit for bit, as that release's."""
    x, y = np.load(DATA / "v1_images.npy"), np.load(DATA / "v1_labels.npy")
    settings = json.loads((DATA / "v1_settings.json").read_text())[name]
    model = Segmenter(depth=0, **settings).fit(x[:2], y[:2])
    assert isinstance(model.params_, arrseg.Params)
    old, _ = model_file.load(DATA / f"v1_segmenter_{name}.npz")
    for a, b in zip(model.params_, old):
        assert np.array_equal(a, b)
    assert np.array_equal(model.predict_proba(x),
                          np.load(DATA / f"v1_segmenter_{name}_proba.npy"))
