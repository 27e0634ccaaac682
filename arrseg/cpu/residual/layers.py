"""The residual NumPy path's building blocks: activations, padded row
buffers, the im2col convolution of a block of rows, the network's layers.

Shared by :mod:`~arrseg.cpu.residual.training` and
:mod:`~arrseg.cpu.residual.prediction`; see :mod:`arrseg.cpu.residual`.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..blocked import MAX_CHUNKS

__all__ = ["BLOCK_PIXELS", "SMALL_GEMM", "SPARE_BYTES", "Conv", "Net", "Rows", "Tape",
           "Workspace", "activate", "chunk_blocks", "fill_batch", "matmul_columns",
           "matmul_slices", "ordered_sum", "padded_batch"]

#: Output pixels of one im2col block (R = BLOCK_PIXELS // W rows, at least
#: one). At k = 16, s_r = 3 in float32, PT is 145 x 8192 x 4 B = 4.8 MB; the
#: products run on column slices of it (:func:`matmul_columns`), so its size
#: is about Python calls per pixel. Measured (N = 4, 256 x 256, k = 16, 2
#: threads, training step, medians of 12): 4096 / 8192 pixels took 147 / 149
#: ms at depth 2, 255 / 246 at depth 4, 391 / 368 at depth 6; 2048 was 15%
#: slower than 4096, 16384 (16 blocks a pass) 30% slower. With the batched
#: products, symmetric layers at depth 4 (2 threads, medians of 8): 328 /
#: 287 / 361 ms for 4096 / 8192 / 16384.
BLOCK_PIXELS = 8192

#: Largest m * n * k of one (m, k) @ (k, n) product in :func:`matmul_columns`:
#: OpenBLAS (0.3.x) runs products up to 100**3 on its small-matrix kernels,
#: without packing. The convolutions' (k_out, c*s*s + 1) @ (c*s*s + 1, B)
#: run 1.7 times as fast in slices of B under this size as in one call
#: (measured, k = 16, s = 3, float32: 4.6 against 8.0 ms for one 256 x 256
#: image, copies included; slices of 128 to 384 pixels alike). Slices over
#: this size (448, 512 columns) left the training step 1.55 times as slow
#: (symmetric layers, depth 4, 1 thread: 749 against 483 ms).
#: The slices go to one batched ``matmul`` (one call, not one a slice): the
#: training step at depth 4, 1 thread, 10% faster with symmetric layers
#: (533 -> 481 ms), 5% with residual ones (339 -> 321).
SMALL_GEMM = 100 ** 3

#: Fewest columns of one slice in :func:`matmul_columns`.
MIN_SLICE = 128

#: Length of the slices of the summed dimension in :func:`matmul_slices`.
#: The weight gradients' (c*s*s + 1, B) @ (B, k) run faster as a batch of
#: products of this many pixels, summed, than in one call (measured, 1
#: thread, k = 16, s = 3, B = 8192, float32: 0.35 ms in slices of 256, 0.50
#: in slices of 512, 0.49 in one call; 0.54 with a transposed view of a
#: (k, B) right operand).
INNER_SLICE = 256


# ----------------------------------------------------------- activations

def activate(name, A, D=None):
    """A = sigma(Z) in place from A = Z; with D, also D = sigma'(Z) (D may
    be a strided view of A's shape)."""
    if name == "tanh":
        np.tanh(A, out=A)
        if D is not None:
            np.multiply(A, A, out=D)
            np.subtract(1, D, out=D)
    elif name == "relu":
        if D is not None:
            np.greater(A, 0, out=D, casting="unsafe")
        np.maximum(A, 0, out=A)
    elif name == "sigmoid":
        # 1 / (1 + exp(-z)); exp(-z) = inf gives the exact 0
        np.negative(A, out=A)
        np.exp(A, out=A)
        A += 1
        np.divide(1, A, out=A)
        if D is not None:
            np.subtract(1, A, out=D)
            D *= A
    # identity: A = Z, and D is not kept (sigma' = 1)


