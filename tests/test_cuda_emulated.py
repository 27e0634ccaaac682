"""The fused CUDA kernels, run on the CPU emulator through the real launchers.

arrseg.cuda.fused.fused_forward / fused_loss_and_grad compute the grid, the
argument types and the workspace exactly as on a GPU; only the kernel
objects differ: arrseg.cuda.emulation.EmulatedKernels compiles the unchanged
.cu files with g++ (one OS thread per CUDA thread, __syncthreads a real
barrier) and refuses arguments whose C type is not exact. Results are
compared with the NumPy float64 reference, arrseg.numerics.forward_backward.
Skipped only when no C++ compiler is found.
"""

import dataclasses
import functools
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap

import array_api_compat.numpy as xp_numpy
import numpy as np
import pytest

from arrseg.cuda import fused, limits
from arrseg.cuda.build import KERNEL_FILES, kernel_source
from arrseg.cuda.limits import KernelConfig, supports
from arrseg.numerics import forward_backward
from arrseg.params import Params

emulation = pytest.importorskip("arrseg.cuda.emulation")
if emulation.find_compiler() is None:
    pytest.skip("no C++ compiler (g++ or $CXX) for the CUDA emulator",
                allow_module_level=True)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Case:
    """One problem: shapes, options, labels and weights."""

    name: str
    dtype: str
    activation: str
    boundary: str
    N: int
    C: int
    H: int
    W: int
    k: int
    n_c: int
    s: int
    has_c: bool = True
    class_weight: object = None
    ignore_index: int = -100
    label_dtype: type = np.int64
    #: pass x as a Fortran-ordered array (the launcher makes it C-contiguous)
    fortran_x: bool = False

    @property
    def config(self):
        return KernelConfig(self.dtype, self.s, self.C, self.k, self.n_c,
                            self.activation, self.boundary, self.has_c)

    def data(self, seed=0):
        """x, labels, params (in self.dtype) and class_weight; outlier logits
        (W scaled by 3) so that the softmax is far from flat."""
        rng = np.random.default_rng(seed)
        N, C, H, W, k, n_c, s = self.N, self.C, self.H, self.W, self.k, self.n_c, self.s
        x = rng.standard_normal((N, C, H, W))
        labels = rng.integers(0, n_c, (N, H, W))
        labels[rng.random((N, H, W)) < 0.25] = self.ignore_index
        p = [rng.standard_normal((k, C, s, s)) / s, rng.standard_normal(k),
             3 * rng.standard_normal((k, n_c)),
             rng.standard_normal(n_c) if self.has_c else None]
        cast = (lambda a: None if a is None else a.astype(self.dtype))
        x = cast(x)
        if self.fortran_x:
            x = np.asfortranarray(x)
        cw = None if self.class_weight is None else np.asarray(self.class_weight, self.dtype)
        return x, labels.astype(self.label_dtype), Params(*map(cast, p)), cw


CASES = [
    Case("f64-tanh-zeros-s3", "float64", "tanh", "zeros", 2, 3, 13, 9, 5, 4, 3),
    Case("f64-relu-periodic-s5-noc-weights", "float64", "relu", "periodic", 1, 2, 7, 5, 7, 3,
         5, has_c=False, class_weight=(1.0, 0.5, 2.0), label_dtype=np.int32),
    Case("f64-sigmoid-periodic-max", "float64", "sigmoid", "periodic", 1, 4, 9, 17, 64, 16,
         7, class_weight=tuple(np.linspace(0, 2, 16)), ignore_index=3),
    Case("f64-identity-zeros-s1", "float64", "identity", "zeros", 3, 1, 5, 21, 3, 2, 1,
         fortran_x=True),
    Case("f64-identity-periodic-s7-tiny", "float64", "identity", "periodic", 1, 1, 3, 2, 3,
         2, 7, ignore_index=1),
    Case("f64-relu-zeros-s3-k33", "float64", "relu", "zeros", 1, 3, 10, 18, 33, 5, 3),
    Case("f32-tanh-periodic-s3-k32", "float32", "tanh", "periodic", 2, 3, 20, 33, 32, 4, 3),
    Case("f32-sigmoid-zeros-max", "float32", "sigmoid", "zeros", 1, 4, 9, 17, 64, 16, 7),
    Case("f32-relu-zeros-s5-k40-noc", "float32", "relu", "zeros", 2, 2, 11, 19, 40, 3, 5,
         has_c=False, class_weight=(0.5, 0.0, 2.0)),
    Case("f32-identity-periodic-s1", "float32", "identity", "periodic", 1, 3, 8, 16, 8, 5,
         1),
    Case("f32-tanh-zeros-s7-noc", "float32", "tanh", "zeros", 1, 3, 13, 9, 6, 2, 7,
         has_c=False),
    Case("f32-sigmoid-periodic-s3-nc1", "float32", "sigmoid", "periodic", 1, 2, 6, 7, 4, 1,
         3),
]
BY_NAME = {case.name: case for case in CASES}
# (rtol, atol relative to the largest reference value)
TOLERANCE = {"float64": (1e-9, 1e-12), "float32": (2e-4, 2e-5)}


