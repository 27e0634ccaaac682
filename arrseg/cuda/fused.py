"""Launchers of the fused CUDA kernels: forward (P) and loss-and-gradient.

Both functions take validated arguments (see :mod:`arrseg._validation`), as
:mod:`arrseg.numerics.forward_backward` does, and return the same values::

    fused_forward(x, params, activation, boundary)           -> P
    fused_loss_and_grad(x, labels, params, activation, boundary,
                        class_weight, ignore_index)           -> loss, (dK, db, dW, dc)

They queue kernels on the current CUDA stream and never wait for the device:
no value is read back to the host. The kernels come from ``kernels``, an
object with a method ``function(config, filename, name)`` returning a
callable ``kernel(grid, block, args, shared_mem=0)``: by default
:class:`arrseg.cuda.build.CupyKernels` (CuPy's ``RawKernel``; the arrays are
CuPy arrays), or :class:`arrseg.cuda.emulation.EmulatedKernels`, which runs
the same kernels on the CPU (the arrays are NumPy arrays), so that this very
code is tested without a GPU.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import numpy as np
from array_api_compat import is_cupy_array, is_numpy_array

from . import limits
from .limits import TILE_H, TILE_W, KernelConfig

__all__ = [
    "Geometry",
    "default_kernels",
    "fused_forward",
    "fused_loss_and_grad",
    "geometry",
    "reduction_grid",
    "sm_count",
]

#: SMs assumed where there is no device to ask (the CPU emulator): an H200's.
EMULATED_SM_COUNT = 132
#: Row lanes of arrseg_reduce_partials (RED_ROWS of fused_backward.cu): the
#: threads that share one output value.
REDUCE_ROW_LANES = 32
#: Most outputs per block of the reduction (RED_MAX_OB): 8 x 32 = 256 threads.
REDUCE_MAX_OUTPUTS_PER_BLOCK = 8

_default = None


def default_kernels():
    """The process's :class:`~arrseg.cuda.build.CupyKernels` (created once)."""
    global _default
    if _default is None:
        from .build import CupyKernels

        _default = CupyKernels()
    return _default


class Geometry(NamedTuple):
    """Launch sizes of one call (all plain ints)."""

    #: tiles per image row and column, tiles in the batch
    tiles_x: int
    tiles_y: int
    n_tiles: int
    #: blocks of the forward kernel
    forward_blocks: int
    #: blocks of the backward kernel = rows of the workspace
    backward_blocks: int
    #: blocks of the reduction kernel (at least the SM count)
    reduce_blocks: int
    #: threads per block of the reduction kernel (32 per output of a block)
    reduce_threads: int
    #: length of one workspace row (and of the reduced output)
    partial_length: int


def sm_count(x):
    """Streaming multiprocessors of the device x lives on.

    CuPy's ``MultiProcessorCount`` of the current device for a CuPy array;
    :data:`EMULATED_SM_COUNT` for a NumPy array (the CPU emulator).
    """
    if is_cupy_array(x):
        import cupy

        return int(cupy.cuda.Device().attributes["MultiProcessorCount"])
    return EMULATED_SM_COUNT


