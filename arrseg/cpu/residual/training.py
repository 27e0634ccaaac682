"""Loss and gradient of the residual network on NumPy: the whole batch, one
layer at a time, blocks of rows on the threads (see :mod:`arrseg.cpu.residual`).
"""

from __future__ import annotations

import numpy as np

from ..threads import parallel_map
from .layers import (Net, Rows, Tape, Workspace, activate, chunk_blocks, fill_batch,
                     matmul_columns, ordered_sum)

__all__ = ["loss_and_grad"]


def loss_and_grad(x, labels, params, options, class_weight, ignore_index):
    """Loss and (dK, db, dW, dc, dK_layers, db_layers), blocked and threaded.

    Parameters
    ----------
    x : numpy.ndarray, shape (N, C, H, W), float32 or float64
    labels : numpy.ndarray of int64, shape (N, H, W)
    params : ResidualParams
        NumPy arrays of x's dtype.
    options : arrseg.core.Options
        With ``dilation`` of length ``params.depth``.
    class_weight : numpy.ndarray, shape (n_c,), or None
    ignore_index : int

    Returns
    -------
    loss : 0-d numpy.ndarray
    grads : tuple of 6 arrays
        In x's dtype; dc is None when params.c is None.
    """
    net = Net(x, params.K, params.b, (params.K_layers, params.b_layers), options,
               params.W, params.c)
    N, H, W, k, dtype = net.N, net.H, net.W, net.k, net.dtype
    act, boundary, L = net.activation, net.boundary, net.depth
    chunks = chunk_blocks(net.blocks())
    ws = Workspace()
    keep_D = act != "identity"

    def run(block_work):
        """block_work(ws, n, r0, rows) -> partial (or None) per block; the
        partials summed per chunk in block order."""
        def work(i):
            total = None
            for n, r0, rows in chunks[i]:
                part = block_work(n, r0, rows)
                if part is not None:
                    total = part if total is None else [t + p for t, p in zip(total, part)]
            return total
        with np.errstate(over="ignore"):
            return parallel_map(work, len(chunks))

    # ---- the tape
    op = net.opening
    tape = Tape(boundary)
    Xpad = tape.padded(x.shape, op.P, dtype)
    Xpad[:, :, op.P : op.P + H, op.P : op.P + W] = x
    fill_batch(Xpad, op.P, boundary, H, W)
    Ys = [tape.padded((N, k, H, W), layer.P, dtype) for layer in net.layers]
    D_open = tape.empty((N, k, H, W), dtype) if keep_D else None
    Ds = [tape.empty((N, k, H, W), dtype) if keep_D else None for _ in range(L)]
    As = ([tape.padded((N, k, H, W), layer.P, dtype) for layer in net.layers]
          if net.symmetric else [None] * L)

    def rows_of(buffer, n, Q):
        return Rows(buffer[n], -Q, Q, W)

    # ---- forward: the opening layer
    def opening_block(n, r0, rows):
        A = ws.get("A", (k, rows * W), dtype)
        op.apply(rows_of(Xpad, n, op.P), r0, rows, ws, A)
        D = None if D_open is None else D_open[n, :, r0 : r0 + rows]
        activate(act, A.reshape(k, rows, W), D)
        rows_of(Ys[0], n, net.layers[0].P).interior(r0, r0 + rows)[...] = \
            A.reshape(k, rows, W)

    run(opening_block)
    fill_batch(Ys[0], net.layers[0].P, boundary, H, W)

    # ---- forward: the layers; the classifier in the last layer's pass
    n_c = net.n_c
    weight = (np.ones(n_c) if class_weight is None
              else np.asarray(class_weight, dtype=np.float64).copy())
    if 0 <= ignore_index < n_c:
        weight[ignore_index] = 0
    weighted = bool((weight != 1).any())
    weight = weight.astype(dtype)[:, None]
    classes = np.arange(n_c)[:, None]
    Qg = max((layer.P for layer in net.layers), default=0) if net.symmetric else 0
    G = tape.padded((N, k, H, W), Qg, dtype)

    def classify(n, r0, rows, Y):
        """Loss terms, (dW^T, dc) and G = dE/dY_L of one block of Y_L (k, B)."""
        B = rows * W
        S = ws.get("S", (n_c, B), dtype)
        np.matmul(net.Wt, Y, out=S)
        if net.c is not None:
            S += net.c
        S -= S.max(axis=0)
        E = ws.get("E", (n_c, B), dtype)
        np.exp(S, out=E)
        total = E.sum(axis=0)
        S -= np.log(total)  # log P
        E /= total  # P
        M = ws.get("M", (n_c, B), dtype)
        np.equal(labels[n, r0 : r0 + rows].reshape(-1), classes, out=M,
                 casting="unsafe")
        if weighted:
            M *= weight
        w = M.sum(axis=0)
        loss = -float(np.vdot(M, S))
        denominator = float(w.sum(dtype=np.float64))
        E *= w
        E -= M  # dE/dS times the denominator
        T = ws.get("T", (k, B), dtype)
        np.matmul(net.Wc, E, out=T)
        rows_of(G, n, Qg).interior(r0, r0 + rows)[...] = T.reshape(k, rows, W)
        dW = (Y @ E.T).astype(np.float64)  # (k, n_c)
        dc = E.sum(axis=1, dtype=np.float64)
        return [np.array([loss, denominator]), dW, dc]

    parts = None
    for t, layer in enumerate(net.layers):
        last = t == L - 1
        Y_in = Ys[t]
        Q_out = None if last else net.layers[t + 1].P

        def layer_block(n, r0, rows, t=t, layer=layer, last=last, Y_in=Y_in,
                        Q_out=Q_out):
            src = rows_of(Y_in, n, layer.P)
            A = ws.get("A", (k, rows * W), dtype)
            A3 = A.reshape(k, rows, W)
            if net.symmetric:   # A_t was made by the first pass
                layer.apply(rows_of(As[t], n, layer.P), r0, rows, ws, A, adjoint=True)
                A *= -net.h
            else:
                layer.apply(src, r0, rows, ws, A)
                activate(act, A3, None if Ds[t] is None else Ds[t][n, :, r0 : r0 + rows])
                net.scaled(A)
            if last:
                Y = ws.get("Y", (k, rows * W), dtype)
                np.add(src.interior(r0, r0 + rows), A3, out=Y.reshape(k, rows, W))
                return classify(n, r0, rows, Y)
            np.add(src.interior(r0, r0 + rows), A3,
                   out=rows_of(Ys[t + 1], n, Q_out).interior(r0, r0 + rows))
            return None

        if net.symmetric:
            def activation_block(n, r0, rows, t=t, layer=layer):
                A = ws.get("A", (k, rows * W), dtype)
                layer.apply(rows_of(Ys[t], n, layer.P), r0, rows, ws, A)
                activate(act, A.reshape(k, rows, W),
                          None if Ds[t] is None else Ds[t][n, :, r0 : r0 + rows])
                rows_of(As[t], n, layer.P).interior(r0, r0 + rows)[...] = \
                    A.reshape(k, rows, W)

            run(activation_block)
            fill_batch(As[t], layer.P, boundary, H, W)
        parts = run(layer_block)
        if not last:
            fill_batch(Ys[t + 1], Q_out, boundary, H, W)

    lossden = ordered_sum([p[0] for p in parts])
    loss, denominator = float(lossden[0]), float(lossden[1])
    dW = ordered_sum([p[1] for p in parts])
    dc = ordered_sum([p[2] for p in parts])
    if net.symmetric:
        fill_batch(G, Qg, boundary, H, W)

    # ---- backward: dZ_t into a padded buffer; G += K_t^T dZ_t in the next pass
    Qz = max(layer.P for layer in net.layers)
    dZ_buffers = [tape.padded((N, k, H, W), Qz, dtype) for _ in range(2)]
    tape.done_taking()
    dKbs = [None] * L
    pending = None  # the layer whose K^T dZ is not yet in G

    def add_adjoint(n, r0, rows, t):
        """G[rows] += K_t^T dZ_t (rows of image n)."""
        T = ws.get("T", (k, rows * W), dtype)
        net.layers[t].apply(rows_of(dZ_buffers[t % 2], n, Qz), r0, rows, ws, T,
                            adjoint=True)
        g = rows_of(G, n, Qg).interior(r0, r0 + rows)
        g += T.reshape(k, rows, W)

    for t in reversed(range(L)):
        layer = net.layers[t]
        if net.symmetric and pending is not None:
            run(lambda n, r0, rows, p=pending: add_adjoint(n, r0, rows, p))
            fill_batch(G, Qg, boundary, H, W)
            pending = None

        def backward_block(n, r0, rows, t=t, layer=layer, pending=pending):
            if pending is not None:
                add_adjoint(n, r0, rows, pending)
            B = rows * W
            dZ = ws.get("dZ", (k, B), dtype)
            dZ3 = dZ.reshape(k, rows, W)
            g = rows_of(G, n, Qg).interior(r0, r0 + rows)
            if net.symmetric:
                # dZ = -h (K_t G) * sigma'; dK -= h A_t J(G)^T
                PTg = layer.patches(rows_of(G, n, Qg), r0, rows, ws, name="PTg")
                matmul_columns(layer.Kb[:, : layer.CS], PTg[:-1], dZ)
                dZ *= -net.h
                a = ws.get("Ab", (k, B), dtype)
                a.reshape(k, rows, W)[...] = rows_of(As[t], n, layer.P).interior(
                    r0, r0 + rows)
                second = (PTg[:-1] @ a.T).astype(np.float64)  # (CS, k)
                if Ds[t] is not None:
                    dZ3 *= Ds[t][n, :, r0 : r0 + rows]
            else:  # dZ = h G * sigma', in one pass when h = 1
                second = None
                if Ds[t] is None:
                    np.multiply(g, net.h, out=dZ3)
                elif net.h == 1.0:
                    np.multiply(g, Ds[t][n, :, r0 : r0 + rows], out=dZ3)
                else:
                    np.multiply(g, net.h, out=dZ3)
                    dZ3 *= Ds[t][n, :, r0 : r0 + rows]
            rows_of(dZ_buffers[t % 2], n, Qz).interior(r0, r0 + rows)[...] = dZ3
            PT = layer.patches(rows_of(Ys[t], n, layer.P), r0, rows, ws)
            # [dK | db]^T (CS + 1, k): PT dZ^T is twice as fast in OpenBLAS
            # as dZ PT^T (measured, float32, B = 2048 to 8192)
            dKbT = (PT @ dZ.T).astype(np.float64)
            if second is not None:
                dKbT[: layer.CS] -= net.h * second
            return [dKbT]

        dKbs[t] = ordered_sum([p[0] for p in run(backward_block)]).T
        fill_batch(dZ_buffers[t % 2], Qz, boundary, H, W)
        pending = t

    def opening_backward(n, r0, rows):
        # dZ = (G + K_0^T dZ_0) * sigma'; G_0 itself is not needed again
        T = ws.get("T", (k, rows * W), dtype)
        net.layers[0].apply(rows_of(dZ_buffers[0], n, Qz), r0, rows, ws, T, adjoint=True)
        dZ = ws.get("dZ", (k, rows * W), dtype)
        dZ3 = dZ.reshape(k, rows, W)
        np.add(rows_of(G, n, Qg).interior(r0, r0 + rows), T.reshape(k, rows, W), out=dZ3)
        if D_open is not None:
            dZ3 *= D_open[n, :, r0 : r0 + rows]
        PT = op.patches(rows_of(Xpad, n, op.P), r0, rows, ws)
        return [(PT @ dZ.T).astype(np.float64)]

    dKb_open = ordered_sum([p[0] for p in run(opening_backward)]).T

    tape.release()

    scale = 1.0 / denominator if denominator > 0 else 0.0
    layer_CS = net.layers[0].CS
    dK_layers = np.stack([d[:, :layer_CS] for d in dKbs]) * scale
    db_layers = np.stack([d[:, layer_CS] for d in dKbs]) * scale
    dKb_open *= scale
    return (np.asarray(loss * scale, dtype=dtype),
            (dKb_open[:, : op.CS].reshape(params.K.shape).astype(dtype),
             dKb_open[:, op.CS].astype(dtype),
             (dW * scale).astype(dtype),
             (dc * scale).astype(dtype) if params.c is not None else None,
             dK_layers.reshape(params.K_layers.shape).astype(dtype),
             db_layers.astype(dtype)))


# ----------------------------------------------------------- prediction
