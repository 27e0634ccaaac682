"""The residual network's arguments: every error names the argument.

The options ``dilation``, ``step``, ``layer`` and ``method``, the residual
layers' parameters ``params.K_layers`` / ``params.b_layers`` and
``init_params(depth=, layer_kernel_size=)``, through both public calls.
"""

import re

import numpy as np
import pytest

import arrseg

DEPTH, K, C, N_C = 2, 3, 2, 2


@pytest.fixture
def deep():
    """x, labels and float64 parameters of depth 2 with nonzero entries."""
    rng = np.random.default_rng(0)
    p = arrseg.init_params(C, K, N_C, depth=DEPTH, dtype="float64", seed=0)
    p = p._replace(b_layers=rng.standard_normal((DEPTH, K)))
    x = rng.standard_normal((1, C, 6, 7))
    y = rng.integers(0, N_C, (1, 6, 7))
    return x, y, p


def calls(x, y):
    """The two public calls, as (name, call(params, **options))."""
    return [("predict_proba", lambda p, **kw: arrseg.predict_proba(x, p, **kw)),
            ("loss_and_grad", lambda p, **kw: arrseg.loss_and_grad(x, y, p, **kw))]


def raises(call, error, pattern, params, **options):
    with pytest.raises(error, match=pattern) as info:
        call(params, **options)
    return str(info.value)


# -- options --------------------------------------------------------------

@pytest.mark.parametrize("dilation", [(1,), (1, 2, 3), [1, 1, 1, 1], ()])
def test_dilation_needs_one_entry_per_layer(deep, dilation):
    x, y, p = deep
    for name, call in calls(x, y):
        msg = raises(call, ValueError, r"^dilation must have one entry per residual "
                     r"layer", p, dilation=dilation)
        assert f"depth {DEPTH}" in msg and f"got {len(dilation)} dilation" in msg, name


def test_a_dilation_sequence_at_depth_zero_must_be_empty(deep):
    x, y, p = deep
    p0 = arrseg.Params(*p[:4])
    for name, call in calls(x, y):
        msg = raises(call, ValueError, "^dilation must have one entry per residual "
                     "layer", p0, dilation=(2,))
        assert "depth 0" in msg, name


@pytest.mark.parametrize("dilation,error,pattern", [
    (0, ValueError, r"^dilation must be >= 1, got 0"),
    (-2, ValueError, r"^dilation must be >= 1, got -2"),
    (1.5, TypeError, r"^dilation must be an integer, got float"),
    (2.0, TypeError, r"^dilation must be an integer, got float"),
    (True, TypeError, r"^dilation must be an integer, got bool"),
    ("2", ValueError, r"^dilation must be an integer >= 1, a sequence of them or "
                      r"'doubling', got '2'"),
    (None, TypeError, r"^dilation must be an integer"),
    ((1, 0), ValueError, r"^dilation\[1\] must be >= 1, got 0"),
    ((-1, 1), ValueError, r"^dilation\[0\] must be >= 1, got -1"),
    ([1, 2.5], TypeError, r"^dilation\[1\] must be an integer, got float"),
    ((True, 1), TypeError, r"^dilation\[0\] must be an integer, got bool"),
])
def test_bad_dilation_is_named(deep, dilation, error, pattern):
    x, y, p = deep
    for _, call in calls(x, y):
        raises(call, error, pattern, p, dilation=dilation)


def test_bad_dilation_is_refused_at_depth_zero_too(deep):
    # checked at the edge, whether or not the network has residual layers
    x, y, p = deep
    for _, call in calls(x, y):
        raises(call, ValueError, r"^dilation must be >= 1", arrseg.Params(*p[:4]),
               dilation=0)


@pytest.mark.parametrize("step,error", [
    (0, ValueError), (0.0, ValueError), (-0.5, ValueError), (-np.inf, ValueError),
    (float("nan"), ValueError), (np.inf, ValueError), (True, TypeError),
    ("1", TypeError), (None, TypeError),
])
def test_bad_step_is_named(deep, step, error):
    x, y, p = deep
    for _, call in calls(x, y):
        raises(call, error, r"^step must be", p, step=step)


@pytest.mark.parametrize("layer", ["resnet", "Residual", "", None, 1])
def test_unknown_layer_is_named(deep, layer):
    x, y, p = deep
    for _, call in calls(x, y):
        msg = raises(call, ValueError, r"^layer must be one of", p, layer=layer)
        assert "'residual'" in msg and "'symmetric'" in msg


def test_fused_is_refused_with_residual_layers(deep):
    x, y, p = deep
    for _, call in calls(x, y):
        msg = raises(call, ValueError, r"method='fused'", p, method="fused")
        assert "depth" in msg and f"{DEPTH} residual layers" in msg


# -- the residual layers' parameters -----------------------------------------

def _shape_cases(p):
    k = K
    return {
        "k mismatch": p._replace(K_layers=np.zeros((DEPTH, k + 1, k + 1, 3, 3)),
                                 b_layers=np.zeros((DEPTH, k + 1))),
        "k mismatch in one axis": p._replace(K_layers=np.zeros((DEPTH, k, k + 1, 3, 3))),
        "even s_r": p._replace(K_layers=np.zeros((DEPTH, k, k, 2, 2))),
        "non-square": p._replace(K_layers=np.zeros((DEPTH, k, k, 3, 5))),
        "ndim 4": p._replace(K_layers=np.zeros((k, k, 3, 3))),
        "ndim 6": p._replace(K_layers=np.zeros((DEPTH, k, k, 3, 3, 1))),
        "depth 0 arrays": p._replace(K_layers=np.zeros((0, k, k, 3, 3)),
                                     b_layers=np.zeros((0, k))),
    }