@pytest.fixture(scope="session")
def emulator_cache(request):
    try:
        return request.config.cache.mkdir("arrseg-emulator")
    except AttributeError:  # -p no:cacheprovider
        return request.getfixturevalue("tmp_path_factory").mktemp("arrseg-emulator")


@pytest.fixture(scope="session")
def kernels(emulator_cache):
    """One EmulatedKernels for the session; every case's library built up front,
    two compilers at a time."""
    k = emulation.EmulatedKernels(cache_dir=emulator_cache)
    k.prebuild([case.config for case in CASES], jobs=2)
    return k


def reference(case, x, labels, p, cw):
    """NumPy float64 forward and loss/gradient, from the inputs as rounded."""
    as64 = (lambda a: None if a is None else np.asarray(a, np.float64))
    p64 = Params(*map(as64, p))
    x64 = as64(x)
    P = forward_backward.forward(x64, p64, case.activation, case.boundary, xp_numpy)
    loss, grads = forward_backward.loss_and_grad(
        x64, labels.astype(np.int64), p64, case.activation, case.boundary, as64(cw),
        case.ignore_index, xp_numpy)
    return P, loss, grads


def assert_close(got, want, dtype, what):
    rtol, atol = TOLERANCE[dtype]
    want = np.asarray(want, np.float64)
    assert got.dtype == np.dtype(dtype), what
    assert got.shape == want.shape, what
    scale = max(float(np.max(np.abs(want))), 1e-30) if want.size else 1.0
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol,
                               atol=atol * scale, err_msg=what)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_forward_matches_reference(case, kernels):
    x, labels, p, cw = case.data()
    P = fused.fused_forward(x, p, case.activation, case.boundary, kernels=kernels)
    P_ref, _, _ = reference(case, x, labels, p, cw)
    assert_close(P, P_ref, case.dtype, "P")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_loss_and_grad_match_reference(case, kernels):
    x, labels, p, cw = case.data()
    loss, grads = fused.fused_loss_and_grad(x, labels, p, case.activation, case.boundary,
                                            cw, case.ignore_index, kernels=kernels)
    _, loss_ref, grads_ref = reference(case, x, labels, p, cw)
    assert loss.shape == ()
    assert_close(loss, loss_ref, case.dtype, "loss")
    for name, g, g_ref in zip(Params._fields, grads, grads_ref):
        if g_ref is None:
            assert g is None, name
        else:
            assert_close(g, g_ref, case.dtype, f"d{name}")


@pytest.mark.parametrize("labels_kind", ["all ignored", "only weight-0 class"])
def test_no_counted_pixel_gives_zero_loss_and_gradient(kernels, labels_kind):
    case = BY_NAME["f32-relu-zeros-s5-k40-noc"]  # class 1 has weight 0
    x, labels, p, cw = case.data()
    labels[:] = case.ignore_index if labels_kind == "all ignored" else 1
    loss, grads = fused.fused_loss_and_grad(x, labels, p, case.activation, case.boundary,
                                            cw, case.ignore_index, kernels=kernels)
    assert float(loss) == 0.0
    assert all(not np.any(g) for g in grads if g is not None)


