"""Segmentation metrics from label maps, on any array API namespace.

Every metric is read off one confusion matrix ``M`` of shape
(n_c, n_c), ``M[i, j]`` = the number of pixels of true class i predicted as
class j (rows = truth, scikit-learn's convention). With
``TP_j = M[j, j]``, ``FP_j = sum_i M[i, j] - TP_j`` and
``FN_j = sum_i M[j, i] - TP_j``::

    pixel accuracy  = sum_j TP_j / sum_ij M_ij
    IoU_j           = TP_j / (TP_j + FP_j + FN_j)      (Jaccard index)
    Dice_j          = 2 TP_j / (2 TP_j + FP_j + FN_j)  (F1 score)
    mean IoU        = mean of IoU_j over the classes present

Pixels whose true label is ``ignore_index`` (default -100, PyTorch's) do not
count, so sparsely labelled images (scribbles) are scored on their labelled
pixels only. Predictions are labels, not probabilities: for P of shape
(N, n_c, H, W) pass ``argmax(P, axis=1)``.

The confusion matrix is one counting pass: the pair (true, predicted) of each
counted pixel is encoded as ``n_c * true + predicted`` and the codes are
counted by ``bincount`` (NumPy, CuPy, PyTorch) or, in the array-API
reference used by every other namespace, by sorting them and locating the
n_c^2 + 1 bin edges with ``searchsorted``. The reference is the
specification; the ``bincount`` fast paths are tested against it.

Results stay in the labels' namespace and on their device: counts are int64,
scores float64. The argument checks (labels in range) are reduced on the
device and brought to the host in one transfer per call.
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import is_cupy_namespace, is_numpy_namespace, is_torch_namespace

from ._backend import device, namespace_of, to_numpy
from ._validation import check_ignore_index
from ._arguments import check_bytes, check_int

__all__ = ["confusion_matrix", "dice", "iou", "mean_iou", "pixel_accuracy"]

#: PyTorch's default ignore label, as in :func:`arrseg.loss_and_grad`.
DEFAULT_IGNORE_INDEX = -100


# --- argument checks ---------------------------------------------------------

def _check_labels(y_true, y_pred, ignore_index):
    """Namespace, matching shapes and integer dtypes; labels as int64."""
    xp = namespace_of(y_true=y_true, y_pred=y_pred)
    # dtypes first: probabilities P (N, n_c, H, W) also have the wrong shape,
    # and the dtype's message says what to pass instead
    for name, a in (("y_true", y_true), ("y_pred", y_pred)):
        if not xp.isdtype(a.dtype, ("integral", "bool")):
            hint = (" (for probabilities P of shape (N, n_c, H, W), pass "
                    "argmax(P, axis=1))" if name == "y_pred" else "")
            raise TypeError(
                f"{name} must be an integer (or bool) array of class labels, got "
                f"dtype {a.dtype}{hint}"
            )
    if tuple(y_true.shape) != tuple(y_pred.shape):
        raise ValueError(
            f"y_pred must have the shape of y_true, {tuple(y_true.shape)}, got "
            f"shape {tuple(y_pred.shape)}"
        )
    ignore_index = check_ignore_index(ignore_index)
    # one signed type, so that comparisons with ignore_index = -100 are
    # defined for uint8 and bool labels too
    y_true, y_pred = (a if a.dtype == xp.int64 else xp.astype(a, xp.int64)
                      for a in (y_true, y_pred))
    return xp, xp.reshape(y_true, (-1,)), xp.reshape(y_pred, (-1,)), ignore_index


def _check_range(y_true, y_pred, counted, n_classes, ignore_index, xp):
    """Labels in [0, n_classes): one reduction, one host transfer."""
    true_ok = xp.all(((y_true >= 0) & (y_true < n_classes)) | ~counted)
    pred_ok = xp.all(((y_pred >= 0) & (y_pred < n_classes)) | ~counted)
    ok = to_numpy(xp.astype(xp.stack([true_ok, pred_ok]), xp.int8)).astype(bool)
    if ok.all():
        return
    t, p, m = to_numpy(y_true), to_numpy(y_pred), to_numpy(counted)
    if not ok[0]:
        bad = t[m & ((t < 0) | (t >= n_classes))]
        what = f"y_true must hold class labels in [0, {n_classes}) or ignore_index = {ignore_index}"
    else:
        bad = p[m & ((p < 0) | (p >= n_classes))]
        what = (f"y_pred must hold class labels in [0, {n_classes}) wherever y_true "
                f"is not ignore_index = {ignore_index}")
    raise ValueError(
        f"{what}; got {bad.size} other value(s), e.g. {sorted(set(bad.tolist()))[:5]}"
    )


# --- counting ------------------------------------------------------------------

def _bincount_reference(codes, length, xp):
    """Counts of the values 0..length-1 in the int64 vector ``codes``.

    Array API only: sort, then the number of codes below each bin edge is
    ``searchsorted(sorted, edge, side="left")``; a bin's count is the
    difference of its two edges. O(M log M) time, one sorted copy of memory.
    """
    edges = xp.arange(length + 1, dtype=codes.dtype, device=device(codes))
    below = xp.searchsorted(xp.sort(codes), edges, side="left")
    return xp.astype(below[1:] - below[:-1], xp.int64)


def _bincount(codes, length, xp):
    """Fast path of :func:`_bincount_reference` where the library has one."""
    if is_numpy_namespace(xp):
        return xp.asarray(np.bincount(codes, minlength=length)[:length].astype(np.int64))
    if is_torch_namespace(xp):
        return codes.bincount(minlength=length)[:length]
    if is_cupy_namespace(xp):
        import cupy

        return cupy.bincount(codes, minlength=length)[:length].astype(cupy.int64)
    return _bincount_reference(codes, length, xp)


def _confusion(y_true, y_pred, n_classes, ignore_index):
    """Check the arguments; return (xp, confusion matrix)."""
    n_classes = check_int("n_classes", n_classes, 1)
    xp, t, p, ignore_index = _check_labels(y_true, y_pred, ignore_index)
    # the counts (n_classes**2) and their codes (one per pixel), int64
    check_bytes(f"the confusion matrix of n_classes = {n_classes} classes",
                8 * (n_classes * n_classes + math.prod(int(n) for n in t.shape)))
    _check_range(t, p, t != ignore_index, n_classes, ignore_index, xp)
    return xp, confusion_counts(t, p, n_classes, ignore_index, xp)


def confusion_counts(t, p, n_classes, ignore_index, xp):
    """The confusion matrix of checked flat int64 labels, on their device.

    No checks and no host transfer: for callers that checked the labels
    once (the Segmenter's validation scores, every iteration).

    Returns
    -------
    int64 array (n_classes, n_classes)
        ``M[i, j]``: pixels of true class i predicted as j.
    """
    counted = t != ignore_index
    # pixels that do not count go to the extra code n_c^2, dropped by the count
    codes = xp.where(counted, n_classes * t + p, n_classes * n_classes)
    counts = _bincount(codes, n_classes * n_classes, xp)
    return xp.reshape(counts, (n_classes, n_classes))


def _ratio(num, den, xp):
    """num / den as float64, NaN where den == 0 (without a 0/0 warning)."""
    num = xp.astype(num, xp.float64)
    den = xp.astype(den, xp.float64)
    empty = den == 0
    return xp.where(empty, xp.full((), xp.nan, dtype=xp.float64, device=device(den)),
                    num / xp.where(empty, xp.ones_like(den), den))


def _tp_fp_fn(M, xp):
    n = M.shape[0]
    tp = xp.reshape(M, (-1,))[:: n + 1]          # the diagonal
    return tp, xp.sum(M, axis=0) - tp, xp.sum(M, axis=1) - tp


# --- public metrics ------------------------------------------------------------

def confusion_matrix(y_true, y_pred, n_classes, *, ignore_index=DEFAULT_IGNORE_INDEX):
    """Counts of (true class, predicted class) pairs over the counted pixels.

    Parameters
    ----------
    y_true : integer array, any shape, e.g. (N, H, W) or (H, W)
        True labels in [0, n_classes), or ``ignore_index`` for pixels that do
        not count. Bool arrays are read as 0/1.
    y_pred : integer array, the shape of ``y_true``
        Predicted labels in [0, n_classes) (their values where ``y_true`` is
        ``ignore_index`` are not looked at). Same namespace and device as
        ``y_true``.
    n_classes : int
        n_c >= 1.
    ignore_index : int, default -100
        True label of pixels that do not count (PyTorch's default).

    Returns
    -------
    M : int64 array, shape (n_classes, n_classes)
        ``M[i, j]`` is the number of counted pixels of true class i predicted
        as class j (rows = truth, as :func:`sklearn.metrics.confusion_matrix`).
        In the labels' namespace and on their device.

    Raises
    ------
    ValueError
        If the shapes differ, a true label is neither in [0, n_classes) nor
        ``ignore_index``, or a counted prediction is outside [0, n_classes).
    TypeError
        If a label array is not integer or bool (for example probabilities),
        or the two come from different namespaces.

    Examples
    --------
    >>> import numpy as np
    >>> from arrseg.metrics import confusion_matrix
    >>> y_true = np.array([[0, 0, 1], [1, 2, -100]])
    >>> y_pred = np.array([[0, 1, 1], [1, 2, 0]])
    >>> confusion_matrix(y_true, y_pred, 3)
    array([[1, 1, 0],
           [0, 2, 0],
           [0, 0, 1]])
    """
    return _confusion(y_true, y_pred, n_classes, ignore_index)[1]


def pixel_accuracy(y_true, y_pred, *, ignore_index=DEFAULT_IGNORE_INDEX):
    """Fraction of counted pixels whose predicted label is the true one.

    Parameters
    ----------
    y_true, y_pred : integer arrays of the same shape
        See :func:`confusion_matrix`. No class count is needed, so labels
        are not range-checked: any value of ``y_pred`` that differs from
        ``y_true`` is an error of prediction.
    ignore_index : int, default -100

    Returns
    -------
    0-d float64 array
        In the labels' namespace and on their device; NaN when no pixel
        counts.

    Examples
    --------
    >>> import numpy as np
    >>> from arrseg.metrics import pixel_accuracy
    >>> y_true = np.array([[0, 0, 1], [1, 2, -100]])
    >>> y_pred = np.array([[0, 1, 1], [1, 2, 0]])
    >>> float(pixel_accuracy(y_true, y_pred))
    0.8
    """
    xp, t, p, ignore_index = _check_labels(y_true, y_pred, ignore_index)
    counted = t != ignore_index
    right = xp.sum(xp.astype((t == p) & counted, xp.int64))
    return _ratio(right, xp.sum(xp.astype(counted, xp.int64)), xp)


def iou(y_true, y_pred, n_classes, *, ignore_index=DEFAULT_IGNORE_INDEX):
    """Intersection over union (Jaccard index) of each class.

    ``IoU_j = TP_j / (TP_j + FP_j + FN_j)``: the pixels that are class j in
    both maps over those that are class j in either.

    Parameters
    ----------
    y_true, y_pred, n_classes, ignore_index
        See :func:`confusion_matrix`.

    Returns
    -------
    float64 array, shape (n_classes,)
        In the labels' namespace and on their device. A class absent from
        both maps (over the counted pixels) has no union: its IoU is NaN,
        which :func:`mean_iou` leaves out.

    Examples
    --------
    >>> import numpy as np
    >>> from arrseg.metrics import iou
    >>> y_true = np.array([[0, 0, 1], [1, 1, -100]])
    >>> y_pred = np.array([[0, 1, 1], [1, 1, 0]])
    >>> iou(y_true, y_pred, 3)
    array([0.5 , 0.75,  nan])
    """
    xp, M = _confusion(y_true, y_pred, n_classes, ignore_index)
    tp, fp, fn = _tp_fp_fn(M, xp)
    return _ratio(tp, tp + fp + fn, xp)


def dice(y_true, y_pred, n_classes, *, ignore_index=DEFAULT_IGNORE_INDEX):
    """Dice coefficient (F1 score) of each class.

    ``Dice_j = 2 TP_j / (2 TP_j + FP_j + FN_j) = 2 IoU_j / (1 + IoU_j)``.

    Parameters
    ----------
    y_true, y_pred, n_classes, ignore_index
        See :func:`confusion_matrix`.

    Returns
    -------
    float64 array, shape (n_classes,)
        In the labels' namespace and on their device; NaN for a class absent
        from both maps.

    Examples
    --------
    >>> import numpy as np
    >>> from arrseg.metrics import dice
    >>> y_true = np.array([[0, 0, 1], [1, 1, -100]])
    >>> y_pred = np.array([[0, 1, 1], [1, 1, 0]])
    >>> dice(y_true, y_pred, 3)
    array([0.66666667, 0.85714286,        nan])
    """
    xp, M = _confusion(y_true, y_pred, n_classes, ignore_index)
    tp, fp, fn = _tp_fp_fn(M, xp)
    return _ratio(2 * tp, 2 * tp + fp + fn, xp)


def mean_iou(y_true, y_pred, n_classes, *, ignore_index=DEFAULT_IGNORE_INDEX):
    """Mean of the per-class IoU over the classes present in either map.

    Classes absent from both ``y_true`` and ``y_pred`` (IoU NaN in
    :func:`iou`) are left out of the mean rather than counted as 0 or 1.

    Parameters
    ----------
    y_true, y_pred, n_classes, ignore_index
        See :func:`confusion_matrix`.

    Returns
    -------
    0-d float64 array
        In the labels' namespace and on their device; NaN when no pixel
        counts.

    Examples
    --------
    >>> import numpy as np
    >>> from arrseg.metrics import mean_iou
    >>> y_true = np.array([[0, 0, 1], [1, 1, -100]])
    >>> y_pred = np.array([[0, 1, 1], [1, 1, 0]])
    >>> float(mean_iou(y_true, y_pred, 3))   # (0.5 + 0.75) / 2; class 2 absent
    0.625
    """
    xp, M = _confusion(y_true, y_pred, n_classes, ignore_index)
    tp, fp, fn = _tp_fp_fn(M, xp)
    union = tp + fp + fn
    scores = _ratio(tp, union, xp)
    present = union > 0
    total = xp.sum(xp.where(present, scores, xp.zeros_like(scores)))
    return _ratio(total, xp.sum(xp.astype(present, xp.int64)), xp)
