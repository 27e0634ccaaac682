"""arrseg.cuda.limits.supports refuses every shape whose 32-bit indices in the
fused kernels could overflow (the table of the module docstring), and only
those: shapes only, nothing is allocated and nothing compiled."""

import pytest

from arrseg.cuda import limits
from arrseg.cuda.limits import supports

INT32_MAX = 2**31 - 1


def refused(x_shape, K_shape, n_c, *words, dtype="float32"):
    ok, reason = supports(x_shape, K_shape, n_c, dtype)
    assert not ok, (x_shape, K_shape, n_c)
    for word in words:
        assert word in reason, (word, reason)
    return reason


@pytest.mark.parametrize("x_shape,K_shape,n_c", [
    ((64, 3, 4096, 4096), (32, 3, 3, 3), 4),         # 8.4e6 tiles
    ((1, 1, 2**15, 2**16), (8, 1, 3, 3), 2),         # 2**24 tiles, one image
    ((2**20, 4, 64, 64), (64, 4, 7, 7), 16),         # 3.4e7 tiles, N n_c = 2**24
    ((1, 1, 1, INT32_MAX), (4, 1, 1, 1), 2),         # the widest row with s = 1
    ((1, 1, 2**31 - 8, 1), (4, 1, 7, 7), 2),         # the tallest image with s = 7
    ((2**30, 1, 8, 16), (4, 1, 3, 3), 2),            # exactly 2**30 tiles
    ((2**29, 4, 1, 1), (4, 4, 3, 3), 2),             # N C = 2**31
    ((2**27, 1, 1, 1), (4, 1, 3, 3), 16),            # N n_c = 2**31
])
def test_realistic_and_boundary_shapes_are_supported(x_shape, K_shape, n_c):
    for dtype in limits.DTYPES:
        assert supports(x_shape, K_shape, n_c, dtype) == (True, "")


def test_tile_loop_counter():
    # t + gridDim.x <= n_tiles - 1 + n_tiles must fit an int: n_tiles <= 2**30
    refused((2**30 + 1, 1, 8, 16), (4, 1, 3, 3), 2, "n_tiles", "1073741825",
            "1073741824", "t + gridDim.x")
    refused((1, 1, 2**20, 2**17 + 1), (4, 1, 3, 3), 2, "n_tiles",
            "131072 * 8193")
    refused((9, 3, 2**16, 2**18), (4, 3, 3, 3), 2, "n_tiles")  # 9 * 2**27 tiles


def test_tile_loop_bound_follows_the_grid_size(monkeypatch):
    # with at most G blocks, the last t + G is n_tiles - 1 + G
    monkeypatch.setattr(limits, "MAX_FORWARD_BLOCKS", 2**20)
    assert supports((2**31 - 2**20, 1, 8, 16), (4, 1, 3, 3), 1, "float32")[0]
    refused((2**31 - 2**20 + 1, 1, 8, 16), (4, 1, 3, 3), 1, "n_tiles",
            str(2**31 - 2**20))


def test_image_planes_of_x():
    # tile.n * C + j <= N C - 1
    refused((2**29 + 1, 4, 1, 1), (4, 4, 3, 3), 2, "N * C", "2147483652", "2**31",
            "tile.n * C + j")


def test_class_planes_of_P():
    # tile.n * NC + c <= N n_c - 1: 2**27 + 1 images of one pixel, 16 classes
    refused((2**27 + 1, 1, 1, 1), (4, 1, 3, 3), 16, "N * n_c", "2147483664",
            "tile.n * NC + c")
    refused((2**30, 1, 1, 1), (4, 1, 1, 1), 3, "N * n_c")


@pytest.mark.parametrize("s,tallest", [(1, INT32_MAX), (3, 2**31 - 8), (7, 2**31 - 8)])
def test_rows(s, tallest):
    # the halo row tile.h0 - P + r reaches ceil(H / 8) * 8 + P - 1
    assert supports((1, 1, tallest, 1), (4, 1, s, s), 2, "float32") == (True, "")
    refused((1, 1, tallest + 1, 1), (4, 1, s, s), 2, "H = ", str(tallest), f"s = {s}")


@pytest.mark.parametrize("s,widest", [(1, INT32_MAX), (5, 2**31 - 16)])
def test_columns(s, widest):
    assert supports((1, 1, 1, widest), (4, 1, s, s), 2, "float64") == (True, "")
    refused((1, 1, 1, widest + 1), (4, 1, s, s), 2, "W = ", str(widest),
            dtype="float64")


def test_launch_arguments_fit_int32_whenever_supported():
    # what the launchers pass as np.int32 (arrseg.cuda.fused.geometry)
    for x_shape, s in [((1, 1, 1, INT32_MAX), 1), ((2**30, 1, 8, 16), 3),
                       ((1, 1, 2**31 - 8, 1), 7)]:
        assert supports(x_shape, (4, 1, s, s), 2, "float32")[0]
        N, _, H, W = x_shape
        tiles_y, tiles_x = limits.tiles(H, W)
        n_tiles = N * tiles_y * tiles_x
        for value in (H, W, tiles_y, tiles_x, n_tiles,
                      n_tiles - 1 + min(n_tiles, limits.MAX_FORWARD_BLOCKS)):
            assert value <= INT32_MAX


def test_workspace_and_reduction_indices_are_bounded_by_the_constants():
    # the largest workspace row (k = 64, C = 4, s = 7, n_c = 16) and the
    # workspace itself stay far below 2**31 - 1; the module docstring quotes
    # these numbers
    L = limits.partial_length(limits.MAX_WIDTH, limits.MAX_CHANNELS,
                              limits.MAX_KERNEL_SIZE, limits.MAX_CLASSES)
    assert L == 13650
    assert limits.MAX_PARTIAL_BLOCKS * L == 6_988_800 <= INT32_MAX
    reduce_blocks = -(-L // limits.REDUCE_THREADS)
    assert reduce_blocks * limits.REDUCE_THREADS < L + limits.REDUCE_THREADS


def test_the_other_limits_are_checked_first():
    # an oversized kernel is named even when the shape is also too large
    refused((2**31, 3, 8, 8), (8, 3, 9, 9), 2, "kernel size s = 9")