def test_blocks_looping_over_several_tiles(kernels, monkeypatch):
    """With fewer blocks than tiles each block loops over tiles (the path a
    large batch takes): same results, and deterministic."""
    case = BY_NAME["f32-tanh-periodic-s3-k32"]  # 2 images x 3 x 3 tiles
    monkeypatch.setattr(limits, "MAX_PARTIAL_BLOCKS", 4)
    monkeypatch.setattr(limits, "MAX_FORWARD_BLOCKS", 5)
    x, labels, p, cw = case.data()
    g = fused.geometry(case.config, case.N, case.H, case.W)
    assert (g.n_tiles, g.forward_blocks, g.backward_blocks) == (18, 5, 4)
    P = fused.fused_forward(x, p, case.activation, case.boundary, kernels=kernels)
    loss, grads = fused.fused_loss_and_grad(x, labels, p, case.activation, case.boundary,
                                            cw, case.ignore_index, kernels=kernels)
    P_ref, loss_ref, grads_ref = reference(case, x, labels, p, cw)
    assert_close(P, P_ref, case.dtype, "P")
    assert_close(loss, loss_ref, case.dtype, "loss")
    for g_, g_ref in zip(grads, grads_ref):
        assert_close(g_, g_ref, case.dtype, "grad")


@pytest.mark.parametrize("max_blocks", [512, 3])
def test_bitwise_deterministic(kernels, monkeypatch, max_blocks):
    """Two runs give the same bits: each block sums its tiles in order, and
    the reduction sums the blocks' rows in order (no atomics)."""
    case = BY_NAME["f32-tanh-periodic-s3-k32"]
    monkeypatch.setattr(limits, "MAX_PARTIAL_BLOCKS", max_blocks)
    x, labels, p, cw = case.data(seed=1)
    runs = [fused.fused_loss_and_grad(x, labels, p, case.activation, case.boundary, cw,
                                      case.ignore_index, kernels=kernels)
            for _ in range(2)]
    (l1, g1), (l2, g2) = runs
    assert l1.tobytes() == l2.tobytes()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(g1, g2))


def test_launches_grid_types_and_workspace(kernels):
    """What the launchers send to the kernels, recorded by the stand-in."""
    case = BY_NAME["f64-relu-periodic-s5-noc-weights"]  # int32 labels, no c
    x, labels, p, cw = case.data()
    cfg = case.config
    fwd = kernels.function(cfg, "fused_forward.cu", "arrseg_fused_forward")
    bwd = kernels.function(cfg, "fused_backward.cu", "arrseg_fused_backward")
    red = kernels.function(cfg, "fused_backward.cu", "arrseg_reduce_partials")
    for k in (fwd, bwd, red):
        k.launches.clear()
    fused.fused_forward(x, p, case.activation, case.boundary, kernels=kernels)
    fused.fused_loss_and_grad(x, labels, p, case.activation, case.boundary, cw,
                              case.ignore_index, kernels=kernels)
    L = limits.partial_length(case.k, case.C, case.s, case.n_c)
    assert kernels.library(cfg).arrseg_emulated_partial_length() == L == cfg.partial_length

    (f,) = fwd.launches
    assert f.grid == (1, 1, 1) and f.block == (limits.TILE_W, limits.TILE_H, 1)
    assert f.shared_mem == 0
    assert f.args[4] == ("null",)  # c
    assert f.args[5] == ("array", "float64", (1, 3, 7, 5))  # P
    assert [a[2] for a in f.args[6:]] == [7, 5, 1, 1, 1]  # H, W, tiles_x, tiles_y, n_tiles

    (b,) = bwd.launches
    assert b.grid == (1, 1, 1) and b.block == (limits.TILE_W, limits.TILE_H, 1)
    assert b.args[1] == ("array", "int64", (1, 7, 5))  # labels converted
    assert b.args[6] == ("array", "float64", (3,))  # class weights
    assert b.args[7] == ("scalar", "int64", -100)
    assert b.args[13] == ("array", "float64", (1, L))  # workspace (G, L)

    (r,) = red.launches
    g = fused.geometry(cfg, 1, 7, 5)
    assert r.grid == (g.reduce_blocks, 1, 1) and r.block == (g.reduce_threads, 1, 1)
    assert g.reduce_blocks == fused.reduction_grid(L, fused.EMULATED_SM_COUNT)[0]
    assert r.args == (("array", "float64", (1, L)), ("scalar", "int32", 1),
                      ("array", "float64", (L,)))


