"""Tiled prediction equals untiled prediction on every backend, for both
boundaries, any kernel and tile size, with tiles of bounded size."""

import re

import array_api_compat.numpy as xnp
import numpy as np
import pytest
from conftest import to_xp

import arrseg
from arrseg import tiling
from arrseg.testing import assert_close, to_numpy
from arrseg.tiling import predict_proba_tiled, tile_grid

BOUNDARIES = ["zeros", "periodic"]
# sizes that do not divide H = 7 or W = 10, tiles of one row, single
# pixels, and tiles larger than the image
TILE_SIZES = [3, (2, 4), (1, 10), 1, 64]


def raises(exc, *words):
    return pytest.raises(exc, match=".*".join(map(re.escape, words)))


def problem(xp, rng, N=2, C=2, H=7, W=10, s=3, dtype="float64", n_c=3):
    """Images and parameters with nonzero biases, so that a missing halo or a
    wrong padding changes the answer."""
    x = to_xp(xp, rng.standard_normal((N, C, H, W)), dtype)
    p = arrseg.init_params(C, 4, n_c, s, seed=int(rng.integers(1000)), dtype=dtype,
                           xp=xp)
    b = to_xp(xp, rng.standard_normal(4), dtype)
    c = to_xp(xp, rng.standard_normal(n_c), dtype)
    return x, p._replace(K=p.K * 2, b=b, c=c)


def tolerance(dtype):
    return {"rtol": 2e-6, "atol": 2e-6} if dtype == "float32" else {"rtol": 1e-12,
                                                                    "atol": 1e-13}


