"""``Segmenter.fit`` on dask arrays: data-parallel training.

The data stays where Dask keeps it (the workers of the active
``dask.distributed`` Client, or this process without one); per iteration
the parameters travel to the blocks and sums come back::

    images, labels (dask)  -> (N, C, H, W) and int64 (N, H, W), same chunks
    label statistics       -> the distinct labels and their counts: one
                              reduction (class count, class weights)
    normalisation          -> per-channel max |x|, mean, variance: three
                              float64 reductions over the persisted images,
                              as in memory (estimator.inputs.normalisation)
    ChunkedProblem         -> the normalised images cut into haloed blocks,
                              persisted with their labels (gradient.py)
    "varpro"               -> ChunkedVarPro: per evaluation the features of
                              the labelled pixels come back (k numbers per
                              labelled pixel) and the classifier is solved
                              here; the reduced gradient is one distributed
                              gradient sum (with edge_smoothness: a k x k
                              Gram matrix per block and one more sum,
                              edges.py)
    "sgd", "adam"          -> BlockBatches: per step the gradient sum over
                              ``batch_size`` blocks (all of them: full batch)

Every sum is combined in a fixed-order tree over the blocks, so the model
does not depend on the number of workers: full-batch training ("varpro",
or "sgd"/"adam" with ``batch_size`` at least the number of blocks) gives
the same model for any worker count, and mini-batches are drawn from the
Segmenter's seed, block by block.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import numpy as np

from .._backend import is_dask_array
from .._validation import check_options, fit_options
from ..estimator import classes, inputs, training
from ..estimator.settings import check_settings
from ..optim.flat import layout_of, unflatten
from ..optim.newton_cg import ClassifierProblem
from ..optim.varpro import VarPro
from ..params import init_params, params_like
from . import edges
from .cluster import ChunkedProblem

__all__ = ["BlockBatches", "ChunkedVarPro", "fit"]

_WHERE = "Segmenter.fit: "


def _nchw(images, labels):
    """Dask images (H, W), (C, H, W) or (N, C, H, W) and their labels ->
    (x (N, C, H, W), y int64 (N, H, W)) dask arrays with the same chunks in
    N, H and W."""
    import dask.array as da

    x = images
    if x.ndim == 2:
        x = x[None, None, ...]
    elif x.ndim == 3:
        x = x[None, ...]
    elif x.ndim != 4:
        raise ValueError(f"{_WHERE}images must be one image (H, W) or (C, H, W) or a "
                         f"batch (N, C, H, W), got a dask array of shape {x.shape}")
    if any(math.isnan(d) for d in x.shape):
        raise ValueError(f"{_WHERE}images has unknown chunk sizes {x.shape}: call "
                         "compute_chunk_sizes() first")
    want = (x.shape[0],) + x.shape[2:]
    if isinstance(labels, (list, tuple)):
        raise TypeError(f"{_WHERE}with dask images, labels must be one array "
                        f"of shape {want if images.ndim == 4 else want[1:]}, got a "
                        f"{type(labels).__name__}")
    y = labels if isinstance(labels, da.Array) else da.from_array(
        inputs.as_array(labels, "labels"))
    if y.ndim == 2:
        y = y[None, ...]
    if tuple(y.shape) != want:
        raise ValueError(f"{_WHERE}labels must have shape "
                         f"{want if images.ndim == 4 else want[1:]} (one class index "
                         f"per pixel of images {images.shape}), got {labels.shape}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise TypeError(f"{_WHERE}labels must be an integer array of class indices, "
                        f"got dtype {y.dtype}")
    x = x.rechunk({1: -1})
    y = y.astype(np.int64).rechunk((x.chunks[0],) + x.chunks[2:])
    return x, y


def _pair(validation):
    """The (images, labels) of ``validation``, or () if it is not a pair
    (refused later by the Segmenter's own check)."""
    try:
        images, labels = validation
    except (TypeError, ValueError):
        return ()
    return images, labels


def _namespace(x):
    from array_api_compat import array_namespace

    return array_namespace(x._meta)


def normalisation(x):
    """Per-channel mean and standard deviation of dask images (N, C, H, W).

    The algorithm of :func:`arrseg.estimator.inputs.normalisation`, as three
    dask reductions in float64: each channel divided by a power of two near
    its largest magnitude, then two passes (mean, then the squared
    deviations).

    Returns
    -------
    mean, std : float64 ndarray (C,)
    """
    import dask

    from .._backend import to_numpy

    n = x.shape[0] * x.shape[2] * x.shape[3]
    f64 = x.astype(np.float64)
    top = to_numpy(dask.compute(abs(f64).max(axis=(0, 2, 3)))[0])
    if not np.all(np.isfinite(top)):
        raise ValueError(f"{_WHERE}images must be finite, got NaN or inf values")
    usable = top > 0
    scale = 2.0 ** np.floor(np.log2(np.where(usable, top, 1.0)))
    unit = f64 / _like(x, scale)[None, :, None, None]
    mean = to_numpy(dask.compute(unit.sum(axis=(0, 2, 3)))[0]) / n
    dev = unit - _like(x, mean)[None, :, None, None]
    var = to_numpy(dask.compute((dev * dev).sum(axis=(0, 2, 3)))[0]) / n
    mean, std = mean * scale, np.sqrt(var) * scale
    return mean, np.where(std > 0, std, 1.0)


def _like(x, values):
    """``values`` (NumPy) in the namespace of x's chunks (CuPy for CuPy)."""
    xp = _namespace(x)
    return xp.asarray(values)


def label_statistics(y, settings, largest_image_pixels):
    """The class count, the class weights and whether a pixel is unlabelled
    (``ignore_index``), of dask labels, from one reduction (their distinct
    values and counts) through the in-memory rules
    (:mod:`arrseg.estimator.classes`)."""
    import dask
    import dask.array as da

    from .._backend import to_numpy

    values, counts = dask.compute(*da.unique(y, return_counts=True))
    values, counts = to_numpy(values), to_numpy(counts)
    n_classes = classes.infer_n_classes([values], settings, largest_image_pixels)
    per_class = np.zeros(n_classes)
    inside = (values >= 0) & (values < n_classes) & (values != settings.ignore_index)
    per_class[values[inside]] = counts[inside]
    class_weight = classes.resolve_class_weight(None, n_classes, settings,
                                                counts=per_class)
    return n_classes, class_weight, bool(np.any(values == settings.ignore_index))


class BlockBatches:
    """The mini-batches of :func:`arrseg.estimator.training.fit_first_order`
    on a :class:`ChunkedProblem`: ``batch_size`` blocks per step, drawn
    without replacement from the seeded generator, every labelled block
    once per epoch; all of them in one step (full batch) when
    ``batch_size`` is at least their number.

    Parameters
    ----------
    problem : ChunkedProblem
    settings : FitSettings
    class_weight : float ndarray (n_c,) or None
    rng : numpy.random.Generator
    dtype : NumPy dtype
        The parameters' dtype: the loss and gradient come back in it.
    """

    def __init__(self, problem, settings, class_weight, rng, dtype):
        self.problem, self.settings, self.rng = problem, settings, rng
        self.class_weight, self.dtype = class_weight, dtype
        # blocks without a labelled pixel add nothing to any sum
        self.blocks = np.flatnonzero(problem.block_weights(class_weight) > 0)
        self.batch_size = min(settings.batch_size, len(self.blocks))
        self.full = self.batch_size == len(self.blocks)
        self.steps_per_epoch = math.ceil(len(self.blocks) / self.batch_size)
        self._left = []

    def next_blocks(self):
        """The blocks of the next step, in increasing order; None for all."""
        if self.full:
            return None
        if not self._left:
            self._left = list(self.rng.permutation(self.blocks))
        chosen, self._left = self._left[:self.batch_size], self._left[self.batch_size:]
        return sorted(int(b) for b in chosen)

    def loss_and_grad(self, params):
        """(loss, flat gradient) of the next step's blocks, NumPy, in ``dtype``."""
        loss, grad, _ = self.problem.loss_and_grad(params, self.settings.options,
                                                   self.class_weight,
                                                   blocks=self.next_blocks())
        return np.asarray(loss, dtype=self.dtype), grad.astype(self.dtype)


class ChunkedVarPro(VarPro):
    """:class:`arrseg.optim.VarPro` on a :class:`ChunkedProblem`.

    The outer iteration, its line search and the classifier's Newton-CG
    run here, on the host; the network runs on the blocks. Per evaluation
    of the reduced objective the blocks send back the features of their
    labelled pixels (k numbers each: all pixels with dense labels, few with
    scribbles), and the reduced gradient is one gradient sum over the blocks
    at the inner minimiser. ``set_data(problem, None, params)`` takes the
    problem in place of the images and labels.

    With ``edge_smoothness`` (and a problem made with ``edge_contrast``) the
    blocks also send back their Gram matrices of the term (k x k each), the
    inner problem's penalty, and the reduced gradient adds one more sum over
    every block, labelled or not: the term's backward pass
    (:mod:`arrseg.dask.edges`). As in memory, the term is left out when
    every pixel is labelled.
    """

    def set_data(self, x, labels, params):
        problem = x
        N, _, H, W = problem.shape
        # with every pixel labelled no pair counts: the term is left out
        unlabelled = problem.counts.sum() < N * H * W
        if self.edge_smoothness > 0 and unlabelled and problem.edge_contrast is None:
            raise ValueError(
                f"ChunkedVarPro: edge_smoothness={self.edge_smoothness!r} needs a "
                "ChunkedProblem made with edge_contrast (the weights of the pairs "
                "of neighbours each block owns)")
        self._problem = problem
        self._edge_coefficient = (self.edge_smoothness / (N * H * W)
                                  if self.edge_smoothness > 0 and unlabelled else None)
        self._options = fit_options(
            check_options(self.activation, self.boundary, self.method, self.dilation,
                          self.layer_step, self.layer), params.depth)
        self._dtype = problem.dtype
        self._class_weight = (None if self.class_weight is None
                              else np.asarray(self.class_weight, dtype=self._dtype))
        self._xp = _host_namespace()
        self._n_classes = params.n_classes

    def _inner_problem(self, K, b, layers=None):
        Y, lab, *penalty = self._problem.labelled_features(
            self._outer(K, b, layers), self._options, gram=self._edge_coefficient)
        penalty = penalty[0].astype(self._dtype) if penalty else None
        return ClassifierProblem(Y, lab, self._n_classes,
                                 class_weight=self._class_weight,
                                 ignore_index=self.ignore_index,
                                 weight_decay=self.weight_decay, penalty=penalty,
                                 index=None)

    def reduced_gradient(self, params):
        _, flat, _ = self._problem.loss_and_grad(params, self._options,
                                                 self._class_weight)
        if self._edge_coefficient is not None:   # + the logits' term, unnormalised
            flat = flat + self._problem.edge_gradient(params, self._options,
                                                      self._edge_coefficient)
        xp = self._xp
        g = params_like(params, unflatten(xp.asarray(flat.astype(self._dtype)),
                                          layout_of(params), xp))
        g = g._replace(W=None, c=None)
        _, dK, dK_layers = self._outer_regularization(params)
        g = g._replace(K=g.K + dK)
        if dK_layers is not None:
            g = g._replace(K_layers=g.K_layers + dK_layers)
        return g


def _host_namespace():
    import array_api_compat.numpy as xp

    return xp


def fit(est, images, labels, *, validation=None, progress=None):
    """:meth:`arrseg.Segmenter.fit` on dask arrays (see the module docstring).

    Parameters
    ----------
    est : Segmenter
    images : dask array (H, W), (C, H, W) or (N, C, H, W)
        NumPy chunks. Integer images are normalised as in memory.
    labels : dask or NumPy integer array (H, W) or (N, H, W)
    validation : (images, labels), optional
        In memory (NumPy): scored every iteration on this process
        (``validation_scores_``), and used for early stopping when
        ``early_stopping=True`` (which needs it with dask arrays).
    progress : callable, optional
        As for :meth:`arrseg.Segmenter.fit`.

    Returns
    -------
    est
    """
    from .._backend import image_float_dtype

    start_time = time.perf_counter()
    s = check_settings(est)
    if s.optimizer != "varpro" and s.edge_smoothness > 0:
        if est.edge_smoothness != "auto":
            raise ValueError(
                f"{_WHERE}edge_smoothness={s.edge_smoothness!r} with dask images "
                f"trains with optimizer='varpro' only, got optimizer={s.optimizer!r}: "
                "set edge_smoothness=0 or 'auto', or fit on images in memory")
        s = dataclasses.replace(s, edge_smoothness=0.0)   # "auto": 0 here
    if validation is None and s.early_stopping:
        raise ValueError(
            f"{_WHERE}early_stopping with dask arrays needs validation=(images, "
            "labels) in memory: the held-out pixels are not split from dask labels")
    if validation is not None and any(is_dask_array(v) for v in _pair(validation)):
        raise TypeError(f"{_WHERE}validation=(images, labels) with dask images must "
                        "be in memory (NumPy): they are scored every iteration")
    x, y = _nchw(images, labels)
    xp = _namespace(x)
    if not xp.__name__.endswith("numpy"):
        raise TypeError(f"{_WHERE}dask images with {xp.__name__} chunks: training "
                        "on dask arrays takes NumPy chunks (prediction takes CuPy "
                        "chunks too)")
    dtype = image_float_dtype(xp, x.dtype)
    C, H, W = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
    x = x.persist()                         # read once; on the workers with a Client
    n_classes, class_weight, unlabelled = label_statistics(y, s, H * W)
    mean, std = normalisation(x)
    xn = x.map_blocks(functools.partial(inputs.normalise, mean=mean, std=std,
                                        dtype=dtype, xp=xp), dtype=dtype)
    cw = (None if class_weight is None
          else (class_weight / max(class_weight.max(), 1e-300)).astype(dtype))
    params = init_params(C, s.width, n_classes, s.kernel_size, depth=s.depth,
                         layer_kernel_size=s.layer_kernel_size, seed=est.seed,
                         dtype="float64" if dtype == xp.float64 else "float32")
    est._start_fit(C, n_classes, mean, std, class_weight, params)
    # the edge-aware term (left out when every pixel is labelled): its
    # contrast over the images; one more pixel of halo, for the pairs whose
    # second pixel is in the next chunk
    contrast = (edges.contrast_scale(xn) if s.edge_smoothness > 0 and unlabelled
                else None)
    problem = ChunkedProblem(xn, y, halo_width=s.halo + (contrast is not None),
                             ignore_index=s.ignore_index, boundary=s.boundary,
                             edge_contrast=contrast)
    del x, xn                               # the problem holds the haloed blocks
    if progress is None and s.verbose:
        progress = training.Progress
    progress = None if progress is None else progress(s.max_iter)
    host = _host_namespace()
    val = None
    if validation is not None:   # in memory, scored on this process
        val = est._validation_data(validation, C, mean, std, n_classes,
                                   None if cw is None else host.asarray(cw), s)
    monitor = training.Monitor(s, val is not None)
    try:
        if s.optimizer == "varpro":
            training.fit_varpro(est, problem, None, params, cw, s, val, monitor,
                                progress, host, varpro=ChunkedVarPro)
        else:
            rng = np.random.default_rng(est.seed)
            batches = BlockBatches(problem, s, cw, rng, np.dtype(dtype))
            training.fit_first_order(est, batches, params, s, val, monitor, progress,
                                     host, "cpu")
        training.finish_fit(est, monitor, s)
    finally:
        problem.close()
        if progress is not None:
            progress.close()
        est._params_cache = {}
        est.fit_time_ = time.perf_counter() - start_time
    return est
