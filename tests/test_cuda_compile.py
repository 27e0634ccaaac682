"""The fused CUDA kernels compile for real GPUs, cleanly, without spilling.

No GPU is needed: NVRTC (through CuPy's binding ``cupy_backends.cuda.libs.nvrtc``,
else ctypes on the ``libnvrtc`` of the ``nvidia-cuda-nvrtc`` wheel, else nvcc)
compiles the sources exactly as ``arrseg.cuda.build.CupyKernels`` has CuPy do
(the inlined text of :func:`kernel_source`, the configuration's ``-D``
options, and the options CuPy adds) to cubins for sm_75, sm_80, sm_90 and
sm_100, with ptxas's ``-warn-lmem-usage`` and ``-warn-spills``. The log must
hold nothing but ptxas's own ``-v`` report (a ptxas warning, such as local
memory use or a spill, fails the test), which must show no stack frame and no
spilling. A separate test runs ``nvcc -cubin -Xptxas -v`` on the largest
configuration. Skipped only when no compiler is found.

Configurations: every (architecture, dtype) at the largest configuration
(s = 7, C = 4, k = 64, n_c = 16), then rows chosen greedily until every pair
of values of two factors (architecture, dtype, activation, boundary, shape,
bias) has been compiled together. ARRSEG_CUDA_FULL_SWEEP=1 compiles the full
product instead (slow).
"""

import ctypes
import ctypes.util
import glob
import itertools
import os
import pathlib
import re
import shutil
import subprocess
import sysconfig

import pytest

from arrseg.cuda import limits
from arrseg.cuda.build import KERNEL_FILES, SOURCE_DIR, kernel_source
from arrseg.cuda.limits import KernelConfig

ARCHS = ("sm_75", "sm_80", "sm_90", "sm_100")
#: options CuPy's RawModule adds to ours (cupy/cuda/compiler.py), besides -arch
#: (and --pch, only with CUPY_NVRTC_USE_PCH=1)
CUPY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
#: (s, C, k, n_c): one per kernel size, from the smallest to the largest
SHAPES = {
    "s1-min": (1, 1, 1, 2),
    "s3-mid": (3, 3, 32, 4),
    "s5-odd": (5, 2, 37, 5),
    "s7-max": (limits.MAX_KERNEL_SIZE, limits.MAX_CHANNELS, limits.MAX_WIDTH,
               limits.MAX_CLASSES),
}
FACTORS = {
    "arch": ARCHS,
    "dtype": limits.DTYPES,
    "activation": tuple(limits.ACTIVATION_CODES),
    "boundary": tuple(limits.BOUNDARY_CODES),
    "shape": tuple(SHAPES),
    "has_c": (True, False),
}


def _pairs(row):
    return {((a, row[a]), (b, row[b])) for a, b in itertools.combinations(FACTORS, 2)}


def sweep():
    """The rows compiled: dicts with one value per factor."""
    product = [dict(zip(FACTORS, values)) for values in itertools.product(*FACTORS.values())]
    if os.environ.get("ARRSEG_CUDA_FULL_SWEEP") == "1":
        return product
    uncovered = set().union(*map(_pairs, product))
    rows = []

    def take(candidates):
        best = max(candidates, key=lambda r: len(_pairs(r) & uncovered))
        rows.append(best)
        uncovered.difference_update(_pairs(best))

    for arch, dtype in itertools.product(ARCHS, limits.DTYPES):
        take([r for r in product if (r["arch"], r["dtype"], r["shape"]) == (arch, dtype, "s7-max")])
    while uncovered:
        take(product)
    return rows


def config_of(row):
    s, C, k, n_c = SHAPES[row["shape"]]
    return KernelConfig(row["dtype"], s, C, k, n_c, row["activation"], row["boundary"],
                        row["has_c"])


def row_id(row):
    return "-".join(str(v) if not isinstance(v, bool) else ("c" if v else "noc")
                    for v in row.values())


# ---------------------------------------------------------------------------
# compilers
# ---------------------------------------------------------------------------
class CompileError(Exception):
    pass


class CupyNVRTC:
    """NVRTC through CuPy's binding (needs no GPU and no driver)."""

    name = "cupy_backends.cuda.libs.nvrtc"

    def __init__(self):
        from cupy_backends.cuda.libs import nvrtc

        self.nvrtc = nvrtc
        self.version = nvrtc.getVersion()

    def compile(self, source, filename, options):
        nvrtc = self.nvrtc
        prog = nvrtc.createProgram(source, filename, [], [])
        try:
            try:
                nvrtc.compileProgram(prog, list(options))
            except nvrtc.NVRTCError as e:
                raise CompileError(f"{e}\n{nvrtc.getProgramLog(prog)}") from None
            log = nvrtc.getProgramLog(prog)
            return _text(log), nvrtc.getCUBIN(prog)
        finally:
            nvrtc.destroyProgram(prog)