@pytest.mark.parametrize("tile_size", TILE_SIZES, ids=str)
@pytest.mark.parametrize("s", [1, 3, 5])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_tiled_equals_untiled(xp, rng, boundary, s, tile_size):
    x, p = problem(xp, rng, s=s)
    P = predict_proba_tiled(x, p, tile_size=tile_size, boundary=boundary,
                            method="direct")
    want = arrseg.predict_proba(x, p, boundary=boundary, method="direct")
    assert_close(P, to_numpy(want), xp=xp, dtype="float64", **tolerance("float64"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("N", [1, 3])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_batch_sizes_and_dtypes(xp, rng, boundary, N, dtype):
    x, p = problem(xp, rng, N=N, H=9, W=8, s=5, dtype=dtype)
    P = predict_proba_tiled(x, p, tile_size=4, boundary=boundary,
                            activation="relu", method="direct")
    want = arrseg.predict_proba(x, p, boundary=boundary, activation="relu",
                                method="direct")
    assert_close(P, to_numpy(want), xp=xp, dtype=dtype, **tolerance(dtype))


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_method_auto_chooses_per_tile(xp, rng, boundary):
    # "auto" may choose another method for a tile than for the whole image:
    # the results agree to round-off of either method
    x, p = problem(xp, rng, H=13, W=11, s=5)
    P = predict_proba_tiled(x, p, tile_size=(6, 5), boundary=boundary)
    want = arrseg.predict_proba(x, p, boundary=boundary)
    assert_close(P, to_numpy(want), xp=xp, dtype="float64", rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_halo_wider_than_the_tile_and_the_image(rng, boundary):
    # s = 7: p = 3 exceeds the tile (1) and the image height (2): the
    # periodic halo wraps around more than once
    x, p = problem(xnp, rng, H=2, W=5, s=7)
    P = predict_proba_tiled(x, p, tile_size=1, boundary=boundary, method="direct")
    want = arrseg.predict_proba(x, p, boundary=boundary, method="direct")
    np.testing.assert_allclose(P, want,
                               rtol=1e-12, atol=1e-13)


def test_dtype_rules_follow_predict_proba(xp, rng):
    x, p = problem(xp, rng, dtype="float32")
    p64 = arrseg.Params(*(xp.astype(a, xp.float64) for a in p))
    ints = to_xp(xp, rng.integers(0, 3, (2, 2, 7, 10)))
    for images, params, dtype in [(x, p64, "float32"), (ints, p, "float32"),
                                  (ints, p64, "float64")]:
        P = predict_proba_tiled(images, params, tile_size=3, method="direct")
        want = arrseg.predict_proba(images, params, method="direct")
        assert_close(P, to_numpy(want), xp=xp, dtype=dtype, **tolerance(dtype))


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_assembly_by_concat_for_immutable_arrays(xp, rng, monkeypatch, boundary):
    monkeypatch.setattr(tiling, "is_writeable_array", lambda a: False)
    x, p = problem(xp, rng, s=3)
    P = predict_proba_tiled(x, p, tile_size=(3, 4), boundary=boundary,
                            method="direct")
    want = arrseg.predict_proba(x, p, boundary=boundary, method="direct")
    assert_close(P, to_numpy(want), xp=xp, dtype="float64", **tolerance("float64"))


def recording_core(monkeypatch):
    """Record the core forward passes and the value checks of the calls
    (launched by _value_flags, read back once by finish_calls)."""
    from arrseg import _validation, core

    forwards, checks = [], []
    forward, check_values = core.forward, _validation._value_flags

    def recording_forward(x, params, options, xp, **kwargs):
        forwards.append((tuple(x.shape), options))
        return forward(x, params, options, xp, **kwargs)

    def recording_check(*args):
        checks.append(tuple(args[0].shape))
        return check_values(*args)

    monkeypatch.setattr(core, "forward", recording_forward)
    monkeypatch.setattr(_validation, "_value_flags", recording_check)
    return forwards, checks


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_each_pass_sees_at_most_one_haloed_tile(rng, monkeypatch, boundary):
    forwards, checks = recording_core(monkeypatch)
    x, p = problem(xnp, rng, H=20, W=30, s=5)
    predict_proba_tiled(x, p, tile_size=(6, 8), boundary=boundary,
                        activation="sigmoid", method="direct")
    assert len(forwards) == 4 * 4
    # the halo carries the boundary: every tile is evaluated with zeros
    assert {o for _, o in forwards} == {arrseg.core.Options("sigmoid", "zeros",
                                                            "direct")}
    assert max(s[2] for s, _ in forwards) <= 6 + 4
    assert max(s[3] for s, _ in forwards) <= 8 + 4
    # validated once per call, on the whole image, not once per tile
    assert checks == [(2, 2, 20, 30)]


def test_one_tile_is_one_plain_call(rng, monkeypatch):
    forwards, checks = recording_core(monkeypatch)
    x, p = problem(xnp, rng, H=7, W=10)
    P = predict_proba_tiled(x, p, boundary="periodic")     # planned: one tile
    assert [o.boundary for _, o in forwards] == ["periodic"]
    assert checks == [(2, 2, 7, 10)]
    np.testing.assert_array_equal(P, arrseg.predict_proba(x, p, boundary="periodic"))


@pytest.mark.parametrize("path, tiled", [("blocked", False), ("fused", False),
                                         ("direct", True), ("fft", True)])
def test_tiles_are_planned_from_the_memory_budget(path, tiled):
    # 4096^2, k = 32: the array-API paths hold ~4 GiB of intermediates and
    # are tiled within the budget; the fused and blocked paths hold none
    # that grow with the image and run as one pass
    N, C, H, W, k, n_c, s, itemsize = 1, 3, 4096, 4096, 32, 4, 3, 4
    th, tw = tiling.plan_tiles(path, N, C, H, W, k, n_c, s, itemsize)
    assert ((th, tw) != (H, W)) == tiled
    if tiled:
        haloed = tiling.working_bytes(path, N, C, th + 2, tw + 2, k, n_c, s, itemsize)
        assert haloed <= tiling.DEFAULT_MEMORY_BUDGET
        assert th >= tiling.MIN_PLANNED_TILE and th % 16 == 0
    small = tiling.plan_tiles(path, N, C, H, W, k, n_c, s, itemsize,
                              memory_budget=2**20)
    assert small[0] < H or path in ("fused",)


def test_budget_tiles_equal_untiled(xp, rng):
    x, p = problem(xp, rng, H=150, W=140, s=5)
    P = predict_proba_tiled(x, p, memory_budget=2**16, method="direct")
    want = arrseg.predict_proba(x, p, method="direct")
    assert_close(P, to_numpy(want), xp=xp, dtype="float64", **tolerance("float64"))


def test_tile_grid():
    assert tile_grid(4, 4, 4) == [[(0, 4, 0, 4)]]
    assert tile_grid(3, 5, (1, 3)) == [[(0, 1, 0, 3), (0, 1, 3, 5)],
                                      [(1, 2, 0, 3), (1, 2, 3, 5)],
                                      [(2, 3, 0, 3), (2, 3, 3, 5)]]
    assert tile_grid(600, 10) == [[(0, 512, 0, 10)], [(512, 600, 0, 10)]]
    assert tiling.DEFAULT_TILE_SIZE == 512


@pytest.mark.parametrize("bad, exc, words", [
    (0, ValueError, ["tile_size must be >= 1, got 0"]),
    (-3, ValueError, ["tile_size must be >= 1, got -3"]),
    ((4, 0), ValueError, ["tile_size must be >= 1, got 0"]),
    ((1, 2, 3), ValueError, ["tile_size must be an int or a pair", "(1, 2, 3)"]),
    (2.5, TypeError, ["tile_size must be an integer, got float 2.5"]),
    ("8", TypeError, ["tile_size must be an integer, got str '8'"]),
])
def test_bad_tile_size(rng, bad, exc, words):
    x, p = problem(xnp, rng)
    with raises(exc, *words):
        predict_proba_tiled(x, p, tile_size=bad)


def test_errors_name_x_with_its_own_shape(xp, rng):
    x, p = problem(xp, rng, H=12, W=12)
    with raises(ValueError, "x must have shape (N, C, H, W)", "(2, 12, 12)"):
        predict_proba_tiled(x[0, ...], p, tile_size=4)
    with raises(ValueError, "x has 1 channels (shape (2, 1, 12, 12))"):
        predict_proba_tiled(x[:, :1, ...], p, tile_size=4)
    bad = rng.standard_normal((2, 2, 12, 12))
    bad[1, 0, 11, 5], bad[0, 1, 0, 0] = np.nan, np.inf
    bad = to_xp(xp, bad)
    with raises(ValueError, "x must be finite, got 2 non-finite value(s)", "of 576"):
        predict_proba_tiled(bad, p, tile_size=4)
    with raises(ValueError, "boundary must be one of 'zeros', 'periodic'; got 'wrap'"):
        predict_proba_tiled(x, p, tile_size=4, boundary="wrap")
