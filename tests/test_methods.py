"""method=: the explicit methods agree, "auto" picks one, errors are clear."""

import types

import array_api_compat.numpy as np_xp
import numpy as np
import pytest
from conftest import to_xp

import arrseg
from arrseg import methods
from arrseg.testing import assert_close


@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 2e-4)])
def test_every_method_gives_the_same_network(xp, rng, boundary, dtype, rtol):
    N, C, H, W, k, n_c, s = 2, 3, 11, 9, 5, 3, 5
    x = to_xp(xp, rng.standard_normal((N, C, H, W)), dtype)
    labels = to_xp(xp, rng.integers(0, n_c, (N, H, W)))
    params = arrseg.init_params(C, k, n_c, s, dtype=getattr(xp, dtype), xp=xp,
                                seed=1)
    runnable = [m for m in methods.METHODS
                if m != "fused" or "cupy" in xp.__name__]
    results = {m: (arrseg.predict_proba(x, params, boundary=boundary, method=m),
                   arrseg.loss_and_grad(x, labels, params, boundary=boundary,
                                        method=m))
               for m in runnable}
    P0, (loss0, grads0) = results["direct"]
    for m, (P, (loss, grads)) in results.items():
        assert_close(P, P0, xp=xp, rtol=rtol, atol=rtol * 1e-2, err_msg=m)
        assert_close(loss, loss0, xp=xp, rtol=rtol, err_msg=m)
        for g, g0 in zip(grads, grads0):
            scale = float(np.abs(arrseg.testing.to_numpy(g0)).max())
            assert_close(g, g0, xp=xp, rtol=rtol, atol=rtol * scale, err_msg=m)


def test_auto_picks_direct_for_small_and_fft_for_large_kernels():
    shape = (8, 3, 256, 256)
    small = methods.resolve_method("auto", np_xp, shape, (32, 3, 3, 3), train=True)
    large = methods.resolve_method("auto", np_xp, shape, (8, 3, 31, 31), train=False)
    assert (small, large) == ("direct", "fft")


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_predicted_time_grows_with_the_work(method):
    t = [methods.predicted_seconds(method, np_xp, (N, 3, 64, 64), (16, 3, 5, 5),
                                   train=True) for N in (1, 2, 4)]
    assert 0 < t[0] < t[1] < t[2]


def test_explicit_method_that_cannot_run_is_an_error_and_auto_falls_back():
    # a namespace without the fft extension
    xp = types.ModuleType("no_fft_namespace")
    for name in dir(np_xp):
        if not name.startswith("_") and name != "fft":
            setattr(xp, name, getattr(np_xp, name))
    with pytest.raises(ValueError, match=r"method='fft' cannot run this call: "
                                         r"the namespace .* has no fft extension"):
        methods.resolve_method("fft", xp, (1, 3, 8, 8), (4, 3, 31, 31), train=False)
    assert methods.resolve_method("auto", xp, (1, 3, 8, 8), (4, 3, 31, 31),
                                  train=False) == "direct"


@pytest.mark.skip_xp_backends("cupy", reason="the fused kernels run on CuPy")
def test_fused_on_another_namespace_is_an_error(xp, rng):
    x = to_xp(xp, rng.standard_normal((1, 3, 8, 8)), "float32")
    params = arrseg.init_params(3, 4, 2, xp=xp)
    with pytest.raises(ValueError, match=r"method='fused' cannot run this call: "
                                         r"the fused CUDA kernels take CuPy arrays"):
        arrseg.predict_proba(x, params, method="fused")


def test_fused_outside_its_limits_names_the_limit():
    # the limits are checked before any CuPy import (arrseg.cuda.limits)
    from arrseg.cuda.limits import supports

    ok, reason = supports((1, 3, 16, 16), (8, 3, 9, 9), 4, np.float32)
    assert not ok and "9" in reason and "7" in reason


def test_unknown_method_names_the_argument(rng):
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    params = arrseg.init_params(3, 4, 2)
    with pytest.raises(ValueError, match="method must be one of"):
        arrseg.predict_proba(x, params, method="winograd")
