"""Independent NumPy float64 references for the tests.

Written from the definitions with explicit loops and ``np.pad``, sharing no
code with arrseg, so a bug in arrseg cannot hide in both.
"""

import numpy as np

PAD_MODE = {"zeros": "constant", "periodic": "wrap"}


def conv2d(Y, theta, boundary):
    """Cross-correlation, 'same' size: (N, C, H, W), (k, C, s, s) -> (N, k, H, W)."""
    N, C, H, W = Y.shape
    k, _, s, _ = theta.shape
    p = s // 2
    Yp = np.pad(Y.astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)),
                mode=PAD_MODE[boundary])
    Z = np.zeros((N, k, H, W))
    for h in range(H):
        for w in range(W):
            patch = Yp[:, :, h:h + s, w:w + s]  # (N, C, s, s)
            Z[:, :, h, w] = np.einsum("ncab,kcab->nk", patch, theta)
    return Z


ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "sigmoid": lambda z: 0.5 * (1.0 + np.tanh(0.5 * z)),
    "identity": lambda z: z,
}


def predict_proba(x, K, b, W, c, activation, boundary):
    """P (N, n_c, H, W) in float64."""
    Y1 = ACTIVATIONS[activation](conv2d(x, K, boundary) + b[:, None, None])
    S = np.einsum("kj,nkhw->njhw", W, Y1)
    if c is not None:
        S = S + c[:, None, None]
    S = S - S.max(axis=1, keepdims=True)
    E = np.exp(S)
    return E / E.sum(axis=1, keepdims=True)


def cross_entropy(P, labels, class_weight=None, ignore_index=-100):
    """Weighted mean of -log P_y over labelled pixels; 0 if none counts."""
    n_c = P.shape[1]
    w = np.ones(n_c) if class_weight is None else np.asarray(class_weight, float)
    num = den = 0.0
    for n, h, ww in np.ndindex(labels.shape):
        y = labels[n, h, ww]
        if y == ignore_index:
            continue
        num += w[y] * -np.log(P[n, y, h, ww])
        den += w[y]
    return num / den if den > 0 else 0.0
