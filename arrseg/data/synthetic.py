"""Synthetic segmentation data: noisy images of disks and stripes.

The classes differ in colour *and* texture, so a pixel's class is not a
function of its own value alone and the convolution has to look at the
neighbourhood: class 0 is a smooth background, class 1 disks of a flat
colour, class 2 striped squares, class j >= 3 further disks of other colours.
"""

from __future__ import annotations

import numpy as np

from .._backend import float_dtype, resolve_namespace

__all__ = ["make_shapes"]


def make_shapes(n_images=4, size=64, n_classes=3, channels=3, *, noise=0.25,
                seed=0, dtype=None, xp=None, device=None):
    """Images of disks and striped squares on a background, and their labels.

    Parameters
    ----------
    n_images : int, default 4
        N.
    size : int or (int, int), default 64
        H and W.
    n_classes : int, default 3
        n_c >= 2: background, disks, striped squares, then disks of other
        colours.
    channels : int, default 3
        C.
    noise : float, default 0.25
        Standard deviation of the Gaussian noise added to every pixel.
    seed : int, default 0
    dtype : float32 (default) or float64
    xp : namespace, optional
        Namespace of the results (default NumPy).
    device : optional

    Returns
    -------
    x : array, shape (N, C, H, W)
        Values roughly in [-1, 2].
    labels : int64 array, shape (N, H, W)
        Values in [0, n_c).

    Examples
    --------
    >>> from arrseg.data import make_shapes
    >>> x, y = make_shapes(n_images=2, size=32, n_classes=3, seed=0)
    >>> x.shape, y.shape, sorted(set(y.ravel().tolist()))
    ((2, 3, 32, 32), (2, 32, 32), [0, 1, 2])
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    H, W = (size, size) if np.isscalar(size) else size
    if min(n_images, channels, H, W) < 1:
        raise ValueError(
            f"n_images, channels and size must be >= 1, got {n_images}, "
            f"{channels}, {size}"
        )
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.0, 1.0, size=(n_classes, channels))
    colours[2 % n_classes] = colours[0]  # stripes share the background colour:
    # only their texture tells them apart
    hh, ww = np.mgrid[0:H, 0:W]
    labels = np.zeros((n_images, H, W), dtype=np.int64)
    for n in range(n_images):
        # one or more objects of every foreground class, in random order
        order = [j for j in range(1, n_classes) for _ in range(2)]
        rng.shuffle(order)
        for j in order:
            r = rng.uniform(0.08, 0.2) * min(H, W)
            ch, cw = rng.uniform(0, H), rng.uniform(0, W)
            if j == 2:
                inside = (np.abs(hh - ch) < r) & (np.abs(ww - cw) < r)
            else:
                inside = (hh - ch) ** 2 + (ww - cw) ** 2 < r * r
            labels[n][inside] = j
    x = colours[labels].transpose(0, 3, 1, 2)  # (N, C, H, W)
    stripes = np.where((hh // 2) % 2 == 0, 0.8, -0.8)  # period 4 pixels
    x = x + (labels == 2)[:, None] * stripes
    x = x + noise * rng.standard_normal(x.shape)
    xp = resolve_namespace(xp)
    dt = float_dtype(xp, dtype)
    return (xp.asarray(np.ascontiguousarray(x), dtype=dt, device=device),
            xp.asarray(labels, device=device))