# ----------------------------------------------------------- workspace

class Workspace(threading.local):
    """One thread's scratch arrays, by name, grown on demand."""

    def get(self, name, shape, dtype):
        """A C-contiguous array of ``shape`` (contents undefined)."""
        size = math.prod(shape)
        store = self.__dict__.get(name)
        if store is None or store.size < size or store.dtype != dtype:
            store = np.empty(size, dtype)
            self.__dict__[name] = store
        return store[:size].reshape(shape)


class Rows:
    """Rows of one image's channels in a padded buffer.

    ``array`` (c, rows, W + 2Q): buffer row i holds image row ``first + i``
    (taken modulo H, or zero outside the image, as the boundary says);
    image column j sits at buffer column j + Q.
    """

    __slots__ = ("array", "first", "Q", "W")

    def __init__(self, array, first, Q, W):
        self.array, self.first, self.Q, self.W = array, first, Q, W

    def interior(self, i0, i1):
        """The view (c, i1 - i0, W) of image rows [i0, i1)."""
        return self.array[:, i0 - self.first : i1 - self.first, self.Q : self.Q + self.W]

    def fill(self, boundary, lo, hi, H):
        """Fill the rows outside [lo, hi) (computed) and the column pads:
        zeros, or wrapped copies of the computed rows (periodic)."""
        a, Q, W = self.array, self.Q, self.W
        top, bottom = lo - self.first, hi - self.first
        if boundary == "zeros":
            a[:, :top] = 0
            a[:, bottom:] = 0
            if Q:
                a[:, top:bottom, :Q] = 0
                a[:, top:bottom, Q + W :] = 0
            return
        rows = np.arange(self.first, self.first + a.shape[1])
        outside = (rows < lo) | (rows >= hi)
        if outside.any():  # whole images only: lo = 0, hi = H
            a[:, outside] = a[:, (rows[outside] % H) - self.first]
        if Q:
            cols = np.arange(-Q, W + Q)
            pads = (cols < 0) | (cols >= W)
            a[:, :, pads] = a[:, :, (cols[pads] % W) + Q]


def padded_batch(shape, Q, dtype):
    """Zeros (N, c, H + 2Q, W + 2Q)."""
    N, c, H, W = shape
    return np.zeros((N, c, H + 2 * Q, W + 2 * Q), dtype)


#: Most bytes of one training call's tape kept for the next call
#: (:class:`Tape`): 256 MiB holds the tape of N = 4 images of 256 x 256 at
#: k = 16 and depth 4 (about 200 MiB); larger calls allocate anew. Set to 0
#: to keep nothing between calls.
SPARE_BYTES = 256 << 20


