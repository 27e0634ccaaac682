"""What the fused CUDA kernels support, and how a call maps to a kernel build.

This module is the one place for the kernels' limits (:data:`MAX_KERNEL_SIZE`,
:data:`MAX_WIDTH`, :data:`MAX_CHANNELS`, :data:`MAX_CLASSES`), their tiling,
their shared-memory budget and the ``-D`` options of a build
(:meth:`KernelConfig.defines`); the ``.cu`` files' ``#ifndef`` defaults are
only for compiling a file alone. It imports neither CuPy nor a compiler.

32-bit indices
--------------
The kernels index with ``int`` where a value fits, and :func:`supports`
refuses every shape for which one of these ``int`` expressions could pass
``INT32_MAX`` = 2**31 - 1 (``P = s // 2``, ``G`` the blocks of a launch;
with ``MAX_FORWARD_BLOCKS = 2**31 - 1`` the forward kernel's G binds):

- ``t += gridDim.x``, the tile loop of both kernels (the sum is unsigned,
  stored to ``int t``): at most ``n_tiles - 1 + G`` with ``G = min(n_tiles,
  MAX_*_BLOCKS)``, so ``n_tiles <= 2**31 - min(Gmax, 2**30)`` = 2**30
  (Gmax: the larger of MAX_FORWARD_BLOCKS and MAX_PARTIAL_BLOCKS);
- ``tile.n * C + j`` (common.cuh, ``load_tile``; x's planes): at most
  ``N * C - 1``, so ``N * C <= 2**31``;
- ``tile.n * NC + c`` (fused_forward.cu; P's planes): at most
  ``N * n_c - 1``, so ``N * n_c <= 2**31``;
- the halo row ``tile.h0 - P + r`` (``load_tile``), the pixel row
  ``tile.h0 + ty`` and the argument ``int H``: at most ``tiles_y * TILE_H +
  P - 1``, so ``H <= (2**31 - P) // TILE_H * TILE_H`` (2**31 - 8 for
  s >= 3) and ``H <= 2**31 - 1``;
- the same for columns: ``W <= (2**31 - P) // TILE_W * TILE_W``
  (2**31 - 16 for s >= 3).

The launch arguments ``np.int32(H, W, tiles_x, tiles_y, n_tiles)`` are then
in range too. No bound is needed for what is 64-bit or fixed:

- element offsets into x, P and the labels are widened to ``long long``
  before the multiplications by H and W (so ``N*C*H*W``, ``N*n_c*H*W`` and
  ``N*H*W`` are unbounded here), and so is the workspace row offset
  ``(long long)blockIdx.x * PARTIAL_LEN``; check_values.cu counts in
  ``long long``;
- the workspace (``G x L`` values, ``G <= MAX_PARTIAL_BLOCKS``) has at most
  512 x 13 650 = 6 988 800 entries, and the reduction's ``int`` output index
  is below ``L`` + :data:`REDUCE_THREADS`: constants of the compile-time
  limits (L = :func:`partial_length` at k = 64, C = 4, s = 7, n_c = 16),
  checked by tests/test_cuda_limits.py;
- the loops over shared memory and parameters stay below ``C * HALO_H *
  HALO_W``, ``KC * C * s * s`` and ``K * n_c``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = [
    "ACTIVATION_CODES",
    "BOUNDARY_CODES",
    "DTYPES",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_FEATURE_CHUNK",
    "MAX_FORWARD_BLOCKS",
    "MAX_KERNEL_SIZE",
    "MAX_PARTIAL_BLOCKS",
    "MAX_WIDTH",
    "MIN_BLOCKS",
    "REDUCE_THREADS",
    "SHARED_BUDGET",
    "SHARED_TARGET",
    "THREADS",
    "TILE_H",
    "TILE_W",
    "KernelConfig",
    "partial_length",
    "shared_bytes",
    "supports",
    "tiles",
]

#: Largest kernel size s (odd): the halo and the s*s*C patch loops are
#: unrolled at compile time.
MAX_KERNEL_SIZE = 7
#: Largest number of feature channels k.
MAX_WIDTH = 64
#: Largest number of image channels C.
MAX_CHANNELS = 4
#: Largest number of classes n_c (the logits of a pixel live in registers).
MAX_CLASSES = 16
#: Supported dtypes (names).
DTYPES = ("float32", "float64")

#: A block computes a tile of TILE_H x TILE_W output pixels, one per thread.
TILE_H, TILE_W = 8, 16
THREADS = TILE_H * TILE_W
#: Static shared memory per block, bytes: at most 48 KiB, what every GPU
#: gives a block without opting in (so no launch needs an attribute) ...
SHARED_BUDGET = 48 * 1024
#: ... and 32 KiB where a chunk of 4 features fits, so that two blocks fit in
#: the 64 KiB of a Turing (sm_75) SM; on sm_80 and later the registers
#: (MIN_BLOCKS) bind before shared memory does.
SHARED_TARGET = 32 * 1024
#: Most pre-activations a thread keeps in registers at once (the chunk KC),
#: by itemsize: beyond 32 float32 or 8 float64 values, ptxas spills registers
#: in some configurations (tests/test_cuda_compile.py checks it does not).
MAX_FEATURE_CHUNK = {4: 32, 8: 8}
#: Blocks per SM the register allocation must allow (``__launch_bounds__``):
#: at most 65536 / (THREADS * MIN_BLOCKS) = 128 registers per thread.
MIN_BLOCKS = 4
#: Most blocks of the backward kernel, hence rows of its workspace. A
#: constant, not a function of the GPU, so that the order of summation (and
#: so the result, bit for bit) depends on the problem's shape only. 512 is
#: about one wave on an H100 (132 SMs x 4 blocks).
MAX_PARTIAL_BLOCKS = 512
#: Most blocks of the forward kernel (each loops over every G-th tile); the
#: grid's x dimension allows 2**31 - 1. Tests lower it to exercise the loop.
MAX_FORWARD_BLOCKS = 2**31 - 1
#: Threads per block of the reduction kernel (one per output value).
REDUCE_THREADS = 256

#: ARRSEG_ACTIVATION codes (common.cuh).
ACTIVATION_CODES = {"identity": 0, "tanh": 1, "relu": 2, "sigmoid": 3}
#: ARRSEG_BOUNDARY codes (common.cuh).
BOUNDARY_CODES = {"zeros": 0, "periodic": 1}

_INT32_MAX = 2**31 - 1


def shared_bytes(kernel, s, C, n_c, kc, itemsize):
    """Static shared memory of one block, as the kernel declares it.

    Parameters
    ----------
    kernel : {"forward", "backward"}
    s, C, n_c : int
        Kernel size, image channels, classes.
    kc : int
        Feature channels per chunk.
    itemsize : int
        4 (float32) or 8 (float64).

    Returns
    -------
    int
    """
    css = C * s * s
    words = C * (TILE_H + s - 1) * (TILE_W + s - 1) + css * kc + kc * n_c + kc
    if kernel == "backward":
        words += n_c * (THREADS + 1) + THREADS * _padded_chunk(kc, itemsize) + 2 * THREADS
    elif kernel != "forward":
        raise ValueError(f"kernel must be 'forward' or 'backward', got {kernel!r}")
    return words * itemsize


def _padded_chunk(kc, itemsize):
    """KCP of fused_backward.cu: the row length of its pixel-major buffer."""
    group = 16 // itemsize  # IB, features per 16 bytes
    kcp = group * -(-kc // group)
    return kcp + group if (kcp * itemsize // 4) % 8 == 0 else kcp


def feature_chunk(s, C, k, n_c, itemsize):
    """KC, the feature channels a thread holds at once: as many as fit.

    At most :data:`MAX_FEATURE_CHUNK` [itemsize] channels such that the
    backward kernel's shared memory (the larger) fits :data:`SHARED_TARGET`,
    else :data:`SHARED_BUDGET`. All k channels if they fit (one chunk: the
    backward pass then keeps the pre-activations in registers instead of
    recomputing them); otherwise a multiple of 4 (the dK sums handle 4
    channels at a time), evened out over the chunks so that the last one is
    not nearly empty (two chunks of 20 rather than 32 + 8).
    """
    most = MAX_FEATURE_CHUNK[itemsize]
    for budget in (SHARED_TARGET, SHARED_BUDGET):
        def fits(kc, budget=budget):
            return shared_bytes("backward", s, C, n_c, kc, itemsize) <= budget

        if k <= most and fits(k):
            return k
        kc = min(most, 4 * (k // 4))
        while kc > 4 and not fits(kc):
            kc -= 4
        if kc >= 4 and fits(kc):
            n_chunks = math.ceil(k / kc)
            return min(kc, 4 * math.ceil(k / (4 * n_chunks)))
    raise ValueError(f"no feature chunk fits shared memory for s={s}, C={C}, k={k}, "
                     f"n_c={n_c}, itemsize={itemsize}")


def partial_length(k, C, s, n_c):
    """Length of one workspace row (and of the reduced output).

    ``[numerator, denominator, dK (k*C*s*s), db (k), dW (k*n_c), dc (n_c)]``,
    the layout of fused_backward.cu.
    """
    return 2 + k * C * s * s + k + k * n_c + n_c


def tiles(H, W):
    """(tiles_y, tiles_x): the tile grid over one H x W image."""
    return -(-H // TILE_H), -(-W // TILE_W)


def _dtype_name(dtype):
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def supports(x_shape, K_shape, n_classes, dtype):
    """Whether the fused kernels can run a call, and if not, why.

    Parameters
    ----------
    x_shape : tuple of int
        (N, C, H, W).
    K_shape : tuple of int
        (k, C, s, s).
    n_classes : int
        n_c.
    dtype : dtype or str
        The compute dtype.

    Returns
    -------
    ok : bool
    reason : str
        Empty when ``ok``; otherwise what is out of range, with the limit.

    Examples
    --------
    >>> from arrseg.cuda.limits import supports
    >>> supports((2, 3, 64, 64), (32, 3, 3, 3), 4, "float32")
    (True, '')
    >>> ok, reason = supports((2, 3, 64, 64), (32, 3, 9, 9), 4, "float32")
    >>> ok, reason
    (False, "kernel size s = 9 is above the fused kernels' limit of 7")
    """
    N, C, H, W = (int(v) for v in x_shape)
    k, C_K, s, s2 = (int(v) for v in K_shape)
    name = _dtype_name(dtype)
    checks = [
        (name in DTYPES, f"dtype {name} is not float32 or float64"),
        (s == s2 and s % 2 == 1, f"kernel shape {tuple(K_shape)} is not s x s with s odd"),
        (s <= MAX_KERNEL_SIZE,
         f"kernel size s = {s} is above the fused kernels' limit of {MAX_KERNEL_SIZE}"),
        (C == C_K, f"x has {C} channels but K expects {C_K}"),
        (1 <= C <= MAX_CHANNELS,
         f"C = {C} image channels is above the fused kernels' limit of {MAX_CHANNELS}"),
        (1 <= k <= MAX_WIDTH,
         f"k = {k} feature channels is above the fused kernels' limit of {MAX_WIDTH}"),
        (1 <= n_classes <= MAX_CLASSES,
         f"n_c = {n_classes} classes is above the fused kernels' limit of {MAX_CLASSES}"),
        (min(N, H, W) >= 1, f"x of shape {tuple(x_shape)} is empty"),
    ]
    for ok, reason in checks:
        if not ok:
            return False, reason
    return _check_32_bit_indices(N, C, H, W, s // 2, int(n_classes))


def _largest_extent(tile, P):
    """Largest H (tile = TILE_H) or W (TILE_W) whose halo index, at most
    ceil(H / tile) * tile + P - 1, and H itself fit a 32-bit int."""
    return min(_INT32_MAX, (_INT32_MAX + 1 - P) // tile * tile)


def _check_32_bit_indices(N, C, H, W, P, n_c):
    """The bounds of the module docstring's table: (ok, reason)."""
    limit = "the fused kernels' 32-bit limit of"
    for name, size, tile in (("H", H, TILE_H), ("W", W, TILE_W)):
        most = _largest_extent(tile, P)
        if size > most:
            return False, (f"{name} = {size} pixels is above {limit} {most} for "
                           f"s = {2 * P + 1} (the halo index of a {TILE_H} x "
                           f"{TILE_W} tile is a 32-bit int)")
    tiles_y, tiles_x = tiles(H, W)
    n_tiles = N * tiles_y * tiles_x
    most = _INT32_MAX + 1 - min(max(MAX_FORWARD_BLOCKS, MAX_PARTIAL_BLOCKS), 2**30)
    if n_tiles > most:
        return False, (f"n_tiles = N * tiles_y * tiles_x = {N} * {tiles_y} * {tiles_x} "
                       f"= {n_tiles} tiles of {TILE_H} x {TILE_W} pixels is above "
                       f"{limit} {most} (the tile loop's t + gridDim.x is a 32-bit int)")
    for what, count, expression in (("C", C, "tile.n * C + j"),
                                    ("n_c", n_c, "tile.n * NC + c")):
        if N * count > _INT32_MAX + 1:
            return False, (f"N * {what} = {N} * {count} = {N * count} is above "
                           f"{limit} 2**31 = {_INT32_MAX + 1} (the index "
                           f"{expression} is a 32-bit int)")
    return True, ""


