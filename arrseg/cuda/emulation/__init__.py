"""The fused CUDA kernels on the CPU: g++, cuda_cpu.h, and a ctypes stand-in.

:class:`EmulatedKernels` plays the part of :class:`arrseg.cuda.build.CupyKernels`
for :mod:`arrseg.cuda.fused`: for a :class:`~arrseg.cuda.limits.KernelConfig`
it compiles the unchanged ``.cu`` files with g++ after ``cuda_cpu.h`` (same
``-D`` options as the GPU build) into a shared library, and hands out
:class:`EmulatedKernel` objects called exactly like ``cupy.RawKernel``:
``kernel(grid, block, args, shared_mem=0)``, with NumPy arrays in place of
CuPy arrays. So the real launch code (grid sizes, argument types, workspace
sizes) runs on every test run, without a GPU.

An :class:`EmulatedKernel` checks what a GPU would not report clearly:

- every argument has the exact C type of the kernel's parameter (the library
  reports its signature): ``np.int32`` for ``int``, ``np.float32`` for
  ``float``, a C-contiguous array of the right dtype (or None) for a pointer;
  a Python ``int`` or ``float`` is refused, as CuPy would pass it as a 64-bit
  value;
- grid and block sizes are within CUDA's limits;
- no kernel writes outside an array argument: each array is copied into a
  buffer with guard bytes on both sides, checked after the launch (a read
  of a guard byte gives NaN or -1, which shows in the results).

Two settings make bugs that a plain run would hide show in the results
(both on by default; see ``cuda_cpu.h``):

- ``poison_shared``: before each block, all ``__shared__`` memory is filled
  with 0xFF bytes (NaN, or -1 in integers): a kernel that reads shared memory
  before writing it gives NaN results, as it would give the previous block's
  values on a GPU;
- ``schedule="random"``: the threads of a block run one at a time from one
  barrier to the next, in an order drawn from ``seed`` at every barrier (and
  the blocks in a seeded order): results that depend on the order of the
  threads between barriers differ from seed to seed; a kernel that is
  deterministic gives the same bits for every seed. ``schedule="concurrent"``
  runs the threads of a block at once (the default with
  ``sanitize="thread"``, whose race detection needs it).

Libraries are cached on disk (``cache_dir``, default ``$ARRSEG_EMULATOR_CACHE``
or ``~/.cache/arrseg/emulator``) under a hash of the sources, options and
compiler. ``sanitize="address"`` builds with AddressSanitizer (out-of-bounds
reads and writes, also of ``__shared__`` arrays), ``sanitize="thread"`` with
ThreadSanitizer (data races between the threads of a block, that is a missing
``__syncthreads()``). Such a library can only be loaded into a process
started with the sanitizer's runtime preloaded: see :func:`sanitizer_env`.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
from typing import NamedTuple

import numpy as np

from ..build import KERNEL_FILES, SOURCE_DIR

__all__ = [
    "SCHEDULES",
    "BuildError",
    "EmulatedKernel",
    "EmulatedKernels",
    "Launch",
    "build_library",
    "find_compiler",
    "sanitizer_env",
]

HERE = pathlib.Path(__file__).resolve().parent
#: Files a library is built from (their text is part of the cache key).
SOURCES = (HERE / "cuda_cpu.h", HERE / "harness.cpp", SOURCE_DIR / "common.cuh",
           *(SOURCE_DIR / name for name in KERNEL_FILES))
CXX_FLAGS = ("-std=c++17", "-O1", "-pthread", "-fPIC", "-shared",
             "-fvisibility=hidden", "-Wall", "-Wextra")
SANITIZER_FLAGS = {
    None: (),
    "address": ("-fsanitize=address", "-fno-omit-frame-pointer"),
    # data races among the threads of a block: a missing __syncthreads()
    "thread": ("-fsanitize=thread", "-g"),
}
#: The runtime library a process must preload to load a sanitized build.
SANITIZER_RUNTIMES = {"address": "libasan.so", "thread": "libtsan.so"}
#: Guard bytes around each array argument.
GUARD = 64
#: All bits set: a kernel reading a guard byte sees NaN (float32, float64) or
#: -1 (int32, int64), values that the checks of check_values.cu refuse and
#: that turn a result NaN, so a read past an array shows in the results.
_GUARD_BYTE = 0xFF
#: the schedules of the threads of a block (see :class:`EmulatedKernels`)
SCHEDULES = ("random", "concurrent")
#: the seed of the random schedule when none is given (``$ARRSEG_EMULATOR_SEED``
#: overrides it, to run a test suite under another order)
DEFAULT_SEED = 0
_SCALAR_TYPES = {"i": (np.int32, ctypes.c_int32), "q": (np.int64, ctypes.c_int64),
                 "f": (np.float32, ctypes.c_float), "d": (np.float64, ctypes.c_double)}


class BuildError(RuntimeError):
    """g++ failed; the message holds its command and output."""


def find_compiler():
    """The C++ compiler: ``$CXX``, else ``g++`` on the PATH; None if neither."""
    cxx = os.environ.get("CXX") or shutil.which("g++")
    return cxx if cxx and shutil.which(cxx) else None


def sanitizer_env(sanitize, cxx=None):
    """Environment variables for a process that loads a ``sanitize`` build.

    ``LD_PRELOAD`` names the compiler's runtime of the sanitizer; leaks are
    not reported (the Python interpreter is not instrumented), and the first
    error ends the process with a non-zero status.
    """
    cxx = cxx or find_compiler()
    runtime = subprocess.run([cxx, f"-print-file-name={SANITIZER_RUNTIMES[sanitize]}"],
                             capture_output=True, text=True, check=True).stdout.strip()
    return {
        "LD_PRELOAD": runtime,
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=66",
        "TSAN_OPTIONS": "halt_on_error=1:exitcode=66:report_signal_unsafe=0",
    }


def _default_cache_dir():
    env = os.environ.get("ARRSEG_EMULATOR_CACHE")
    if env:
        return pathlib.Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "arrseg" / "emulator"


_versions = {}


def _compiler_version(cxx):
    if cxx not in _versions:
        _versions[cxx] = subprocess.run([cxx, "--version"], capture_output=True,
                                        text=True, check=True).stdout
    return _versions[cxx]


class Built(NamedTuple):
    """A compiled library and the compiler's messages (empty: no warning)."""

    path: pathlib.Path
    log: str


