"""The network on a dask array, chunk by chunk: :func:`predict_proba`, :func:`predict`.

Each chunk of x (N, C, H, W) is evaluated on its haloed block and trimmed
back to its own pixels (:mod:`arrseg.dask.halo`)::

    x (N, C, H, W), any chunks        checked once, at graph build
      -> one chunk along C              x.rechunk({1: -1})
      -> chunks >= p in H and W         halo.plan (merges smaller ones)
      -> haloed blocks                  halo.extend (dask's overlap, boundary
                                        "none" for zeros, "periodic")
      -> per block: arrseg.predict_proba(boundary=halo.boundary), then
         halo.trim to the chunk's own pixels      (one task per chunk)
      -> P (N, n_c, H, W), chunked like x in N, H and W (one chunk along
         classes): rechunked back where plan merged chunks

``map_blocks`` over the overlapped array, not ``map_overlap``: the output has
classes where the input has channels, and ``map_overlap``'s trimming with a
changed axis has open bugs in Dask (issues 11124, 11961).

Checks. The options, the parameters (shapes, dtypes, namespace, finite
values) and x's shape, dtype and chunk type are checked once, when the graph
is built; nothing is computed then. The values of x are checked per chunk,
when it is computed, by :func:`arrseg.predict_proba` on the haloed block: a
NaN raises ValueError naming the chunk.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from array_api_compat import array_namespace

from .._backend import device, is_dask_array, to_numpy
from .._validation import _as_params, check_call, check_options, fit_options
from ..network import predict_proba as _network_proba
from ..numerics.residual import receptive_halo
from . import halo as _halo

__all__ = ["predict", "predict_proba"]


def predict_proba(x, params, *, activation="tanh", boundary="zeros", method="auto",
                  dilation=1, step=1.0, layer="residual"):
    """Per-pixel class probabilities of a dask array of images, lazily.

    The same P as :func:`arrseg.predict_proba` on the computed array, up to
    floating-point round-off, for either boundary and at any depth: each
    chunk is evaluated with the network's receptive halo p around it
    (:func:`arrseg.numerics.residual.receptive_halo`), taken from its
    neighbours, and trimmed (see the module docstring).

    Parameters
    ----------
    x : dask.array.Array, shape (N, C, H, W)
        Images, in any chunks; NumPy or CuPy chunks (the result's chunks are
        of the same type). float32 and float64 are kept; integer and bool
        images are converted to the parameters' dtype as they are.
    params : Params
        In the namespace of x's chunks.
    activation, boundary, method, dilation, step, layer
        As for :func:`arrseg.predict_proba`; ``method`` is chosen per chunk.

    Returns
    -------
    P : dask.array.Array, shape (N, n_c, H, W)
        Not computed. Chunked like x in N, H and W, one chunk along the
        classes; dtype as :func:`arrseg.predict_proba`'s.

    Raises
    ------
    TypeError, ValueError
        At once, naming the argument: x not a dask array, not 4-d, empty,
        of unknown chunk sizes or with the wrong channel count; bad
        parameters or options.
    ValueError, arrseg.NonFiniteError
        When computed, for a chunk of x with NaN or inf values (the message
        gives the chunk's pixels), or an overflow.

    Examples
    --------
    >>> import numpy as np, dask.array as da, arrseg, arrseg.dask
    >>> params = arrseg.init_params(3, 8, 4, kernel_size=5, seed=0)
    >>> x = np.random.default_rng(0).random((2, 3, 64, 48), dtype=np.float32)
    >>> P = arrseg.dask.predict_proba(da.from_array(x, chunks=(1, 3, 32, 16)),
    ...                               params)
    >>> P.shape, P.chunks[2:]
    ((2, 4, 64, 48), ((32, 32), (16, 16, 16)))
    >>> bool(np.allclose(P.compute(), arrseg.predict_proba(x, params), atol=1e-6))
    True
    """
    options = check_options(activation, boundary, method, dilation, step, layer)
    xp = check_images(x, "x")
    p = _as_params(params)
    C = int(x.shape[1])
    if getattr(p.K, "ndim", None) == 4 and int(p.K.shape[1]) != C:
        raise ValueError(f"x has {C} channels (shape {tuple(x.shape)}) but params.K "
                         f"expects C = {int(p.K.shape[1])} (shape {tuple(p.K.shape)})")
    # params' shapes, dtypes, namespace and values, and x's dtype, on a 1 x 1
    # stand-in for x with its channels, dtype and chunk type
    stand_in = xp.zeros((1, C, 1, 1), dtype=x.dtype, device=device(x._meta))
    a = check_call(stand_in, p)
    options = fit_options(options, p.depth)
    return proba_blocks(x, p, options, a.out_dtype, what="arrseg.dask.predict_proba")


def predict(x, params, *, activation="tanh", boundary="zeros", method="auto",
            dilation=1, step=1.0, layer="residual"):
    """Per-pixel class labels of a dask array of images, lazily.

    Parameters
    ----------
    x : dask.array.Array, shape (N, C, H, W)
    params : Params
    activation, boundary, method, dilation, step, layer
        As for :func:`predict_proba`.

    Returns
    -------
    labels : dask.array.Array of int64, shape (N, H, W)
        The most probable class at each pixel; chunked like x in N, H, W.

    Examples
    --------
    >>> import numpy as np, dask.array as da, arrseg, arrseg.dask
    >>> params = arrseg.init_params(1, 4, 3, seed=0)
    >>> x = da.random.default_rng(0).random((1, 1, 20, 20), chunks=(1, 1, 10, 10))
    >>> arrseg.dask.predict(x, params).compute().shape
    (1, 20, 20)
    """
    return labels_of(predict_proba(x, params, activation=activation, boundary=boundary,
                                   method=method, dilation=dilation, step=step,
                                   layer=layer))


# -- the checked machinery, shared with the Segmenter (arrseg.dask.estimator) --


def check_images(x, name):
    """x's array type, rank, sizes and chunk namespace; returns that namespace.

    Raises TypeError or ValueError naming ``name``.
    """
    if not is_dask_array(x):
        raise TypeError(f"{name} must be a dask array, got {type(x).__name__} (for "
                        "arrays in memory use arrseg.predict_proba)")
    if x.ndim != 4:
        hint = " (for one image, pass x[None])" if x.ndim == 3 else ""
        raise ValueError(f"{name} must have shape (N, C, H, W), got ndim {x.ndim} "
                         f"(shape {tuple(x.shape)}){hint}")
    if any(math.isnan(n) for n in x.shape):
        raise ValueError(f"{name} has unknown chunk sizes (shape {tuple(x.shape)}): "
                         f"call {name}.compute_chunk_sizes() first")
    if min(x.shape) < 1:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    try:
        return array_namespace(x._meta)
    except TypeError:
        raise TypeError(f"{name}'s chunks must be arrays of an array API namespace "
                        f"(NumPy, CuPy), got {type(x._meta).__name__}") from None


def proba_blocks(x, params, options, out_dtype, *, what):
    """The lazy P of checked arguments (no checks here; each block checks
    its own values when computed).

    Parameters
    ----------
    x : dask.array.Array (N, C, H, W)
        Checked (:func:`check_images`), of the channels params expect.
    params : Params
        Checked, in the namespace of x's chunks.
    options : arrseg.core.Options
        With one dilation per residual layer (``fit_options``).
    out_dtype : dtype
        P's dtype (``check_call(...).out_dtype``).
    what : str
        Who asks, for the messages of failed chunks.

    Returns
    -------
    P : dask.array.Array (N, n_c, H, W), chunked like x in N, H and W
    """
    import dask.array as da
    from dask.base import tokenize

    N, C, H, W = (int(n) for n in x.shape)
    n_c = int(params.W.shape[1])
    p = receptive_halo(params.kernel_size, params.layer_kernel_size, options.dilation,
                       options.layer)
    x = x.rechunk({1: -1})                                 # all channels per block
    halo = _halo.plan(x.chunks[2:], (H, W), p, options.boundary)
    haloed = _halo.extend(x, halo)
    xp = array_namespace(x._meta)
    out_chunks = (x.chunks[0], (n_c,)) + tuple(halo.chunks)
    block = functools.partial(_block_proba, params=params, options=options, halo=halo,
                              n_chunks=x.chunks[0], out_dtype=out_dtype, what=what)
    token = tokenize(haloed.name, [None if a is None else to_numpy(a) for a in params],
                     options, halo, str(out_dtype), what)
    P = da.map_blocks(block, haloed, chunks=out_chunks, dtype=np.dtype(out_dtype),
                      meta=xp.empty((0, 0, 0, 0), dtype=out_dtype),
                      name=f"arrseg-predict-proba-{token}")
    if tuple(halo.chunks) != tuple(x.chunks[2:]):          # plan merged chunks
        P = P.rechunk((x.chunks[0], (n_c,)) + tuple(x.chunks[2:]))
    return P


def labels_of(P):
    """The most probable class of a lazy P (N, n_c, H, W): int64 (N, H, W)."""
    xp = array_namespace(P._meta)
    return P.map_blocks(_argmax, drop_axis=1, dtype=np.int64,
                        meta=xp.empty((0, 0, 0), dtype=xp.int64))


def _argmax(P):
    xp = array_namespace(P)
    return xp.astype(xp.argmax(P, axis=1), xp.int64)


def _block_proba(block, *, params, options, halo, n_chunks, out_dtype, what,
                 block_id=None):
    """P of one chunk: the network on its haloed ``block`` (n, C, h', w'),
    trimmed to the chunk's (n, n_c, h, w)."""
    _, _, i, j = block_id
    sides = _halo.sides(halo, i, j)
    n = int(block.shape[0])
    h, w = halo.chunks[0][i], halo.chunks[1][j]
    if n == 0 or h == 0 or w == 0:                 # an empty chunk (kernel size 1)
        xp = array_namespace(block)
        return xp.empty((n, int(params.W.shape[1]), h, w), dtype=out_dtype)
    try:
        P = _network_proba(block, params, activation=options.activation,
                           boundary=halo.boundary, method=options.method,
                           dilation=options.dilation, step=options.step,
                           layer=options.layer)
    except ValueError as e:
        n0 = sum(n_chunks[:block_id[0]])
        r0, c0 = sum(halo.chunks[0][:i]), sum(halo.chunks[1][:j])
        raise ValueError(f"{what}: {e}, in the chunk of images {n0}:{n0 + n}, rows "
                         f"{r0}:{r0 + h}, columns {c0}:{c0 + w} (or its halo of "
                         f"{halo.width} pixels)") from None
    return _halo.trim(P, sides)
