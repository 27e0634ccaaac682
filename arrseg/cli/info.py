"""``arrseg info``: what this installation can use.

Prints the versions of arrseg, Python and the libraries (found by their
installed metadata, so that nothing heavy is imported), the array backends
that can be imported, whether CuPy sees a GPU, whether the fused CUDA
kernels compile with NVRTC (through CuPy's binding; with no GPU for a
virtual architecture), and the thread count of the NumPy fast path.
"""

from __future__ import annotations

import importlib.util
import platform
import sys

__all__ = ["add_parser", "run"]

#: Distributions whose versions are shown: (distribution, what it is for).
LIBRARIES = [
    ("numpy", "required"), ("array-api-compat", "required"),
    ("threadpoolctl", "required"),
    ("tifffile", "cli extra: TIFF"), ("pillow", "cli extra: PNG, JPEG"),
    ("tqdm", "cli extra: progress bars"), ("matplotlib", "cli extra: figures"),
    ("dask", "dask extra: chunked arrays"), ("distributed", "dask extra: clusters"),
    ("zarr", "dask extra: Zarr stores"),
    ("cupy-cuda12x", "GPU backend"), ("cupy-cuda13x", "GPU backend"),
    ("torch", "backend / test reference"), ("array-api-strict", "backend (tests)"),
]
#: Array namespaces arrseg runs on, by module name.
BACKENDS = [("numpy", "NumPy"), ("cupy", "CuPy"), ("torch", "PyTorch"),
            ("array_api_strict", "array-api-strict"), ("jax", "JAX")]


def add_parser(sub):
    """Add ``info`` to the subparsers ``sub``; returns its parser."""
    return sub.add_parser(
        "info", help="versions, backends, GPU and threads",
        description="Show the versions, the array backends found, whether CuPy "
        "sees a GPU and compiles the fused kernels, and the thread count.")


def _version(dist):
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _one_line(e):
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def gpu_status():
    """(CuPy module or None, line about the GPU)."""
    if importlib.util.find_spec("cupy") is None:
        return None, "not checked (CuPy is not installed)"
    try:
        import cupy
    except Exception as e:
        return None, f"no (CuPy cannot be imported: {_one_line(e)})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return cupy, f"no ({_one_line(e)})"
    if n < 1:
        return cupy, "no (no CUDA device)"
    try:
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return cupy, f"yes: {n} device(s), device 0 is {name}"
    except Exception as e:
        return cupy, f"yes: {n} device(s) ({_one_line(e)})"


def kernels_status(cupy, has_gpu):
    """A line on whether the fused kernels compile with NVRTC."""
    if cupy is None and importlib.util.find_spec("cupy") is None:
        return "not checked (CuPy is not installed)"
    try:
        from cupy_backends.cuda.libs import nvrtc
    except Exception as e:
        return f"not checked (CuPy's NVRTC binding cannot be imported: {_one_line(e)})"
    from ..cuda.build import KERNEL_FILES, compile_options, kernel_source
    from ..cuda.limits import KernelConfig

    config = KernelConfig("float32", 3, 3, 8, 2, "tanh", "zeros", True)
    arch = "compute_75"
    if has_gpu:
        try:
            major, minor = cupy.cuda.Device(0).compute_capability[:2]
            arch = f"sm_{major}{minor}"
        except Exception:
            pass
    try:
        version = ".".join(map(str, nvrtc.getVersion()))
        for filename in KERNEL_FILES:
            prog = nvrtc.createProgram(kernel_source(filename), filename, [], [])
            try:
                nvrtc.compileProgram(prog, [*compile_options(config), f"-arch={arch}",
                                            "-ftz=true",
                                            "--device-as-default-execution-space"])
            finally:
                nvrtc.destroyProgram(prog)
    except Exception as e:
        return f"no ({_one_line(e)})"
    return f"yes (NVRTC {version}, {len(KERNEL_FILES)} kernel files for {arch})"


def run(args, out=None):
    """Run ``arrseg info``; returns the exit status (0)."""
    from .. import __version__

    out = sys.stdout if out is None else out
    print(f"arrseg       {__version__}", file=out)
    print(f"python       {platform.python_version()} ({sys.executable})", file=out)
    print(f"platform     {platform.platform()}", file=out)
    print("libraries:", file=out)
    for dist, why in LIBRARIES:
        v = _version(dist)
        print(f"  {dist:<17} {v or 'not installed':<14} {why}", file=out)
    found = [name for module, name in BACKENDS if importlib.util.find_spec(module)]
    print(f"array backends found: {', '.join(found)}", file=out)
    cupy, gpu = gpu_status()
    print(f"CuPy sees a GPU: {gpu}", file=out)
    print(f"fused CUDA kernels compile: "
          f"{kernels_status(cupy, gpu.startswith('yes'))}", file=out)
    try:
        from ..cpu.threads import num_threads

        threads = str(num_threads())
    except ValueError as e:
        threads = f"invalid ({_one_line(e)})"
    print(f"threads (NumPy fast path, ARRSEG_NUM_THREADS): {threads}", file=out)
    return 0
