"""Training data kept on a Dask cluster, and the loss and gradient of any
parameters over it: :class:`ChunkedProblem`.

The scheme is :mod:`arrseg.dask.gradient`'s; here the blocks are cut once
and kept, and each evaluation moves only the parameters and the sums::

    construction   x (N, C, H, W) normalised, labels int64 (N, H, W)
                   -> haloed blocks (n, C, h', w') with their labels padded
                      with ignore_index (n, h', w'): one object per block,
                      computed and kept where they are computed (the
                      workers of a ``dask.distributed`` Client; this process
                      without one)
                   -> per block: x finite? labels >= 0 or ignore_index? the
                      count of each label: gathered once, checked here
    each call      the parameters scattered to every worker
                   (``broadcast=True``); one task per block on its kept data
                   (:func:`arrseg.core.loss_and_grad`, unchecked: the values
                   were checked once) -> float64 [loss sum, D, gradient
                   sums]; the sums added in the fixed-order tree of
                   :func:`arrseg.dask.gradient.tree_sum` (one task per
                   addition); one vector (2 + L floats) comes back

The tree's shape depends only on the blocks chosen, so the result does not
depend on the number of workers or on which worker computed what: it is
the same to the last bit. A worker lost during a call loses its blocks and
partial sums; Dask recomputes them from their lineage (the blocks' graph is
kept with them), and the parameters are on every worker.
"""

from __future__ import annotations

import dataclasses
import operator

import numpy as np
from array_api_compat import array_namespace

from .._arguments import check_choice, check_int
from .._backend import is_dask_array, to_numpy
from .._validation import _as_params, check_ignore_index
from ..core import features
from ..numerics.convolution import BOUNDARIES
from ..numerics.residual import receptive_halo
from ..optim.edge_smoothness import EdgeSmoothness
from . import halo as _halo
from .edges import block_gradient, owned_weights
from .gradient import BlockSpec, add, block_sums, normalise, padded_labels, tree_sum

__all__ = ["ChunkedProblem", "Pending"]

_WHAT = "ChunkedProblem"

#: The largest class index a ChunkedProblem takes (its per-block label
#: counts are a dense table): larger values are refused, naming ignore_index.
MAX_LABEL = 2**16 - 1


