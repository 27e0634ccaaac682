"""The value-check kernel (check_values.cu) against a NumPy reference.

arrseg.cuda.checks.value_flags runs, unchanged, on the CPU emulator
(arrseg.cuda.emulation.EmulatedKernels: g++, one OS thread per CUDA thread,
exact C argument types, guard bytes around every array); every flags vector
must equal the reference's exactly. The NVRTC tests compile the file as CuPy
does, for several architectures. Skipped only when no compiler is found.
"""

import dataclasses
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from arrseg.cuda import checks
from arrseg.cuda.build import kernel_source
from arrseg.cuda.checks import CHECK_NAMES, CheckConfig, value_flags
from arrseg.params import Params

ROOT = pathlib.Path(__file__).resolve().parents[1]
DTYPES = ("float32", "float64")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# ---------------------------------------------------------------------------
# problems and the reference
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Shape:
    """Sizes of one call: x (N, C, H, W), K (k, C, s, s), W (k, n_c)."""

    N: int
    C: int
    H: int
    W: int
    k: int
    n_c: int
    s: int


SHAPES = {
    # x: 858 values = 3 blocks of 256 and 90; labels 286; K 135
    "odd": Shape(2, 3, 11, 13, 5, 4, 3),
    # one pixel, one feature, one class: every array has one value
    "tiny": Shape(1, 1, 1, 1, 1, 1, 1),
}


def make_call(shape, dtype, *, fill="random", has_c=True, labels=True, class_weight=True,
              ignore_index=-100, seed=0):
    """(x, params, labels, class_weight) that pass every check."""
    rng = np.random.default_rng(seed)
    N, C, H, W, k, n_c, s = dataclasses.astuple(shape)
    sizes = [(N, C, H, W), (k, C, s, s), (k,), (k, n_c), (n_c,)]
    if fill == "zeros":
        arrays = [np.zeros(size, dtype) for size in sizes]
        lab = np.zeros((N, H, W), np.int64)
    else:
        arrays = [rng.standard_normal(size).astype(dtype) for size in sizes]
        lab = rng.integers(0, n_c, (N, H, W))
        if INT64_MIN <= ignore_index <= INT64_MAX:
            lab[rng.random((N, H, W)) < 0.25] = ignore_index
    x, K, b, W_, c = arrays
    cw = rng.uniform(0, 2, n_c).astype(dtype) if class_weight else None
    return (x, Params(K, b, W_, c if has_c else None), lab if labels else None, cw)


def reference_flags(x, params, labels, class_weight, ignore_index):
    """The checks of arrseg._validation in NumPy, 1 where one fails; labels
    compared with ignore_index as Python ints (exact at any size)."""

    def nonfinite(a):
        return int(a is not None and not np.all(np.isfinite(a)))

    n_c = params.W.shape[1]
    flags = [nonfinite(x), *(nonfinite(a) for a in params)]
    if labels is None:
        flags.append(0)
    else:
        lab = np.asarray(labels).astype(np.int64).ravel()
        flags.append(int(any(not (0 <= int(v) < n_c or int(v) == ignore_index)
                             for v in lab)))
    if class_weight is None:
        flags.append(0)
    else:
        w = np.asarray(class_weight)
        flags.append(int(not np.all(np.isfinite(w) & (w >= 0))))
    return flags


def one_hot(name):
    return [int(n == name) for n in CHECK_NAMES]


# ---------------------------------------------------------------------------
# the emulator
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    emulation = pytest.importorskip("arrseg.cuda.emulation")
    if emulation.find_compiler() is None:
        pytest.skip("no C++ compiler (g++ or $CXX) for the CUDA emulator")
    k = emulation.EmulatedKernels(cache_dir=tmp_path_factory.mktemp("arrseg-emulator"))
    k.prebuild([CheckConfig(d) for d in DTYPES], jobs=2)
    return k


def run(call, ignore_index, kernels):
    """value_flags on the emulator, checked for type and shape; a list."""
    x, params, labels, cw = call
    flags = value_flags(x, params, labels, cw, ignore_index, kernels=kernels)
    assert isinstance(flags, np.ndarray)
    assert flags.dtype == np.int32 and flags.shape == (len(CHECK_NAMES),)
    return [int(f != 0) for f in flags]