class Tape:
    """The whole-batch arrays of one training call, reused from the last call.

    A fresh array of tens of MB costs the kernel a page fault and the zeroing
    of each new page on first touch, and an unmap when freed: about 10% of a
    training step (measured, N = 4, 256 x 256, k = 16, depth 2 and 4, 2
    threads: 135 -> 123 and 242 -> 216 ms). So the arrays of a finished call
    (at most :data:`SPARE_BYTES` of them) stay as spares, and the next call
    takes those of its shapes: held memory is one call's tape at most.
    Every array is taken by one call only (concurrent calls allocate anew);
    a spare's interior is undefined and overwritten by the call before it is
    read; a padded spare's pads are zeroed again unless they are known to be
    zero (same pad, boundary "zeros": only periodic calls write pads).
    """

    _lock = threading.Lock()
    _spares = []  # (array, pad or None, pads written) of the last finished call

    def __init__(self, boundary):
        with Tape._lock:
            self._pool, Tape._spares = Tape._spares, []
        self.arrays = []
        self.boundary = boundary

    def _take(self, shape, dtype):
        for i, (a, Q, written) in enumerate(self._pool):
            if a.shape == shape and a.dtype == dtype:
                del self._pool[i]
                return a, Q, written
        return None, None, True

    def padded(self, shape, Q, dtype):
        """(N, c, H + 2Q, W + 2Q) for ``shape`` (N, c, H, W), pads zero."""
        N, c, H, W = shape
        a, Q_was, written = self._take((N, c, H + 2 * Q, W + 2 * Q), np.dtype(dtype))
        if a is None:
            a = padded_batch(shape, Q, dtype)
        elif Q and (written or Q_was != Q):
            a[:, :, :Q] = 0
            a[:, :, H + Q :] = 0
            a[:, :, Q : H + Q, :Q] = 0
            a[:, :, Q : H + Q, W + Q :] = 0
        self.arrays.append((a, Q))
        return a

    def empty(self, shape, dtype):
        """An array of ``shape``, contents undefined."""
        a = self._take(tuple(shape), np.dtype(dtype))[0]
        if a is None:
            a = np.empty(shape, dtype)
        self.arrays.append((a, None))
        return a

    def done_taking(self):
        """Free the spares this call did not take."""
        self._pool = []

    def release(self):
        """Leave this call's arrays (up to SPARE_BYTES) to the next call."""
        keep, total = [], 0
        written = self.boundary != "zeros"
        for a, Q in self.arrays:
            if total + a.nbytes <= SPARE_BYTES:
                keep.append((a, Q, written))
                total += a.nbytes
        self.arrays, self._pool = [], []
        with Tape._lock:
            Tape._spares = keep


def fill_batch(buffer, Q, boundary, H, W):
    """The pads of a batch buffer from its interior (periodic; zeros stay)."""
    if boundary == "periodic" and Q:
        for n in range(buffer.shape[0]):
            Rows(buffer[n], -Q, Q, W).fill(boundary, 0, H, H)


# ----------------------------------------------------------- convolution