def active_client():
    """The ``dask.distributed`` Client in use, or None (none, or no
    ``distributed``)."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


class ChunkedProblem:
    """Images and labels cut into haloed blocks and kept, for training.

    Parameters
    ----------
    x : dask.array.Array, shape (N, C, H, W)
        Normalised images, float32 or float64, NumPy chunks (lazy: computed
        here, once).
    labels : dask.array.Array or NumPy array, shape (N, H, W)
        Integer class indices or ``ignore_index``.
    halo_width : int
        p >= 0, at least the receptive halo of every network evaluated
        (:func:`arrseg.numerics.residual.receptive_halo`).
    ignore_index : int, default -100
    boundary : {"zeros", "periodic"}, default "zeros"
    client : distributed.Client, optional
        Where the blocks are kept and evaluated; default the active Client
        if there is one, else this process (dask's local scheduler).
    edge_contrast : float, optional
        sigma^2 of the edge-aware smoothness of the logits
        (:mod:`arrseg.dask.edges`): each block then keeps the weights of
        the pairs of neighbours it owns, for :meth:`labelled_features`'
        ``gram`` and :meth:`edge_gradient`. It needs a halo one pixel wider
        than the network's reach.

    Attributes
    ----------
    n_blocks : int
    dtype : numpy.dtype
        x's dtype.
    counts : int64 ndarray (n_blocks, max label + 1)
        The number of pixels of each label in each block (halo excluded).
    halo : arrseg.dask.halo.Halo

    Raises
    ------
    TypeError, ValueError
        Naming the argument: bad types, shapes, dtypes or options; images
        that are not finite; labels that are neither >= 0 nor
        ``ignore_index``.

    Notes
    -----
    Parameters are scattered each step (``broadcast=True``); gradient sums
    come back. Close the problem (or use it as a context manager) to
    release the blocks.

    Examples
    --------
    >>> import numpy as np, dask.array as da, arrseg
    >>> from arrseg.core import Options
    >>> from arrseg.dask.cluster import ChunkedProblem
    >>> x, y = arrseg.data.make_shapes(n_images=2, size=24, seed=0)
    >>> x = x.astype(np.float64)
    >>> params = arrseg.init_params(3, 4, 3, seed=0, dtype="float64")
    >>> with ChunkedProblem(da.from_array(x, chunks=(1, 3, 12, 12)), y,
    ...                     halo_width=1) as problem:
    ...     loss, grad, D = problem.loss_and_grad(params, Options())
    >>> problem.n_blocks, D == y.size
    (8, True)
    >>> bool(np.isclose(loss, arrseg.loss_and_grad(x, y, params)[0], rtol=1e-12))
    True
    """

    def __init__(self, x, labels, *, halo_width, ignore_index=-100, boundary="zeros",
                 client=None, edge_contrast=None):
        import dask
        import dask.array as da

        from .prediction import check_images

        check_images(x, "x")
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"x must be float32 or float64 (normalised images), got "
                            f"dtype {x.dtype}")
        N, C, H, W = (int(n) for n in x.shape)
        if not (is_dask_array(labels) or isinstance(labels, np.ndarray)):
            raise TypeError(f"labels must be a dask array or a NumPy array, got "
                            f"{type(labels).__name__}")
        if tuple(labels.shape) != (N, H, W):
            raise ValueError(f"labels must have shape (N, H, W) = {(N, H, W)} to match "
                             f"x, got shape {tuple(labels.shape)}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be an integer array, got dtype "
                            f"{labels.dtype}")
        halo_width = check_int("halo_width", halo_width, 0)
        check_choice("boundary", boundary, BOUNDARIES)
        self.ignore_index = check_ignore_index(ignore_index)
        self.dtype = np.dtype(x.dtype)
        self.shape = (N, C, H, W)
        self.client = active_client() if client is None else client
        self.edge_contrast = None if edge_contrast is None else float(edge_contrast)

        # blocks (n, 0, i, j) of the haloed images; label chunks (n, i, j)
        x = x.rechunk({1: -1})
        self.halo = halo = _halo.plan(x.chunks[2:], (H, W), halo_width, boundary)
        haloed = _halo.extend(x, halo)
        chunks = (x.chunks[0],) + tuple(halo.chunks)
        labels = (labels.rechunk(chunks) if is_dask_array(labels)
                  else da.from_array(labels, chunks=chunks))
        x_blocks, label_blocks = haloed.to_delayed(), labels.to_delayed()
        if self.edge_contrast is not None:   # the labelled mask, haloed as x
            labelled = _halo.extend((labels != self.ignore_index)[:, None], halo)
            labelled = labelled.to_delayed()
        make = dask.delayed(_stored_block, pure=True)
        blocks, self.index, sides = [], [], []
        for n in range(len(chunks[0])):
            for i in range(len(chunks[1])):
                for j in range(len(chunks[2])):
                    sides.append(_halo.sides(halo, i, j))
                    edge = None
                    if self.edge_contrast is not None:
                        (t, _), (l, _) = sides[-1]
                        origin = (sum(chunks[1][:i]) - t, sum(chunks[2][:j]) - l)
                        edge = (labelled[n, 0, i, j], origin, (H, W),
                                self.edge_contrast)
                    blocks.append(make(x_blocks[n, 0, i, j], label_blocks[n, i, j],
                                       sides[-1], self.ignore_index, edge))
                    self.index.append((n, i, j))

        # keep the blocks; their checks and label counts: one gather
        if self.client is not None:
            self._blocks = self.client.compute(blocks)
            stats = self.client.gather([
                self.client.submit(_block_stats, b, s, self.ignore_index, pure=False)
                for b, s in zip(self._blocks, sides)])
        else:
            self._blocks = list(dask.compute(*blocks))
            stats = [_block_stats(b, s, self.ignore_index)
                     for b, s in zip(self._blocks, sides)]
        self._check(stats, chunks)

    def _check(self, stats, chunks):
        """Raise for the first block with non-finite images or bad labels;
        set :attr:`counts`."""
        for (finite, good, _), (n, i, j) in zip(stats, self.index):
            if not (finite and good):
                n0 = sum(chunks[0][:n])
                r0, c0 = sum(chunks[1][:i]), sum(chunks[2][:j])
                what = ("x must be finite, got NaN or inf values" if not finite else
                        f"labels must be class indices >= 0 or ignore_index = "
                        f"{self.ignore_index}, got negative values")
                self.close()
                raise ValueError(
                    f"{_WHAT}: {what} in the chunk of "
                    f"images {n0}:{n0 + chunks[0][n]}, rows {r0}:{r0 + chunks[1][i]}, "
                    f"columns {c0}:{c0 + chunks[2][j]}")
        top = max((int(v[-1]) for _, _, (v, _) in stats if v.size), default=-1)
        if top > MAX_LABEL:
            self.close()
            raise ValueError(
                f"{_WHAT}: labels holds the value {top}: class indices must be below "
                f"{MAX_LABEL + 1}; if {top} marks unlabelled pixels, pass it as "
                "ignore_index")
        self.counts = np.zeros((len(stats), top + 1), dtype=np.int64)
        for row, (_, _, (values, counts)) in zip(self.counts, stats):
            row[values] = counts

    @property
    def n_blocks(self):
        """The number of blocks."""
        return len(self.index)

    @property
    def max_label(self):
        """The largest label that counts (-1 if none)."""
        present = np.flatnonzero(self.counts.sum(axis=0))
        return int(present[-1]) if present.size else -1

    def block_weights(self, class_weight=None):
        """D of each block: the sum of its labelled pixels' weights.

        Parameters
        ----------
        class_weight : float ndarray (n_c,), optional
            Covering every label present.

        Returns
        -------
        float64 ndarray (n_blocks,)
        """
        if class_weight is None:
            return self.counts.sum(axis=1).astype(np.float64)
        w = self._weights(class_weight)
        return self.counts @ w[:self.counts.shape[1]]

    def _weights(self, class_weight, n_classes=None):
        w = np.asarray(class_weight, dtype=np.float64)
        n_c = w.shape[0] if n_classes is None else n_classes
        if w.ndim != 1 or w.shape[0] != n_c or w.shape[0] <= self.max_label:
            raise ValueError(f"{_WHAT}: class_weight must have shape (n_c,) covering "
                             f"the labels up to {self.max_label}, got shape {w.shape}")
        return w

    def _fitted_params(self, p, options):
        """Parameters p as NumPy arrays of the blocks' compute dtype, after
        checking that the blocks' halo covers the network's reach."""
        need = receptive_halo(p.kernel_size, p.layer_kernel_size, options.dilation,
                              options.layer)
        if not self.halo.whole and need > self.halo.width:
            raise ValueError(f"{_WHAT}: the network reads {need} pixels around each "
                             f"pixel, but the blocks have a halo of halo_width = "
                             f"{self.halo.width}")
        dtype = np.result_type(self.dtype, p.K.dtype)
        return type(p)(*(None if a is None else np.asarray(a, dtype=dtype) for a in p))

    def _spec(self, params, options, class_weight):
        """The checked :class:`~arrseg.dask.gradient.BlockSpec` of a call."""
        p = _as_params(params)
        if p.in_channels != self.shape[1]:
            raise ValueError(f"{_WHAT}: params.K expects C = {p.in_channels} channels, "
                             f"the images have {self.shape[1]}")
        if p.W is not None and p.n_classes <= self.max_label:
            raise ValueError(f"{_WHAT}: labels holds the class {self.max_label}, but "
                             f"params.W has {p.n_classes} classes")
        p = self._fitted_params(p, options)
        w = None
        if class_weight is not None:
            w = self._weights(class_weight, None if p.W is None else p.n_classes)
        return BlockSpec(p, dataclasses.replace(options, boundary=self.halo.boundary),
                         self.ignore_index, w, False)

    def _chosen(self, blocks):
        """The block indices of a call, in increasing order."""
        if blocks is None:
            return list(range(self.n_blocks))
        try:
            chosen = sorted(operator.index(b) for b in blocks)
        except TypeError:
            raise TypeError(f"{_WHAT}: blocks must be a sequence of block indices, got "
                            f"{blocks!r}") from None
        if not chosen or chosen[0] < 0 or chosen[-1] >= self.n_blocks or len(
                set(chosen)) != len(chosen):
            raise ValueError(f"{_WHAT}: blocks must be distinct indices in [0, "
                             f"{self.n_blocks}), at least one, got {list(blocks)}")
        return chosen

    def submit(self, params, options, class_weight=None, blocks=None):
        """Start the blocks' sums; :meth:`Pending.result` adds them up.

        Parameters are as for :meth:`loss_and_grad`.

        Returns
        -------
        Pending
        """
        spec = self._spec(params, options, class_weight)
        return self._pending(_stored_block_sums, spec, self._chosen(blocks))

    def _pending(self, worker, spec, chosen, finish=normalise):
        """``worker(block, spec)`` started on each chosen block (its vector
        of sums), as a :class:`Pending` that adds them up; spec scattered to
        every worker with a Client."""
        if self.client is None:
            import dask

            task = dask.delayed(worker, pure=False)
            return Pending(None, [task(self._blocks[b], spec) for b in chosen],
                           finish=finish)
        [payload] = self.client.scatter([spec], broadcast=True, hash=False)
        sums = [self.client.submit(worker, self._blocks[b], payload) for b in chosen]
        return Pending(self.client, sums, payload, finish=finish)

    def loss_and_grad(self, params, options, class_weight=None, blocks=None):
        """The mean cross-entropy and its gradient over all or some blocks.

        Parameters
        ----------
        params : Params or ResidualParams
            NumPy arrays, float32 or float64; the blocks compute in
            ``result_type(x.dtype, params' dtype)``.
        options : arrseg.core.Options
            Checked, with one dilation per residual layer; its boundary is
            ignored (the problem's is used).
        class_weight : float ndarray (n_c,), optional
        blocks : sequence of int, optional
            Block indices (a mini-batch); default all blocks. The loss is
            then over those blocks' labelled pixels, normalised by their D.

        Returns
        -------
        loss : float
        grad : float64 ndarray (L,)
            The gradient, flat (:mod:`arrseg.optim.flat`), normalised.
        D : float
            The sum of the labelled pixels' weights; the loss and gradient
            are 0 when it is.
        """
        return self.submit(params, options, class_weight, blocks).result()

    def labelled_features(self, params, options, blocks=None, gram=None):
        """The classifier's input at the labelled pixels (VarPro's features).

        Parameters
        ----------
        params : Params or ResidualParams
            K, b (and the residual layers); W and c are not used.
        options : arrseg.core.Options
        blocks : sequence of int, optional
        gram : float, optional
            alpha / n: also the penalty matrix of the edge-aware smoothness
            (needs ``edge_contrast``), from the same features.

        Returns
        -------
        Y : ndarray (k, M)
            The features of the M labelled pixels, block after block.
        labels : int64 ndarray (M,)
        penalty : float64 ndarray (k, k)
            With ``gram``: (alpha / n) M, the blocks' Gram matrices
            (:func:`arrseg.dask.edges.block_gram`) added in block order.
        """
        p = _as_params(params)
        p = self._fitted_params(p, options)
        if gram is not None and self.edge_contrast is None:
            raise ValueError(f"{_WHAT}: gram needs a problem made with edge_contrast")
        spec = (p, dataclasses.replace(options, boundary=self.halo.boundary), gram)
        chosen = self._chosen(blocks)
        if self.client is None:
            parts = [_stored_features(self._blocks[b], spec, self.ignore_index)
                     for b in chosen]
        else:
            [payload] = self.client.scatter([spec], broadcast=True, hash=False)
            parts = self.client.gather([
                self.client.submit(_stored_features, self._blocks[b], payload,
                                   self.ignore_index) for b in chosen])
        out = (np.concatenate([part[0] for part in parts], axis=1),
               np.concatenate([part[1] for part in parts]))
        if gram is None:
            return out
        penalty = parts[0][2]
        for part in parts[1:]:
            penalty = penalty + part[2]
        return out + (penalty,)

    def edge_gradient(self, params, options, coefficient):
        """The gradient of the edge-aware smoothness of the logits,
        ``coefficient/2 sum w_ij ||S_i - S_j||^2`` over every image's pairs,
        in all the parameters (W and c included).

        Parameters
        ----------
        params : Params or ResidualParams
            With W and c: the logits S = W^T Y + c.
        options : arrseg.core.Options
        coefficient : float
            alpha / n.

        Returns
        -------
        float64 ndarray (L,)
            Flat (:mod:`arrseg.optim.flat`): the blocks' gradients
            (:func:`arrseg.dask.edges.block_gradient`) added in the
            fixed-order tree of the loss's sums.
        """
        if self.edge_contrast is None:
            raise ValueError(f"{_WHAT}: edge_gradient needs a problem made with "
                             "edge_contrast")
        p = self._fitted_params(_as_params(params), options)
        spec = (p, dataclasses.replace(options, boundary=self.halo.boundary),
                float(coefficient), self.ignore_index)
        return self._pending(_stored_edge_gradient, spec, self._chosen(None),
                             finish=np.asarray).result()

    def close(self):
        """Release the blocks (on the cluster: drop this problem's futures)."""
        blocks, self._blocks = getattr(self, "_blocks", []), []
        if self.client is not None:
            for f in blocks:
                f.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Pending:
    """The blocks' sums of one call, being computed.

    Attributes
    ----------
    blocks : list
        One ``distributed`` future (or dask Delayed, without a Client) per
        block chosen, each the block's float64 vector of sums.
    """

    def __init__(self, client, blocks, payload=None, finish=normalise):
        # the scattered parameters are held too: scattered data has no
        # lineage, and a sum lost with a worker is recomputed from them
        self.client, self.blocks, self._payload = client, blocks, payload
        self._finish = finish
        self._value = None

    def result(self, timeout=None):
        """(loss, grad, D): the blocks' sums added in the fixed-order tree,
        normalised (:meth:`ChunkedProblem.loss_and_grad`).

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the sum (with a Client).
        """
        if self._value is not None:
            return self._value
        if self.client is None:
            import dask

            root = tree_sum(self.blocks, dask.delayed(add, pure=False))
            (vector,) = dask.compute(root)
        else:
            # every partial sum stays wanted until the root is back: a sum
            # lost with a worker is then recomputed from its inputs (a
            # released intermediate would be forgotten, and its dependents
            # cancelled)
            held = []

            def combine(a, b):
                held.append(self.client.submit(add, a, b))
                return held[-1]

            vector = tree_sum(self.blocks, combine).result(timeout=timeout)
            del held
        # the blocks' sums and the parameters are released with the result
        self._value, self.blocks, self._payload = self._finish(vector), [], None
        return self._value


# -- on the workers -----------------------------------------------------------


def _stored_block(x_block, label_chunk, sides, ignore_index, edge=None):
    """One kept block: (images (n, C, h', w'), labels padded with
    ignore_index (n, h', w'), the weights of its owned pairs or None).
    ``edge``: (the haloed labelled mask (n, 1, h', w'), the block's origin in
    the image, (H, W), sigma^2)."""
    weights = None
    if edge is not None:
        labelled, origin, shape_hw, sigma2 = edge
        weights = owned_weights(x_block, labelled[:, 0], sides, origin, shape_hw, sigma2)
    return x_block, padded_labels(label_chunk, sides, ignore_index), weights


def _block_stats(block, sides, ignore_index):
    """(the chunk's images finite, labels >= 0 or ignore, counts of each
    label >= 0)."""
    x_block, labels = block[0], block[1]
    xp = array_namespace(x_block)
    finite = bool(to_numpy(xp.all(xp.isfinite(_halo.trim(x_block, sides)))))
    lab = to_numpy(labels)
    counted = lab[lab != ignore_index]
    good = bool(np.all(counted >= 0))
    if not (good and counted.size):
        return finite, good, (np.zeros(0, np.int64), np.zeros(0, np.int64))
    # (values, counts), not a bincount: a stray huge label costs nothing here
    values, counts = np.unique(counted, return_counts=True)
    return finite, good, (values.astype(np.int64), counts.astype(np.int64))


def _stored_block_sums(block, spec):
    """:func:`arrseg.dask.gradient.block_sums` of one kept block."""
    return block_sums(block[0], block[1], spec)


def _stored_features(block, spec, ignore_index):
    """(Y (k, m), labels (m,)) at the m labelled pixels of one kept block;
    with a ``gram`` coefficient in spec, its Gram matrix (k, k) third."""
    (p, options, gram), (x_block, labels, weights) = spec, block
    xp = array_namespace(x_block)
    k = int(p.K.shape[0])
    if 0 in tuple(x_block.shape):
        empty = np.zeros((k, 0), dtype=p.K.dtype), np.zeros(0, dtype=np.int64)
        return empty if gram is None else empty + (np.zeros((k, k)),)
    if x_block.dtype != p.K.dtype:
        x_block = xp.astype(x_block, p.K.dtype)
    layers = None if p.K_layers is None else (p.K_layers, p.b_layers)
    Y = features(x_block, p.K, p.b, options, xp, layers)          # (n, k, h' w')
    lab = to_numpy(labels).reshape(labels.shape[0], -1)           # (n, h' w')
    counted = lab != ignore_index
    Yc = np.moveaxis(to_numpy(Y), 1, 0)[:, counted]               # (k, m)
    if gram is None:
        return Yc, lab[counted]
    n, _, hh, ww = x_block.shape
    edges = EdgeSmoothness.from_weights(*weights, alpha=gram, n_pixels=1)
    G = edges.gram(xp.reshape(Y, (n, k, hh, ww)))
    return Yc, lab[counted], to_numpy(G).astype(np.float64)


def _stored_edge_gradient(block, spec):
    """:func:`arrseg.dask.edges.block_gradient` of one kept block, as the
    vector of sums :class:`Pending` adds."""
    (p, options, coefficient, ignore_index), (x_block, _, weights) = spec, block
    if x_block.dtype != p.K.dtype:
        x_block = array_namespace(x_block).astype(x_block, p.K.dtype)
    return block_gradient(x_block, weights, p, options, coefficient, ignore_index)