class CtypesNVRTC:
    """NVRTC's C API through ctypes, on a libnvrtc found on disk."""

    name = "ctypes libnvrtc"

    def __init__(self, path):
        lib = self.lib = ctypes.CDLL(path)
        self.name = f"ctypes {path}"
        lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p,
                                           ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p,
                                           ctypes.c_void_p]
        lib.nvrtcCompileProgram.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                            ctypes.POINTER(ctypes.c_char_p)]
        for f in ("nvrtcGetProgramLogSize", "nvrtcGetCUBINSize"):
            getattr(lib, f).argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        for f in ("nvrtcGetProgramLog", "nvrtcGetCUBIN"):
            getattr(lib, f).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        major, minor = ctypes.c_int(), ctypes.c_int()
        lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        self.version = (major.value, minor.value)

    def _get(self, prog, what):
        size = ctypes.c_size_t()
        getattr(self.lib, f"nvrtcGet{what}Size")(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        getattr(self.lib, f"nvrtcGet{what}")(prog, buf)
        return buf.raw

    def compile(self, source, filename, options):
        prog = ctypes.c_void_p()
        if self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(),
                                       filename.encode(), 0, None, None):
            raise CompileError("nvrtcCreateProgram failed")
        try:
            opts = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
            status = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            log = _text(self._get(prog, "ProgramLog"))
            if status:
                raise CompileError(f"NVRTC status {status}\n{log}")
            return log, self._get(prog, "CUBIN")
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


class Nvcc:
    """nvcc -cubin on the .cu file itself (-I for the header)."""

    def __init__(self, path):
        self.path = path
        self.name = f"nvcc {path}"
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             check=True).stdout
        self.version = tuple(int(v) for v in re.search(r"release (\d+)\.(\d+)", out).groups())

    def compile(self, source, filename, options, tmp=None):
        options = [o for o in options if o not in CUPY_OPTIONS[1:]]  # NVRTC-only
        out = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"arrseg_{os.getpid()}.cubin"
        result = subprocess.run([self.path, "-cubin", *options, "-I", str(SOURCE_DIR),
                                 str(SOURCE_DIR / filename), "-o", str(out)],
                                capture_output=True, text=True, check=False)
        if result.returncode:
            raise CompileError(result.stdout + result.stderr)
        cubin = out.read_bytes()
        out.unlink()
        return result.stdout + result.stderr, cubin


def _text(log):
    if isinstance(log, bytes):
        log = log.decode(errors="replace")
    return log.replace("\x00", "").strip()


