"""The loss and its gradient over a dask array: exact sums of the chunks.

The loss is a ratio of sums over the labelled pixels,
``E = sum_x w[y(x)] CE(x) / D`` with ``D = sum_x w[y(x)]`` (w = 1 without
class weights), so it splits exactly into the chunks' un-normalised sums::

    x (N, C, H, W), any chunks        one chunk along C
      -> haloed blocks                  halo.plan / halo.extend (p, the
                                        network's receptive halo)
    labels (N, H, W)                    cut into the same chunks, no halo
      -> per block (n, i, j): the label chunk padded to the haloed block with
         ignore_index (halo.sides), so that only the chunk's own pixels
         count; the network on the block, boundary=halo.boundary
         -> one float64 vector [loss sum, D_block, gradient sums]
            (the block's mean times D_block; 0 where nothing is labelled)
      -> the vectors added in a fixed-order pairwise tree (blocks in C order
         over (n, i, j), level by level), in float64
      -> divided by D once (0 loss and gradient when D = 0), cast to the
         parameters' dtype

A chunk's loss, as a function of the parameters, is the same on its haloed
block as on the whole image (every own pixel sees its whole receptive field
there), so its gradient is too: the result equals the in-memory
:func:`arrseg.loss_and_grad` up to round-off, for any chunking, with ignore
labels and class weights. The gradient's flat layout is that of
:mod:`arrseg.optim.flat`: K, b, W, c (when not None), K_layers, b_layers.

Work: one task per block, then one task per addition of the tree; the
tree's shape depends only on the number of blocks, so the sum does not
depend on the scheduler, the number of workers or the order in which the
blocks finish. :func:`loss_and_grad` computes the graph with dask's current
scheduler (the active ``dask.distributed`` Client, if any);
:class:`ChunkedProblem` (:mod:`arrseg.dask.cluster`) keeps training data
on a cluster and evaluates any parameters on it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from .._backend import device, float_name, is_dask_array, to_numpy
from .._validation import _as_params, check_call, check_options, fit_options
from ..core import Options, select_path
from ..network import loss_and_grad as _network_loss_and_grad
from ..numerics.residual import receptive_halo
from ..optim.flat import flatten, layout_of, unflatten
from ..overflow import NonFiniteError
from ..params import params_like
from . import halo as _halo

__all__ = ["BlockSpec", "add", "block_sums", "loss_and_grad", "normalise",
           "padded_labels", "tree_sum"]

_WHAT = "arrseg.dask.loss_and_grad"


def loss_and_grad(x, labels, params, *, activation="tanh", boundary="zeros",
                  class_weight=None, ignore_index=-100, method="auto", dilation=1,
                  step=1.0, layer="residual"):
    """Mean cross-entropy over the labelled pixels of a dask array, and its gradient.

    The same loss and gradient as :func:`arrseg.loss_and_grad` on the
    computed arrays, up to round-off (see the module docstring): each chunk
    returns its un-normalised sums, which are added in a fixed-order tree
    in float64 and divided once by the sum of the label weights. Computed
    at once, with dask's current scheduler (the active ``dask.distributed``
    Client if there is one).

    Parameters
    ----------
    x : dask.array.Array, shape (N, C, H, W)
        Images, in any chunks, NumPy or CuPy chunks (the parameters'
        namespace). float32 and float64 are kept; integer and bool images
        are converted to the parameters' dtype as they are.
    labels : dask.array.Array or NumPy array, shape (N, H, W)
        Integer class indices in [0, n_c), or ``ignore_index``; rechunked
        to x's chunks.
    params : Params
    activation, boundary, class_weight, ignore_index, method, dilation, step, layer
        As for :func:`arrseg.loss_and_grad`; ``method`` is chosen per block.

    Returns
    -------
    loss : 0-d array
        In the parameters' namespace, device and dtype.
    grads : Params
        Shaped and typed like ``params`` (:class:`arrseg.ResidualParams` at
        depth > 0).

    Raises
    ------
    TypeError, ValueError
        Before anything is computed, naming the argument: x or labels of the
        wrong type, shape, dtype or of unknown chunk sizes; bad parameters,
        class weights or options. When computed, for a chunk whose images
        are not finite or whose labels are out of range (the message gives
        the chunk's pixels).
    arrseg.NonFiniteError
        When finite inputs overflow.

    Examples
    --------
    >>> import numpy as np, dask.array as da, arrseg, arrseg.dask
    >>> x, y = arrseg.data.make_shapes(n_images=2, size=24, seed=0)
    >>> params = arrseg.init_params(3, 8, 3, seed=0, dtype="float64")
    >>> x = x.astype(np.float64)
    >>> loss, grads = arrseg.dask.loss_and_grad(da.from_array(x, chunks=(1, 3, 10, 12)),
    ...                                         y, params)
    >>> ref, ref_grads = arrseg.loss_and_grad(x, y, params)
    >>> bool(np.isclose(loss, ref, rtol=1e-12, atol=0))
    True
    >>> bool(np.allclose(grads.K, ref_grads.K, rtol=1e-10, atol=1e-14))
    True
    """
    import dask
    import dask.array as da

    from .prediction import check_images

    options = check_options(activation, boundary, method, dilation, step, layer)
    xp = check_images(x, "x")
    p = _as_params(params)
    N, C, H, W = (int(n) for n in x.shape)
    if p.K is not None and p.K.ndim == 4 and int(p.K.shape[1]) != C:
        raise ValueError(f"x has {C} channels (shape {tuple(x.shape)}) but params.K "
                         f"expects C = {int(p.K.shape[1])} (shape {tuple(p.K.shape)})")
    labels = _check_labels(labels, (N, H, W))
    # params (shapes, dtypes, namespace, finite values), x's and labels' dtypes,
    # class_weight and ignore_index: the in-memory checks on a 1 x 1 stand-in
    dev = device(x._meta)
    a = check_call(xp.zeros((1, C, 1, 1), dtype=x.dtype, device=dev), p,
                   xp.zeros((1, 1, 1), dtype=labels.dtype, device=dev), class_weight,
                   ignore_index)
    options = fit_options(options, p.depth)
    n_c = int(p.W.shape[1])
    # an explicit method that cannot run (e.g. "fused" on NumPy) fails here
    select_path(options.method, a.xp, (1, C, 1, 1), tuple(p.K.shape), n_c, a.dtype,
                "train", None if p.K_layers is None else tuple(p.K_layers.shape))
    weight = None if class_weight is None else to_numpy(a.class_weight).astype(
        np.float64)                                   # scaled to at most 1: D's ratio

    # blocks (n, 1, i, j) of the haloed images; label chunks (n, i, j)
    width = receptive_halo(p.kernel_size, p.layer_kernel_size, options.dilation,
                           options.layer)
    x = x.rechunk({1: -1})
    if x.dtype != a.dtype:
        x = x.astype(a.dtype)
    halo = _halo.plan(x.chunks[2:], (H, W), width, options.boundary)
    haloed = _halo.extend(x, halo)
    chunks = (x.chunks[0],) + tuple(halo.chunks)
    labels = (labels.rechunk(chunks) if is_dask_array(labels)
              else da.from_array(labels, chunks=chunks))
    x_blocks, label_blocks = haloed.to_delayed(), labels.to_delayed()

    spec = dask.delayed(BlockSpec(a.params, dataclasses.replace(
        options, boundary=halo.boundary), a.ignore_index, weight, True), traverse=False)
    block = dask.delayed(_located_block_sums, pure=True)
    vectors = []
    for n in range(len(chunks[0])):
        for i in range(len(chunks[1])):
            for j in range(len(chunks[2])):
                where = _where(chunks, n, i, j, halo.width)
                vectors.append(block(x_blocks[n, 0, i, j], label_blocks[n, i, j],
                                     _halo.sides(halo, i, j), spec, where))
    total = tree_sum(vectors, dask.delayed(add, pure=True))
    (vector,) = dask.compute(total)

    value, grad, _ = normalise(vector)
    return _in_params_namespace(value, grad, p)


def _check_labels(labels, shape):
    """labels as a dask or NumPy array of ``shape`` (N, H, W); TypeError or
    ValueError naming ``labels``."""
    if not is_dask_array(labels):
        if not isinstance(labels, np.ndarray) or isinstance(labels, np.ma.MaskedArray):
            raise TypeError(f"labels must be a dask array or a NumPy array, got "
                            f"{type(labels).__name__}")
    if tuple(labels.shape) != shape:
        raise ValueError(f"labels must have shape (N, H, W) = {shape} to match x, got "
                         f"shape {tuple(labels.shape)}")
    if labels.dtype.kind not in "biu":
        raise TypeError(f"labels must be an integer array of class indices, got dtype "
                        f"{labels.dtype}")
    return labels


def _where(chunks, n, i, j, width):
    """The pixels of chunk (n, i, j), for messages."""
    n0 = sum(chunks[0][:n])
    r0, c0 = sum(chunks[1][:i]), sum(chunks[2][:j])
    h, w = chunks[1][i], chunks[2][j]
    return (f"in the chunk of images {n0}:{n0 + chunks[0][n]}, rows {r0}:{r0 + h}, "
            f"columns {c0}:{c0 + w} (or its halo of {width} pixels)")


def _in_params_namespace(value, grad, p):
    """(loss, grads) from the float64 host results, in p's namespace, device
    and dtype."""
    xp = array_namespace(p.K)
    dtype, dev = p.K.dtype, device(p.K)
    with np.errstate(over="ignore"):
        host = np.concatenate([[value], grad]).astype(float_name(xp, dtype))
    if not np.all(np.isfinite(host)):
        raise NonFiniteError(
            f"{_WHAT}: the loss or its gradient, computed in float64 (x is float64), "
            f"exceeds the range of the parameters' dtype {host.dtype}: pass float64 "
            "parameters")
    flat = xp.asarray(host[1:], device=dev)
    grads = unflatten(flat, layout_of(p), xp)
    return xp.asarray(host[0], device=dev), params_like(p, grads)


# -- one block ----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BlockSpec:
    """What every block of one evaluation shares.

    Attributes
    ----------
    params : Params
        In the compute dtype, in the namespace of the blocks.
    options : arrseg.core.Options
        Checked, fit to the depth, with the boundary the blocks are
        evaluated with (:attr:`arrseg.dask.halo.Halo.boundary`).
    ignore_index : int
    class_weight : float64 ndarray (n_c,) or None
        The weights on the host; the blocks' D are computed with them.
    checked : bool
        Evaluate each block through the public :func:`arrseg.loss_and_grad`
        (values checked per block), or :func:`arrseg.core.loss_and_grad`
        (checked values).
    """

    params: Any
    options: Options
    ignore_index: int
    class_weight: Any
    checked: bool


def padded_labels(chunk, sides, ignore_index):
    """A chunk's labels (n, h, w) in its haloed block's frame.

    Parameters
    ----------
    chunk : integer array (n, h, w)
    sides : ((top, bottom), (left, right))
        The block's halo around the chunk (:func:`arrseg.dask.halo.sides`).
    ignore_index : int

    Returns
    -------
    int64 array (n, h + top + bottom, w + left + right)
        ``ignore_index`` in the halo, so that only the chunk's own pixels
        count.
    """
    xp = array_namespace(chunk)
    if chunk.dtype == xp.uint64 and chunk.size:
        top = int(to_numpy(xp.max(chunk)))
        if top > np.iinfo(np.int64).max:
            raise ValueError(f"labels holds the value {top}, beyond int64: class "
                             "indices must be small non-negative integers")
    (t, b), (l, r) = sides
    n, h, w = (int(d) for d in chunk.shape)
    out = xp.full((n, h + t + b, w + l + r), ignore_index, dtype=xp.int64,
                  device=device(chunk))
    out[:, t:t + h, l:l + w] = xp.astype(chunk, xp.int64)
    return out


def _denominator(labels, class_weight, ignore_index, xp):
    """D, the sum of the labelled pixels' weights, a Python float (labels in
    range: checked)."""
    counted = labels != ignore_index
    if class_weight is None:
        return float(to_numpy(xp.sum(xp.astype(counted, xp.int64))))
    # per class: the count of its pixels, then the weighted sum in float64
    counts = np.bincount(to_numpy(labels[counted]), minlength=class_weight.shape[0])
    return float(counts[:class_weight.shape[0]] @ class_weight)


def block_sums(x_block, labels_block, spec):
    """The un-normalised sums of one haloed block.

    Parameters
    ----------
    x_block : array (n, C, h', w')
        A haloed block, in the compute dtype (cast here if not).
    labels_block : int64 array (n, h', w')
        Its labels, ``ignore_index`` in the halo (:func:`padded_labels`).
    spec : BlockSpec

    Returns
    -------
    float64 ndarray (2 + L,)
        [sum of w CE, D_block, sums of w dCE/dtheta (flat layout)]: the
        block's mean loss and gradient times D_block; zeros when no pixel
        counts.
    """
    p, o = spec.params, spec.options
    xp = array_namespace(x_block)
    size = layout_of(p).size
    if 0 in tuple(x_block.shape):                       # an empty chunk
        return np.zeros(2 + size)
    dtype = p.K.dtype
    if x_block.dtype != dtype:
        x_block = xp.astype(x_block, dtype)
    weight = None
    if spec.class_weight is not None:
        weight = xp.asarray(spec.class_weight, dtype=dtype, device=device(x_block))
    if spec.checked:
        loss, grads = _network_loss_and_grad(
            x_block, labels_block, p, activation=o.activation, boundary=o.boundary,
            class_weight=weight, ignore_index=spec.ignore_index, method=o.method,
            dilation=o.dilation, step=o.step, layer=o.layer)
        grad = flatten(grads, xp)
    else:
        from ..core import loss_and_grad as _core_loss_and_grad

        loss, grad = _core_loss_and_grad(x_block, labels_block, p, o, weight,
                                         spec.ignore_index, xp, flat=True)
    D = _denominator(labels_block, spec.class_weight, spec.ignore_index, xp)
    out = np.empty(2 + size)
    out[0] = float(to_numpy(loss)) * D
    out[1] = D
    out[2:] = to_numpy(grad).astype(np.float64) * D
    return out


def _located_block_sums(x_block, label_chunk, sides, spec, where):
    """:func:`block_sums` of a chunk's haloed images and unpadded labels; a
    ValueError says which chunk."""
    xp = array_namespace(x_block)
    if array_namespace(label_chunk) is not xp:         # NumPy labels, CuPy images
        label_chunk = xp.asarray(to_numpy(label_chunk), device=device(x_block))
    try:
        return block_sums(x_block, padded_labels(label_chunk, sides, spec.ignore_index),
                          spec)
    except ValueError as e:
        raise ValueError(f"{_WHAT}: {e}, {where}") from None


# -- the sum ------------------------------------------------------------------


def add(a, b):
    """a + b, two float64 vectors of partial sums."""
    return a + b


def tree_sum(items, combine):
    """The items combined in a fixed-order pairwise tree.

    Level by level: (0 + 1), (2 + 3), ...; an odd last item goes up as it
    is. The tree's shape depends only on ``len(items)``.

    Parameters
    ----------
    items : sequence
        Values, dask Delayed objects or ``distributed`` futures.
    combine : callable
        ``combine(a, b)``: their sum (or a task that computes it).

    Returns
    -------
    The root.

    Examples
    --------
    >>> from arrseg.dask.gradient import tree_sum
    >>> tree_sum(["a", "b", "c", "d", "e"], lambda a, b: f"({a}+{b})")
    '(((a+b)+(c+d))+e)'
    """
    items = list(items)
    if not items:
        raise ValueError("tree_sum needs at least one item")
    while len(items) > 1:
        pairs = [combine(items[k], items[k + 1]) for k in range(0, len(items) - 1, 2)]
        items = pairs + items[len(pairs) * 2:]
    return items[0]


def normalise(vector):
    """(loss, gradient, D) from a vector of sums [loss sum, D, gradient sums].

    Returns
    -------
    loss : float
    grad : float64 ndarray (L,)
    D : float
        Divided by D; 0 loss and gradient when D is 0 (nothing counts).
    """
    vector = np.asarray(vector, dtype=np.float64)
    D = float(vector[1])
    if D > 0:
        return float(vector[0]) / D, vector[2:] / D, D
    return 0.0, np.zeros(vector.shape[0] - 2), 0.0

