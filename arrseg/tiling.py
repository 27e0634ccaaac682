"""Prediction of large images in bounded memory, tile by tile.

:func:`predict_proba_tiled` gives the same P as :func:`arrseg.predict_proba`
(within floating-point round-off) but evaluates the network on one tile of
(th, tw) pixels at a time. An output pixel depends on the input pixels
within p of it, the network's receptive halo (the convolutions are the only
layers that mix pixels: p is derived from the model and its options,
:func:`arrseg.numerics.residual.receptive_halo`)::

    p = s // 2 + sum_j m d_j (s_r // 2)      m = 1 ("residual"), 2 ("symmetric")

(s // 2 for the one-layer network; each residual layer reaches d_j (s_r //
2) further, a symmetric layer twice that as it convolves twice). So each
tile is evaluated on its *haloed* input, the tile grown by p on every side,
and the p-wide border of the result is discarded::

    haloed input     rows r0 - p .. r1 + p,  columns c0 - p .. c1 + p
    evaluated        the core's forward pass, boundary="zeros"
    kept             rows r0 .. r1, columns c0 .. c1 of the result

The halo holds the neighbouring tiles' pixels. Where it reaches past the
image edge it holds what the boundary condition puts there:

* ``"zeros"``: nothing is gathered past the edge; the zero padding of the
  forward pass around the haloed tile is the image's own boundary there,
  at every layer. (On the inner sides it changes the outputs within p of
  the haloed tile's edge only, each layer spreading the error by its own
  reach: the discarded halo.)
* ``"periodic"``: the halo wraps around the image (indices taken modulo H
  and W, computed on the device), and the haloed tile is then evaluated
  with ``boundary="zeros"``: the wrapped data already is the periodic
  boundary.

When to tile. Tiles exist to bound the *working memory* of a forward pass:
the intermediates it holds beside its input x and its output P
(:func:`working_bytes`). With ``tile_size=None`` an image is cut into tiles
only when that working memory would exceed ``memory_budget`` (default
:data:`DEFAULT_MEMORY_BUDGET`), and then into the largest tiles that fit
(:func:`plan_tiles`). The fused CUDA kernels and the blocked NumPy path
hold no intermediates that grow with the image, so on CuPy and NumPy an
image of any size is one forward pass; the array-API paths (PyTorch,
array_api_strict, the FFT) hold about (3 k + 2 n_c) numbers per pixel and
are tiled. An explicit ``tile_size`` always tiles at that size.

Checks. The arguments are checked once per call, on the whole image (one
host synchronisation); every tile then runs the unchecked core
(:func:`arrseg.core.forward`), so a call synchronises once however many
tiles it has.

Memory: the output P of shape (N, n_c, H, W) is allocated once and each
tile's probabilities are written into it. Namespaces whose arrays cannot be
written in place (JAX) assemble P from rows of tiles with ``concat``
instead: their peak is twice P plus one tile.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from array_api_compat import is_writeable_array

from . import core
from ._arguments import check_int
from ._backend import device
from ._validation import check_call, check_options, finish_calls, fit_options
from .numerics.residual import receptive_halo
from .overflow import diagnose, quiet_overflow, sum_probe

__all__ = ["DEFAULT_MEMORY_BUDGET", "DEFAULT_TILE_SIZE", "plan_tiles",
           "predict_proba_tiled", "tile_grid", "working_bytes"]

#: Tile side of :func:`tile_grid` when no size is given: 512 x 512 pixels.
DEFAULT_TILE_SIZE = 512

#: Working memory (bytes) one forward pass may hold beside its input and
#: output before ``tile_size=None`` cuts the image into tiles: 512 MiB.
DEFAULT_MEMORY_BUDGET = 512 * 2**20

#: Tiles planned from the budget are at least this many pixels on a side
#: (smaller ones would spend more on the halo than on the tile).
MIN_PLANNED_TILE = 64


def _tile_shape(tile_size):
    """(th, tw) from an int, a pair of ints or None; checks them."""
    if tile_size is None:
        return DEFAULT_TILE_SIZE, DEFAULT_TILE_SIZE
    if not isinstance(tile_size, (tuple, list)):
        tile_size = (tile_size, tile_size)
    if len(tile_size) != 2:
        raise ValueError(
            f"tile_size must be an int or a pair (height, width), got {tile_size!r}"
        )
    return tuple(check_int("tile_size", t, 1) for t in tile_size)


def tile_grid(H, W, tile_size=None):
    """The tiles that cover an H x W image, row by row.

    Parameters
    ----------
    H, W : int
        Image size.
    tile_size : int or (int, int), optional
        Tile height and width; default :data:`DEFAULT_TILE_SIZE`. The last
        row and column of tiles are smaller when the size does not divide
        H or W.

    Returns
    -------
    list of list of (r0, r1, c0, c1)
        One list per row of tiles; the tile covers rows ``r0:r1`` and
        columns ``c0:c1``.

    Examples
    --------
    >>> from arrseg.tiling import tile_grid
    >>> tile_grid(5, 7, 4)
    [[(0, 4, 0, 4), (0, 4, 4, 7)], [(4, 5, 0, 4), (4, 5, 4, 7)]]
    """
    th, tw = _tile_shape(tile_size)
    return [[(r0, min(r0 + th, H), c0, min(c0 + tw, W)) for c0 in range(0, W, tw)]
            for r0 in range(0, H, th)]


def _numbers_per_pixel(k, n_c, depth):
    """Intermediates per pixel of an array-API forward pass: the
    pre-activations, the features, the logits and P's temporaries (3 k +
    2 n_c); with residual layers, a layer's input, its padded and shifted
    copies, its pre-activations and output (6 k + 2 n_c)."""
    return (6 if depth else 3) * k + 2 * n_c


def working_bytes(path, N, C, H, W, k, n_c, s, itemsize, *, depth=0):
    """Bytes of intermediates one forward pass holds beside x and P.

    Parameters
    ----------
    path : {"fused", "blocked", "direct", "fft"}
        The implementation (:func:`arrseg.core.select_path`).
    N, C, H, W : int
        The images' shape.
    k, n_c, s : int
        Width, classes and kernel size of the model.
    itemsize : int
        Bytes per number of the compute dtype.
    depth : int, default 0
        The residual layers (their path holds whole-image arrays on NumPy
        too: :mod:`arrseg.cpu.residual`).

    Returns
    -------
    int
        0 for the fused kernels (they read x and write P, nothing else);
        the bounded per-thread workspaces for the blocked NumPy path of the
        one-layer network; for the array-API paths (and any path with
        residual layers) the padded input, the pre-activations, the
        features, the logits and P's temporaries, about
        ``N H W (3 k + 2 n_c) + N C (H + s)(W + s)`` numbers, ``6 k``
        instead of ``3 k`` with residual layers (the FFT's spectra are of
        the same order).

    Examples
    --------
    >>> from arrseg.tiling import working_bytes
    >>> working_bytes("fused", 1, 1, 8192, 8192, 16, 2, 5, 4)
    0
    >>> working_bytes("direct", 1, 1, 100, 100, 8, 2, 3, 8)
    2324872
    """
    if path == "fused":
        return 0
    if path == "blocked" and not depth:
        from .cpu import blocked
        from .cpu.threads import num_threads

        return num_threads() * blocked.workspace_bytes(C, H, W, k, n_c, s, itemsize,
                                                        train=False)
    per_pixel = _numbers_per_pixel(k, n_c, depth)
    return itemsize * (N * H * W * per_pixel + N * C * (H + s) * (W + s))


def plan_tiles(path, N, C, H, W, k, n_c, s, itemsize, memory_budget=None, *,
               depth=0, halo=None):
    """Tile shape (th, tw) for ``tile_size=None``: the whole image when its
    working memory fits ``memory_budget``, else the largest square tiles
    (sides a multiple of 16, at least :data:`MIN_PLANNED_TILE`) whose haloed
    working memory fits.

    ``depth`` is the number of residual layers and ``halo`` the network's
    receptive halo (default s // 2, the one-layer network's).

    Examples
    --------
    >>> from arrseg.tiling import plan_tiles
    >>> plan_tiles("fused", 1, 1, 8192, 8192, 16, 2, 5, 4)
    (8192, 8192)
    >>> plan_tiles("direct", 1, 3, 4096, 4096, 32, 4, 3, 4, memory_budget=2**26)
    (384, 384)
    """
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    if working_bytes(path, N, C, H, W, k, n_c, s, itemsize, depth=depth) <= budget:
        return H, W
    # the working memory of a t x t tile with its halo is about
    # itemsize N (t + 2p)^2 (3k + 2n_c + C): solve for t
    p = s // 2 if halo is None else halo
    per_pixel = itemsize * N * (_numbers_per_pixel(k, n_c, depth) + C)
    side = int(math.isqrt(max(budget // max(per_pixel, 1), 1))) - 2 * p
    side = max(MIN_PLANNED_TILE, side // 16 * 16)
    return min(side, H), min(side, W)


def _haloed_tile(x, r0, r1, c0, c1, p, boundary, xp):
    """x's pixels around one tile: (N, C, <= r1 - r0 + 2p, <= c1 - c0 + 2p).

    Returns the haloed input and the offsets of the tile within it.
    """
    H, W = x.shape[-2], x.shape[-1]
    if boundary == "periodic":
        # indices modulo the size, made on the device (no host transfer)
        dev = device(x)
        rows = xp.arange(r0 - p, r1 + p, device=dev) % H
        cols = xp.arange(c0 - p, c1 + p, device=dev) % W
        return xp.take(xp.take(x, rows, axis=2), cols, axis=3), p, p
    # zeros: clip the halo at the image edge, where the zero padding of the
    # forward pass is the image's own boundary
    lo_r, lo_c = max(r0 - p, 0), max(c0 - p, 0)
    return x[:, :, lo_r : min(r1 + p, H), lo_c : min(c1 + p, W)], r0 - lo_r, c0 - lo_c


def predict_proba_tiled(x, params, *, tile_size=None, activation="tanh",
                        boundary="zeros", method="auto", memory_budget=None,
                        dilation=1, step=1.0, layer="residual"):
    """:func:`arrseg.predict_proba` computed tile by tile, in bounded memory.

    The result equals ``predict_proba(x, params, ...)`` up to floating-point
    round-off, for either boundary condition and at any depth; see the
    module docstring for how the halo of p pixels around each tile (the
    network's receptive halo) is filled, and for when an image is tiled at
    all.

    Parameters
    ----------
    x : array, shape (N, C, H, W)
        Images, in any array API namespace.
    params : Params or ResidualParams
    tile_size : int or (int, int), optional
        Tile height and width in pixels, >= 1. Default: tiles only where
        the working memory of one pass would exceed ``memory_budget``
        (:func:`plan_tiles`; on CuPy and NumPy, never). Smaller tiles use
        less memory but recompute more halo: the overhead is about
        ``(1 + 2p / th)(1 + 2p / tw)``. Tiles smaller than the halo are
        allowed (and exact), if slow.
    activation : {"tanh", "relu", "sigmoid", "identity"}, default "tanh"
    boundary : {"zeros", "periodic"}, default "zeros"
    method : str, default "auto"
        A method of :func:`arrseg.predict_proba`, used for every tile
        (``"auto"`` chooses per tile, by the tile's size).
    memory_budget : int, optional
        Bytes of working memory per pass for ``tile_size=None``; default
        :data:`DEFAULT_MEMORY_BUDGET` (512 MiB).
    dilation : int, sequence of int, or "doubling", default 1
    step : float, default 1.0
    layer : {"residual", "symmetric"}, default "residual"
        The residual layers' options, as for :func:`arrseg.predict_proba`
        (unused at depth 0); the halo grows with the dilations.

    Returns
    -------
    P : array, shape (N, n_c, H, W)
        As :func:`arrseg.predict_proba`: x's namespace, device and float
        dtype (the parameters' dtype for integer images).

    Raises
    ------
    ValueError, TypeError
        As :func:`arrseg.predict_proba` for x and params (checked once, on
        the whole image, so messages give x's own shape); for a
        ``tile_size`` or ``memory_budget`` that is not a positive integer
        (or a pair of them).
    arrseg.NonFiniteError
        As :func:`arrseg.predict_proba`, when finite inputs overflow.

    Examples
    --------
    >>> import numpy as np, arrseg
    >>> from arrseg.tiling import predict_proba_tiled
    >>> params = arrseg.init_params(3, 8, 4, kernel_size=5, seed=0)
    >>> x = np.random.default_rng(0).random((1, 3, 100, 70), dtype=np.float32)
    >>> P = predict_proba_tiled(x, params, tile_size=32, boundary="periodic")
    >>> P.shape, P.dtype
    ((1, 4, 100, 70), dtype('float32'))
    >>> bool(np.allclose(P, arrseg.predict_proba(x, params, boundary="periodic"),
    ...                  atol=1e-6))
    True
    """
    options = check_options(activation, boundary, method, dilation, step, layer)
    tile_shape = None if tile_size is None else _tile_shape(tile_size)
    check_int("memory_budget", memory_budget, 1, allow_none=True)
    a = check_call(x, params, defer=True)
    options = fit_options(options, a.params.depth)
    with quiet_overflow():                                 # checked below
        P = proba_tiled(a.x, a.params, options, a.xp, tile_shape=tile_shape,
                        out_dtype=a.out_dtype, memory_budget=memory_budget)
        probe = sum_probe([P], a.xp)
    # the value checks and P's finiteness: the call's one read-back
    if not np.isfinite(finish_calls([a], probe, a.xp)).all():
        raise diagnose("predict_proba_tiled", a.x, a.params, options)
    return P


def proba_tiled(x, params, options, xp, *, tile_shape=None, out_dtype=None,
                memory_budget=None):
    """The tiled forward pass on checked arguments (no checks, no host sync).

    Parameters
    ----------
    x : array (N, C, H, W), the compute dtype
    params : Params or ResidualParams, in x's dtype
    options : arrseg.core.Options
        With one dilation per residual layer (:func:`arrseg._validation.fit_options`).
    xp : namespace
    tile_shape : (int, int), optional
        Checked tile shape; None plans the tiles from ``memory_budget``.
    out_dtype : dtype, optional
        dtype of P (default x's).
    memory_budget : int, optional

    Returns
    -------
    P : array (N, n_c, H, W)
    """
    N, C, H, W = (int(v) for v in x.shape)
    k, n_c, s = params.width, params.n_classes, params.kernel_size
    depth = params.depth
    out_dtype = x.dtype if out_dtype is None else out_dtype
    # the whole receptive field: s // 2 at depth 0
    p = receptive_halo(s, params.layer_kernel_size, options.dilation, options.layer)
    if tile_shape is None:
        layers = None if params.K_layers is None else tuple(params.K_layers.shape)
        path = core.select_path(options.method, xp, (N, C, H, W), tuple(params.K.shape),
                                n_c, x.dtype, "predict", layers)
        itemsize = 8 if x.dtype == xp.float64 else 4
        tile_shape = plan_tiles(path, N, C, H, W, k, n_c, s, itemsize, memory_budget,
                                depth=depth, halo=p)
    grid = tile_grid(H, W, tile_shape)
    if len(grid) == 1 and len(grid[0]) == 1:
        return core.forward(x, params, options, xp, out_dtype=out_dtype)

    inner = dataclasses.replace(options, boundary="zeros")

    def tile_proba(r0, r1, c0, c1):
        Y, dr, dc = _haloed_tile(x, r0, r1, c0, c1, p, options.boundary, xp)
        T = core.forward(Y, params, inner, xp, out_dtype=out_dtype)
        return T[:, :, dr : dr + r1 - r0, dc : dc + c1 - c0]

    P = xp.empty((N, n_c, H, W), dtype=out_dtype, device=device(x))
    if is_writeable_array(P):
        for row in grid:
            for r0, r1, c0, c1 in row:
                P[:, :, r0:r1, c0:c1] = tile_proba(r0, r1, c0, c1)
        return P
    del P
    return _assemble_by_concat(grid, tile_proba, xp)


def _assemble_by_concat(grid, tile_proba, xp):
    """P from rows of tiles, for namespaces whose arrays are immutable."""
    rows = [xp.concat([tile_proba(*t) for t in row], axis=3) for row in grid]
    return xp.concat(rows, axis=2)
