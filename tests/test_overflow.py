"""Finite inputs give a finite answer or arrseg.NonFiniteError (arrseg.overflow).

The references are NumPy float64 loops (tests/reference.py) and the
invariance of the weighted loss under scaling of the class weights.
"""

import numpy as np
import pytest

import arrseg
from arrseg import NonFiniteError, Params
from arrseg.tiling import predict_proba_tiled

from reference import cross_entropy, predict_proba as reference_proba


@pytest.fixture
def problem():
    x, y = arrseg.data.make_shapes(n_images=2, size=16, seed=0)
    return x, y, arrseg.init_params(3, 6, 3, seed=0)


def blown_up(p, k_scale=1e30, w_scale=1e10):
    return Params(p.K * k_scale, p.b, p.W * w_scale, p.c)


@pytest.mark.parametrize("activation", ["relu", "identity"])
@pytest.mark.parametrize("method", ["direct", "fft"])
def test_overflowing_logits_raise_naming_them(problem, activation, method):
    x, y, p = problem
    big = blown_up(p)
    # the float64 reference really overflows float32 in the logits
    P64 = reference_proba(x.astype(np.float64), *(a.astype(np.float64) for a in big),
                          activation, "zeros")
    assert np.isfinite(P64).all()  # float64 holds them: the error is float32's
    for call in (lambda: arrseg.predict_proba(x, big, activation=activation,
                                              method=method),
                 lambda: predict_proba_tiled(x, big, activation=activation,
                                             method=method, tile_size=8),
                 lambda: arrseg.loss_and_grad(x, y, big, activation=activation,
                                              method=method)):
        with pytest.raises(NonFiniteError, match=r"the logits W\^T y \+ c overflowed "
                                                 r"float32.*bounded activation"):
            call()
    # float64 parameters and images: finite, and equal to the reference
    P = arrseg.predict_proba(x.astype(np.float64),
                             Params(*(a.astype(np.float64) for a in big)),
                             activation=activation, method=method)
    assert np.allclose(P, P64, atol=1e-9)


def test_the_error_is_a_floating_point_error(problem):
    x, _, p = problem
    with pytest.raises(FloatingPointError):
        arrseg.predict_proba(x, blown_up(p), activation="identity")


def test_images_near_the_float64_maximum(problem):
    x, _, p = problem
    p64 = Params(*(a.astype(np.float64) for a in p))
    huge = x.astype(np.float64) * 1e307
    # K x sums ~27 terms of up to 1e307 * |K|: finite or named, never NaN
    try:
        P = arrseg.predict_proba(huge, p64, activation="identity")
    except NonFiniteError as e:
        assert "the pre-activations K x + b overflowed float64" in str(e)
        assert "scale the images" in str(e)
    else:
        assert np.isfinite(P).all()
    with pytest.raises(NonFiniteError, match="pre-activations K x"):
        arrseg.predict_proba(huge, Params(p64.K * 1e3, p64.b, p64.W, p64.c),
                             activation="identity")
    # tanh saturates: finite P from the same images
    assert np.isfinite(arrseg.predict_proba(huge, p64)).all()


def test_segmenter_fits_images_near_the_float64_maximum(problem):
    x, y, _ = problem
    model = arrseg.Segmenter(width=4, max_iter=3).fit(x.astype(np.float64) * 1e300, y)
    small = arrseg.Segmenter(width=4, max_iter=3).fit(x.astype(np.float64), y)
    # the normalisation is scale-free: the same model up to round-off
    assert np.allclose(model.mean_, small.mean_ * 1e300, rtol=1e-12)
    assert np.allclose(model.std_, small.std_ * 1e300, rtol=1e-12)
    assert np.allclose(model.loss_curve_, small.loss_curve_, rtol=1e-9)


def test_the_cross_entropy_overflow_is_named(problem):
    x, y, p = problem
    with pytest.raises(NonFiniteError, match="the cross-entropy overflowed float32"):
        arrseg.loss_and_grad(x, y, Params(p.K, p.b, p.W * 1e37, p.c))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_class_weights_near_the_dtype_maximum_give_the_scaled_loss(problem, dtype):
    x, y, p = problem
    p = Params(*(a.astype(dtype) for a in p))
    top = float(np.finfo(dtype).max)
    w = np.array([0.9, 0.5, 0.7])
    loss, grads = arrseg.loss_and_grad(x, y, p, class_weight=list(w * top))
    P = reference_proba(x.astype(np.float64), *(a.astype(np.float64) for a in p),
                        "tanh", "zeros")
    want = cross_entropy(P, y, w)
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert abs(float(loss) - want) < tol
    assert all(np.isfinite(g).all() for g in grads if g is not None)
    model = arrseg.Segmenter(width=4, max_iter=2, class_weight=list(w * top / 2))
    assert np.isfinite(model.fit(x, y).loss_curve_).all()


def test_float64_images_with_float32_parameters_overflowing_on_the_cast(problem):
    x, y, p = problem
    # finite in float64 (the compute dtype), beyond float32's range
    big = Params(p.K * 1e20, p.b, p.W * 1e20, p.c)
    with pytest.raises(NonFiniteError, match="exceeds the range of the parameters' "
                                             "dtype float32"):
        arrseg.loss_and_grad(x.astype(np.float64), y, big, activation="identity")


def test_segmenter_predict_names_the_overflow(problem):
    x, y, p = problem
    model = arrseg.Segmenter(width=6, max_iter=1, activation="relu").fit(x, y)
    model.params_ = blown_up(model.params_)
    with pytest.raises(NonFiniteError, match=r"Segmenter.predict: .*the logits"):
        model.predict(x)


def test_no_warning_precedes_the_error(problem):
    # pytest turns warnings into errors: a RuntimeWarning would surface first
    x, y, p = problem
    with pytest.raises(NonFiniteError):
        arrseg.loss_and_grad(x, y, blown_up(p), activation="relu")


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("layer", ["residual", "symmetric"])
def test_residual_layer_overflow_is_named_with_its_index(method, layer):
    # the opening layer and layer 1 stay finite (tanh bounds the opening
    # features); every tap of layer 2 is 1e38: its features overflow float32
    x = np.random.default_rng(0).random((1, 3, 10, 10)).astype(np.float32)
    p = arrseg.init_params(3, 4, 2, depth=3, seed=0)
    big = p.K_layers.copy()
    big[1] = 1e38
    p = p._replace(K_layers=big)
    for call in (lambda: arrseg.predict_proba(x, p, activation="identity",
                                              method=method, layer=layer),
                 lambda: arrseg.loss_and_grad(x, np.zeros((1, 10, 10), np.int64), p,
                                              activation="identity", method=method,
                                              layer=layer)):
        with pytest.raises(NonFiniteError, match="residual layer 2 of 3"):
            call()
    # the same parameters in float64 are finite: no error
    p64 = type(p)(*(a.astype(np.float64) for a in p))
    P = arrseg.predict_proba(x.astype(np.float64), p64, activation="identity",
                             method=method, layer=layer)
    assert np.isfinite(P).all()
