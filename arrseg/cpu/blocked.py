"""The NumPy fast path: the whole network, block by block of pixels, on all cores.

The array-API reference (:mod:`arrseg.numerics.forward_backward`) evaluates
one layer at a time over the whole batch: every intermediate has N*H*W*k
entries and travels through memory several times. Here the network runs to
its end on a block of pixels before the next block starts, so every
intermediate stays in cache (L3 here), and blocks are spread over threads (NumPy and
BLAS release the GIL) with BLAS held to one thread inside each.

A block is R rows of one image, read in *padded-width* coordinates: with
p = s // 2 and the image padded to width Wp = W + 2p, output pixel (i, j) of
the block sits at flat position i*Wp + j, and its patch entry (c, a, b) sits
at flat position i*Wp + j + a*Wp + b of the padded rows. Each of the C*s*s
rows of the im2col matrix is therefore one contiguous slice of the padded
block, and the whole matrix is one strided copy. The 2p columns j >= W are
computed and thrown away (an overhead of 2p / Wp); they get zero weight in
the loss. Per block, with B = R*Wp::

    Xb   (C, R + 2p + 1, Wp)   padded input rows (one spare row of zeros)
    PT   (C*s*s + 1, B)        patches; the last row is ones, for the bias
    A    (k, B)                Z = [K | b] @ PT, then A = sigma(Z) in place
    P    (n_c, B)              S = W^T A + c, softmax over the class rows
    M    (n_c, B)              one-hot labels times class weight (training)
    G    (n_c, B)              P * w - M: dE/dS times the loss's denominator
    T    (k, B)                dA = W G, then dZ = dA * sigma'(A) in place
    U    (k, B)                sigma'(A) (training)

and the gradients accumulate in float64: dW^T += G A^T, dc += sum G,
[dK | db] += dZ PT^T. Every contraction is a BLAS call; the reductions over
the n_c class rows are sums of n_c contiguous rows. The loss's denominator
is only known at the end, so the sums are divided by it once, at the end.

Memory: besides the inputs and the output P, each thread holds
``B * (C*s*s + 1 + 3k + 3 n_c + 6) + C*(R + 2p + 1)*Wp`` numbers of the compute
dtype (:func:`workspace_bytes`), whatever N, H and W are; B is about
:data:`TARGET_BLOCK_BYTES` / (k * itemsize) pixels (:func:`block_rows`). ``loss_and_grad`` also
keeps one float64 gradient per chunk of blocks, at most :data:`MAX_CHUNKS`
of them (:func:`partials_bytes`).
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..params import Params
from .threads import parallel_map

__all__ = [
    "MAX_CHUNKS",
    "TARGET_BLOCK_BYTES",
    "block_rows",
    "features",
    "forward",
    "loss_and_grad",
    "partials_bytes",
    "workspace_bytes",
]

#: Size aimed at for one (k, B) feature block, within
#: [MIN_BLOCK_PIXELS, MAX_BLOCK_PIXELS] pixels. Measured on the 2-core
#: calibration machine (N=8, 256x256, s=3): 1 MiB was the fastest of 128 KiB
#: to 4 MiB at k = 32 and 64, and 8192 to 16384 pixels at k = 8. Smaller
#: blocks lose to the Python overhead of each NumPy call, which holds the GIL
#: and so does not run in parallel; larger ones to cache misses.
TARGET_BLOCK_BYTES = 1 << 20
MIN_BLOCK_PIXELS = 1024
MAX_BLOCK_PIXELS = 16384

#: Blocks are grouped into at most this many chunks of consecutive blocks,
#: the unit handed to a thread. Each chunk's gradient is summed in block
#: order and the chunks' sums in chunk order, so the result does not depend
#: on the number of threads or on their timing: the same call gives the
#: same bits.
MAX_CHUNKS = 64


def block_rows(H, W, s, k, itemsize):
    """Rows R per block: B = R * (W + s - 1) pixels, about
    ``TARGET_BLOCK_BYTES / (k * itemsize)`` clipped to [MIN_BLOCK_PIXELS,
    MAX_BLOCK_PIXELS]; at least one row, at most H."""
    Wp = W + 2 * (s // 2)
    pixels = TARGET_BLOCK_BYTES // (k * itemsize)
    pixels = min(max(pixels, MIN_BLOCK_PIXELS), MAX_BLOCK_PIXELS)
    return int(min(H, max(1, pixels // Wp)))


def workspace_bytes(C, H, W, k, n_c, s, itemsize, *, train=True):
    """Bytes of intermediates one thread holds (the bound in the module doc)."""
    p = s // 2
    Wp = W + 2 * p
    R = block_rows(H, W, s, k, itemsize)
    B = R * Wp
    # PT, A, S, and the softmax's temporaries exp(S), max and sum
    per_pixel = C * s * s + 1 + k + 2 * n_c + 2
    if train:
        # T, U, M, the labels (int64), log(sum) and the pixel weights
        per_pixel += 2 * k + n_c + 2 + 2
    return itemsize * (B * per_pixel + C * (R + 2 * p + 1) * Wp)


def partials_bytes(C, k, n_c, s):
    """Bytes of the per-chunk gradient sums of one ``loss_and_grad`` call:
    at most MAX_CHUNKS float64 copies of (dK, db, dW, dc)."""
    return 8 * MAX_CHUNKS * (k * (C * s * s + 1) + n_c * (k + 1))


#: The convolution's result is scaled by this before the activation: the
#: scale is folded into [K | b] (exact, a power of two or a sign), so that
#: the activation starts from the argument of its exp.
_PRESCALE = {"tanh": 2.0, "sigmoid": -1.0}


def _prescale(activation, dtype):
    """The factor folded into [K | b] for this activation and dtype."""
    if activation == "tanh" and dtype != np.float32:
        return 1.0  # float64: np.tanh itself (below)
    return _PRESCALE.get(activation, 1.0)


def _activate(name, A, prescaled=True):
    """A = sigma(Z) in place, from A = prescale * Z (from A = Z for tanh when
    ``prescaled`` is False)."""
    if name == "tanh":
        if A.dtype == np.float32 and prescaled:
            # tanh z = 1 - 2 / (1 + exp(2z)), from A = 2z: four passes, 30%
            # faster than np.tanh in float32 here, within 2e-7 of tanh (np.tanh:
            # 6e-8). exp overflows to inf for 2z > 88 and gives the exact 1.
            np.exp(A, out=A)
            A += 1
            np.divide(2, A, out=A)
            np.subtract(1, A, out=A)
        else:
            np.tanh(A, out=A)
    elif name == "relu":
        np.maximum(A, 0, out=A)
    elif name == "sigmoid":
        # 1 / (1 + exp(-z)) from A = -z; exp(-z) = inf gives the exact 0
        np.exp(A, out=A)
        A += 1
        np.divide(1, A, out=A)  # faster than np.reciprocal here
    # identity: nothing to do


def _times_derivative(name, A, T, U):
    """T = T * sigma'(Z) in place, sigma' written through A = sigma(Z)."""
    if name == "tanh":  # 1 - A^2
        np.multiply(A, A, out=U)
        np.subtract(1, U, out=U)
        T *= U
    elif name == "relu":  # A > 0 exactly where Z > 0
        np.greater(A, 0, out=U)
        T *= U
    elif name == "sigmoid":  # A (1 - A)
        np.subtract(1, A, out=U)
        U *= A
        T *= U
    # identity: sigma' = 1


#: Largest logit magnitude for which the softmax skips subtracting the
#: maximum: exp(+-40) and sums of up to 16 of them stay far inside float32.
_SHIFT_FREE_BOUND = 40.0


class _Geometry:
    """Sizes of the blocked evaluation of one call."""

    def __init__(self, x, K):
        self.N, self.C, self.H, self.W = x.shape
        self.k, self.s = K.shape[0], K.shape[2]
        self.p = self.s // 2
        self.Wp = self.W + 2 * self.p
        self.R = block_rows(self.H, self.W, self.s, self.k, x.itemsize)
        self.B = self.R * self.Wp
        self.CS = self.C * self.s * self.s
        # (image, first row) of every block, grouped into chunks
        blocks = [(n, r0) for n in range(self.N) for r0 in range(0, self.H, self.R)]
        size = math.ceil(len(blocks) / MAX_CHUNKS)
        self.chunks = [blocks[i : i + size] for i in range(0, len(blocks), size)]


class _Patches:
    """One thread's padded input rows and im2col matrix."""

    def __init__(self, g, dtype):
        self.g = g
        # the spare last row keeps the reads of the thrown-away columns of
        # the last block row inside the buffer; it stays zero
        self.Xb = np.zeros((g.C, g.R + 2 * g.p + 1, g.Wp), dtype)
        self.PT = np.ones((g.CS + 1, g.B), dtype)
        flat = self.Xb.reshape(g.C, -1)
        item = self.Xb.itemsize
        # (C, s, s, B): entry (c, a, b, q) = flat[c, q + a*Wp + b]
        self.view = as_strided(flat, shape=(g.C, g.s, g.s, g.B),
                               strides=(flat.strides[0], g.Wp * item, item, item),
                               writeable=False)
        self.rows = None  # the rows read by the previous block

    def load(self, x, boundary, n, r0):
        """Fill Xb and PT for the block of rows [r0, r0 + R) of image n."""
        g, Xb = self.g, self.Xb
        rows = min(g.R, g.H - r0)
        top = r0 - g.p
        if boundary == "periodic":
            index = np.arange(top, r0 + rows + g.p)
            cols = np.arange(-g.p, g.W + g.p)
            band = np.take(x[n], index, axis=1, mode="wrap")
            np.take(band, cols, axis=2, mode="wrap",
                    out=Xb[:, : rows + 2 * g.p])
            if rows < g.R:
                Xb[:, rows + 2 * g.p : -1] = 0
        else:
            lo, hi = max(top, 0), min(r0 + rows + g.p, g.H)
            interior = Xb[:, :, g.p : g.p + g.W]
            if (lo - top, hi - top) != self.rows:
                interior[...] = 0  # rows outside the image are zeros
                self.rows = (lo - top, hi - top)
            interior[:, lo - top : hi - top] = x[n, :, lo:hi]
        np.copyto(self.PT[: g.CS].reshape(g.C, g.s, g.s, g.B), self.view)
        return rows