def assert_flags(call, ignore_index, kernels, expected):
    got = run(call, ignore_index, kernels)
    want = reference_flags(*call, ignore_index)
    assert want == expected, "the reference disagrees with the test's expectation"
    assert got == want, dict(zip(CHECK_NAMES, got))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("fill", ["zeros", "random"])
@pytest.mark.parametrize("present", ["all", "no c", "no labels", "no class_weight",
                                     "none optional"])
def test_clean_call_sets_no_flag(kernels, dtype, shape, fill, present):
    call = make_call(SHAPES[shape], dtype, fill=fill,
                     has_c=present not in ("no c", "none optional"),
                     labels=present not in ("no labels", "none optional"),
                     class_weight=present not in ("no class_weight", "none optional"))
    assert_flags(call, -100, kernels, [0] * len(CHECK_NAMES))


def _array_of(call, name):
    x, params, _, cw = call
    if name == "x":
        return x
    if name == "class_weight":
        return cw
    return getattr(params, name.split(".")[1])


REAL_CHECKS = ("x", "params.K", "params.b", "params.W", "params.c", "class_weight")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", REAL_CHECKS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_nonfinite_value_sets_its_flag_only(kernels, dtype, shape, name, value, where):
    call = make_call(SHAPES[shape], dtype)
    a = _array_of(call, name)
    a.flat[{"first": 0, "middle": a.size // 2, "last": a.size - 1}[where]] = value
    assert_flags(call, -100, kernels, one_hot(name))


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_check_failing_at_once(kernels, dtype):
    call = make_call(SHAPES["odd"], dtype)
    for name in REAL_CHECKS:
        _array_of(call, name).flat[-1] = np.nan
    call[2].flat[-1] = 4  # = n_c
    assert_flags(call, -100, kernels, [1] * len(CHECK_NAMES))


# (label values written into the labels, ignore_index, bad?) with n_c = 4
LABEL_CASES = {
    "minus-one": ([-1], -100, True),
    "n_c": ([4], -100, True),
    "last-class": ([3, 0], -100, False),
    "huge": ([2**40], -100, True),
    "int64-max": ([INT64_MAX], -100, True),
    "int64-min": ([INT64_MIN], -100, True),
    "ignored-minus-100": ([-100, -100], -100, False),
    "ignored-255": ([255], 255, False),
    "255-not-ignored": ([255], -100, True),
    "ignore-inside-range": ([2], 2, False),
    "ignore-int64-min": ([INT64_MIN], INT64_MIN, False),
    "ignore-int64-max": ([INT64_MAX], INT64_MAX, False),
    # an ignore_index beyond int64 matches no label: neither by wrapping
    # around (2**64 - 1 -> -1) nor by clamping (2**63 -> int64 max)
    "ignore-2**70-minus-one": ([-1], 2**70, True),
    "ignore-2**70-clean": ([0, 3], 2**70, False),
    "ignore-2**64-1-minus-one": ([-1], 2**64 - 1, True),
    "ignore-2**63-int64-max": ([INT64_MAX], 2**63, True),
    "ignore-below-int64-min": ([INT64_MIN], INT64_MIN - 1, True),
    "ignore-minus-2**70": ([0, 1], -(2**70), False),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("where", ["first", "last"])
@pytest.mark.parametrize("case", list(LABEL_CASES))
def test_labels_in_range_or_ignored(kernels, dtype, where, case):
    values, ignore_index, bad = LABEL_CASES[case]
    call = make_call(SHAPES["odd"], dtype, ignore_index=ignore_index)
    labels = call[2].ravel()  # a view
    at = range(len(values)) if where == "first" else range(-len(values), 0)
    for i, v in zip(at, values):
        labels[i] = v
    assert_flags(call, ignore_index, kernels, one_hot("labels") if bad else [0] * 7)


def test_labels_of_the_one_class_tiny_problem(kernels):
    call = make_call(SHAPES["tiny"], "float32")  # n_c = 1: only 0 is a class
    call[2][...] = 0
    assert_flags(call, -100, kernels, [0] * 7)
    call[2][...] = 1
    assert_flags(call, -100, kernels, one_hot("labels"))
    assert_flags(call, 1, kernels, [0] * 7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight, bad", [
    (-1.0, True), (np.nan, True), (np.inf, True), (-np.inf, True), (-1e-30, True),
    # a negative subnormal is negative (the kernel reads the sign bit: -ftz
    # would flush it to -0 in a comparison)
    ("-subnormal", True), (-0.0, False), (0.0, False), ("+subnormal", False),
    (1e30, False),
], ids=str)
def test_class_weight_finite_and_not_negative(kernels, dtype, weight, bad):
    call = make_call(SHAPES["odd"], dtype)
    tiny = np.finfo(dtype).smallest_subnormal
    weight = {"-subnormal": -tiny, "+subnormal": tiny}.get(weight, weight)
    call[3][-1] = weight
    assert_flags(call, -100, kernels, one_hot("class_weight") if bad else [0] * 7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_and_converted_inputs(kernels, dtype):
    """Fortran-ordered x, a transposed W, int32 labels: the launcher copies
    them to C order and int64, and the flags are the same."""
    x, p, labels, cw = make_call(SHAPES["odd"], dtype)
    x = np.asfortranarray(x)
    W = np.ascontiguousarray(p.W.T).T  # (k, n_c), not C-contiguous
    assert not x.flags.c_contiguous and not W.flags.c_contiguous
    call = (x, Params(p.K, p.b, W, p.c), labels.astype(np.int32), cw)
    assert_flags(call, -100, kernels, [0] * 7)
    x[-1, -1, -1, -1] = np.nan
    W[-1, 0] = np.inf
    call[2][0, 0, 0] = -1
    assert_flags(call, -100, kernels, [1, 0, 0, 1, 0, 1, 0])


def test_one_launch_with_exact_argument_types(kernels):
    """What value_flags sends, as recorded by the emulator's stand-in."""
    config = CheckConfig("float64")
    kernel = kernels.function(config, "check_values.cu", "arrseg_check_values")
    kernel.launches.clear()
    x, p, labels, cw = make_call(SHAPES["odd"], "float64", has_c=False)
    value_flags(x, p, labels, cw, 2**70, kernels=kernels)
    (launch,) = kernel.launches
    assert launch.grid == (-(-858 // checks.THREADS), 1, 1)
    assert launch.block == (checks.THREADS, 1, 1) and launch.shared_mem == 0
    lengths = [858, 135, 5, 20, 0, 286, 4]
    for i, (name, n) in enumerate(zip(CHECK_NAMES, lengths)):
        pointer, length = launch.args[2 * i], launch.args[2 * i + 1]
        assert length == ("scalar", "int64", n), name
        assert pointer[0] == ("null" if name == "params.c" else "array"), name
    assert launch.args[10] == ("array", "int64", (2, 11, 13))
    assert launch.args[14:] == (("scalar", "int32", 4), ("scalar", "int64", -1),
                                ("scalar", "int32", 0), ("array", "int32", (7,)))
    value_flags(x, p, labels, cw, -100, kernels=kernels)
    assert kernel.launches[-1].args[15:17] == (("scalar", "int64", -100),
                                              ("scalar", "int32", 1))


@pytest.mark.parametrize("max_blocks", [1, 2])
@pytest.mark.parametrize("name", ["x", "labels"])
def test_grid_stride_loop_reaches_the_last_element(kernels, monkeypatch, max_blocks, name):
    """Fewer threads than values: each thread loops over several."""
    monkeypatch.setattr(checks, "MAX_BLOCKS", max_blocks)
    kernel = kernels.function(CheckConfig("float32"), "check_values.cu",
                              "arrseg_check_values")
    call = make_call(Shape(2, 3, 29, 31, 4, 3, 3), "float32")  # x 5394 values
    assert_flags(call, -100, kernels, [0] * 7)
    if name == "x":
        call[0].flat[-1] = np.nan
    else:
        call[2].flat[-1] = -7
    assert_flags(call, -100, kernels, one_hot(name))
    assert kernel.launches[-1].grid == (max_blocks, 1, 1)


def test_grid_sizes():
    assert checks.grid_blocks(0) == 1
    assert checks.grid_blocks(1) == 1
    assert checks.grid_blocks(checks.THREADS) == 1
    assert checks.grid_blocks(checks.THREADS + 1) == 2
    assert checks.grid_blocks(2**40) == checks.MAX_BLOCKS  # beyond 2**31 values


def test_config():
    assert CheckConfig.of(np.float32) == CheckConfig("float32")
    assert CheckConfig("float64").defines() == ("-DARRSEG_DOUBLE=1",
                                               f"-DARRSEG_CHECK_THREADS={checks.THREADS}")
    with pytest.raises(ValueError, match="float16"):
        CheckConfig.of("float16")


def test_emulator_builds_without_warnings(kernels):
    for dtype in DTYPES:
        assert kernels.build(CheckConfig(dtype)).log == ""


_SANITIZED_RUN = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    import test_cuda_checks as t
    from arrseg.cuda.emulation import EmulatedKernels
    kernels = EmulatedKernels(sanitize="address", cache_dir={cache!r})
    for dtype in t.DTYPES:
        for shape in t.SHAPES.values():
            for has_c in (True, False):
                call = t.make_call(shape, dtype, has_c=has_c)
                call[0].flat[-1] = np.nan
                call[2].flat[-1] = -1
                want = t.reference_flags(*call, -100)
                assert t.run(call, -100, kernels) == want, (dtype, shape)
    print("sanitized run passed")
""")


def test_no_out_of_bounds_read_under_address_sanitizer(kernels, tmp_path):
    """AddressSanitizer: no read far past an array (a read of the emulator's
    guard bytes, right after it, gives NaN or -1 and shows in the flags of
    the tests above), with every array's last value the one that fails."""
    emulation = pytest.importorskip("arrseg.cuda.emulation")
    code = _SANITIZED_RUN.format(tests=str(ROOT / "tests"), cache=str(tmp_path))
    env = dict(os.environ, **emulation.sanitizer_env("address"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "sanitized run passed" in result.stdout


# ---------------------------------------------------------------------------
# NVRTC, as CuPy compiles the file
# ---------------------------------------------------------------------------
CUPY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
ARCHS = ("sm_75", "sm_80", "sm_90", "sm_100")


@pytest.fixture(scope="module")
def nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
    # not installed, would not load, or warned on import (warnings are errors)
    except (ImportError, OSError, RuntimeError, Warning) as e:
        pytest.skip(f"CuPy's NVRTC binding is not available: {type(e).__name__}: {e}")
    return nvrtc


def compile_checks(nvrtc, dtype, arch, verbose):
    """(log, cubin) of check_values.cu compiled as CupyKernels has CuPy do."""
    options = [*CheckConfig(dtype).defines(), f"-arch={arch}", *CUPY_OPTIONS]
    options += ["-Xptxas", "-v"] if verbose else []
    prog = nvrtc.createProgram(kernel_source("check_values.cu"), "check_values.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as e:
            pytest.fail(f"{e}\n{nvrtc.getProgramLog(prog)}")
        log = nvrtc.getProgramLog(prog)
        log = (log.decode(errors="replace") if isinstance(log, bytes) else log)
        return log.replace("\x00", "").strip(), nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_compiles_for_gpus_without_warnings_or_spills(nvrtc, dtype, arch):
    log, cubin = compile_checks(nvrtc, dtype, arch, verbose=True)
    assert len(cubin) > 0
    lines = [line for line in log.splitlines() if line.strip()]
    assert all(line.startswith("ptxas") or "bytes stack frame" in line for line in lines), log
    assert "Compiling entry function 'arrseg_check_values'" in log, log
    assert "0 bytes spill stores, 0 bytes spill loads" in log, log


@pytest.mark.parametrize("dtype", DTYPES)
def test_nvrtc_log_is_empty_as_cupy_compiles(nvrtc, dtype):
    log, cubin = compile_checks(nvrtc, dtype, "sm_90", verbose=False)
    assert log == "" and len(cubin) > 0, log