def build_library(config, *, sanitize=None, cache_dir=None, cxx=None, source_dir=None):
    """Compile the kernels of ``config`` for the CPU emulator (cached).

    Parameters
    ----------
    config : arrseg.cuda.limits.KernelConfig
    sanitize : {None, "address", "thread"}
    cache_dir : path, optional
    cxx : str, optional
        The compiler (default :func:`find_compiler`).
    source_dir : path, optional
        Where the .cu/.cuh files are (default: this package's); the tests
        use a modified copy to show that a bug is caught.

    Returns
    -------
    Built
        The library's path and g++'s output (the log is cached with it).

    Raises
    ------
    BuildError
        If the compiler fails or cannot be found.
    """
    cxx = cxx or find_compiler()
    if cxx is None:
        raise BuildError("no C++ compiler found (set CXX or install g++)")
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    source_dir = pathlib.Path(source_dir) if source_dir is not None else SOURCE_DIR
    flags = CXX_FLAGS + SANITIZER_FLAGS[sanitize] + tuple(config.defines())
    sources = [source_dir / p.name if p.parent == SOURCE_DIR else p for p in SOURCES]
    digest = hashlib.sha256()
    for part in (cxx, _compiler_version(cxx), *flags):
        digest.update(part.encode() + b"\0")
    for path in sources:
        digest.update(path.read_bytes() + b"\0")
    stem = f"arrseg_emulated_{digest.hexdigest()[:24]}"
    library = cache_dir / f"{stem}.so"
    log_file = cache_dir / f"{stem}.log"
    if library.exists() and log_file.exists():
        return Built(library, log_file.read_text())
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)
    os.close(fd)
    command = [cxx, *flags, "-I", str(source_dir), str(HERE / "harness.cpp"), "-o", tmp]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        os.unlink(tmp)
        raise BuildError(f"{' '.join(command)}\n{result.stdout}{result.stderr}")
    log_file.write_text(result.stdout + result.stderr)
    os.replace(tmp, library)
    return Built(library, log_file.read_text())


class Launch(NamedTuple):
    """What one launch of an :class:`EmulatedKernel` received."""

    name: str
    grid: tuple
    block: tuple
    #: per argument: ("array", dtype name, shape), ("null",) or ("scalar", type name, value)
    args: tuple
    shared_mem: int


