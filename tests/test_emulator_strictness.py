"""The CPU emulator makes kernel bugs show: poisoned shared memory, random
schedules, and the reduction's grid at the seed configuration.

- ``poison_shared``: every ``__shared__`` byte is 0xFF (NaN) before each
  block, so a read before a write turns results NaN; shown on a copy of the
  kernels that reads a shared array before the barrier that publishes it;
- ``schedule="random"``: the threads of a block run one at a time in a seeded
  order at every barrier; the kernels claim bitwise determinism, so their
  results must be the same bits for every seed;
- the reduction launches at least one block per SM (132, an H200's) at the
  seed configuration (N=8, C=3, 256 x 256, k=32, n_c=4, s=3).
"""

import re
import shutil

import numpy as np
import pytest

from arrseg.cuda import emulation, limits
from arrseg.cuda.build import SOURCE_DIR
from arrseg.cuda.fused import fused_forward, fused_loss_and_grad
from arrseg.cuda.limits import KernelConfig

pytestmark = pytest.mark.skipif(emulation.find_compiler() is None, reason="no C++ compiler")

SEEDS = (0, 1, 2**63 + 12345)
H200_SMS = 132


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("emulator")


def _problem(dtype, N=2, C=3, H=13, W=9, k=10, n_c=4, s=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    K = (0.3 * rng.standard_normal((k, C, s, s))).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    Wm = (3 * rng.standard_normal((k, n_c))).astype(dtype)
    c = rng.standard_normal(n_c).astype(dtype)
    labels = rng.integers(0, n_c, (N, H, W))
    return x, labels, (K, b, Wm, c)


def _run(kernels, dtype, **shape):
    x, labels, params = _problem(dtype, **shape)
    P = fused_forward(x, params, "tanh", "periodic", kernels=kernels)
    loss, grad = fused_loss_and_grad(x, labels, params, "tanh", "periodic", None, -100,
                                     kernels=kernels, flat=True)
    return P, np.asarray(loss), grad


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_results_are_bitwise_identical_for_every_schedule(cache, dtype):
    """Forward, loss and gradient: the same bits under random schedules of
    three seeds (threads and blocks in different orders) and the concurrent
    one, with shared memory poisoned; and no NaN (no read before a write)."""
    runs = [_run(emulation.EmulatedKernels(cache_dir=cache, seed=seed), dtype)
            for seed in SEEDS]
    runs.append(_run(emulation.EmulatedKernels(cache_dir=cache, schedule="concurrent"),
                     dtype))
    for P, loss, grad in runs:
        assert np.isfinite(P).all() and np.isfinite(loss) and np.isfinite(grad).all()
    first = runs[0]
    for other in runs[1:]:
        for a, b in zip(first, other):
            assert a.tobytes() == b.tobytes()


def test_shared_memory_is_poisoned_and_can_be_turned_off(cache):
    dtype = "float64"
    config = KernelConfig(dtype, 3, 3, 10, 4, "tanh", "periodic", True)
    kernels = emulation.EmulatedKernels(cache_dir=cache)
    lib = kernels.library(config)
    # the __shared__ arrays of the three files: at least the backward's
    assert lib.arrseg_emulated_shared_bytes() >= limits.shared_bytes(
        "backward", 3, 3, 4, config.kc, 8) // 2
    on = _run(kernels, dtype)
    off = _run(emulation.EmulatedKernels(cache_dir=cache, poison_shared=False), dtype)
    for a, b in zip(on, off):
        assert a.tobytes() == b.tobytes()


def _kernel_reading_before_write(tmp_path):
    """A copy of the sources whose forward kernel reads its shared weights
    (Ks, Ws, bs) without waiting for the barrier that ends their load (the
    third barrier of fused_forward.cu removed)."""
    for path in SOURCE_DIR.iterdir():
        if path.suffix in (".cu", ".cuh"):
            shutil.copy(path, tmp_path / path.name)
    forward = (tmp_path / "fused_forward.cu").read_text()
    barriers = [m.start() for m in re.finditer(r"__syncthreads\(\);", forward)]
    assert len(barriers) == 3, "fused_forward.cu changed: update this test"
    assert "load_chunk" in forward[barriers[1]:barriers[2]]
    cut = barriers[2]
    broken = forward[:cut] + "/* barrier removed */" + forward[cut + len("__syncthreads();"):]
    (tmp_path / "fused_forward.cu").write_text(broken)
    return tmp_path


def test_poisoning_and_random_schedule_catch_a_missing_barrier(cache, tmp_path):
    """Without the barrier after the weights' load, a thread reads shared
    values that threads after it in the schedule have not written yet:
    poisoned, they are NaN; unpoisoned, they would be zeros (static
    memory) and the results merely wrong."""
    source = _kernel_reading_before_write(tmp_path)
    x, _, params = _problem("float64")
    kernels = emulation.EmulatedKernels(cache_dir=cache, source_dir=source)
    P = fused_forward(x, params, "tanh", "periodic", kernels=kernels)
    assert np.isnan(P).any()


def test_schedule_arguments_are_checked(cache):
    with pytest.raises(ValueError, match="schedule must be one of"):
        emulation.EmulatedKernels(cache_dir=cache, schedule="lifo")
    with pytest.raises(ValueError, match="ThreadSanitizer"):
        emulation.EmulatedKernels(cache_dir=cache, sanitize="thread", schedule="random")
    with pytest.raises(ValueError, match="seed must be"):
        emulation.EmulatedKernels(cache_dir=cache, seed=-1)
    assert emulation.EmulatedKernels(sanitize="thread").schedule == "concurrent"
    assert emulation.EmulatedKernels().schedule == "random"


class _Recorder:
    """Kernels that record their launches and run nothing."""

    def __init__(self):
        self.launches = []

    def function(self, config, filename, name):
        def kernel(grid, block, args, shared_mem=0):
            self.launches.append((name, grid, block))
        return kernel


def test_reduction_grid_covers_the_sms_at_the_seed_configuration():
    """arrseg_reduce_partials launches at least one block per SM of an H200
    (132) at N=8, C=3, 256 x 256, k=32, n_c=4, s=3: fewer would leave most of
    the GPU idle in the reduction."""
    N, C, H, W, k, n_c, s = 8, 3, 256, 256, 32, 4, 3
    x = np.zeros((N, C, H, W), np.float32)
    params = (np.zeros((k, C, s, s), np.float32), np.zeros(k, np.float32),
              np.zeros((k, n_c), np.float32), np.zeros(n_c, np.float32))
    labels = np.zeros((N, H, W), np.int64)
    recorder = _Recorder()
    fused_loss_and_grad(x, labels, params, "tanh", "zeros", None, -100, kernels=recorder)
    (grid,) = [g for name, g, _ in recorder.launches if name == "arrseg_reduce_partials"]
    assert grid[0] * grid[1] * grid[2] >= H200_SMS, grid