class _Plan:
    """What every block of one call shares: sizes, packed parameters, options."""

    def __init__(self, x, params, activation, boundary):
        self.g = g = _Geometry(x, params.K)
        K, b, W, c = params[:4]
        self.dtype = dtype = x.dtype
        self.x, self.activation, self.boundary = x, activation, boundary
        self.n_c = W.shape[1]
        scale = _prescale(activation, dtype)
        # [K | b], scaled for the activation: (k, C*s*s + 1)
        self.Kb = np.empty((g.k, g.CS + 1), dtype)
        self.Kb[:, : g.CS] = K.reshape(g.k, g.CS)
        self.Kb[:, g.CS] = b
        if scale == 2.0 and not np.abs(self.Kb).max() <= np.finfo(dtype).max / 2:
            scale = 1.0  # 2 [K | b] would overflow: np.tanh from Z itself
        #: whether Kb holds the activation's factor (always, but for tanh
        #: with entries beyond half the dtype's largest value)
        self.prescaled = scale != 1.0 or _prescale(activation, dtype) == 1.0
        self.Kb *= scale
        self.Wt = np.ascontiguousarray(W.T)  # (n_c, k)
        self.Wc = np.ascontiguousarray(W)  # (k, n_c)
        self.c = None if c is None else c[:, None]
        # with bounded features (|sigma| <= 1) the logits are bounded by
        # sum_i |W_ij| + |c_j|; below _SHIFT_FREE_BOUND the softmax needs no
        # shift by the maximum (it is shift-invariant, the shift only guards
        # against overflow)
        bound = np.inf
        if activation in ("tanh", "sigmoid"):
            bound = np.abs(W).sum(axis=0) + (0 if c is None else np.abs(c))
            bound = float(bound.max())
        self.shift = not bound <= _SHIFT_FREE_BOUND
        self.local = threading.local()

    def workspace(self, *, train):
        """This thread's buffers (made on first use)."""
        ws, g, dtype = self.local, self.g, self.dtype
        if not hasattr(ws, "patches"):
            ws.patches = _Patches(g, dtype)
            ws.A = np.empty((g.k, g.B), dtype)
            ws.S = np.empty((self.n_c, g.B), dtype)
            ws.E = np.empty((self.n_c, g.B), dtype)
            ws.total = np.empty(g.B, dtype)
        if train and not hasattr(ws, "T"):
            ws.T, ws.U = (np.empty((g.k, g.B), dtype) for _ in range(2))
            ws.M = np.empty((self.n_c, g.B), dtype)
            # labels in padded-width layout; -1 (no class) on the
            # thrown-away columns
            ws.L = np.full((g.R, g.Wp), -1, np.int64)
        return ws

    def forward_block(self, ws, n, r0):
        """Block (n, r0): features in ws.A, logits in ws.S (shifted by their
        maximum where needed), exp(S) in ws.E and its class sum in ws.total.
        Returns the number of image rows in the block."""
        rows = ws.patches.load(self.x, self.boundary, n, r0)
        A, S, E = ws.A, ws.S, ws.E
        np.matmul(self.Kb, ws.patches.PT, out=A)
        _activate(self.activation, A, self.prescaled)
        np.matmul(self.Wt, A, out=S)
        if self.c is not None:
            S += self.c
        if self.shift:
            S -= S.max(axis=0)
        np.exp(S, out=E)
        np.sum(E, axis=0, out=ws.total)
        return rows


