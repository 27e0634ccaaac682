"""The edge-aware smoothness of the logits on a chunked problem.

:mod:`arrseg.optim.edge_smoothness` sums over the pairs of 4-neighbours of
each image. On haloed blocks (:mod:`arrseg.dask.halo`) every pair is
counted once, by the block whose chunk holds its first pixel::

    pairs        (i, i + down) and (i, i + right): i a pixel of the block's
                 chunk, the second pixel inside the image (no pair crosses
                 the image's border, periodic or not)
      -> the second pixel may lie in the block's halo (below, right): the
         blocks carry one pixel more halo than the network reads, so that
         the features there are those of the whole image
    weights      w_ij = exp(-||x_i - x_j||^2 / (2 sigma^2)), computed once
                 per block; 0 for the pairs the block does not own and for
                 pairs of two labelled pixels (the labelled mask is haloed
                 like the images)

so the blocks' Gram matrices Y L_w Y^T (k x k) add up to the images' M,
and the term's gradient in the network's parameters is the sum over the
blocks of the backward pass of (alpha / n) W^T L_w Y (the logits' gradient
at the block's own and halo pixels; no label counts there).
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from .._backend import to_numpy
from ..core import features
from ..core import loss_and_grad as core_loss_and_grad
from ..optim.edge_smoothness import EdgeSmoothness, scale_from_steps, squared_steps
from ..optim.flat import layout_of

__all__ = ["block_gradient", "contrast_scale", "owned_weights"]


def contrast_scale(x, beta=None):
    """sigma^2 of dask images x (N, C, H, W): what
    :func:`arrseg.optim.edge_smoothness.contrast_scale` gives on the
    computed array, as one float64 reduction (``dask.array`` slices across
    the chunks)."""
    import dask

    dv = x[:, :, 1:, :] - x[:, :, :-1, :]
    dh = x[:, :, :, 1:] - x[:, :, :, :-1]
    sv = (dv * dv).sum(axis=1).astype(np.float64).sum()
    sh = (dh * dh).sum(axis=1).astype(np.float64).sum()
    total = float(sum(dask.compute(sv, sh)))
    N, _, H, W = (int(d) for d in x.shape)
    return scale_from_steps(total, N * (H - 1) * W + N * H * (W - 1), beta)


def owned_weights(x_block, labelled, sides, origin, shape_hw, sigma2):
    """The weights of the pairs one haloed block owns.

    Parameters
    ----------
    x_block : array (n, C, h', w')
        The haloed block of the normalised images.
    labelled : bool array (n, h', w')
        Its labelled pixels, halo included.
    sides : ((top, bottom), (left, right))
        The block's halo around its chunk (:func:`arrseg.dask.halo.sides`).
    origin : (int, int)
        The image row and column of the block's pixel (0, 0) (negative in a
        periodic halo).
    shape_hw : (int, int)
        The image's H and W.
    sigma2 : float

    Returns
    -------
    wv : array (n, 1, h' - 1, w')
        The vertical pairs (row a, row a + 1).
    wh : array (n, 1, h', w' - 1)
        The horizontal pairs.
    """
    xp = array_namespace(x_block)
    (t, b), (l, r) = sides
    hh, ww = int(x_block.shape[2]), int(x_block.shape[3])
    H, W = shape_hw
    rows, cols = np.arange(hh), np.arange(ww)
    own_r = (rows >= t) & (rows < hh - b)
    own_c = (cols >= l) & (cols < ww - r)
    # first pixel in the chunk, second inside the image (not wrapped)
    keep_v = own_r[:-1] & (origin[0] + rows[1:] < H)
    keep_h = own_c[:-1] & (origin[1] + cols[1:] < W)
    mask_v = keep_v[:, None] & own_c[None, :]                    # (h'-1, w')
    mask_h = own_r[:, None] & keep_h[None, :]                    # (h', w'-1)
    sv, sh = squared_steps(x_block, xp)
    dtype = x_block.dtype
    free = xp.astype(~labelled, dtype)[:, None, :, :]
    # a pair counts when one of its pixels is unlabelled
    any_v = xp.minimum(free[:, :, 1:, :] + free[:, :, :-1, :], xp.ones_like(sv))
    any_h = xp.minimum(free[:, :, :, 1:] + free[:, :, :, :-1], xp.ones_like(sh))
    wv = xp.exp(sv * (-0.5 / sigma2)) * any_v * xp.asarray(mask_v, dtype=dtype)
    wh = xp.exp(sh * (-0.5 / sigma2)) * any_h * xp.asarray(mask_h, dtype=dtype)
    return wv, wh


def _features(x_block, p, options, xp):
    """The features Y (n, k, h', w') of a block."""
    layers = None if p.K_layers is None else (p.K_layers, p.b_layers)
    Y = features(x_block, p.K, p.b, options, xp, layers)          # (n, k, h' w')
    n, _, hh, ww = x_block.shape
    return xp.reshape(Y, (n, Y.shape[1], hh, ww))


def block_gradient(x_block, weights, p, options, coefficient, ignore_index):
    """The term's gradient in the parameters from one block's owned pairs:
    float64 (L,), flat (:mod:`arrseg.optim.flat`; W and c included).

    The logits' gradient (alpha / n) W^T L_w Y, at the block's own and halo
    pixels, through the network's backward pass with no label counting.
    """
    xp = array_namespace(x_block)
    size = layout_of(p).size
    if weights is None or 0 in tuple(x_block.shape):
        return np.zeros(size)
    edges = EdgeSmoothness.from_weights(*weights, alpha=coefficient, n_pixels=1)
    LY = edges.laplacian(_features(x_block, p, options, xp))       # (n, k, h', w')
    n, k, hh, ww = LY.shape
    dS = xp.matmul(xp.matrix_transpose(p.W), xp.reshape(LY, (n, k, hh * ww)))
    extra = xp.reshape(dS, (n, dS.shape[1], hh, ww)) * coefficient
    unlabelled = xp.full((n, hh, ww), ignore_index, dtype=xp.int64)
    _, grad = core_loss_and_grad(x_block, unlabelled, p, options, None, ignore_index,
                                 xp, flat=True, extra_dS=extra)
    return to_numpy(grad).astype(np.float64)
