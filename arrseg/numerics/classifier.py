"""The per-pixel classifier: logits, stable softmax and weighted cross-entropy.

Shapes: features Y1 (N, k, H*W), W (k, n_c), c (n_c,), logits S and
probabilities P (N, n_c, H*W), labels (N, H*W). The class axis is axis 1
throughout, as in PyTorch's ``cross_entropy``.
"""

from __future__ import annotations

from array_api_compat import device

__all__ = [
    "logits",
    "log_softmax",
    "softmax",
    "cross_entropy_and_grad",
    "classifier_backward",
]


def logits(Y1, W, c, xp):
    """S = W^T Y1 + c, per pixel: (k, n_c), (N, k, P) -> (N, n_c, P)."""
    S = xp.matmul(xp.matrix_transpose(W), Y1)
    if c is not None:
        S = S + c[:, None]
    return S


def log_softmax(S, xp):
    """log P over axis 1, shifted by the maximum: finite for any finite S."""
    T = S - xp.max(S, axis=1, keepdims=True)
    return T - xp.log(xp.sum(xp.exp(T), axis=1, keepdims=True))


def softmax(S, xp):
    """P = softmax(S) over axis 1; every entry in [0, 1], summing to 1."""
    E = xp.exp(S - xp.max(S, axis=1, keepdims=True))
    return E / xp.sum(E, axis=1, keepdims=True)


def cross_entropy_and_grad(S, labels, class_weight, ignore_index, xp):
    """Weighted mean cross-entropy over labelled pixels and its gradient in S.

    ``loss = sum_x w[y(x)] * (-log P_{y(x)}(x)) / sum_x w[y(x)]`` over the
    pixels x whose label is not ``ignore_index``; ``w = 1`` without class
    weights. This is PyTorch's ``cross_entropy(..., weight, ignore_index,
    reduction="mean")``. When the denominator is zero (no labelled pixel, or
    only classes of weight zero), the loss and its gradient are defined as 0
    where PyTorch returns NaN.

    Parameters
    ----------
    S : array, shape (N, n_c, P)
        Logits.
    labels : integer array, shape (N, P)
        Values in [0, n_c) or ``ignore_index``.
    class_weight : array, shape (n_c,), or None
    ignore_index : int
    xp : namespace

    Returns
    -------
    loss : 0-d array
    dS : array, shape (N, n_c, P)
        Gradient of the loss in S.
    """
    n_c = S.shape[1]
    logP = log_softmax(S, xp)
    classes = xp.arange(n_c, dtype=labels.dtype, device=device(S))
    # one-hot of the labels, zero on ignored pixels: (N, n_c, P)
    onehot = labels[:, None, :] == classes[None, :, None]
    if 0 <= ignore_index < n_c:
        onehot = onehot & (labels != ignore_index)[:, None, :]
    onehot = xp.astype(onehot, S.dtype)
    if class_weight is None:
        w_pix = xp.sum(onehot, axis=1)  # (N, P): 1 on labelled pixels
    else:
        w_pix = xp.sum(onehot * class_weight[:, None], axis=1)
    total = xp.sum(w_pix)
    safe_total = xp.where(total > 0, total, xp.ones_like(total))
    nll = -xp.sum(onehot * logP, axis=1)  # (N, P)
    loss = xp.sum(w_pix * nll) / safe_total
    dS = (xp.exp(logP) - onehot) * (w_pix / safe_total)[:, None, :]
    return loss, dS


def classifier_backward(Y1, W, dS, xp):
    """Gradients through S = W^T Y1 + c.

    Parameters
    ----------
    Y1 : array, shape (N, k, P)
    W : array, shape (k, n_c)
    dS : array, shape (N, n_c, P)

    Returns
    -------
    dW : array, shape (k, n_c)
    dc : array, shape (n_c,)
    dY1 : array, shape (N, k, P)
    """
    dW = xp.sum(xp.matmul(Y1, xp.matrix_transpose(dS)), axis=0)
    dc = xp.sum(dS, axis=(0, 2))
    dY1 = xp.matmul(W, dS)
    return dW, dc, dY1