def forward(x, params, activation, boundary, *, out_dtype=None):
    """P = softmax(W^T sigma(K(theta) x + b) + c), blocked and threaded.

    Parameters
    ----------
    x : numpy.ndarray, shape (N, C, H, W), float32 or float64
    params : Params
        NumPy arrays of x's dtype.
    activation : str
    boundary : {"zeros", "periodic"}
    out_dtype : numpy dtype, optional
        dtype of P (default x's).

    Returns
    -------
    P : numpy.ndarray, shape (N, n_c, H, W)
    """
    plan = _Plan(x, params, activation, boundary)
    g, n_c = plan.g, plan.n_c
    P = np.empty((g.N, n_c, g.H, g.W), out_dtype or x.dtype)

    def work(i):
        ws = plan.workspace(train=False)
        with np.errstate(over="ignore"):  # exp -> inf is handled
            for n, r0 in g.chunks[i]:
                rows = plan.forward_block(ws, n, r0)
                np.divide(1, ws.total, out=ws.total)
                # P = E / total, written straight into the output
                np.multiply(ws.E.reshape(n_c, g.R, g.Wp)[:, :rows, : g.W],
                            ws.total.reshape(g.R, g.Wp)[:rows, : g.W],
                            out=P[n, :, r0 : r0 + rows])

    parallel_map(work, len(g.chunks))
    return P