def reduction_grid(partial_length, sm_count):
    """(blocks, threads per block) of ``arrseg_reduce_partials``.

    A block has 32 threads per output (row lanes) and handles OB outputs at a
    time, OB the largest of 8, 4, 2, 1 that still gives at least one block
    per SM: ``ceil(partial_length / OB) >= sm_count``. Only when there are
    fewer outputs than SMs (a tiny model) is the grid padded to ``sm_count``
    blocks, the extra ones returning at once, so that ``blocks >= sm_count``
    always. The summation order does not depend on OB or on the grid.

    Examples
    --------
    >>> reduction_grid(1030, 132)  # the seed configuration on an H200
    (258, 128)
    >>> reduction_grid(6, 132)
    (132, 32)
    """
    if partial_length < 1 or sm_count < 1:
        raise ValueError(f"partial_length and sm_count must be >= 1, got "
                         f"{partial_length} and {sm_count}")
    per_block = REDUCE_MAX_OUTPUTS_PER_BLOCK
    while per_block > 1 and -(-partial_length // per_block) < sm_count:
        per_block //= 2
    blocks = max(-(-partial_length // per_block), sm_count)
    return blocks, REDUCE_ROW_LANES * per_block


def geometry(config, N, H, W, sm_count=EMULATED_SM_COUNT):
    """Grid sizes and workspace size for images of N x H x W pixels.

    One block per TILE_H x TILE_W tile in the forward kernel (the last tile
    row and column may stick out of the image); at most
    :data:`~arrseg.cuda.limits.MAX_PARTIAL_BLOCKS` blocks in the backward
    kernel, each looping over every G-th tile; the reduction's grid from
    :func:`reduction_grid` for a device of ``sm_count`` SMs.
    """
    tiles_y, tiles_x = limits.tiles(H, W)
    n_tiles = N * tiles_y * tiles_x
    length = config.partial_length
    reduce_blocks, reduce_threads = reduction_grid(length, sm_count)
    return Geometry(
        tiles_x=tiles_x,
        tiles_y=tiles_y,
        n_tiles=n_tiles,
        forward_blocks=min(n_tiles, limits.MAX_FORWARD_BLOCKS),
        backward_blocks=min(n_tiles, limits.MAX_PARTIAL_BLOCKS),
        reduce_blocks=reduce_blocks,
        reduce_threads=reduce_threads,
        partial_length=length,
    )


def _array_module(x):
    if is_cupy_array(x):
        import cupy

        return cupy
    if is_numpy_array(x):
        return np
    raise TypeError(
        f"the fused kernels take CuPy arrays (NumPy arrays on the CPU emulator), "
        f"got {type(x).__module__}.{type(x).__name__}"
    )


def _on_device_of(x):
    """Make x's device current (CuPy compiles and launches on the current
    device): a context manager."""
    return x.device if is_cupy_array(x) else contextlib.nullcontext()


def _contiguous(xp, a, dtype):
    return None if a is None else xp.ascontiguousarray(a, dtype=dtype)


def _prepare(x, params, activation, boundary, kernels):
    xp = _array_module(x)
    K, b, W, c = params[:4]
    config = KernelConfig.of(x.shape, K.shape, W.shape[1], x.dtype, activation,
                             boundary, c is not None)
    dtype = x.dtype
    arrays = tuple(_contiguous(xp, a, dtype) for a in (x, K, b, W, c))
    kernels = default_kernels() if kernels is None else kernels
    return xp, config, arrays, kernels


def fused_forward(x, params, activation, boundary, *, kernels=None):
    """P = softmax(W^T sigma(K(theta) x + b) + c) with one kernel launch.

    Parameters
    ----------
    x : array, shape (N, C, H, W), float32 or float64
    params : Params or tuple (K, b, W, c)
        In x's dtype (converted if not); c may be None.
    activation : {"tanh", "relu", "sigmoid", "identity"}
    boundary : {"zeros", "periodic"}
    kernels : object, optional
        Where the kernels come from (see the module docstring).

    Returns
    -------
    P : array, shape (N, n_c, H, W), x's dtype

    Raises
    ------
    ValueError
        If :func:`arrseg.cuda.limits.supports` rejects the shapes.
    """
    with _on_device_of(x):
        xp, config, (x, K, b, W, c), kernels = _prepare(x, params, activation, boundary,
                                                        kernels)
        N, _, H, W_ = x.shape
        g = geometry(config, N, H, W_)
        P = xp.empty((N, config.n_c, H, W_), dtype=x.dtype)
        kernel = kernels.function(config, "fused_forward.cu", "arrseg_fused_forward")
        kernel((g.forward_blocks, 1, 1), (TILE_W, TILE_H, 1),
               (x, K, b, W, c, P, np.int32(H), np.int32(W_), np.int32(g.tiles_x),
                np.int32(g.tiles_y), np.int32(g.n_tiles)),
               shared_mem=0)
    return P


def _int64_or_unmatched(ignore_index):
    # labels are validated to lie in [0, n_c) or equal ignore_index, so an
    # ignore_index beyond int64 never matches a label; -1 matches none either
    ignore_index = int(ignore_index)
    return np.int64(ignore_index if -(2**63) <= ignore_index < 2**63 else -1)


def fused_loss_and_grad(x, labels, params, activation, boundary, class_weight,
                        ignore_index, *, kernels=None, flat=False):
    """Weighted mean cross-entropy and its gradient: two kernel launches.

    The backward kernel writes one row of sums per block to a workspace of
    ``(G, L)`` values (:func:`geometry`); the reduction kernel sums the rows
    in a fixed order and divides by the denominator, so the result is the same
    bit for bit from run to run.

    Parameters
    ----------
    x : array, shape (N, C, H, W), float32 or float64
    labels : integer array, shape (N, H, W)
        Class indices or ``ignore_index`` (converted to int64).
    params : Params or tuple (K, b, W, c)
    activation : {"tanh", "relu", "sigmoid", "identity"}
    boundary : {"zeros", "periodic"}
    class_weight : array, shape (n_c,), or None
    ignore_index : int
    kernels : object, optional
        Where the kernels come from (see the module docstring).
    flat : bool, default False
        Return the gradient as the one flat vector [dK, db, dW, dc] of
        :mod:`arrseg.optim.flat` (a view of the reduced buffer) instead of
        the tuple of views.

    Returns
    -------
    loss : 0-d array
    grads : tuple (dK, db, dW, dc), or 1-D array with ``flat=True``
        dc is None when params.c is None. The arrays are views of one
        buffer of length L.
    """
    with _on_device_of(x):
        xp, config, (x, K, b, W, c), kernels = _prepare(x, params, activation, boundary,
                                                        kernels)
        N, _, H, W_ = x.shape
        g = geometry(config, N, H, W_, sm_count(x))
        labels = xp.ascontiguousarray(labels, dtype=xp.int64)
        class_weight = _contiguous(xp, class_weight, x.dtype)
        partials = xp.empty((g.backward_blocks, g.partial_length), dtype=x.dtype)
        out = xp.empty((g.partial_length,), dtype=x.dtype)

        backward = kernels.function(config, "fused_backward.cu", "arrseg_fused_backward")
        backward((g.backward_blocks, 1, 1), (TILE_W, TILE_H, 1),
                 (x, labels, K, b, W, c, class_weight, _int64_or_unmatched(ignore_index),
                  np.int32(H), np.int32(W_), np.int32(g.tiles_x), np.int32(g.tiles_y),
                  np.int32(g.n_tiles), partials),
                 shared_mem=0)
        reduce = kernels.function(config, "fused_backward.cu", "arrseg_reduce_partials")
        reduce((g.reduce_blocks, 1, 1), (g.reduce_threads, 1, 1),
               (partials, np.int32(g.backward_blocks), out),
               shared_mem=0)

    k, C, s, n_c = config.k, config.C, config.s, config.n_c
    # the layout of fused_backward.cu: [loss, denominator, dK, db, dW, dc]
    o_dk = 2
    o_db = o_dk + k * C * s * s
    o_dw = o_db + k
    o_dc = o_dw + k * n_c
    loss = xp.reshape(out[0:1], ())
    if flat:
        return loss, out[o_dk:o_dc + (n_c if config.has_c else 0)]
    dK = xp.reshape(out[o_dk:o_db], (k, C, s, s))
    db = out[o_db:o_dw]
    dW = xp.reshape(out[o_dw:o_dc], (k, n_c))
    dc = out[o_dc:o_dc + n_c] if config.has_c else None
    return loss, (dK, db, dW, dc)