def matmul_columns(A, B, out):
    """out = A @ B (A (m, k), B (k, n), out (m, n)), in slices of B's
    columns of at most :data:`SMALL_GEMM` / (m k) (at least
    :data:`MIN_SLICE`, a multiple of 64), one batched ``matmul`` over the
    whole slices; each column of out is one dot product per entry, whatever
    the slicing."""
    m, k = A.shape
    n = B.shape[1]
    step = max(MIN_SLICE, SMALL_GEMM // (m * k) // 64 * 64)
    if step >= n:
        np.matmul(A, B, out=out)
        return out
    full = n - n % step
    c = full // step
    np.matmul(A, B[:, :full].reshape(k, c, step).transpose(1, 0, 2),
              out=out[:, :full].reshape(m, c, step).transpose(1, 0, 2))
    if full < n:
        np.matmul(A, B[:, full:], out=out[:, full:])
    return out


def matmul_slices(A, B):
    """A @ B in float64 (A (m, n), B (n, k) C-contiguous): the products of
    slices of :data:`INNER_SLICE` of the n columns of A and rows of B (one
    batched ``matmul``), summed in A's dtype in slice order; the same bits
    for any caller's threads."""
    n = B.shape[0]
    step = INNER_SLICE
    full = n - n % step
    total = np.zeros((A.shape[0], B.shape[1]), np.float64)
    if full:
        m = full // step
        parts = np.matmul(A[:, :full].reshape(A.shape[0], m, step).transpose(1, 0, 2),
                          B[:full].reshape(m, step, B.shape[1]))
        total += parts.sum(axis=0)
    if full < n:
        total += A[:, full:] @ B[full:]
    return total


class Conv:
    """One convolution: kernel size s, dilation d, pad P = d (s // 2), and
    its packed kernels: Kb (k_out, c*s*s + 1) = [K | b]; Kf (c, k_out*s*s),
    the adjoint's flipped, transposed kernel (made on first use)."""

    def __init__(self, K, b, d, dtype):
        self.k, self.c, self.s = K.shape[0], K.shape[1], K.shape[2]
        self.d, self.P = d, d * (K.shape[2] // 2)
        self.CS = self.c * self.s * self.s
        self.K = K
        self.Kb = np.empty((self.k, self.CS + 1), dtype)
        self.Kb[:, : self.CS] = K.reshape(self.k, self.CS)
        self.Kb[:, self.CS] = 0 if b is None else b
        self._Kf = None

    @property
    def Kf(self):
        if self._Kf is None:
            self._Kf = np.ascontiguousarray(
                np.swapaxes(self.K, 0, 1)[:, :, ::-1, ::-1]).reshape(self.c, -1)
        return self._Kf

    def patches(self, src, i0, rows, ws, name="PT", adjoint=False):
        """PT (c_in*s*s + 1, rows*W) of output rows [i0, i0 + rows) read from
        ``src`` (a :class:`Rows` with Q >= P); the adjoint reads k_out
        channels."""
        c = self.k if adjoint else self.c
        s, d, W = self.s, self.d, src.W
        CS = c * s * s
        PT = ws.get(name, (CS + 1, rows * W), src.array.dtype)
        base = src.array[:, i0 - self.P - src.first :, src.Q - self.P :]
        st = base.strides
        view = as_strided(base, shape=(c, s, s, rows, W),
                          strides=(st[0], d * st[1], d * st[2], st[1], st[2]),
                          writeable=False)
        np.copyto(PT[:CS].reshape(c, s, s, rows, W), view)
        PT[CS] = 1
        return PT

    def apply(self, src, i0, rows, ws, out, *, adjoint=False, PT=None):
        """out (k, rows*W) = [K | b] PT (forward) or K^T PT (adjoint, no bias)."""
        if PT is None:
            PT = self.patches(src, i0, rows, ws, adjoint=adjoint)
        if adjoint:
            matmul_columns(self.Kf, PT[:-1], out)
        else:
            matmul_columns(self.Kb, PT, out)
        return PT


class Net:
    """The packed network of one call: opening convolution, layers, classifier."""

    def __init__(self, x, K, b, layers, options, W=None, c=None):
        dtype = x.dtype
        self.dtype = dtype
        self.N, self.C, self.H, self.W = x.shape
        self.k = K.shape[0]
        self.activation, self.boundary = options.activation, options.boundary
        trunk = options.trunk
        self.h, self.symmetric = float(trunk.step), trunk.layer == "symmetric"
        self.opening = Conv(K, b, 1, dtype)
        K_layers, b_layers = layers
        self.layers = [Conv(K_layers[j], b_layers[j], int(d), dtype)
                       for j, d in enumerate(trunk.dilation)]
        self.depth = len(self.layers)
        if W is not None:
            self.n_c = W.shape[1]
            self.Wt = np.ascontiguousarray(W.T)  # (n_c, k)
            self.Wc = np.ascontiguousarray(W)  # (k, n_c)
            self.c = None if c is None else c[:, None]
        self.rows = max(1, min(self.H, BLOCK_PIXELS // self.W))

    def blocks(self):
        """(image, first row, rows) of every block, in order."""
        return [(n, r0, min(self.rows, self.H - r0))
                for n in range(self.N) for r0 in range(0, self.H, self.rows)]

    def scaled(self, A):
        """A *= h (in place) unless h = 1."""
        if self.h != 1.0:
            A *= self.h
        return A


# ----------------------------------------------------------- training

def chunk_blocks(blocks):
    size = math.ceil(len(blocks) / MAX_CHUNKS)
    return [blocks[i : i + size] for i in range(0, len(blocks), size)]


def ordered_sum(parts):
    """Sum of float64 arrays in list order (deterministic)."""
    total = parts[0].copy()
    for p in parts[1:]:
        total += p
    return total
