"""Loss and gradient of the residual network on NumPy: the whole batch, one
layer at a time, blocks of rows on the threads (see :mod:`arrseg.cpu.residual`).
"""

from __future__ import annotations

import numpy as np

from ..threads import parallel_map
from .layers import (Net, Rows, Tape, Workspace, activate, chunk_blocks, fill_batch,
                     matmul_columns, matmul_slices, ordered_sum)

__all__ = ["loss_and_grad"]


def loss_and_grad(x, labels, params, options, class_weight, ignore_index, *,
                  extra_dS=None):
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
    extra_dS : numpy.ndarray, shape (N, n_c, H, W), optional
        Added to the mean loss's gradient in the logits S before the
        backward pass (in the classifier's block, scaled by the loss's
        denominator like the cross-entropy's own term).

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
    # the extra gradient joins E, which is dE/dS times the loss's denominator:
    # that denominator (1 with no labelled weight) is known before the blocks
    extra_scale = None
    if extra_dS is not None:
        lab = labels.reshape(-1)
        valid = (lab >= 0) & (lab < n_c)
        extra_scale = float(weight[lab[valid]].sum(dtype=np.float64)) or 1.0
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
        if extra_scale is not None:
            E += extra_dS[n, :, r0 : r0 + rows].reshape(n_c, B) * extra_scale
        T = ws.get("T", (k, B), dtype)
        np.matmul(net.Wc, E, out=T)
        rows_of(G, n, Qg).interior(r0, r0 + rows)[...] = T.reshape(k, rows, W)
        dW = (Y @ E.T).astype(np.float64)  # (k, n_c)
        dc = E.sum(axis=1, dtype=np.float64)
        return [np.array([loss, denominator]), dW, dc]

    parts = None
    Kf_scaled = [-net.h * layer.Kf for layer in net.layers] if net.symmetric else None
    for t, layer in enumerate(net.layers):
        last = t == L - 1
        Y_in = Ys[t]
        Q_out = None if last else net.layers[t + 1].P

        def layer_block(n, r0, rows, t=t, layer=layer, last=last, Y_in=Y_in,
                        Q_out=Q_out):
            src = rows_of(Y_in, n, layer.P)
            A = ws.get("A", (k, rows * W), dtype)
            A3 = A.reshape(k, rows, W)
            if net.symmetric:   # A_t was made by the first pass; -h K_t^T A_t
                PT = layer.patches(rows_of(As[t], n, layer.P), r0, rows, ws, adjoint=True)
                matmul_columns(Kf_scaled[t], PT[:-1], A)
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

    def add_adjoint(n, r0, rows, t):
        """G[rows] += K_t^T dZ_t (rows of image n); returns the patches of dZ_t."""
        T = ws.get("T", (k, rows * W), dtype)
        PT = net.layers[t].apply(rows_of(dZ_buffers[t % 2], n, Qz), r0, rows, ws, T,
                                 adjoint=True)
        g = rows_of(G, n, Qg).interior(r0, r0 + rows)
        g += T.reshape(k, rows, W)
        return PT

    if net.symmetric:
        backward = _SymmetricBackward(net, run, ws, rows_of, Ys, As, Ds, G, Qg,
                                      dZ_buffers, Qz, add_adjoint)
        backward.layers()  # dK_t's parts; dKbs come with the opening's pass
    else:
        dKbs = [None] * L
        pending = None  # the layer whose K^T dZ is not yet in G
        for t in reversed(range(L)):
            layer = net.layers[t]

            def backward_block(n, r0, rows, t=t, layer=layer, pending=pending):
                if pending is not None:
                    add_adjoint(n, r0, rows, pending)
                B = rows * W
                dZ = ws.get("dZ", (k, B), dtype)
                dZ3 = dZ.reshape(k, rows, W)
                g = rows_of(G, n, Qg).interior(r0, r0 + rows)
                # dZ = h G * sigma', in one pass when h = 1
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
                return [(PT @ dZ.T).astype(np.float64)]

            dKbs[t] = ordered_sum([p[0] for p in run(backward_block)]).T
            fill_batch(dZ_buffers[t % 2], Qz, boundary, H, W)
            pending = t

    def opening_backward(n, r0, rows):
        # dZ = (G + K_0^T dZ_0) * sigma'; G_0 itself is not needed again
        T = ws.get("T", (k, rows * W), dtype)
        PTd = net.layers[0].apply(rows_of(dZ_buffers[0], n, Qz), r0, rows, ws, T,
                                  adjoint=True)
        terms = backward.dZ_terms(PTd, n, r0, rows, 0) if net.symmetric else []
        dZ = ws.get("dZ", (k, rows * W), dtype)
        dZ3 = dZ.reshape(k, rows, W)
        np.add(rows_of(G, n, Qg).interior(r0, r0 + rows), T.reshape(k, rows, W), out=dZ3)
        if D_open is not None:
            dZ3 *= D_open[n, :, r0 : r0 + rows]
        PT = op.patches(rows_of(Xpad, n, op.P), r0, rows, ws)
        return [(PT @ dZ.T).astype(np.float64)] + terms

    parts = run(opening_backward)
    dKb_open = ordered_sum([p[0] for p in parts]).T
    if net.symmetric:
        dKbs = backward.finish(parts)

    tape.release()

    if extra_scale is not None:
        denominator = extra_scale
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


class _SymmetricBackward:
    """The backward passes of the symmetric layers, Y_{t+1} = Y_t - h K_t^T A_t
    with A_t = sigma(Z_t), Z_t = K_t Y_t + b_t, from G = dE/dY_L.

    Layer t, last to first: a pass G_{t+1} += K_{t+1}^T dZ_{t+1} (t < L - 1:
    the adjoint patches of dZ_{t+1}, which also give its weight gradient),
    then a pass dZ_t = -h (K_t G_{t+1}) * sigma' (the patches J(G_{t+1}), which
    also give the term -h J(G) A_t^T); the opening layer's pass takes dZ_0's.
    dK_t = dZ_t (*) Y_t - h A_t (*) G_{t+1}, each a GEMM over the pixels of a
    block with patches that the pass builds anyway, so Y_t's are not built
    again: the first from the adjoint patches of dZ_t, (k s s, B) @ (B, k),
    entry ((o, a, b), c) = dK_t[o, c, s-1-a, s-1-b] (K_t^T's kernel is
    flipped); the second (k s s, B) @ (B, k) from J(G_{t+1}); db_t the sum of
    dZ_t, the centre rows of its patches. Right operands are transposed
    copies (B, k) of the blocks of Y_t and A_t (:func:`matmul_slices`).
    """

    def __init__(self, net, run, ws, rows_of, Ys, As, Ds, G, Qg, dZ_buffers, Qz,
                 add_adjoint):
        self.net, self.run, self.ws, self.rows_of = net, run, ws, rows_of
        self.Ys, self.As, self.Ds, self.G, self.Qg = Ys, As, Ds, G, Qg
        self.dZ_buffers, self.Qz, self.add_adjoint = dZ_buffers, Qz, add_adjoint
        self.s = net.layers[0].s
        self.K_scaled = [-net.h * layer.Kb[:, : layer.CS] for layer in net.layers]
        L = net.depth
        self.first, self.db, self.second = [None] * L, [None] * L, [None] * L

    def transposed(self, buffer, n, Q, r0, rows, name):
        """Rows [r0, r0 + rows) of image n of a padded batch buffer, as a
        C-contiguous (rows W, k)."""
        net = self.net
        out = self.ws.get(name, (rows * net.W, net.k), net.dtype)
        np.copyto(out.reshape(rows, net.W, net.k),
                  self.rows_of(buffer, n, Q).interior(r0, r0 + rows).transpose(1, 2, 0))
        return out

    def dZ_terms(self, PTd, n, r0, rows, t):
        """[dZ_t (*) Y_t (k s s, k), db_t (k,)] of one block, float64, from
        PTd (k s s + 1, B), the adjoint patches of dZ_t."""
        k, ss = self.net.k, self.s * self.s
        YT = self.transposed(self.Ys[t], n, self.net.layers[t].P, r0, rows, "YT")
        first = matmul_slices(PTd[:-1], YT)
        db = PTd[:-1].reshape(k, ss, -1)[:, ss // 2].sum(axis=1).astype(np.float64)
        return [first, db]

    def layer_block(self, n, r0, rows, t):
        """dZ_t of one block into its buffer; returns [J(G_{t+1}) A_t^T] (k s s, k)."""
        net, k, W = self.net, self.net.k, self.net.W
        layer = net.layers[t]
        PTg = layer.patches(self.rows_of(self.G, n, self.Qg), r0, rows, self.ws, name="PTg")
        dZ = self.ws.get("dZ", (k, rows * W), net.dtype)
        matmul_columns(self.K_scaled[t], PTg[:-1], dZ)
        dZ3 = dZ.reshape(k, rows, W)
        out = self.rows_of(self.dZ_buffers[t % 2], n, self.Qz).interior(r0, r0 + rows)
        if self.Ds[t] is None:
            out[...] = dZ3
        else:
            np.multiply(dZ3, self.Ds[t][n, :, r0 : r0 + rows], out=out)
        AT = self.transposed(self.As[t], n, layer.P, r0, rows, "AT")
        return [matmul_slices(PTg[:-1], AT)]

    def layers(self):
        """The passes of layers L-1 .. 0 (dZ_0's terms come with the opening's)."""
        net = self.net
        fill = lambda buffer, Q: fill_batch(buffer, Q, net.boundary, net.H, net.W)
        for t in reversed(range(net.depth)):
            if t < net.depth - 1:
                u = t + 1

                def adjoint_block(n, r0, rows, u=u):
                    return self.dZ_terms(self.add_adjoint(n, r0, rows, u), n, r0, rows, u)

                self.collect(self.run(adjoint_block), u, 0)
                fill(self.G, self.Qg)
            parts = self.run(lambda n, r0, rows, t=t: self.layer_block(n, r0, rows, t))
            self.second[t] = ordered_sum([p[0] for p in parts])
            fill(self.dZ_buffers[t % 2], self.Qz)

    def collect(self, parts, t, offset):
        """dZ_t's terms from the chunks' parts (at ``offset`` in each)."""
        self.first[t] = ordered_sum([p[offset] for p in parts])
        self.db[t] = ordered_sum([p[offset + 1] for p in parts])

    def finish(self, opening_parts):
        """[dK_t | db_t] (k, k s s + 1) float64 per layer, with the opening's
        pass's parts (dZ_0's terms after its own)."""
        self.collect(opening_parts, 0, 1)
        k, s, h = self.net.k, self.s, self.net.h
        CS = k * s * s
        dKbs = []
        for t in range(self.net.depth):
            dKb = np.empty((k, CS + 1))
            first = self.first[t].reshape(k, s, s, k)[:, ::-1, ::-1].transpose(0, 3, 1, 2)
            second = self.second[t].reshape(k, s, s, k).transpose(3, 0, 1, 2)
            dKb[:, :CS] = (first - h * second).reshape(k, CS)
            dKb[:, CS] = self.db[t]
            dKbs.append(dKb)
        return dKbs
