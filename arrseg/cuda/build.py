"""The kernels' source files and their compilation on the GPU, with CuPy.

:func:`kernel_source` reads a ``.cu`` file of this package with its
``#include "..."`` lines replaced by the headers' text (``#line`` directives
keep compiler messages pointing at the real files), so that the text alone
compiles and CuPy's on-disk cache, keyed by the text and the options, sees a
header change. :class:`CupyKernels` compiles it with ``cupy.RawModule``
(NVRTC) once per device and configuration (a
:class:`~arrseg.cuda.limits.KernelConfig`, or a
:class:`~arrseg.cuda.checks.CheckConfig` for ``check_values.cu``), and hands
out the kernels. CuPy is imported when a kernel is first requested,
never at import.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re

__all__ = [
    "KERNEL_FILES",
    "SOURCE_DIR",
    "CupyKernels",
    "compile_options",
    "kernel_source",
]

#: Directory of the .cu / .cuh files.
SOURCE_DIR = pathlib.Path(__file__).resolve().parent
#: The kernel files and the kernels each one defines (one module per file).
KERNEL_FILES = {
    "fused_forward.cu": ("arrseg_fused_forward",),
    "fused_backward.cu": ("arrseg_fused_backward", "arrseg_reduce_partials"),
    "check_values.cu": ("arrseg_check_values",),
}

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def kernel_source(filename):
    """The text of kernel file ``filename`` with its local headers inlined.

    Parameters
    ----------
    filename : str
        A key of :data:`KERNEL_FILES` (or a header in :data:`SOURCE_DIR`).

    Returns
    -------
    str
    """
    return _inline(SOURCE_DIR / filename, set())


def _inline(path, seen):
    out = [f'#line 1 "{path.name}"']
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _INCLUDE.match(line)
        if match is None:
            out.append(line)
            continue
        header = (path.parent / match.group(1)).resolve()
        if header not in seen:  # the headers have include guards as well
            seen.add(header)
            out.append(_inline(header, seen))
        out.append(f'#line {number + 1} "{path.name}"')
    return "\n".join(out) + "\n"


def compile_options(config):
    """NVRTC options of a build: the configuration's ``-D`` options.

    CuPy adds ``-arch`` for the current device, ``-ftz=true`` and
    ``--device-as-default-execution-space`` itself; the compile tests
    (tests/test_cuda_compile.py) add the same.
    """
    return tuple(config.defines())


@functools.cache
def _module(device_id, config, filename):
    import cupy

    return cupy.RawModule(code=kernel_source(filename),
                          options=compile_options(config))


# A child made by fork cannot use the parent's CUDA context, so the modules
# loaded in it are of no use there: the child compiles (or loads from CuPy's
# disk cache) its own, in its own context, if it can initialise CUDA at all.
if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=_module.cache_clear)


class CupyKernels:
    """The kernels compiled for the current CUDA device, with CuPy (NVRTC).

    ``function(config, filename, name)`` returns a ``cupy.RawKernel``, called
    as ``kernel(grid, block, args, shared_mem=0)``. Modules are memoized per
    (device id, config, file), and forgotten in a child made by ``fork``;
    NVRTC runs at the first launch on a device, and CuPy's disk cache makes
    later processes skip it.
    """

    def function(self, config, filename, name):
        if name not in KERNEL_FILES.get(filename, ()):
            raise ValueError(f"{filename} defines no kernel {name!r}")
        import cupy

        device_id = cupy.cuda.Device().id
        return _module(device_id, config, filename).get_function(name)
