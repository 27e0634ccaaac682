"""A fitted :class:`arrseg.Segmenter` on dask arrays: the lazy prediction.

``Segmenter.predict_proba`` and ``predict`` hand a dask array here::

    images (H, W), (C, H, W) or (N, C, H, W), any chunks
      -> (N, C, H, W), one chunk along C          checked once: fitted,
                                                   channels, dtype, options
      -> (images - mean_) / std_ per block         estimator.inputs.normalise
      -> the network chunk by chunk with its halo  arrseg.dask.prediction
      -> P (N, n_c, H, W) or labels (N, H, W), lazy, chunked like the images
         in N, H and W; returned in the images' form

The estimator's ``tile_size`` and ``memory_budget`` do not apply: the
chunks are the tiles.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from .._backend import device, image_float_dtype, is_dask_array
from ..estimator import inputs
from ..estimator.settings import check_predict_settings
from ..overflow import quiet_overflow
from .prediction import check_images, labels_of, proba_blocks

__all__ = ["predict", "predict_proba", "score"]


def predict_proba(est, images):
    """Per-pixel class probabilities of a dask array, lazily.

    Parameters
    ----------
    est : Segmenter
        Fitted.
    images : dask.array.Array
        One image (H, W) or (C, H, W), or a batch (N, C, H, W), with the
        training images' channels; NumPy or CuPy chunks.

    Returns
    -------
    dask.array.Array
        (n_c, H, W) for one image, (N, n_c, H, W) for a batch; chunked like
        the images in N, H and W, one chunk along the classes. Not computed.
    """
    P, form = _proba(est, images, "predict_proba")
    return P if form == "NCHW" else P[0]


def predict(est, images):
    """Per-pixel class labels of a dask array, lazily: int64 (H, W) for
    one image, (N, H, W) for a batch (see :func:`predict_proba`)."""
    P, form = _proba(est, images, "predict")
    labels = labels_of(P)
    return labels if form == "NCHW" else labels[0]


def score(est, images, labels):
    """Mean IoU of the predictions on the labelled pixels, from one dask
    reduction (the confusion counts; :meth:`arrseg.Segmenter.score`).

    Parameters
    ----------
    est : Segmenter
        Fitted.
    images : dask.array.Array
        As for :func:`predict_proba`.
    labels : dask or NumPy integer array
        (H, W) for one image, (N, H, W) for a batch; ``est.ignore_index``
        marks pixels that do not count.

    Returns
    -------
    float
        NaN when no pixel counts.

    Raises
    ------
    ValueError
        For labels of the wrong shape, or outside [0, n_classes) other than
        ``ignore_index`` (when computed).
    """
    import dask
    import dask.array as da

    from .._backend import to_numpy
    from ..estimator.training import mean_iou_of_confusion

    pred = predict(est, images)
    y = labels if is_dask_array(labels) else da.from_array(np.asarray(labels))
    if tuple(y.shape) != tuple(pred.shape):
        raise ValueError(f"labels must have shape {tuple(pred.shape)} (one class index "
                         f"per pixel of images {tuple(images.shape)}), got "
                         f"{tuple(y.shape)}")
    if y.dtype.kind not in "iub":
        raise TypeError(f"labels must be an integer array of class indices, got dtype "
                        f"{y.dtype}")
    n_c, ignore = int(est.n_classes_), int(est.ignore_index)
    y = y.astype(np.int64).rechunk(pred.chunks)
    y = y.map_blocks(to_numpy, dtype=np.int64)
    pred = pred.map_blocks(to_numpy, dtype=np.int64)
    # bins: n_c * true + predicted for counted pixels, n_c**2 for ignored
    # ones, n_c**2 + 1 for labels out of range
    valid = (y >= 0) & (y < n_c)
    index = da.where(valid, y * n_c + pred,
                     da.where(y == ignore, n_c * n_c, n_c * n_c + 1))
    counts = dask.compute(da.bincount(index.ravel(), minlength=n_c * n_c + 2))[0]
    if counts[n_c * n_c + 1]:
        raise ValueError(f"labels must be in [0, {n_c}) or ignore_index = {ignore}; "
                         f"{int(counts[n_c * n_c + 1])} pixel(s) are not")
    return mean_iou_of_confusion(counts[:n_c * n_c].reshape(n_c, n_c))


def _batch(images):
    """images as (N, C, H, W), and their form ("HW", "CHW" or "NCHW")."""
    if not is_dask_array(images):
        raise TypeError(f"images must be a dask array, got {type(images).__name__}")
    if images.ndim == 2:
        return images[None, None], "HW"
    if images.ndim == 3:
        return images[None], "CHW"
    if images.ndim == 4:
        return images, "NCHW"
    raise ValueError(f"images must be one image (H, W) or (C, H, W) or a batch "
                     f"(N, C, H, W); got shape {tuple(images.shape)}")


def _proba(est, images, what):
    """The lazy P (N, n_c, H, W) of the images, and their form."""
    est._check_fitted(what)
    settings = check_predict_settings(est, est.params_.depth)
    x, form = _batch(images)
    xp = check_images(x, "images")
    C = int(x.shape[1])
    if C != est.in_channels_:
        shape = tuple(images.shape)
        raise ValueError(f"images have {C} channel(s) (shape {shape}) but this "
                         f"Segmenter was fitted on images with {est.in_channels_}")
    params = est._params_for(est.params_, xp, device(x._meta))
    # float images keep their dtype (as in arrseg.predict_proba); integer
    # images take the parameters'
    dtype = image_float_dtype(xp, x.dtype, "images")
    if not xp.isdtype(x.dtype, "real floating"):
        dtype = params.K.dtype
    from dask.base import tokenize

    x = x.rechunk({1: -1})                 # every channel in each block
    token = tokenize(x.name, est.mean_, est.std_, str(dtype))
    normalised = x.map_blocks(_normalise, mean=est.mean_, std=est.std_, to=dtype,
                              dtype=np.dtype(dtype),
                              meta=xp.empty((0, 0, 0, 0), dtype=dtype),
                              name=f"arrseg-normalise-{token}")
    P = proba_blocks(normalised, params, settings.options, dtype,
                     what=f"Segmenter.{what} (on the normalised images)")
    return P, form


def _normalise(block, *, mean, std, to):
    """(block - mean) / std per channel of one block (n, C, h, w), in ``to``;
    a non-finite result is refused by the network's checks that follow."""
    xp = array_namespace(block)
    with quiet_overflow():
        return inputs.normalise(block, mean, std, to, xp)