def test_geometry_for_sizes_that_are_not_multiples_of_the_tile():
    cfg = BY_NAME["f32-tanh-zeros-s7-noc"].config
    for (N, H, W), (tx, ty) in {(1, 1, 1): (1, 1), (1, 8, 16): (1, 1), (2, 9, 17): (2, 2),
                                (3, 100, 33): (3, 13)}.items():
        g = fused.geometry(cfg, N, H, W)
        assert (g.tiles_x, g.tiles_y, g.n_tiles) == (tx, ty, N * tx * ty)
        assert g.backward_blocks == min(g.n_tiles, limits.MAX_PARTIAL_BLOCKS)
    g = fused.geometry(cfg, 64, 1024, 1024)
    assert g.n_tiles == 64 * 128 * 64 and g.backward_blocks == limits.MAX_PARTIAL_BLOCKS
    assert g.reduce_blocks == fused.reduction_grid(g.partial_length,
                                                   fused.EMULATED_SM_COUNT)[0]


def test_stand_in_refuses_inexact_argument_types(kernels):
    case = BY_NAME["f64-tanh-zeros-s3"]
    red = kernels.function(case.config, "fused_backward.cu", "arrseg_reduce_partials")
    L = case.config.partial_length
    partials, out = np.zeros((1, L)), np.zeros(L)
    with pytest.raises(TypeError, match="int32"):
        red((1,), (256,), (partials, 1, out))  # a Python int: 64 bits in CuPy
    with pytest.raises(TypeError, match="int32"):
        red((1,), (256,), (partials, np.int64(1), out))
    with pytest.raises(TypeError, match="float64"):
        red((1,), (256,), (partials.astype(np.float32), np.int32(1), out))
    with pytest.raises(TypeError, match="C-contiguous"):
        red((1,), (256,), (np.zeros((1, 2 * L))[:, ::2], np.int32(1), out))
    with pytest.raises(ValueError, match="1024 threads"):
        red((1,), (64, 32), (partials, np.int32(1), out))
    with pytest.raises(ValueError, match="CUDA's limits"):
        red((1, 70000), (256,), (partials, np.int32(1), out))
    with pytest.raises(ValueError, match="static shared memory"):
        red((1,), (256,), (partials, np.int32(1), out), shared_mem=1024)


