"""Prediction and features of the residual network on NumPy, in bounded
memory: bands of rows through all the layers, with the receptive field's
halo (see :mod:`arrseg.cpu.residual`).
"""

from __future__ import annotations

import numpy as np

from ..threads import parallel_map
from .layers import Net, Rows, Workspace, activate

__all__ = ["BAND_BYTES", "features", "forward"]

#: Bytes of one band buffer in prediction, beyond which an image is split
#: into bands of rows (each recomputing the halo of the receptive field).
BAND_BYTES = 16 << 20


#: The bands of a call are made a multiple of this many, so that 1, 2 or 4
#: threads share them evenly (a fixed number, not the thread count: the
#: bands, and so the result's bits, do not depend on the threads) ...
BAND_MULTIPLE = 4
#: ... unless a band would keep fewer than this many halos of rows (each
#: band recomputes its halo).
MIN_BAND_HALOS = 4


def _balanced_rows(N, H, rows, halo):
    """Rows per band so that the bands of all N images share the threads evenly.

    ``rows`` fits the band buffer; with N * ceil(H / rows) bands the last
    round of a ``parallel_map`` may leave threads idle (one image of one
    band: all but one). The bands are made thinner until their count is a
    multiple of :data:`BAND_MULTIPLE`, unless they would fall below
    :data:`MIN_BAND_HALOS` halos of rows.
    """
    bands = N * -(-H // rows)
    if bands % BAND_MULTIPLE == 0:
        return rows
    per_image = -(-(-(-bands // BAND_MULTIPLE) * BAND_MULTIPLE) // N)
    thinner = -(-H // per_image)
    return thinner if thinner >= MIN_BAND_HALOS * max(halo, 1) else rows


class _Bands:
    """The bands of rows of a prediction and each layer's rows in a band."""

    def __init__(self, net):
        self.net = net
        H, W, k = net.H, net.W, net.k
        itemsize = np.dtype(net.dtype).itemsize
        per = 2 if net.symmetric else 1
        # e[t]: rows beyond the band that Y_t must hold (e[L] = 0)
        e = [0] * (net.depth + 1)
        for t in reversed(range(net.depth)):
            e[t] = e[t + 1] + per * net.layers[t].P
        self.extent = e
        self.halo = e[0] + net.opening.P
        Q = max(layer.P for layer in net.layers)
        row_bytes = k * (W + 2 * Q) * itemsize
        if row_bytes * (H + 2 * Q) <= BAND_BYTES:
            self.rows = H
        else:
            fit = BAND_BYTES // row_bytes - 2 * self.halo
            self.rows = int(min(H, max(fit, 2 * self.halo, 1)))
        self.rows = _balanced_rows(net.N, H, self.rows, self.halo)

    def tasks(self):
        net = self.net
        return [(n, r0, min(self.rows, net.H - r0))
                for n in range(net.N) for r0 in range(0, net.H, self.rows)]

    def buffer(self, ws, name, c, r0, rows, e, Q, whole):
        """A :class:`Rows` of c channels for image rows [r0 - e, r0 + rows + e)
        (plus Q pad rows on each side for a whole image) and Q pad columns,
        and the rows of it to compute, as (lo, hi)."""
        net = self.net
        pad = Q if whole else 0
        if whole:  # the pads are the boundary: nothing to recompute
            e = 0
        first = r0 - e - pad
        n_rows = rows + 2 * (e + pad)
        array = ws.get(name, (c, n_rows, net.W + 2 * Q), net.dtype)
        lo, hi = r0 - e, r0 + rows + e
        if net.boundary == "zeros" or whole:
            lo, hi = max(lo, 0), min(hi, net.H)
        return Rows(array, first, Q, net.W), lo, hi


def _band_features(net, bands, x, n, r0, rows, ws):
    """Y_L of rows [r0, r0 + rows) of image n: a Rows of k channels, Q = 0."""
    k, H, W, act, boundary = net.k, net.H, net.W, net.activation, net.boundary
    whole = rows == H
    e = bands.extent
    op = net.opening
    # the input rows, wrapped or zero outside the image
    src, lo, hi = bands.buffer(ws, "X", net.C, r0, rows, e[0] + op.P, op.P, whole)
    if boundary == "periodic" and not whole:
        index = np.arange(lo, hi) % H
        src.interior(lo, hi)[...] = np.take(x[n], index, axis=1)
    else:
        src.interior(lo, hi)[...] = x[n, :, lo:hi]
    src.fill(boundary, lo, hi, H)

    def conv(layer, src, dst, lo, hi, *, adjoint=False, finish):
        for i in range(lo, hi, net.rows):
            m = min(net.rows, hi - i)
            A = ws.get("A", (layer.k, m * W), net.dtype)
            layer.apply(src, i, m, ws, A, adjoint=adjoint)
            finish(i, m, A.reshape(layer.k, m, W))

    names = ["Y0", "Y1"]
    Q0 = net.layers[0].P
    dst, lo, hi = bands.buffer(ws, names[0], k, r0, rows, e[0], Q0, whole)

    def activated(dst):
        def finish(i, m, A3):
            activate(act, A3)
            dst.interior(i, i + m)[...] = A3
        return finish

    conv(op, src, dst, lo, hi, finish=activated(dst))
    dst.fill(boundary, lo, hi, H)
    Y = dst
    for t, layer in enumerate(net.layers):
        last = t == net.depth - 1
        Q_out = 0 if last else net.layers[t + 1].P
        out, lo, hi = bands.buffer(ws, names[(t + 1) % 2], k, r0, rows, e[t + 1],
                                   Q_out, whole)

        def residual(i, m, A3, Y=Y, out=out, sign=1.0):
            if sign * net.h != 1.0:
                A3 *= sign * net.h
            np.add(Y.interior(i, i + m), A3, out=out.interior(i, i + m))

        if net.symmetric:
            Ab, alo, ahi = bands.buffer(ws, "Ab", k, r0, rows, e[t + 1] + layer.P,
                                        layer.P, whole)
            conv(layer, Y, Ab, alo, ahi, finish=activated(Ab))
            Ab.fill(boundary, alo, ahi, H)
            conv(layer, Ab, out, lo, hi, adjoint=True,
                 finish=lambda i, m, A3, Y=Y, out=out: residual(i, m, A3, Y, out, -1.0))
        else:
            def finish(i, m, A3, Y=Y, out=out):
                activate(act, A3)
                residual(i, m, A3, Y, out)
            conv(layer, Y, out, lo, hi, finish=finish)
        if not last:
            out.fill(boundary, lo, hi, H)
        Y = out
    return Y


def _predict_bands(x, net, sink):
    """Run every band through the network; ``sink(n, r0, rows, Y3)`` takes
    Y_L (k, rows, W) of each band."""
    bands = _Bands(net)
    tasks = bands.tasks()
    ws = Workspace()

    def work(i):
        n, r0, rows = tasks[i]
        Y = _band_features(net, bands, x, n, r0, rows, ws)
        sink(n, r0, rows, Y.interior(r0, r0 + rows), ws)

    with np.errstate(over="ignore"):
        parallel_map(work, len(tasks))


def forward(x, params, options, *, out_dtype=None):
    """P (N, n_c, H, W) of a network with residual layers, band by band.

    Parameters
    ----------
    x : numpy.ndarray, shape (N, C, H, W), float32 or float64
    params : ResidualParams
        NumPy arrays of x's dtype.
    options : arrseg.core.Options
    out_dtype : numpy dtype, optional
        dtype of P (default x's).

    Returns
    -------
    P : numpy.ndarray, shape (N, n_c, H, W)
    """
    net = Net(x, params.K, params.b, (params.K_layers, params.b_layers), options,
               params.W, params.c)
    n_c, W, k = net.n_c, net.W, net.k
    P = np.empty((net.N, n_c, net.H, W), out_dtype or x.dtype)

    def sink(n, r0, rows, Y3, ws):
        # per block of rows: S = W^T Y + c, P = softmax(S) written into P
        for i in range(0, rows, net.rows):
            m = min(net.rows, rows - i)
            Y = ws.get("Yc", (k, m * W), net.dtype)
            Y.reshape(k, m, W)[...] = Y3[:, i : i + m]
            S = ws.get("S", (n_c, m * W), net.dtype)
            np.matmul(net.Wt, Y, out=S)
            if net.c is not None:
                S += net.c
            S -= S.max(axis=0)
            np.exp(S, out=S)
            S /= S.sum(axis=0)
            P[n, :, r0 + i : r0 + i + m] = S.reshape(n_c, m, W)

    _predict_bands(x, net, sink)
    return P


def features(x, K, b, layers, options):
    """Y_L as (N, k, H*W), band by band (VarPro's features).

    Parameters
    ----------
    x : numpy.ndarray, shape (N, C, H, W)
    K, b : the opening layer's kernels (k, C, s, s) and biases (k,)
    layers : tuple (K_layers, b_layers)
    options : arrseg.core.Options
    """
    net = Net(x, K, b, layers, options)
    Y_L = np.empty((net.N, net.k, net.H, net.W), x.dtype)

    def sink(n, r0, rows, Y3, ws):
        Y_L[n, :, r0 : r0 + rows] = Y3

    _predict_bands(x, net, sink)
    return Y_L.reshape(net.N, net.k, net.H * net.W)