@pytest.mark.parametrize("case", list(_shape_cases(arrseg.init_params(
    C, K, N_C, depth=DEPTH))))
def test_K_layers_of_the_wrong_shape_is_named(deep, case):
    x, y, p = deep
    params = _shape_cases(p)[case]
    for _, call in calls(x, y):
        msg = raises(call, ValueError, r"^params\.K_layers must have shape "
                     r"\(depth, k, k, s_r, s_r\)", params)
        assert f"k = {K}" in msg
        assert re.search(r"got shape \(", msg)


@pytest.mark.parametrize("shape", [(DEPTH + 1, K), (DEPTH, K + 1), (DEPTH,),
                                   (DEPTH, K, 1)])
def test_b_layers_mismatched_is_named(deep, shape):
    x, y, p = deep
    for _, call in calls(x, y):
        msg = raises(call, ValueError, r"^params\.b_layers must have shape \(depth, "
                     r"k\)", p._replace(b_layers=np.zeros(shape)))
        assert f"{(DEPTH, K)}" in msg and f"got shape {shape}" in msg


def test_a_six_tuple_needs_both_layer_arrays(deep):
    x, y, p = deep
    for _, call in calls(x, y):
        raises(call, TypeError, r"^params\.b_layers must be an array when "
               r"params\.K_layers is one", tuple(p[:5]) + (None,))
        raises(call, TypeError, r"^params\.K_layers must be an array when "
               r"params\.b_layers is one", tuple(p[:4]) + (None, p.b_layers))
        raises(call, TypeError, r"^params\.b_layers must be an array",
               p._replace(b_layers=None))


def test_both_layer_arrays_none_is_depth_zero_or_named(deep):
    # _validation's message says "both None means depth 0": such parameters
    # must either give the one-layer network's results or be refused by name
    x, y, p = deep
    for name, call in calls(x, y):
        try:
            got = call(arrseg.ResidualParams(*p[:4], None, None))
        except (TypeError, ValueError) as e:
            assert "K_layers" in str(e), name
            continue
        want = call(arrseg.Params(*p[:4]))
        if name == "predict_proba":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_array_equal(got[0], want[0])
            for a, b in zip(got[1], want[1]):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("field", ["K_layers", "b_layers"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_layers_are_named(deep, field, value):
    x, y, p = deep
    a = getattr(p, field).copy()
    a[(DEPTH - 1,) + (0,) * (a.ndim - 1)] = value
    for _, call in calls(x, y):
        msg = raises(call, ValueError, rf"^params\.{field} must be finite",
                     p._replace(**{field: a}))
        assert "got 1 non-finite value" in msg


@pytest.mark.parametrize("field", ["K", "K_layers", "b_layers"])
def test_mixed_dtypes_are_named(deep, field):
    x, y, p = deep
    params = p._replace(**{field: getattr(p, field).astype(np.float32)})
    for _, call in calls(x, y):
        msg = raises(call, TypeError, r"^params must share one dtype", params)
        assert f"{field}: float32" in msg
        assert ("K_layers: float64" in msg) == (field != "K_layers")


@pytest.mark.parametrize("field,value,pattern", [
    ("K_layers", np.zeros((DEPTH, K, K, 3, 3), dtype=np.int64),
     r"^params\.K_layers must be float32 or float64, got dtype int64"),
    ("b_layers", np.zeros((DEPTH, K), dtype=bool),
     r"^params\.b_layers must be float32 or float64"),
    ("K_layers", np.zeros((DEPTH, K, K, 3, 3)).tolist(),
     r"^params\.K_layers must be an array"),
])
def test_layers_of_the_wrong_type_are_named(deep, field, value, pattern):
    x, y, p = deep
    for _, call in calls(x, y):
        raises(call, TypeError, pattern, p._replace(**{field: value}))


# -- init_params ----------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(depth=-1), ValueError, r"^depth must be >= 0"),
    (dict(depth=1.0), TypeError, r"^depth must be an integer"),
    (dict(depth=True), TypeError, r"^depth must be an integer"),
    (dict(depth=2, layer_kernel_size=4), ValueError, r"^layer_kernel_size must be odd"),
    (dict(depth=2, layer_kernel_size=0), ValueError, r"^layer_kernel_size must be >= 1"),
    (dict(depth=2, layer_kernel_size=3.0), TypeError,
     r"^layer_kernel_size must be an integer"),
])
def test_init_params_names_depth_and_layer_kernel_size(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        arrseg.init_params(C, K, N_C, **kwargs)


def test_dilation_beyond_the_cap_is_refused_by_name(deep):
    from arrseg._validation import MAX_DILATION

    x, y, p = deep
    for _, call in calls(x, y):
        raises(call, ValueError, r"^dilation must be at most 4096", p,
               dilation=MAX_DILATION + 1)
        raises(call, ValueError, r"^dilation\[1\] must be at most 4096", p,
               dilation=[1, MAX_DILATION + 1] + [1] * (p.depth - 2))