def _libnvrtc_candidates():
    site = sysconfig.get_paths()["purelib"]
    yield from sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", "libnvrtc.so*")))
    yield from sorted(glob.glob(os.path.join(site, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")))
    found = ctypes.util.find_library("nvrtc")
    if found:
        yield found
    for home in (os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            yield from sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so*")))


def find_nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
        nvcc = "/usr/local/cuda/bin/nvcc"
    return nvcc


def find_compiler():
    """The first compiler that works, and why the others did not."""
    reasons = []
    try:
        return CupyNVRTC(), reasons
    # not installed, would not load, or warned on import (warnings are errors)
    except (ImportError, OSError, RuntimeError, Warning) as e:
        reasons.append(f"cupy_backends.cuda.libs.nvrtc: {type(e).__name__}: {e}")
    for path in dict.fromkeys(_libnvrtc_candidates()):
        if "builtins" in os.path.basename(path):
            continue
        try:
            return CtypesNVRTC(path), reasons
        except OSError as e:
            reasons.append(f"{path}: {e}")
    nvcc = find_nvcc()
    if nvcc:
        return Nvcc(nvcc), reasons
    reasons.append("nvcc: not on PATH")
    return None, reasons


@pytest.fixture(scope="module")
def compiler():
    found, reasons = find_compiler()
    if found is None:
        pytest.skip("no CUDA compiler (NVRTC or nvcc): " + "; ".join(reasons))
    return found


#: ptxas warns of any local memory (a stack frame: spills, or an array that
#: lives in local memory) and of any spill; NVRTC and nvcc both take one ptxas
#: option per ``-Xptxas`` (NVRTC 13 refuses a comma-separated list)
PTXAS_WARNINGS = ("-Xptxas", "-warn-lmem-usage", "-Xptxas", "-warn-spills")


def options_for(compiler, config, arch, verbose=True):
    opts = [*config.defines(), f"-arch={arch}", *PTXAS_WARNINGS]
    opts += ["-Xptxas", "-v"] if verbose else []
    if isinstance(compiler, Nvcc):
        return opts + ["-ftz=true"]
    return opts + list(CUPY_OPTIONS)


# "ptxas info    : ...", and the spill line: "ptxas         .     0 bytes stack
# frame, ..." from NVRTC, "    0 bytes stack frame, ..." from nvcc
_PTXAS_LINE = re.compile(r"^(ptxas(\s+info\s*:|\s+\.)|\s+\d+ bytes stack frame)")
_FUNCTION = re.compile(r"Compiling entry function '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                     r"(\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


def ptxas_report(log):
    """{kernel: (registers, stack frame bytes, spill store bytes, spill load
    bytes)} from a -v log, and the lines that are not ptxas's report
    (warnings, if any)."""
    report, others, current = {}, [], None
    for line in log.splitlines():
        if not line.strip():
            continue
        if not _PTXAS_LINE.match(line):
            others.append(line)
            continue
        if m := _FUNCTION.search(line):
            current = m.group(1)
            report[current] = [None, None, None, None]
        elif (m := _SPILLS.search(line)) and current:
            report[current][1:] = int(m.group(1)), int(m.group(2)), int(m.group(3))
        elif (m := _REGISTERS.search(line)) and current:
            report[current][0] = int(m.group(1))
    return {k: tuple(v) for k, v in report.items()}, others


ROWS = sweep()


@pytest.mark.parametrize("row", [pytest.param(r, id=row_id(r)) for r in ROWS])
def test_kernels_compile_cleanly_without_spills(compiler, row):
    config = config_of(row)
    for filename, kernels in KERNEL_FILES.items():
        log, cubin = compiler.compile(kernel_source(filename), filename,
                                      options_for(compiler, config, row["arch"]))
        report, others = ptxas_report(log)
        assert others == [], f"{filename} ({compiler.name}):\n{log}"
        assert len(cubin) > 0
        assert set(report) == set(kernels), log
        for kernel, (registers, stack, stores, loads) in report.items():
            assert (stack, stores, loads) == (0, 0, 0), f"{kernel} uses local memory: {log}"
            assert registers <= 65536 // (limits.THREADS * limits.MIN_BLOCKS)


@pytest.mark.parametrize("row", [pytest.param(r, id=row_id(r)) for r in (ROWS[0], ROWS[-1])])
def test_log_is_empty_without_verbose_ptxas(compiler, row):
    """As CuPy compiles (no -Xptxas -v), NVRTC has nothing at all to say."""
    config = config_of(row)
    for filename in KERNEL_FILES:
        log, cubin = compiler.compile(kernel_source(filename), filename,
                                      options_for(compiler, config, row["arch"],
                                                  verbose=False))
        assert log == "" and len(cubin) > 0, log


#: a kernel whose array, indexed at run time, must live in local memory
_LOCAL_MEMORY_PROBE = r"""
extern "C" __global__ void arrseg_lmem_probe(float *d_p, int i, int n)
{
    float a[64];
    for (int j = 0; j < 64; ++j) a[j] = d_p[j];
    for (int j = 0; j < n; ++j) a[(i * j) & 63] += d_p[j];
    d_p[0] = a[i & 63] + a[(i * 7) & 63];
}
"""


def test_ptxas_warnings_are_on(compiler):
    """The options make ptxas report local memory: a kernel that uses some
    fails the checks above (its warning is a line outside the report, and its
    stack frame is not 0)."""
    if isinstance(compiler, Nvcc):
        pytest.skip("nvcc compiles the package's files, not a string")
    config = config_of(ROWS[0])
    log, _ = compiler.compile(_LOCAL_MEMORY_PROBE, "probe.cu",
                              options_for(compiler, config, "sm_90"))
    report, others = ptxas_report(log)
    assert any("Local memory used" in line and "arrseg_lmem_probe" in line
               for line in others), log
    assert report["arrseg_lmem_probe"][1] > 0, log


def test_sweep_covers_every_pair_and_the_maxima():
    rows = sweep()
    product = [dict(zip(FACTORS, v)) for v in itertools.product(*FACTORS.values())]
    assert set().union(*map(_pairs, rows)) == set().union(*map(_pairs, product))
    maxima = {(r["arch"], r["dtype"]) for r in rows if r["shape"] == "s7-max"}
    assert maxima == set(itertools.product(ARCHS, limits.DTYPES))
    # every kernel size, activation, boundary, dtype and bias on every architecture
    assert len(rows) < 30


def test_compile_sources_are_the_launchers_sources():
    """What the tests compile is what CupyKernels hands to cupy.RawModule."""
    from arrseg.cuda import build

    config = config_of(ROWS[0])
    assert build.compile_options(config) == config.defines()
    for filename in KERNEL_FILES:
        assert build.kernel_source(filename) == kernel_source(filename)


@pytest.mark.parametrize("dtype", limits.DTYPES)
def test_ptxas_on_the_largest_configuration(dtype, record_property):
    """nvcc -cubin -arch=sm_90 -Xptxas -v on the .cu files as they are (the
    header found through -I), at s = 7, C = 4, k = 64, n_c = 16: no spills."""
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    s, C, k, n_c = SHAPES["s7-max"]
    config = KernelConfig(dtype, s, C, k, n_c, "sigmoid", "periodic", True)
    compiler = Nvcc(nvcc)
    found = {}
    for filename in KERNEL_FILES:
        log, _ = compiler.compile(None, filename, options_for(compiler, config, "sm_90"))
        report, others = ptxas_report(log)
        assert others == [], log
        found.update(report)
    for kernel, (registers, stack, stores, loads) in found.items():
        assert (stack, stores, loads) == (0, 0, 0), (kernel, found)
        assert registers <= 65536 // (limits.THREADS * limits.MIN_BLOCKS)
    for kernel, (registers, _, _, _) in found.items():
        record_property(f"{kernel}_registers_sm_90_{dtype}", registers)
