"""Bad input raises ValueError or TypeError naming the argument: never a
silent wrong answer, never a NaN."""

import re

import numpy as np
import pytest

from conftest import to_xp
import arrseg
from arrseg._backend import device


@pytest.fixture
def good(xp, rng):
    """A valid call's arguments in namespace xp (float64)."""
    x = to_xp(xp, rng.standard_normal((2, 3, 6, 5)))
    y = to_xp(xp, rng.integers(0, 4, (2, 6, 5)))
    p = arrseg.init_params(3, 4, 4, 3, dtype="float64", xp=xp)
    return x, y, p


def raises(exc, *words):
    """pytest.raises whose message must contain every word (in order)."""
    return pytest.raises(exc, match=".*".join(map(re.escape, words)))


def with_value(xp, a, index, value):
    """A copy of the xp array ``a`` with ``a[index] = value``.

    Built with ``xp.where`` from a mask made on the host, so that it works in
    every namespace: no conversion of ``a`` to NumPy (which CuPy refuses
    implicitly) and no item assignment (which array_api_strict and JAX may
    not allow). ``index`` is a NumPy index, such as ``(1, 2, 3)`` or
    ``np.s_[0, 0, 0, :2]``.
    """
    mask = np.zeros(tuple(a.shape), dtype=bool)
    mask[index] = True
    mask = xp.asarray(mask, device=device(a))
    return xp.where(mask, xp.asarray(value, dtype=a.dtype, device=device(a)), a)


def test_wrong_ndim(xp, good):
    x, y, p = good
    with raises(ValueError, "x must have shape (N, C, H, W)", "ndim 3", "x[None]"):
        arrseg.predict_proba(x[0, ...], p)
    with raises(ValueError, "labels must have shape (N, H, W)", "(6, 5)"):
        arrseg.loss_and_grad(x, y[0, ...], p)
    with raises(ValueError, "params.K must have shape (k, C, s, s)", "ndim 3"):
        arrseg.predict_proba(x, p._replace(K=p.K[0, ...]))
    with raises(ValueError, "params.W must have shape (k, n_c)"):
        arrseg.predict_proba(x, p._replace(W=p.W[:, 0]))


def test_channel_count_must_match_K(xp, good):
    x, _, p = good
    with raises(ValueError, "x has 2 channels", "expects C = 3"):
        arrseg.predict_proba(x[:, :2, ...], p)


def test_kernel_size_even_or_mismatched(xp, good):
    x, _, p = good
    K4 = xp.zeros((4, 3, 4, 4), dtype=xp.float64)
    with raises(ValueError, "odd", "s = 4"):
        arrseg.predict_proba(x, p._replace(K=K4))
    with raises(ValueError, "square", "3 x 5"):
        arrseg.predict_proba(x, p._replace(K=xp.zeros((4, 3, 3, 5), dtype=xp.float64)))
    with raises(ValueError, "kernel_size must be odd", "got 4"):
        arrseg.init_params(3, 4, 4, kernel_size=4)


def test_parameter_shapes_must_agree(xp, good):
    x, _, p = good
    with raises(ValueError, "params.b must have shape (k,) = (4,)", "(5,)"):
        arrseg.predict_proba(x, p._replace(b=xp.zeros(5, dtype=xp.float64)))
    with raises(ValueError, "params.W", "k = 4", "(3, 4)"):
        arrseg.predict_proba(x, p._replace(W=xp.zeros((3, 4), dtype=xp.float64)))
    with raises(ValueError, "params.c must have shape (n_c,) = (4,)", "(2,)"):
        arrseg.predict_proba(x, p._replace(c=xp.zeros(2, dtype=xp.float64)))


def test_label_shape_must_match_images(xp, good):
    x, y, p = good
    with raises(ValueError, "labels must have shape (N, H, W) = (2, 6, 5)", "(2, 5, 6)"):
        arrseg.loss_and_grad(x, xp.permute_dims(y, (0, 2, 1)), p)


@pytest.mark.parametrize("bad_value", [4, -1, 99])
def test_labels_outside_the_classes(xp, good, bad_value):
    x, y, p = good
    y = with_value(xp, y, (1, 2, 3), bad_value)
    with raises(ValueError, "labels must be class indices in [0, 4)", f"[{bad_value}]"):
        arrseg.loss_and_grad(x, y, p)
    # the same value is accepted as the ignore label
    arrseg.loss_and_grad(x, y, p, ignore_index=bad_value)


def test_labels_must_be_integers(xp, good):
    x, y, p = good
    with raises(TypeError, "labels must be an integer array"):
        arrseg.loss_and_grad(x, xp.astype(y, xp.float64), p)
    with raises(TypeError, "ignore_index must be an integer", "0.5"):
        arrseg.loss_and_grad(x, y, p, ignore_index=0.5)