def features(x, K, b, activation, boundary):
    """Y1 = sigma(K(theta) x + b), blocked and threaded: (N, k, H*W).

    The features alone, as :func:`arrseg.numerics.forward_backward.features`
    computes them (for the variable projection's inner problem).
    """
    dtype = x.dtype
    # no classifier: the plan's W only bounds the logits
    plan = _Plan(x, Params(K, b, np.zeros((K.shape[0], 1), dtype), None),
                 activation, boundary)
    g = plan.g
    Y1 = np.empty((g.N, g.k, g.H, g.W), dtype)

    def work(i):
        ws = plan.workspace(train=False)
        with np.errstate(over="ignore"):
            for n, r0 in g.chunks[i]:
                rows = ws.patches.load(x, boundary, n, r0)
                np.matmul(plan.Kb, ws.patches.PT, out=ws.A)
                _activate(activation, ws.A, plan.prescaled)
                Y1[n, :, r0 : r0 + rows] = ws.A.reshape(g.k, g.R, g.Wp)[:, :rows, : g.W]

    parallel_map(work, len(g.chunks))
    return Y1.reshape(g.N, g.k, g.H * g.W)


def loss_and_grad(x, labels, params, activation, boundary, class_weight,
                  ignore_index):
    """Loss and gradient in (K, b, W, c), blocked and threaded.

    Parameters
    ----------
    x : numpy.ndarray, shape (N, C, H, W), float32 or float64
    labels : numpy.ndarray of int64, shape (N, H, W)
    params : Params
        NumPy arrays of x's dtype.
    activation, boundary : str
    class_weight : numpy.ndarray, shape (n_c,), or None
    ignore_index : int

    Returns
    -------
    loss : 0-d numpy.ndarray
    grads : tuple (dK, db, dW, dc)
        In x's dtype; dc is None when params.c is None.
    """
    plan = _Plan(x, params, activation, boundary)
    g, n_c, dtype = plan.g, plan.n_c, plan.dtype
    weight = (np.ones(n_c) if class_weight is None
              else np.asarray(class_weight, dtype=np.float64).copy())
    if 0 <= ignore_index < n_c:
        weight[ignore_index] = 0  # that class is the ignore label
    weighted = bool((weight != 1).any())
    weight = weight.astype(dtype)[:, None]
    classes = np.arange(n_c)[:, None]

    def work(i):
        ws = plan.workspace(train=True)
        A, T, U, S, E, M, L = ws.A, ws.T, ws.U, ws.S, ws.E, ws.M, ws.L
        Lf = L.reshape(-1)
        dKb = np.zeros((g.k, g.CS + 1))
        dWt = np.zeros((n_c, g.k))
        dc = np.zeros(n_c)
        loss = 0.0
        denominator = 0.0
        with np.errstate(over="ignore"):  # exp -> inf is handled
            for n, r0 in g.chunks[i]:
                rows = plan.forward_block(ws, n, r0)
                S -= np.log(ws.total)  # log P
                E /= ws.total  # P
                L[:rows, : g.W] = labels[n, r0 : r0 + rows]
                if rows < g.R:
                    L[rows:] = -1
                # M = one-hot(labels) * weight
                np.equal(Lf, classes, out=M, casting="unsafe")
                if weighted:
                    M *= weight
                w = M.sum(axis=0)  # weight of each pixel's label, 0 if none
                loss -= float(np.vdot(M, S))
                denominator += float(w.sum(dtype=np.float64))
                E *= w
                E -= M  # G = (P - onehot) * w = dE/dS times the denominator
                dWt += E @ A.T
                dc += E.sum(axis=1)
                np.matmul(plan.Wc, E, out=T)
                _times_derivative(activation, A, T, U)
                dKb += T @ ws.patches.PT.T
        return loss, denominator, dKb, dWt, dc

    parts = parallel_map(work, len(g.chunks))
    loss = sum(p[0] for p in parts)
    denominator = sum(p[1] for p in parts)
    scale = 1.0 / denominator if denominator > 0 else 0.0
    dKb = sum(p[2] for p in parts) * scale
    dWt = sum(p[3] for p in parts) * scale
    dc = sum(p[4] for p in parts) * scale
    dK = dKb[:, : g.CS].reshape(params.K.shape).astype(dtype)
    db = dKb[:, g.CS].astype(dtype)
    return (np.asarray(loss * scale, dtype=dtype),
            (dK, db, np.ascontiguousarray(dWt.T, dtype=dtype),
             dc.astype(dtype) if params.c is not None else None))
