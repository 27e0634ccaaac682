"""Synthetic texture mosaics: classes that differ by texture and orientation.

A harder companion of :func:`arrseg.data.make_shapes`. Every image is a
mosaic of irregular cells (a Voronoi tessellation of random seeds, its
boundaries bent by a smooth warp); each cell carries one class::

    class 0   background     flat colour c0
    class 1   horizontal     colour c1 + stripes along the rows
    class 2   vertical       colour c1 + the same stripes along the columns
    class 3   dots           colour c2 + a lattice of small Gaussian dots

Classes 1 and 2 have the same colour and the same distribution of values:
only the orientation of their stripes tells them apart, so a pixel
classifier must compare vertical with horizontal differences. Gaussian
noise and a smooth illumination ramp (one random direction per image,
added to every channel) make the colour alone unreliable across the image.
The textures are in image coordinates (continuous across cells of the same
class); their phase is random per image.
"""

from __future__ import annotations

import numpy as np

from .._arguments import check_float, check_int
from .._backend import float_dtype, resolve_namespace

__all__ = ["TEXTURE_CLASSES", "make_textures"]

#: Names of the classes of :func:`make_textures`, by label.
TEXTURE_CLASSES = ("background", "horizontal stripes", "vertical stripes", "dots")


def make_textures(n_images=4, size=64, n_classes=4, channels=3, *, period=6,
                  contrast=0.5, noise=0.2, illumination=0.5, cells_per_class=3,
                  seed=0, dtype=None, xp=None, device=None):
    """Texture mosaics (flat, horizontal and vertical stripes, dots) and their
    labels.

    Parameters
    ----------
    n_images : int, default 4
        N.
    size : int or (int, int), default 64
        H and W.
    n_classes : {2, 3, 4}, default 4
        The first ``n_classes`` of :data:`TEXTURE_CLASSES`: background,
        horizontal stripes, vertical stripes, dots.
    channels : int, default 3
        C.
    period : int, default 6
        Period of the stripes and spacing of the dots, in pixels (>= 3).
    contrast : float, default 0.5
        Amplitude of the stripes (a sine of this amplitude) and of the dots
        (zero-mean, peak about 2 * contrast above their colour).
    noise : float, default 0.2
        Standard deviation of the Gaussian noise added to every pixel.
    illumination : float, default 0.5
        Brightness range of the linear illumination ramp (from
        ``-illumination/2`` to ``+illumination/2`` along a random direction,
        the same in every channel); 0 for none.
    cells_per_class : int, default 3
        Voronoi cells per class in each image (so ``n_classes *
        cells_per_class`` cells); every class has at least one.
    seed : int, default 0
        Fixes the colours (shared by all N images), the layouts, phases,
        ramps and noise.
    dtype : float32 (default) or float64
    xp : namespace, optional
        Namespace of the results (default NumPy).
    device : optional

    Returns
    -------
    x : array, shape (N, C, H, W)
        Values roughly in [-1, 2].
    labels : int64 array, shape (N, H, W)
        Values in [0, n_classes); every class is present in every image.

    See Also
    --------
    make_shapes : disks and striped squares.
    scribbles : sparse labels (strokes) from these dense ones.

    Examples
    --------
    >>> from arrseg.data import make_textures
    >>> x, y = make_textures(n_images=2, size=(32, 48), seed=0)
    >>> x.shape, x.dtype, y.shape
    ((2, 3, 32, 48), dtype('float32'), (2, 32, 48))
    >>> sorted(set(y[0].ravel().tolist()))
    [0, 1, 2, 3]
    """
    n_images = check_int("n_images", n_images, 1)
    n_classes = check_int("n_classes", n_classes, 2)
    if n_classes > len(TEXTURE_CLASSES):
        raise ValueError(f"n_classes must be in [2, {len(TEXTURE_CLASSES)}], got "
                         f"{n_classes}")
    channels = check_int("channels", channels, 1)
    H, W = (size, size) if np.isscalar(size) else size
    H, W = check_int("size", H, 8), check_int("size", W, 8)
    period = check_int("period", period, 3)
    contrast = check_float("contrast", contrast)
    noise = check_float("noise", noise)
    illumination = check_float("illumination", illumination)
    cells_per_class = check_int("cells_per_class", cells_per_class, 1)

    rng = np.random.default_rng(seed)
    colours = _distinct_colours(rng, 3, channels)         # c0, c1, c2: (3, C)
    class_colour = colours[[0, 1, 1, 2][:n_classes]]      # (n_c, C)
    hh, ww = np.mgrid[0:H, 0:W].astype(np.float64)        # (H, W) each
    x = np.empty((n_images, channels, H, W))
    labels = np.empty((n_images, H, W), dtype=np.int64)
    for n in range(n_images):
        labels[n] = _mosaic(rng, H, W, n_classes, cells_per_class)
        textures = _textures(rng, hh, ww, period, contrast)   # (4, H, W)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        ramp = (np.cos(angle) * (hh / max(H - 1, 1) - 0.5)
                + np.sin(angle) * (ww / max(W - 1, 1) - 0.5))  # in [-0.71, 0.71]
        ramp *= illumination / max(np.ptp(ramp), 1e-12)
        lab = labels[n]
        x[n] = (class_colour[lab].transpose(2, 0, 1)          # (C, H, W)
                + np.take_along_axis(textures, lab[None], axis=0)  # (1, H, W)
                + ramp
                + noise * rng.standard_normal((channels, H, W)))
    xp = resolve_namespace(xp)
    dt = float_dtype(xp, dtype)
    return (xp.asarray(x, dtype=dt, device=device),
            xp.asarray(labels, device=device))