@pytest.mark.parametrize("weight,error,words", [
    ([1.0, 2.0], ValueError, ("class_weight must have shape (n_c,) = (4,)", "(2,)")),
    ([1.0, -2.0, 1.0, 1.0], ValueError, ("finite and non-negative", "-2.0")),
    ([1.0, np.nan, 1.0, 1.0], ValueError, ("finite and non-negative", "nan")),
    ([1.0, np.inf, 1.0, 1.0], ValueError, ("finite and non-negative", "inf")),
    (["a", "b", "c", "d"], TypeError, ("class_weight must be a sequence of numbers",)),
])
def test_bad_class_weight(xp, good, weight, error, words):
    x, y, p = good
    with raises(error, *words):
        arrseg.loss_and_grad(x, y, p, class_weight=weight)
    if error is ValueError:  # the same as an array of the namespace
        with raises(error, *words):
            arrseg.loss_and_grad(x, y, p, class_weight=to_xp(xp, np.array(weight)))


@pytest.mark.parametrize("field", ["K", "b", "W", "c"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_parameters(xp, good, field, value):
    x, y, p = good
    a = getattr(p, field)
    bad = p._replace(**{field: with_value(xp, a, (0,) * a.ndim, value)})
    with raises(ValueError, f"params.{field} must be finite", "1 non-finite"):
        arrseg.predict_proba(x, bad)
    with raises(ValueError, f"params.{field} must be finite"):
        arrseg.loss_and_grad(x, y, bad)


def test_non_finite_images(xp, good):
    x, _, p = good
    x = with_value(xp, x, np.s_[0, 0, 0, :2], np.nan)
    with raises(ValueError, "x must be finite", "2 non-finite"):
        arrseg.predict_proba(x, p)


@pytest.mark.skip_xp_backends("numpy", reason="mixes numpy with another namespace")
def test_mixed_namespaces(xp, good):
    x, y, p = good
    x_np = np.zeros(tuple(x.shape))
    with raises(TypeError, "params.K is a", "array but x is a NumPy array",
                "must come from the same namespace"):
        arrseg.predict_proba(x_np, p)
    with raises(TypeError, "labels is a NumPy array but x is"):
        arrseg.loss_and_grad(x, np.zeros(tuple(y.shape), dtype=np.int64), p)
    with raises(TypeError, "params.c is a NumPy array"):
        arrseg.predict_proba(x, p._replace(c=np.zeros(4)))
    with raises(TypeError, "class_weight is a NumPy array"):
        arrseg.loss_and_grad(x, y, p, class_weight=np.ones(4))


def test_not_an_array():
    p = arrseg.init_params(3, 4, 2)
    with raises(TypeError, "x must be an array", "got list"):
        arrseg.predict_proba([[[[1.0]]]], p)
    with raises(TypeError, "params must be an arrseg.Params", "got dict"):
        arrseg.predict_proba(np.zeros((1, 3, 4, 4)), dict(p._asdict()))


@pytest.mark.parametrize("name,value", [("activation", "softplus"),
                                        ("boundary", "reflect"),
                                        ("method", "cudnn")])
def test_unknown_option_names(xp, good, name, value):
    x, y, p = good
    with raises(ValueError, f"{name} must be one of", f"got {value!r}"):
        arrseg.predict_proba(x, p, **{name: value})
    with raises(ValueError, f"{name} must be one of", f"got {value!r}"):
        arrseg.loss_and_grad(x, y, p, **{name: value})


def test_dtypes_refused(xp, good):
    x, _, p = good
    if hasattr(xp, "float16"):
        with raises(TypeError, "x must be float32 or float64", "float16 is not supported"):
            arrseg.predict_proba(xp.astype(x, xp.float16), p)
    with raises(TypeError, "params must share one dtype", "K: float32", "b: float64"):
        arrseg.predict_proba(x, p._replace(K=xp.astype(p.K, xp.float32)))
    with raises(TypeError, "params.W must be float32 or float64"):
        arrseg.predict_proba(x, p._replace(W=xp.astype(p.W, xp.int32)))


def test_empty_images_refused(xp, good):
    x, _, p = good
    with raises(ValueError, "x must not be empty", "(0, 3, 6, 5)"):
        arrseg.predict_proba(x[:0, ...], p)


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(in_channels=0), ValueError, ("in_channels must be >= 1, got 0",)),
    (dict(width=2.5), TypeError, ("width must be an integer", "2.5")),
    (dict(dtype="float16"), TypeError, ("dtype must be float32 or float64", "float16")),
    (dict(dtype="int32"), TypeError, ("dtype must be float32 or float64",)),
])
def test_init_params_arguments(kwargs, error, words):
    args = dict(in_channels=3, width=4, n_classes=2) | kwargs
    with raises(error, *words):
        arrseg.init_params(**args)


def test_xp_argument_must_be_a_namespace():
    with raises(TypeError, "xp must be an array namespace", "'numpy'"):
        arrseg.init_params(3, 4, 2, xp="numpy")
    with raises(TypeError, "xp must be an array namespace"):
        arrseg.data.make_shapes(xp=42)
