"""Prediction of large images tile by tile, in bounded memory.

:func:`predict_proba_tiled` gives the same P as :func:`arrseg.predict_proba`
(within floating-point round-off) but evaluates the network on one tile of
(th, tw) pixels at a time. An output pixel depends on the input pixels
within p = s // 2 of it (the convolution is the only layer that mixes
pixels), so each tile is evaluated on its *haloed* input, the tile grown by
p on every side, and the p-wide border of the result is discarded::

    haloed input     rows r0 - p .. r1 + p,  columns c0 - p .. c1 + p
    evaluated        predict_proba(haloed input, boundary="zeros")
    kept             rows r0 .. r1, columns c0 .. c1 of the result

The halo holds the neighbouring tiles' pixels. Where it reaches past the
image edge it holds what the boundary condition puts there:

* ``"zeros"``: nothing is gathered past the edge; the zero padding that
  ``predict_proba(..., boundary="zeros")`` adds around the haloed tile is
  the image's own boundary there. (On the inner sides it only changes the
  discarded halo outputs.)
* ``"periodic"``: the halo wraps around the image (indices taken modulo H
  and W), and the haloed tile is then evaluated with ``boundary="zeros"``:
  the wrapped data already is the periodic boundary.

Memory: the output P of shape (N, n_c, H, W) is allocated once and each
tile's probabilities are written into it. Beyond P (and x, converted to the
compute dtype if it is not already in it), the working memory is that of
one ``predict_proba`` call on N images of (th + 2p) x (tw + 2p) pixels, a
small multiple of N (th + 2p)(tw + 2p)(C + k + n_c) numbers, whatever the
image size. It grows with N: for many images, call this on batches.
Namespaces whose arrays cannot be written in place (JAX) assemble P from
rows of tiles with ``concat`` instead: their peak is twice P plus one tile.

Every tile is one ``predict_proba`` call: the namespace's method choice
(``method=``) applies per tile, and each call checks its tile's values (one
host synchronisation per tile).
"""

from __future__ import annotations

from array_api_compat import is_writeable_array

from ._backend import device
from ._validation import check_call
from .network import _check_options, predict_proba
from .params import _positive_int

__all__ = ["DEFAULT_TILE_SIZE", "predict_proba_tiled", "tile_grid"]

#: Tile side used by ``tile_size=None``: 512 x 512 pixels. Images of at most
#: this size in both directions are predicted in one call.
DEFAULT_TILE_SIZE = 512


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
    return tuple(_positive_int("tile_size", t) for t in tile_size)


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


def _haloed_tile(x, r0, r1, c0, c1, p, boundary, xp):
    """x's pixels around one tile: (N, C, <= r1 - r0 + 2p, <= c1 - c0 + 2p).

    Returns the haloed input and the offsets of the tile within it.
    """
    H, W = x.shape[-2], x.shape[-1]
    if boundary == "periodic":
        dev = device(x)
        rows = xp.asarray([i % H for i in range(r0 - p, r1 + p)], device=dev)
        cols = xp.asarray([j % W for j in range(c0 - p, c1 + p)], device=dev)
        return xp.take(xp.take(x, rows, axis=2), cols, axis=3), p, p
    # zeros: clip the halo at the image edge, where the zero padding of
    # predict_proba(boundary="zeros") is the image's own boundary
    lo_r, lo_c = max(r0 - p, 0), max(c0 - p, 0)
    return x[:, :, lo_r : min(r1 + p, H), lo_c : min(c1 + p, W)], r0 - lo_r, c0 - lo_c


def predict_proba_tiled(x, params, *, tile_size=None, activation="tanh",
                        boundary="zeros", method="auto"):
    """:func:`arrseg.predict_proba` computed tile by tile, in bounded memory.

    The result equals ``predict_proba(x, params, ...)`` up to floating-point
    round-off, for either boundary condition; see the module docstring for
    how the halo of p = s // 2 pixels around each tile is filled, and for
    the memory bound.

    Parameters
    ----------
    x : array, shape (N, C, H, W)
        Images, in any array API namespace.
    params : Params
    tile_size : int or (int, int), optional
        Tile height and width in pixels, >= 1; default
        :data:`DEFAULT_TILE_SIZE` (512). When one tile covers the image, this
        is one ``predict_proba`` call. Smaller tiles use less memory but
        recompute more halo: the overhead is about ``(1 + 2p / th)(1 + 2p / tw)``.
    activation : {"tanh", "relu", "sigmoid", "identity"}, default "tanh"
    boundary : {"zeros", "periodic"}, default "zeros"
    method : str, default "auto"
        A method of :func:`arrseg.predict_proba`, passed to it for every
        tile (``"auto"`` chooses per tile, by the tile's size).

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
        ``tile_size`` that is not a positive integer or a pair of them.

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
    _check_options(activation, boundary, method)
    _tile_shape(tile_size)  # checks tile_size before any work
    a = check_call(x, params)
    xp, x = a.xp, a.x
    N, _, H, W = x.shape
    grid = tile_grid(H, W, tile_size)
    options = {"activation": activation, "method": method}
    if len(grid) == 1 and len(grid[0]) == 1:
        P = predict_proba(x, a.params, boundary=boundary, **options)
        return P if P.dtype == a.out_dtype else xp.astype(P, a.out_dtype)

    p = a.params.kernel_size // 2

    def tile_proba(r0, r1, c0, c1):
        Y, dr, dc = _haloed_tile(x, r0, r1, c0, c1, p, boundary, xp)
        T = predict_proba(Y, a.params, boundary="zeros", **options)
        T = T[:, :, dr : dr + r1 - r0, dc : dc + c1 - c0]
        return T if T.dtype == a.out_dtype else xp.astype(T, a.out_dtype)

    n_c = a.params.n_classes
    P = xp.empty((N, n_c, H, W), dtype=a.out_dtype, device=device(x))
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