def _distinct_colours(rng, n, channels, tries=100):
    """n colours in [0.1, 0.9]^C, pairwise at least 0.25 sqrt(C) apart when
    a draw of ``tries`` achieves it (else the best draw)."""
    best, best_gap = None, -1.0
    for _ in range(tries):
        c = rng.uniform(0.1, 0.9, size=(n, channels))
        gap = min(np.linalg.norm(c[i] - c[j]) for i in range(n) for j in range(i))
        if gap > best_gap:
            best, best_gap = c, gap
        if gap >= 0.25 * np.sqrt(channels):
            break
    return best


def _mosaic(rng, H, W, n_classes, cells_per_class):
    """(H, W) labels: warped Voronoi cells, each class on >= 1 cell."""
    n_cells = n_classes * cells_per_class
    hh, ww = np.mgrid[0:H, 0:W].astype(np.float64)
    while True:
        seeds = rng.uniform((0, 0), (H, W), size=(n_cells, 2))   # (n_cells, 2)
        cls = rng.permutation(np.arange(n_cells) % n_classes)
        # a smooth warp of the coordinates bends the straight cell walls
        amp, lam = 0.04 * min(H, W), 0.12 * min(H, W) + 1.0
        ph = rng.uniform(0, 2 * np.pi, size=2)
        wh = hh + amp * np.sin(ww / lam + ph[0])
        wwp = ww + amp * np.sin(hh / lam + ph[1])
        d2 = ((wh[None] - seeds[:, 0, None, None]) ** 2
              + (wwp[None] - seeds[:, 1, None, None]) ** 2)  # (n_cells, H, W)
        labels = cls[np.argmin(d2, axis=0)]
        if np.unique(labels).size == n_classes:
            return labels


def _textures(rng, hh, ww, period, contrast):
    """(4, H, W): the zero-mean texture of each class, random phases."""
    # one phase for both stripe classes: they differ by orientation only
    phase = rng.uniform(0, 2 * np.pi)
    off = rng.uniform(0, period, size=2)
    k = 2.0 * np.pi / period
    flat = np.zeros_like(hh)
    horizontal = contrast * np.sin(k * hh + phase)   # varies down the columns
    vertical = contrast * np.sin(k * ww + phase)     # the same along the rows
    # dots on a square lattice of spacing `period`, sigma = period / 6
    dh = (hh + off[0]) % period - period / 2
    dw = (ww + off[1]) % period - period / 2
    bumps = np.exp(-(dh ** 2 + dw ** 2) / (2 * (period / 6) ** 2))
    dots = 2 * contrast * (bumps - bumps.mean())
    return np.stack([flat, horizontal, vertical, dots])
