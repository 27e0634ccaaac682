"""Image and label files for training: read, checked against each other,
and their label values mapped (``--unlabelled``, ``--binary``).

Everything is checked here, per file, so that a message names the file;
the :class:`arrseg.Segmenter` then gets images (C, H, W) and int64 labels
(H, W) whose only remaining checks are its own.
"""

from __future__ import annotations

import numpy as np

from ..io import read_image, read_labels
from ._errors import CommandError

__all__ = ["read_pairs", "to_device"]


def _labels(path, image_shape, image_path, unlabelled, binary, n_classes, ignore):
    y = read_labels(path)
    if y.shape != image_shape[1:]:
        raise CommandError(f"{path}: the label image is {y.shape[0]} x {y.shape[1]} "
                           f"pixels but its image {image_path} is {image_shape[1]} "
                           f"x {image_shape[2]}")
    unl = np.zeros(y.shape, dtype=bool) if unlabelled is None else y == unlabelled
    if binary:
        y = (y != 0).astype(np.int64)
    labelled = y[~unl]
    negative = labelled[labelled < 0]
    if negative.size:
        raise CommandError(f"{path}: label values must be class indices >= 0, got "
                           f"{negative[:3].tolist()} (name the value of unlabelled "
                           "pixels with --unlabelled)")
    if n_classes is not None:
        high = labelled[labelled >= n_classes]
        if high.size:
            raise CommandError(f"{path}: label values must be below --classes "
                               f"{n_classes}, got {np.unique(high)[:3].tolist()}")
    y[unl] = ignore
    return y


def read_pairs(images, labels, *, unlabelled, binary, n_classes, ignore, what=""):
    """Read image files and their label files.

    Parameters
    ----------
    images, labels : list of str
        As many label files as images, in the same order.
    unlabelled : int or None
        The label value of unlabelled pixels; they become ``ignore``.
    binary : bool
        Map every other non-zero label to 1.
    n_classes : int or None
        Labels must be below it.
    ignore : int
        The Segmenter's ``ignore_index``.
    what : str
        "validation " for the messages of the validation files.

    Returns
    -------
    xs : list of ndarray (C, H, W)
    ys : list of int64 ndarray (H, W)
    """
    if len(images) != len(labels):
        raise CommandError(f"{len(images)} {what}image(s) but {len(labels)} {what}label "
                           "image(s): give one label image per image, in the same "
                           "order")
    xs, ys = [], []
    for image_path, label_path in zip(images, labels):
        x = read_image(image_path)
        if xs and x.shape[0] != xs[0].shape[0]:
            raise CommandError(f"{image_path}: has {x.shape[0]} channel(s) but "
                               f"{images[0]} has {xs[0].shape[0]}; all {what}images "
                               "must have the same channels")
        ys.append(_labels(label_path, x.shape, image_path, unlabelled, binary,
                          n_classes, ignore))
        xs.append(x)
    return xs, ys


def gpu_namespace():
    """CuPy, when it is installed and sees a GPU; else a CommandError."""
    try:
        import cupy
    except ImportError:
        raise CommandError('--device gpu needs CuPy, which is not installed '
                           '(pip install "arrseg[cupy-cuda12x]" or cupy-cuda13x, '
                           'matching the CUDA driver)') from None
    except Exception as e:      # a broken CUDA install fails at import
        raise CommandError(f"--device gpu: CuPy cannot be imported "
                           f"({type(e).__name__}: {' '.join(str(e).split())})") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise CommandError(f"--device gpu: CuPy sees no GPU ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200]})") from None
    if count < 1:
        raise CommandError("--device gpu: CuPy sees no GPU")
    return cupy


def to_device(arrays, device):
    """The arrays on ``device`` ("cpu": as they are; "gpu": CuPy arrays)."""
    if device == "cpu":
        return list(arrays)
    cupy = gpu_namespace()
    return [cupy.asarray(a) for a in arrays]
