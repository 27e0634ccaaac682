"""Fused CUDA kernels of the network (CuPy), and their CPU emulator.

The kernels are CUDA C files of this package (``fused_forward.cu``,
``fused_backward.cu``, ``common.cuh``), compiled at the first call on a
device by :class:`arrseg.cuda.build.CupyKernels`. Nothing here imports CuPy
or compiles at import. See ``docs/cuda.rst`` for the design.

- :mod:`arrseg.cuda.limits`: what the kernels support (:func:`supports`),
  tiling, shared-memory budget, compile-time constants.
- :mod:`arrseg.cuda.fused`: the launchers :func:`fused_forward` and
  :func:`fused_loss_and_grad`.
- :mod:`arrseg.cuda.build`: the sources and their compilation with CuPy.
- :mod:`arrseg.cuda.emulation`: the same kernels on the CPU, for tests.
"""

from .fused import fused_forward, fused_loss_and_grad
from .limits import supports

__all__ = ["fused_forward", "fused_loss_and_grad", "supports"]