def _dims(name, value, limits3):
    if not isinstance(value, tuple) or not 1 <= len(value) <= 3:
        raise TypeError(f"{name} must be a tuple of 1 to 3 ints, got {value!r}")
    dims = []
    for v in value:
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"{name} must hold ints, got {value!r}")
        dims.append(int(v))
    dims += [1] * (3 - len(dims))
    for d, most in zip(dims, limits3):
        if not 1 <= d <= most:
            raise ValueError(f"{name} = {tuple(dims)} is outside CUDA's limits {limits3}")
    return tuple(dims)


class EmulatedKernel:
    """One kernel of an emulated library, called like ``cupy.RawKernel``.

    ``launches`` records every launch (a :class:`Launch`), for tests of the
    launch code.
    """

    def __init__(self, library, name, lock, settings=(True, False, 0)):
        self.name = name
        self._lib = library
        self._lock = lock
        #: (poison_shared, random_schedule, seed), set before each launch
        self._settings = settings
        buf = ctypes.create_string_buffer(512)
        if library.arrseg_emulated_signature(name.encode(), buf, len(buf)) < 0:
            raise ValueError(f"the emulated library has no kernel {name!r}")
        #: the C parameter types, e.g. ("*f", "*f", "i")
        self.signature = tuple(buf.value.decode().split())
        self.launches = []

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        grid = _dims("grid", grid, (2**31 - 1, 65535, 65535))
        block = _dims("block", block, (1024, 1024, 64))
        if block[0] * block[1] * block[2] > 1024:
            raise ValueError(f"block = {block} has more than 1024 threads")
        if not isinstance(args, tuple) or len(args) != len(self.signature):
            raise TypeError(f"{self.name} takes a tuple of {len(self.signature)} "
                            f"arguments {self.signature}, got {args!r}")
        if shared_mem != 0:
            raise ValueError(f"{self.name} uses static shared memory only; got "
                             f"shared_mem={shared_mem}")
        keep, record, guarded = [], [], []
        params = (ctypes.c_void_p * len(args))()
        for i, (code, a) in enumerate(zip(self.signature, args)):
            if code.startswith("*"):
                ptr = self._pointer(i, code, a, guarded, record)
                value = ctypes.c_void_p(ptr)
            else:
                np_type, c_type = _SCALAR_TYPES[code]
                if type(a) is not np_type:
                    raise TypeError(
                        f"{self.name} argument {i} must be a {np_type.__name__} (C "
                        f"type {c_type.__name__}), got {type(a).__name__} {a!r}")
                value = c_type(a.item())
                record.append(("scalar", np_type.__name__, a.item()))
            keep.append(value)
            params[i] = ctypes.addressof(value)
        with self._lock:
            poison, random_schedule, seed = self._settings
            self._lib.arrseg_emulated_configure(int(poison), int(random_schedule), seed)
            rc = self._lib.arrseg_emulated_launch(self.name.encode(), *grid, *block, params)
        if rc != 0:
            raise RuntimeError(f"emulated launch of {self.name} failed ({rc})")
        for i, original, buffer in guarded:
            head, body, tail = (buffer[:GUARD], buffer[GUARD:GUARD + original.nbytes],
                                buffer[GUARD + original.nbytes:])
            if (head != _GUARD_BYTE).any() or (tail != _GUARD_BYTE).any():
                raise RuntimeError(f"{self.name} wrote outside argument {i} "
                                   f"({original.dtype}, shape {original.shape})")
            original.reshape(-1).view(np.uint8)[:] = body
        self.launches.append(Launch(self.name, grid, block, tuple(record), shared_mem))

    def _pointer(self, i, code, a, guarded, record):
        if a is None:
            record.append(("null",))
            return None
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{self.name} argument {i} must be a NumPy array or None "
                            f"(C type {code}), got {type(a).__name__}")
        want = np.dtype(_SCALAR_TYPES[code[1:]][0])
        if a.dtype != want or not a.flags.c_contiguous:
            raise TypeError(f"{self.name} argument {i} must be a C-contiguous {want} "
                            f"array, got {a.dtype} (C-contiguous: "
                            f"{a.flags.c_contiguous})")
        buffer = np.full(a.nbytes + 2 * GUARD, _GUARD_BYTE, dtype=np.uint8)
        buffer[GUARD:GUARD + a.nbytes] = a.reshape(-1).view(np.uint8)
        guarded.append((i, a, buffer))
        record.append(("array", a.dtype.name, a.shape))
        return buffer.ctypes.data + GUARD


