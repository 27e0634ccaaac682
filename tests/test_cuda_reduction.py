"""arrseg_reduce_partials (fused_backward.cu) on the CPU emulator.

The reduction sums the backward kernel's G rows of partial sums, one row per
block, and divides by the denominator (column 1). Reference: a float64 NumPy
sum of the rows. It must also be the same bit for bit whatever its grid and
block (the order of summation depends on G and the output only), and its
grid must cover the device's SMs (:func:`arrseg.cuda.fused.reduction_grid`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from arrseg.cuda import fused
from arrseg.cuda.limits import KernelConfig

emulation = pytest.importorskip("arrseg.cuda.emulation")
if emulation.find_compiler() is None:
    pytest.skip("no C++ compiler for the CUDA emulator", allow_module_level=True)

REDUCE = "arrseg_reduce_partials"
#: (dtype, s, C, k, n_c): the seed configuration and a float64 one whose
#: length is not a multiple of a block's outputs
CONFIGS = {
    "f32-seed": KernelConfig("float32", 3, 3, 32, 4, "tanh", "zeros", True),
    "f64-odd": KernelConfig("float64", 5, 2, 7, 3, "relu", "periodic", False),
}


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    return emulation.EmulatedKernels(cache_dir=tmp_path_factory.mktemp("arrseg-emulator"))


def _partials(config, G, seed):
    """G rows with values of mixed signs and magnitudes, hard on rounding, and
    a positive denominator in column 1."""
    rng = np.random.default_rng(seed)
    L = config.partial_length
    rows = rng.standard_normal((G, L)) * 10.0 ** rng.integers(-3, 4, size=(G, L))
    rows[:, 1] = rng.uniform(0.0, 50.0, size=G)
    return np.ascontiguousarray(rows, dtype=config.dtype)


def _reduce(kernels, config, partials, grid, threads):
    out = np.empty(config.partial_length, dtype=config.dtype)
    kernel = kernels.function(config, "fused_backward.cu", REDUCE)
    kernel((grid, 1, 1), (threads, 1, 1), (partials, np.int32(partials.shape[0]), out))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("G", [1, 31, 512])
def test_reduction_matches_a_float64_sum(kernels, name, G):
    config = CONFIGS[name]
    partials = _partials(config, G, seed=G)
    grid, threads = fused.reduction_grid(config.partial_length, fused.EMULATED_SM_COUNT)
    out = _reduce(kernels, config, partials, grid, threads)

    rows = partials.astype(np.float64)
    den = rows[:, 1].sum()
    expected = rows.sum(axis=0) / den
    expected[1] = den
    # the kernel sums in double and rounds once to the dtype; the scale of
    # the error is the sum of the magnitudes, not the (cancelling) sum
    scale = np.abs(rows).sum(axis=0) / den
    scale[1] = den
    eps = np.finfo(config.dtype).eps
    err = np.abs(out.astype(np.float64) - expected)
    assert np.all(err <= eps * np.abs(expected) + 8 * G * np.finfo(np.float64).eps * scale)


def test_reduction_is_bitwise_identical_across_runs_grids_and_blocks(kernels):
    config = CONFIGS["f32-seed"]
    partials = _partials(config, 512, seed=7)
    L = config.partial_length
    runs = [_reduce(kernels, config, partials, *fused.reduction_grid(L, 132))
            for _ in range(2)]
    # other grids and block shapes (other GPUs): the same order, the same bits
    runs += [_reduce(kernels, config, partials, grid, threads)
             for grid, threads in [(1, 256), (5, 256), (3, 64), (L, 32)]]
    first = runs[0].tobytes()
    assert all(r.tobytes() == first for r in runs[1:])


def test_reduction_of_a_zero_denominator_is_zero(kernels):
    config = CONFIGS["f64-odd"]
    partials = _partials(config, 4, seed=3)
    partials[:, 1] = 0.0
    out = _reduce(kernels, config, partials, *fused.reduction_grid(config.partial_length, 8))
    assert not np.any(out)


@pytest.mark.parametrize("sms", [1, 7, 108, 132, 144, 1000])
@pytest.mark.parametrize("length", [6, 100, 1030, 13650])
def test_reduction_grid_covers_the_sms(length, sms):
    blocks, threads = fused.reduction_grid(length, sms)
    per_block = threads // fused.REDUCE_ROW_LANES
    assert blocks >= sms
    assert threads % fused.REDUCE_ROW_LANES == 0
    assert 1 <= per_block <= fused.REDUCE_MAX_OUTPUTS_PER_BLOCK
    assert blocks * per_block >= length  # every output has a block
    # as many outputs per block as still leaves a block per SM
    if per_block < fused.REDUCE_MAX_OUTPUTS_PER_BLOCK:
        assert math.ceil(length / (2 * per_block)) < sms


def test_geometry_passes_the_sm_count_to_the_reduction():
    config = CONFIGS["f32-seed"]
    g = fused.geometry(config, 8, 256, 256, sm_count=132)
    assert (g.reduce_blocks, g.reduce_threads) == fused.reduction_grid(config.partial_length,
                                                                       132)
    assert g.reduce_blocks >= 132
    assert fused.sm_count(np.zeros(1)) == fused.EMULATED_SM_COUNT


def test_reduction_grid_refuses_empty_sizes():
    with pytest.raises(ValueError, match="partial_length"):
        fused.reduction_grid(0, 132)
    with pytest.raises(ValueError, match="sm_count"):
        fused.reduction_grid(10, 0)