class KernelConfig(NamedTuple):
    """The compile-time constants of one build of the fused kernels.

    Everything a kernel is specialised on; with the device, it is the key of
    the compiled-module cache. ``activation`` and ``boundary`` are the public
    names (``"tanh"``, ``"zeros"``, ...), ``dtype`` ``"float32"`` or
    ``"float64"``.
    """

    dtype: str
    s: int
    C: int
    k: int
    n_c: int
    activation: str
    boundary: str
    has_c: bool

    @property
    def itemsize(self):
        return 8 if self.dtype == "float64" else 4

    @property
    def kc(self):
        """Feature channels per chunk (ARRSEG_KC)."""
        return feature_chunk(self.s, self.C, self.k, self.n_c, self.itemsize)

    @property
    def partial_length(self):
        return partial_length(self.k, self.C, self.s, self.n_c)

    def defines(self):
        """The ``-D`` options of this build, for nvcc, NVRTC and g++ alike."""
        values = {
            "ARRSEG_S": self.s,
            "ARRSEG_C": self.C,
            "ARRSEG_K": self.k,
            "ARRSEG_NC": self.n_c,
            "ARRSEG_KC": self.kc,
            "ARRSEG_ACTIVATION": ACTIVATION_CODES[self.activation],
            "ARRSEG_BOUNDARY": BOUNDARY_CODES[self.boundary],
            "ARRSEG_HAS_C": int(self.has_c),
            "ARRSEG_DOUBLE": int(self.dtype == "float64"),
            "ARRSEG_TILE_H": TILE_H,
            "ARRSEG_TILE_W": TILE_W,
            "ARRSEG_SHARED_BUDGET": SHARED_BUDGET,
            "ARRSEG_MIN_BLOCKS": MIN_BLOCKS,
        }
        return tuple(f"-D{name}={value}" for name, value in values.items())

    @classmethod
    def of(cls, x_shape, K_shape, n_classes, dtype, activation, boundary, has_c):
        """The build a call needs; ValueError if the kernels do not support it."""
        ok, reason = supports(x_shape, K_shape, n_classes, dtype)
        if not ok:
            raise ValueError(f"the fused CUDA kernels cannot run this call: {reason}")
        if activation not in ACTIVATION_CODES:
            raise ValueError(f"activation must be one of {tuple(ACTIVATION_CODES)}, "
                             f"got {activation!r}")
        if boundary not in BOUNDARY_CODES:
            raise ValueError(f"boundary must be one of {tuple(BOUNDARY_CODES)}, "
                             f"got {boundary!r}")
        k, C, s, _ = (int(v) for v in K_shape)
        return cls(_dtype_name(dtype), s, C, k, int(n_classes), activation, boundary,
                   bool(has_c))
