"""The classes of a fit: their number, read off the labels, and their weights.

Run once per ``fit`` on the host labels (int64 (N, H, W) maps, one per image
group). Besides the range checks, this is where labels that would build a
model nobody meant are refused, before anything is allocated:

- a largest label far above the others (uint8 labels with 255 for
  "unlabelled" and the default ``ignore_index``, a stray 2**31 - 1): most
  of the classes it implies would have no pixel;
- a class count whose probabilities would not fit in this machine's memory;
- class weights that give no labelled pixel any weight (the loss would be
  0 and the fit would train on the regulariser alone).
"""

from __future__ import annotations

import numpy as np

from .._arguments import check_bytes

__all__ = ["MAX_EMPTY_CLASSES", "class_counts", "infer_n_classes", "resolve_class_weight"]

#: A fit without ``n_classes`` refuses labels whose largest value implies
#: more than this many classes without a pixel (and more than there are
#: classes with pixels).
MAX_EMPTY_CLASSES = 16

_WHERE = "Segmenter: "


def _labelled_values(host_labels, ignore):
    values = np.unique(np.concatenate([np.unique(m) for m in host_labels]))
    return values[values != ignore]


def infer_n_classes(host_labels, settings, largest_image_pixels):
    """The number of classes of a fit: ``n_classes``, or the largest label + 1.

    Parameters
    ----------
    host_labels : list of int64 ndarrays (N, H, W)
    settings : FitSettings
    largest_image_pixels : int
        H * W of the largest training image: its probabilities bound the
        class count that fits in memory.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        For labels outside [0, n_classes) other than ``ignore_index``; no
        labelled pixel; a single class; a largest label that implies mostly
        empty classes (the message says which ``ignore_index`` or
        ``n_classes`` to pass); more classes than fit in memory.
    """
    s = settings
    ignore = s.ignore_index
    values = _labelled_values(host_labels, ignore)
    bad = values[values < 0]
    if s.n_classes is not None:
        bad = values[(values < 0) | (values >= s.n_classes)]
    if bad.size:
        upper = "" if s.n_classes is None else f", {s.n_classes})"
        raise ValueError(
            "labels must be class indices "
            + (f"in [0{upper}" if upper else ">= 0")
            + f" or ignore_index = {ignore}; got {bad.size} other value(s), e.g. "
            f"{bad[:5].tolist()}")
    if values.size == 0:
        raise ValueError(f"labels has no labelled pixel: every label is "
                         f"ignore_index = {ignore}")
    if s.n_classes is not None:
        n = s.n_classes
    else:
        top = int(values.max())
        n = top + 1
        if n < 2:
            raise ValueError("labels hold only class 0: a segmenter needs at least "
                             "2 classes (label some pixels of another class, or set "
                             "n_classes)")
        empty = n - values.size
        if empty > max(MAX_EMPTY_CLASSES, values.size):
            others = values[values != top]
            below = int(others.max()) if others.size else -1
            raise ValueError(
                f"labels hold {values.size} distinct values, the largest {top}, "
                f"which would make {n} classes of which {empty} have no pixel "
                f"(none between {below} and {top}). If {top} marks unlabelled "
                f"pixels, pass ignore_index={top}; if the model is meant to have "
                f"{n} classes, pass n_classes={n}")
    # P, the logits and their gradient for one image, in float64 at most
    check_bytes(f"the probabilities of one {largest_image_pixels}-pixel training "
                f"image with n_classes = {n}", 3 * 8 * n * largest_image_pixels,
                "is the largest label a stray value or an 'unlabelled' marker "
                "(then pass it as ignore_index)?", where=_WHERE)
    return n


def class_counts(host_labels, n_classes, ignore):
    """Labelled pixels per class, float64 (n_classes,)."""
    counts = np.zeros(n_classes)
    for m in host_labels:
        v = m[(m >= 0) & (m < n_classes) & (m != ignore)]
        counts += np.bincount(v, minlength=n_classes)
    return counts


def resolve_class_weight(host_labels, n_classes, settings, *, counts=None):
    """The fit's class weights: None, "balanced" as scikit-learn, or the
    checked sequence; float64 (n_classes,) or None.

    ``counts``, the labelled pixels per class, replaces ``host_labels``
    where they were counted elsewhere (dask arrays, :mod:`arrseg.dask.training`).

    Raises
    ------
    ValueError
        For a sequence of the wrong length, or weights that are zero on
        every class that has labelled pixels.
    """
    s = settings
    cw = s.class_weight
    if cw is None:
        return None
    if counts is None:
        counts = class_counts(host_labels, n_classes, s.ignore_index)
    if isinstance(cw, str):  # "balanced"
        total = counts.sum()
        return np.where(counts > 0, total / (n_classes * np.maximum(counts, 1)), 0.0)
    if cw.shape != (n_classes,):
        raise ValueError(f"{_WHERE}class_weight must have one weight per class, "
                         f"shape ({n_classes},), got shape {cw.shape}")
    present = np.flatnonzero(counts > 0)
    if not np.any(cw[present] > 0):
        raise ValueError(
            f"{_WHERE}class_weight gives weight 0 to every class with labelled "
            f"pixels (classes {present.tolist()}, weights {cw.tolist()}): the loss "
            "would be 0 and fit would train on the regulariser alone; give some "
            "labelled class a positive weight")
    return cw
