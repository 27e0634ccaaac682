"""Results as pictures and maps: class colours, overlays, uncertainty.

NumPy only (no optional library): the writers of :mod:`arrseg.io.writers`
turn these arrays into files.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PALETTE", "class_colours", "display_rgb", "entropy", "label_image",
           "overlay"]

#: Colours of the first classes (RGB, uint8): Okabe and Ito's colour-blind
#: safe palette, black left out; further classes get golden-angle hues.
PALETTE = np.array([
    [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66],
    [0, 114, 178], [213, 94, 0], [204, 121, 167], [153, 153, 153],
], dtype=np.uint8)


def class_colours(n_classes):
    """(n_classes, 3) uint8 RGB colours, distinct for the first eight.

    Examples
    --------
    >>> class_colours(3).tolist()
    [[230, 159, 0], [86, 180, 233], [0, 158, 115]]
    """
    if n_classes <= len(PALETTE):
        return PALETTE[:n_classes].copy()
    j = np.arange(len(PALETTE), n_classes)
    hue = (j * 0.381966) % 1.0                       # golden-angle hues
    # hue -> RGB at full saturation, value 0.85
    k = (np.array([5.0, 3.0, 1.0])[None, :] + hue[:, None] * 6) % 6
    rgb = 0.85 * (1 - np.clip(np.minimum(k, 4 - k), 0, 1))
    extra = np.round(255 * rgb).astype(np.uint8)
    return np.concatenate([PALETTE, extra])


def display_rgb(image):
    """A (C, H, W) image as uint8 RGB (H, W, 3), for looking at.

    Grey (C = 1) is repeated; C = 2 shows its channels as red and green;
    C >= 3 shows the first three. Each channel is stretched from its 1st to
    its 99th percentile.
    """
    x = np.asarray(image, dtype=np.float64)
    C = x.shape[0]
    x = np.repeat(x, 3, axis=0) if C == 1 else x[:3]
    if x.shape[0] == 2:
        x = np.concatenate([x, np.zeros_like(x[:1])])
    out = np.empty(x.shape[1:] + (3,), dtype=np.uint8)
    for c in range(3):
        ch = x[c]
        finite = ch[np.isfinite(ch)]
        lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        v = np.nan_to_num((ch - lo) * scale, nan=0.0, posinf=255.0, neginf=0.0)
        out[..., c] = np.clip(np.round(v), 0, 255).astype(np.uint8)
    return out


def label_image(labels, n_classes):
    """Class indices (H, W) as uint8 (n_classes <= 256) or uint16."""
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    return np.asarray(labels).astype(dtype)


def overlay(image, labels, n_classes, alpha=0.45):
    """The image (as :func:`display_rgb`) with each pixel tinted by its
    class's colour, uint8 RGB (H, W, 3).

    Parameters
    ----------
    image : array, (C, H, W)
    labels : int array, (H, W)
    n_classes : int
    alpha : float, default 0.45
        Weight of the class colour.
    """
    rgb = display_rgb(image).astype(np.float64)
    colours = class_colours(n_classes).astype(np.float64)[np.asarray(labels)]
    return np.round((1 - alpha) * rgb + alpha * colours).astype(np.uint8)


def entropy(P):
    """Per-pixel entropy of the class probabilities, ``-sum_j P_j log P_j``.

    Parameters
    ----------
    P : array, (n_c, H, W)

    Returns
    -------
    ndarray, float32, (H, W)
        In nats, from 0 (certain) to log(n_c) (all classes equally likely);
        accumulated in float64.

    Examples
    --------
    >>> import numpy as np
    >>> P = np.array([[[1.0, 0.5]], [[0.0, 0.5]]])
    >>> [round(float(v), 4) for v in entropy(P)[0]]
    [0.0, 0.6931]
    """
    P = np.asarray(P, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(P > 0, -P * np.log(P), 0.0)
    return terms.sum(axis=0).astype(np.float32)