def test_stand_in_catches_writes_outside_an_array(kernels):
    case = BY_NAME["f64-tanh-zeros-s3"]
    red = kernels.function(case.config, "fused_backward.cu", "arrseg_reduce_partials")
    L = case.config.partial_length
    partials = np.ones((2, L))
    short = np.zeros(L - 1)  # one value too few
    with pytest.raises(RuntimeError, match="wrote outside argument 2"):
        red((-(-L // 256),), (256,), (partials, np.int32(2), short))
    out = np.zeros(L)
    red((-(-L // 256),), (256,), (partials, np.int32(2), out))
    assert out[1] == 2.0 and out[0] == 1.0  # denominator; numerator / denominator


def test_emulator_builds_without_warnings(kernels):
    """g++ -Wall -Wextra has nothing to say about the kernels or the emulator."""
    for case in CASES:
        assert kernels.build(case.config).log == "", case.name


def test_unknown_kernel_names_are_refused(kernels):
    cfg = CASES[0].config
    with pytest.raises(ValueError, match="no kernel"):
        kernels.function(cfg, "fused_forward.cu", "arrseg_fused_backward")


# ---------------------------------------------------------------------------
# the sanitizers: each run in a child process with the runtime preloaded
# ---------------------------------------------------------------------------
_SANITIZED_RUN = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    import test_cuda_emulated as t
    from arrseg.cuda import fused
    from arrseg.cuda.emulation import EmulatedKernels
    kernels = EmulatedKernels(sanitize={sanitize!r}, cache_dir={cache!r},
                              source_dir={source_dir!r})
    kernels.prebuild([t.BY_NAME[name].config for name in {cases!r}], jobs=2)
    for name in {cases!r}:
        case = t.BY_NAME[name]
        x, labels, p, cw = case.data()
        P = fused.fused_forward(x, p, case.activation, case.boundary, kernels=kernels)
        loss, grads = fused.fused_loss_and_grad(x, labels, p, case.activation,
                                                case.boundary, cw, case.ignore_index,
                                                kernels=kernels)
        P_ref, loss_ref, grads_ref = t.reference(case, x, labels, p, cw)
        t.assert_close(P, P_ref, case.dtype, "P")
        t.assert_close(loss, loss_ref, case.dtype, "loss")
    print("sanitized run passed")
""")


def start_sanitized(sanitize, cases, cache, source_dir=None):
    """A child process running ``cases`` on a ``sanitize`` build (Popen)."""
    code = _SANITIZED_RUN.format(tests=str(ROOT / "tests"), sanitize=sanitize,
                                 cache=str(cache), cases=list(cases),
                                 source_dir=None if source_dir is None else str(source_dir))
    env = dict(os.environ, **emulation.sanitizer_env(sanitize))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def finish(process):
    """(return code, stdout, stderr) of a child process, within 300 s."""
    try:
        out, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out, err


# A sanitized build the way the tests use one (the emulator's flags, loaded
# through ctypes by a child Python with the runtime preloaded), reduced to one
# function: if this fails, the machine's compiler or its sanitizer runtime is
# broken (seen: a g++ without a usable libasan/libtsan), not the kernels.
_PROBE_SOURCE = """
extern "C" __attribute__((visibility("default"))) int arrseg_probe(int i)
{
    int a[4] = {0, 1, 2, 3};
    return a[i % 4];
}
"""


@functools.cache
def sanitizer_unusable(sanitize):
    """Why a ``sanitize`` build cannot run here (a str), or None if it can."""
    cxx = emulation.find_compiler()
    with tempfile.TemporaryDirectory() as tmp:
        source, library = pathlib.Path(tmp, "probe.cpp"), pathlib.Path(tmp, "probe.so")
        source.write_text(_PROBE_SOURCE)
        load = f"import ctypes; assert ctypes.CDLL({str(library)!r}).arrseg_probe(5) == 1"
        try:
            env = dict(os.environ, **emulation.sanitizer_env(sanitize, cxx))
            steps = [
                ("compiling", [cxx, *emulation.CXX_FLAGS,
                               *emulation.SANITIZER_FLAGS[sanitize], str(source),
                               "-o", str(library)], None),
                ("running", [sys.executable, "-c", load], env),
            ]
            for what, command, step_env in steps:
                done = subprocess.run(command, capture_output=True, text=True,
                                      env=step_env, timeout=120)
                output = (done.stdout + done.stderr).strip()
                if done.returncode != 0 or "ERROR: ld.so" in output:
                    return (f"{what} a trivial program with -fsanitize={sanitize} "
                            f"failed (status {done.returncode}): {output[-500:]}")
        except (OSError, subprocess.SubprocessError) as error:
            return f"the {sanitize} sanitizer's runtime is not usable: {error}"
    return None


def require_sanitizers(*names):
    """Skip the test, with the reason, unless every named sanitizer works."""
    for name in names:
        why = sanitizer_unusable(name)
        if why is not None:
            pytest.skip(f"{emulation.find_compiler()} cannot build and run a "
                        f"-fsanitize={name} program on this machine: {why}")


SANITIZED_CASES = {
    # the largest float32 configuration (the largest shared arrays; three
    # feature chunks, the last one partial; partial tiles), and periodic
    # padding wrapping around a 3 x 2 image more than once (one chunk)
    "address": ["f32-sigmoid-zeros-max", "f64-identity-periodic-s7-tiny"],
    # both code paths: several chunks (the last one partial), and one chunk
    "thread": ["f64-relu-zeros-s3-k33", "f64-identity-periodic-s7-tiny"],
}


def test_kernels_clean_under_sanitizers(emulator_cache):
    """AddressSanitizer: no out-of-bounds access (global or __shared__);
    ThreadSanitizer: no data race among a block's threads (no missing
    __syncthreads). The two child processes run side by side."""
    require_sanitizers(*SANITIZED_CASES)
    processes = {name: start_sanitized(name, cases, emulator_cache)
                 for name, cases in SANITIZED_CASES.items()}
    for name, process in processes.items():
        rc, out, err = finish(process)
        assert rc == 0, f"{name} sanitizer:\n{out}{err[-4000:]}"
        assert "sanitized run passed" in out, name


def test_thread_sanitizer_catches_a_missing_syncthreads(tmp_path, emulator_cache):
    """The check above has teeth: remove one barrier, and the race is reported."""
    require_sanitizers("thread")
    for name in ("common.cuh", *KERNEL_FILES):
        shutil.copy(pathlib.Path(fused.__file__).parent / name, tmp_path / name)
    source = (tmp_path / "fused_backward.cu").read_text()
    barrier = "            __syncthreads();  // V_s = dZ\n"
    assert source.count(barrier) == 1
    (tmp_path / "fused_backward.cu").write_text(source.replace(barrier, ""))
    # ThreadSanitizer keeps 4 accesses per 8 bytes of shared memory: when
    # many threads read the word after the write, the write's record can be
    # gone before the racing read is checked, depending on the interleaving
    # (seen once in CI, on a loaded machine). Up to 3 runs; one must report.
    for attempt in range(3):
        rc, _, err = finish(start_sanitized("thread", ["f64-identity-periodic-s7-tiny"],
                                            emulator_cache, source_dir=tmp_path))
        if rc != 0:
            break
    assert rc != 0
    assert "ThreadSanitizer: data race" in err
    assert "fused_backward.cu" in err


# ---------------------------------------------------------------------------
# the Python side without a compiler
# ---------------------------------------------------------------------------
def test_supports_names_the_limit():
    assert supports((2, 3, 64, 64), (32, 3, 3, 3), 4, "float32") == (True, "")
    assert supports((1, 4, 5, 5), (64, 4, 7, 7), 16, np.float64) == (True, "")
    for args, word in [
        (((1, 3, 8, 8), (8, 3, 9, 9), 2, "float32"), "kernel size"),
        (((1, 5, 8, 8), (8, 5, 3, 3), 2, "float32"), "C = 5"),
        (((1, 3, 8, 8), (65, 3, 3, 3), 2, "float32"), "k = 65"),
        (((1, 3, 8, 8), (8, 3, 3, 3), 17, "float32"), "n_c = 17"),
        (((1, 3, 8, 8), (8, 3, 3, 3), 2, "float16"), "float16"),
    ]:
        ok, reason = supports(*args)
        assert not ok and word in reason, (args, reason)
    with pytest.raises(ValueError, match="cannot run this call"):
        KernelConfig.of((1, 3, 8, 8), (8, 3, 9, 9), 2, "float32", "tanh", "zeros", True)


def test_every_supported_configuration_fits_shared_memory():
    for dtype in limits.DTYPES:
        itemsize = np.dtype(dtype).itemsize
        for s in range(1, limits.MAX_KERNEL_SIZE + 1, 2):
            for C in range(1, limits.MAX_CHANNELS + 1):
                for n_c in (1, 2, 7, limits.MAX_CLASSES):
                    for k in range(1, limits.MAX_WIDTH + 1):
                        kc = limits.feature_chunk(s, C, k, n_c, itemsize)
                        assert 1 <= kc <= min(k, limits.MAX_FEATURE_CHUNK[itemsize])
                        assert (limits.shared_bytes("backward", s, C, n_c, kc, itemsize)
                                <= limits.SHARED_BUDGET)


def test_kernel_source_inlines_the_header():
    for name in KERNEL_FILES:
        text = kernel_source(name)
        assert '#include "' not in text
        assert "#define ARRSEG_COMMON_CUH" in text
        assert '#line 1 "common.cuh"' in text and f'#line 1 "{name}"' in text


def test_importing_arrseg_cuda_imports_no_cupy():
    code = ("import sys, arrseg, arrseg.cuda, arrseg.cuda.fused, arrseg.cuda.build, "
            "arrseg.cuda.emulation; print([m for m in sys.modules if m.startswith('cupy')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