#: one launch at a time in the process: ``__shared__`` is ``static``, and
#: two EmulatedKernels with the same sources share one loaded library
_LAUNCH_LOCK = threading.Lock()


class EmulatedKernels:
    """Kernels compiled for the CPU emulator, one library per configuration.

    Drop-in for :class:`arrseg.cuda.build.CupyKernels` with NumPy arrays::

        fused_forward(x, params, "tanh", "zeros", kernels=EmulatedKernels())

    Parameters
    ----------
    sanitize : {None, "address", "thread"}
    cache_dir : path, optional
    cxx : str, optional
    source_dir : path, optional
        See :func:`build_library`.
    poison_shared : bool, default True
        Fill all ``__shared__`` memory with 0xFF bytes (NaN) before each
        block. Without effect with ``sanitize="address"`` (ASan guards the
        shared arrays there instead).
    schedule : {"random", "concurrent"}, optional
        How the threads of a block run between barriers: one at a time in a
        seeded random order, or all at once. Default "random", "concurrent"
        with a sanitizer (the fibers of "random" would hide races from
        ThreadSanitizer and make AddressSanitizer warn).
    seed : int, optional
        The seed of the random schedule, in [0, 2**64); default
        ``$ARRSEG_EMULATOR_SEED`` or :data:`DEFAULT_SEED`.
    """

    def __init__(self, *, sanitize=None, cache_dir=None, cxx=None, source_dir=None,
                 poison_shared=True, schedule=None, seed=None):
        if schedule is None:
            schedule = "concurrent" if sanitize else "random"
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if schedule == "random" and sanitize == "thread":
            raise ValueError('schedule="random" runs one thread at a time, which hides '
                             'data races from ThreadSanitizer: use schedule="concurrent" '
                             'with sanitize="thread"')
        if seed is None:
            seed = int(os.environ.get("ARRSEG_EMULATOR_SEED", DEFAULT_SEED))
        if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        self.sanitize = sanitize
        self.cache_dir = cache_dir
        self.cxx = cxx
        self.source_dir = source_dir
        self.poison_shared = bool(poison_shared)
        self.schedule = schedule
        self.seed = int(seed)
        self._libraries = {}
        self._kernels = {}
        self._lock = _LAUNCH_LOCK

    def build(self, config):
        """Compile (or find in the cache) the library of ``config``."""
        return build_library(config, sanitize=self.sanitize, cache_dir=self.cache_dir,
                             cxx=self.cxx, source_dir=self.source_dir)

    def prebuild(self, configs, jobs=2):
        """Compile the libraries of several configurations, ``jobs`` at a time."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(self.build, configs))

    def library(self, config):
        if config not in self._libraries:
            lib = ctypes.CDLL(str(self.build(config).path))
            lib.arrseg_emulated_signature.restype = ctypes.c_int
            lib.arrseg_emulated_signature.argtypes = (ctypes.c_char_p, ctypes.c_char_p,
                                                      ctypes.c_int)
            lib.arrseg_emulated_launch.restype = ctypes.c_int
            lib.arrseg_emulated_launch.argtypes = (ctypes.c_char_p,) + (ctypes.c_uint,) * 6 + (
                ctypes.POINTER(ctypes.c_void_p),)
            lib.arrseg_emulated_partial_length.restype = ctypes.c_int
            lib.arrseg_emulated_configure.restype = None
            lib.arrseg_emulated_configure.argtypes = (ctypes.c_int, ctypes.c_int,
                                                      ctypes.c_ulonglong)
            lib.arrseg_emulated_shared_bytes.restype = ctypes.c_ulong
            self._libraries[config] = lib
        return self._libraries[config]

    def function(self, config, filename, name):
        """The kernel ``name`` of ``filename`` built for ``config``."""
        if name not in KERNEL_FILES.get(filename, ()):
            raise ValueError(f"{filename} defines no kernel {name!r}")
        key = (config, name)
        if key not in self._kernels:
            settings = (self.poison_shared, self.schedule == "random", self.seed)
            self._kernels[key] = EmulatedKernel(self.library(config), name, self._lock,
                                                settings)
        return self._kernels[key]
