"""Sparse labels drawn as strokes: what a user scribbles on an image.

:func:`scribbles` keeps a given fraction of each class's pixels labelled,
as a few brush strokes (random walks with a smooth heading, a few pixels
wide) inside the class's regions, away from their borders, and sets every
other pixel to ``ignore_index``. Strokes rather than random single pixels:
neighbouring labelled pixels carry less information than scattered ones,
and this is how interactive tools (ilastik, napari, scikit-image's
``TrainableSegmenter`` examples) are labelled.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from .._arguments import check_float, check_int
from .._backend import device, to_numpy
from .._validation import check_ignore_index

__all__ = ["scribbles"]


def scribbles(labels, fraction=0.02, *, seed=0, width=3, margin=2,
              ignore_index=-100):
    """Keep about ``fraction`` of each class's pixels, as strokes.

    Parameters
    ----------
    labels : integer array, shape (H, W) or (N, H, W)
        Dense labels (pixels already equal to ``ignore_index`` stay
        unlabelled). Any array API namespace.
    fraction : float, default 0.02
        In (0, 1]: the fraction of each class's pixels, in each image, that
        keep their label (at least one pixel per class present).
    seed : int, default 0
    width : int, default 3
        Width of the strokes in pixels (the brush is a disk of this
        diameter).
    margin : int, default 2
        The brush's centre stays at least ``margin + width // 2`` pixels
        inside its class region (where the region is wide enough; narrower
        regions are scribbled anywhere inside). Labelled pixels are always
        pixels of their class.
    ignore_index : int, default -100
        The label of the pixels left out.

    Returns
    -------
    array
        ``labels``'s shape, dtype, namespace and device: the true label on
        the strokes, ``ignore_index`` elsewhere.

    Notes
    -----
    Each stroke starts at a random pixel inside the region and walks one
    pixel per step, its heading turning by a Gaussian angle (0.25 rad) per
    step; it turns back at the region's edge and ends after about
    ``0.3 sqrt(region area)`` steps, so that a class gets several strokes.
    Strokes are drawn until the region's budget ``round(fraction * area)``
    is reached exactly (the last stroke is cut).
    When strokes cannot reach the budget (a ``fraction`` near 1, or regions
    too thin for the brush), the rest are random pixels of the class.

    Examples
    --------
    >>> import numpy as np
    >>> from arrseg.data import make_textures, scribbles
    >>> _, y = make_textures(n_images=1, size=64, seed=0)
    >>> s = scribbles(y, fraction=0.05, seed=0)
    >>> s.shape, s.dtype
    ((1, 64, 64), dtype('int64'))
    >>> round(float(np.mean(s != -100)), 2)
    0.05
    >>> bool(np.all((s == y) | (s == -100)))
    True
    """
    xp = array_namespace(labels)
    dev = device(labels)
    fraction = check_float("fraction", fraction, low=0.0, low_open=True, high=1.0,
                           high_open=False)
    width = check_int("width", width, 1)
    margin = check_int("margin", margin, 0)
    ignore_index = check_ignore_index(ignore_index)
    host = to_numpy(labels)
    if host.ndim not in (2, 3) or not np.issubdtype(host.dtype, np.integer):
        raise ValueError(f"labels must be an integer array of shape (H, W) or "
                         f"(N, H, W), got dtype {host.dtype} and shape {host.shape}")
    rng = np.random.default_rng(seed)
    maps = host.reshape((-1,) + host.shape[-2:])             # (N, H, W)
    out = np.full(maps.shape, ignore_index, dtype=host.dtype)
    for n in range(maps.shape[0]):
        for c in np.unique(maps[n]):
            if c == ignore_index:
                continue
            region = maps[n] == c
            budget = max(1, round(fraction * int(region.sum())))
            chosen = _strokes(region, budget, width, margin, rng)
            out[n][chosen] = c
    return xp.asarray(out.reshape(host.shape), device=dev)


def _erode(mask, r):
    """``mask`` eroded by a (2r+1) x (2r+1) square (outside counts as False)."""
    for axis in (0, 1):
        padded = np.pad(mask, [(r, r) if a == axis else (0, 0) for a in (0, 1)])
        n = mask.shape[axis]
        out = np.ones_like(mask)
        for d in range(2 * r + 1):
            out &= padded[d:d + n] if axis == 0 else padded[:, d:d + n]
        mask = out
    return mask


def _strokes(region, budget, width, margin, rng):
    """Boolean (H, W): exactly ``budget`` pixels of ``region``, as strokes."""
    H, W = region.shape
    r = width // 2
    inner = _erode(region, r + margin)
    if not inner.any():
        inner = region
    starts = np.flatnonzero(inner)
    # the brush: offsets of a disk of diameter `width`
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (oy ** 2 + ox ** 2) <= r * r + (width % 2 == 0) * r
    oy, ox = oy[disk], ox[disk]
    chosen = np.zeros_like(region)
    count = 0
    length = max(8, int(0.3 * np.sqrt(region.sum())))
    steps_left = 20 * budget + 1000          # a bound: thin regions end early
    while count < budget and steps_left > 0:
        p = np.array(divmod(int(rng.choice(starts)), W), dtype=np.float64)
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(length):
            steps_left -= 1
            py, px = oy + int(round(p[0])), ox + int(round(p[1]))
            ok = (py >= 0) & (py < H) & (px >= 0) & (px < W)
            py, px = py[ok], px[ok]
            new = region[py, px] & ~chosen[py, px]
            py, px = py[new], px[new]
            take = min(py.size, budget - count)
            chosen[py[:take], px[:take]] = True
            count += take
            if count >= budget:
                break
            heading += rng.normal(0.0, 0.25)
            q = p + (np.sin(heading), np.cos(heading))
            qi = np.round(q).astype(int)
            if not (0 <= qi[0] < H and 0 <= qi[1] < W and inner[qi[0], qi[1]]):
                heading += np.pi                 # turn back at the edge
                q = p + (np.sin(heading), np.cos(heading))
                qi = np.round(q).astype(int)
                if not (0 <= qi[0] < H and 0 <= qi[1] < W and inner[qi[0], qi[1]]):
                    break
            p = q
    if count < budget:                       # the strokes could not cover it
        rest = np.flatnonzero(region & ~chosen)
        pick = rng.choice(rest, size=budget - count, replace=False)
        chosen.flat[pick] = True
    return chosen
