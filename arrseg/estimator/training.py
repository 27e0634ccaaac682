"""The Segmenter's training loops and what runs at the end of each iteration.

First-order loop ("sgd", "adam"), per iteration (an epoch)::

    steps_per_epoch x:  crops gathered on the device  (estimator.crops)
                        loss, g = core.loss_and_grad          no check, no sync
                        + regularisation, optimizer step      on the device, on
                          theta, the parameters as one flat vector (optim.flat)
    once:               sum of the steps' losses (+ 0 * max |params|, so an
                        overflowed parameter shows as NaN): ONE read-back
                        -> loss_curve_, the divergence check, the progress bar

Nothing of the training data crosses to the host inside the loop, and the
loss is read back once per iteration: on a GPU the host queues a whole
epoch of steps without waiting for any. Only when that one number is not
finite are the steps' losses read back, to name the step that diverged and
keep the parameters before it (the error path may synchronise freely).

With validation data, each iteration also reads back one small vector per
validation image group (the loss's numerator and denominator and the
confusion matrix, :func:`validation_scores`).

VarPro ("varpro") is an L-BFGS iteration with a line search, decided on the
host: it reads back the objective and inner products at each trial point
(:class:`arrseg.optim.VarPro`).
"""

from __future__ import annotations

import math
import sys
import time
import warnings

import numpy as np

from .. import core
from .._backend import to_numpy
from ..metrics import confusion_counts
from ..numerics.classifier import logits
from ..optim.adam import Adam
from ..optim.base import NonFiniteLossError
from ..optim.edge_smoothness import EdgeSmoothness, contrast_scale
from ..optim.flat import decay_vector, flatten, layout_of, unflatten
from ..optim.regularization import smoothness as smoothness_term
from ..optim.sgd import SGD
from ..optim.varpro import VarPro
from ..tiling import proba_tiled
from .crops import CropSampler

__all__ = ["CropBatches", "DivergenceWarning", "Monitor", "Progress", "finish_fit",
           "fit_first_order", "fit_varpro", "keep_best_if_diverged",
           "mean_iou_of_confusion", "validation_scores"]


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total, stream=None, width=24):
        self.total, self.width = total, width
        self.stream = sys.stderr if stream is None else stream
        self.start = time.perf_counter()

    def update(self, it, loss, score=None):
        done = int(self.width * it / self.total)
        bar = "#" * done + "-" * (self.width - done)
        extra = "" if score is None else f" val mIoU {score:.4f}"
        self.stream.write(f"\rSegmenter.fit [{bar}] {it}/{self.total} loss {loss:.4g}"
                          f"{extra} {time.perf_counter() - self.start:.1f}s")
        self.stream.flush()

    def close(self):
        self.stream.write("\n")
        self.stream.flush()


class DivergenceWarning(UserWarning):
    """``Segmenter.fit`` ended with a training loss well above the best it
    reached (a learning rate too large): the estimator keeps the parameters
    of the best iteration, and the message says what to change."""


#: The training loss diverged when it ends above this multiple of the best
#: iteration's loss (mini-batch noise stays far below it) ...
DIVERGENCE_FACTOR = 2.0
#: ... and training stops early once it exceeds this multiple.
DIVERGENCE_STOP_FACTOR = 100.0


class Monitor:
    """Convergence, early stopping and divergence.

    Counts the iterations in which the training objective (with early
    stopping: the validation loss) has not fallen below its best value by
    more than tol; keeps the parameters (and the validation score) of the
    best value. Apart from that, keeps the parameters of the lowest
    training loss, to fall back on when training diverges
    (:func:`keep_best_if_diverged`).
    """

    def __init__(self, settings, have_validation):
        self.uses_validation = settings.early_stopping and have_validation
        self.tol, self.patience = settings.tol, settings.n_iter_no_change
        self.best = None
        self.best_params = self.best_score = None
        self.bad = 0
        #: (loss, iteration, params) of the lowest training loss
        self.lowest = None
        self.iteration = 0

    def update(self, loss, val_loss, score, params):
        self.iteration += 1
        if self.lowest is None or loss < self.lowest[0]:
            self.lowest = (loss, self.iteration, params)
        value = val_loss if self.uses_validation else loss
        improved = self.best is None or value < self.best - self.tol
        if self.best is None or value < self.best:
            self.best, self.best_params, self.best_score = value, params, score
        self.bad = 0 if improved else self.bad + 1
        return (self.bad >= self.patience
                or loss > DIVERGENCE_STOP_FACTOR * self.lowest[0])


def finish_fit(est, monitor, settings):
    """After training: with early stopping, the model of the best validation
    loss; else the last validation score, if any; then
    :func:`keep_best_if_diverged`."""
    if monitor.uses_validation:  # keep the best model seen
        est.params_ = monitor.best_params
        est.validation_score_ = monitor.best_score
    elif est.validation_scores_:
        est.validation_score_ = est.validation_scores_[-1]
    keep_best_if_diverged(est, monitor, settings)


def keep_best_if_diverged(est, monitor, settings):
    """After training: if the last training loss is above DIVERGENCE_FACTOR
    times the lowest, put back the parameters of the lowest and warn."""
    if monitor.lowest is None or monitor.uses_validation:
        return
    lowest, it, params = monitor.lowest
    last = est.loss_curve_[-1]
    if not last > DIVERGENCE_FACTOR * lowest:
        return
    est.params_ = params
    if est.validation_scores_:
        est.validation_score_ = est.validation_scores_[it - 1]
    rate = ("" if settings.optimizer == "varpro"
            else f" with learning_rate={settings.learning_rate:g}")
    warnings.warn(
        f"Segmenter.fit: the training loss rose from {lowest:.4g} (iteration {it}) "
        f"to {last:.4g} (iteration {len(est.loss_curve_)}): "
        f"optimizer={settings.optimizer!r}{rate} diverged. The model keeps the "
        f"parameters of iteration {it}; try a learning_rate 10 times smaller",
        DivergenceWarning, stacklevel=3)


class Validation:
    """Validation images (normalised, on the device) and their int64 labels,
    with what scoring them needs."""

    def __init__(self, xs, ys, n_classes, ignore_index, class_weight, settings):
        self.xs, self.ys = xs, ys
        self.n_classes, self.ignore_index = n_classes, ignore_index
        #: weights (n_c,) in the images' dtype on their device, or None
        self.class_weight = class_weight
        self.options = settings.options
        self.tile_shape = (None if settings.tile_size is None
                           else (settings.tile_size, settings.tile_size))
        self.memory_budget = settings.memory_budget


def mean_iou_of_confusion(M):
    """Mean IoU over the classes present in either map, from a confusion
    matrix (as :func:`arrseg.metrics.mean_iou`); NaN when none is."""
    M = np.asarray(M, dtype=np.float64)
    tp = np.diag(M)
    union = M.sum(axis=0) + M.sum(axis=1) - tp
    present = union > 0
    if not present.any():
        return float("nan")
    return float(np.sum(tp[present] / union[present]) / np.count_nonzero(present))


def validation_scores(val, params, xp):
    """(loss, mean IoU) of the model on the validation pixels.

    The loss is the weighted mean cross-entropy of :func:`arrseg.loss_and_grad`
    (without regularisation), read off the predicted probabilities. Per
    image group, the numerator, the denominator and the confusion matrix
    are computed on the device; they are read back together, once.
    """
    n_c, ignore = val.n_classes, val.ignore_index
    stats = []
    for x, y in zip(val.xs, val.ys):
        P = proba_tiled(x, params, val.options, xp, tile_shape=val.tile_shape,
                        memory_budget=val.memory_budget)
        classes = xp.arange(n_c, dtype=y.dtype, device=y.device)
        onehot = xp.astype((y[:, None, ...] == classes[None, :, None, None])
                           & (y != ignore)[:, None, ...], P.dtype)
        if val.class_weight is not None:
            onehot = onehot * val.class_weight[None, :, None, None]
        tiny = xp.finfo(P.dtype).smallest_normal
        num = xp.sum(onehot * -xp.log(xp.maximum(P, xp.full((), tiny, dtype=P.dtype,
                                                             device=y.device))))
        den = xp.sum(onehot)
        pred = xp.reshape(xp.argmax(P, axis=1), (-1,))
        M = confusion_counts(xp.reshape(y, (-1,)), xp.astype(pred, xp.int64), n_c,
                             ignore, xp)
        stats.append(xp.concat([xp.astype(xp.stack([num, den]), xp.float64),
                                xp.astype(xp.reshape(M, (-1,)), xp.float64)]))
    host = to_numpy(xp.stack(stats)).sum(axis=0)      # the one read-back
    num, den = float(host[0]), float(host[1])
    return (num / den if den > 0 else 0.0), mean_iou_of_confusion(
        host[2:].reshape(n_c, n_c))


def end_of_iteration(est, monitor, params, val, progress, it, xp):
    """Record the validation scores, keep the best model; True to stop."""
    score = val_loss = None
    if val is not None:
        val_loss, score = validation_scores(val, params, xp)
        est.validation_loss_curve_.append(val_loss)
        est.validation_scores_.append(score)
    stop = monitor.update(est.loss_curve_[-1], val_loss, score, params)
    if progress is not None:
        progress.update(it, est.loss_curve_[-1], score)
    return stop


def _diverged(est, settings, what, it, step, value, params):
    est.params_ = params
    est.n_iter_ = it - 1
    raise NonFiniteLossError(
        f"Segmenter.fit: {what} at iteration {it} (optimizer step {step}) with "
        f"optimizer={settings.optimizer!r}, learning_rate={settings.learning_rate:g}; "
        "the model keeps the last parameters with a finite loss; try a smaller "
        "learning_rate", iteration=it, loss=value, params=params)


def _all_finite_host(theta):
    return bool(np.all(np.isfinite(to_numpy(theta))))


def _find_divergence(est, settings, it, first_step, losses, before, after, layout,
                     decay, xp):
    """The error path: read the steps' objectives back, name the first bad step."""
    values = to_numpy(_stack(losses, xp)).astype(np.float64)
    if decay is not None:
        d = to_numpy(decay)
        with np.errstate(over="ignore", invalid="ignore"):
            values = values + [0.5 * float(np.sum(d * to_numpy(t) ** 2)) for t in before]
    for i, v in enumerate(values.tolist()):
        if not math.isfinite(v):
            _diverged(est, settings, f"the training loss is {v}", it, first_step + i,
                      v, unflatten(before[i], layout, xp))
        nxt = before[i + 1] if i + 1 < len(before) else after
        if not _all_finite_host(nxt):
            _diverged(est, settings, "the parameters overflowed in the update", it,
                      first_step + i, v, unflatten(before[i], layout, xp))
    raise AssertionError("a non-finite iteration total without a non-finite step")


def _stack(losses, xp):
    return xp.stack([xp.reshape(v, ()) for v in losses])


def _smoothness_flat(params, alpha, layout, xp, dev):
    """The smoothness regulariser of every kernel (K, and K_layers at depth
    > 0) and its gradient as a flat vector in ``layout`` (zero on the other
    fields)."""
    value = None
    parts = []
    for name, a, span in zip(type(params)._fields, params, layout.spans):
        if span is None:
            continue
        if name in ("K", "K_layers"):
            v, d = smoothness_term(a, alpha)
            value = v if value is None else value + v
            parts.append(xp.reshape(d, (-1,)))
        else:
            parts.append(xp.zeros((span[1] - span[0],), dtype=a.dtype, device=dev))
    return value, xp.concat(parts)


class CropBatches:
    """The in-memory mini-batches of :func:`fit_first_order`: random crops
    (or whole images) of the training images (:class:`CropSampler`), and
    the core's loss and flat gradient on each, unchecked and on the device.

    Parameters
    ----------
    xs, ys : lists of arrays
        Normalised images (N, C, H, W) and int64 labels (N, H, W), on ``dev``.
    host_labels : list of ndarrays
        The labels on the host, for the crop plan.
    class_weight : array (n_c,) or None
        On ``dev``, in the images' dtype.
    settings : FitSettings
    rng : numpy.random.Generator
    xp : namespace
    dev : device
    """

    def __init__(self, xs, ys, host_labels, class_weight, settings, rng, xp, dev):
        self.sampler = CropSampler(xs, ys, host_labels, settings, rng, xp, dev)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.class_weight, self.settings, self.xp = class_weight, settings, xp
        # the edge-aware smoothness's contrast scale: the whole images'; with
        # every pixel labelled no pair counts, and the term is left out
        unlabelled = any(bool(np.any(m == settings.ignore_index)) for m in host_labels)
        self.contrast = (contrast_scale(xs) if settings.edge_smoothness > 0 and unlabelled
                         else None)

    def loss_and_grad(self, params):
        """(loss, flat gradient) of the next batch, on the device; with
        ``edge_smoothness``, the logits' term of the batch's pixels added."""
        xb, yb = self.sampler.batch()
        s, xp = self.settings, self.xp
        extra = value = None
        if self.contrast is not None:
            # one more forward pass per step: the term's gradient needs the
            # logits of the whole crop (neighbours across the core's row
            # blocks) before the backward pass
            layers = None if params.K_layers is None else (params.K_layers, params.b_layers)
            Y = core.features(xb, params.K, params.b, s.options, xp, layers=layers)
            S = logits(Y, params.W, params.c, xp)             # (N, n_c, H*W)
            N, _, H, W = xb.shape
            edges = EdgeSmoothness(xb, s.edge_smoothness, self.contrast,
                                   labelled=yb != s.ignore_index)
            value, extra = edges.value_and_grad(xp.reshape(S, (N, S.shape[1], H, W)))
        loss, g = core.loss_and_grad(xb, yb, params, s.options, self.class_weight,
                                     s.ignore_index, xp, flat=True, extra_dS=extra)
        return (loss, g) if value is None else (loss + value, g)


def fit_first_order(est, batches, params, settings, val, monitor, progress, xp, dev):
    """SGD or Adam on mini-batches; updates ``est``'s fitted attributes as it goes.

    The parameters live in one flat vector theta (:mod:`arrseg.optim.flat`):
    the fused kernels write the gradient in that layout, the weight decay is
    one product with a fixed vector, and the optimizer's update is one
    elementwise pass (one kernel on CuPy).

    Parameters
    ----------
    est : Segmenter
    batches : CropBatches or arrseg.dask.training.BlockBatches
        ``steps_per_epoch``, and ``loss_and_grad(params)``: the loss and
        flat gradient of the next mini-batch, in ``xp`` on ``dev``.
    params : Params or ResidualParams
        Initial parameters, on ``dev``.
    settings : FitSettings
    val : Validation or None
    monitor : Monitor
    progress : Progress or None
    xp : namespace
    dev : device
    """
    s = settings
    opt = (SGD(s.learning_rate, s.momentum, nesterov=s.nesterov)
           if s.optimizer == "sgd" else Adam(s.learning_rate))
    layout = layout_of(params)
    theta = flatten(params, xp)
    decay = (decay_vector(layout, s.weight_decay, theta.dtype, xp, dev)
             if s.weight_decay > 0 else None)
    step = 0
    for it in range(1, s.max_iter + 1):
        before, losses = [], []
        # overflow is detected below, once per iteration, and reported
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(batches.steps_per_epoch):
                current = unflatten(theta, layout, xp)
                loss, g = batches.loss_and_grad(current)
                if s.smoothness > 0:
                    value, dg = _smoothness_flat(current, s.smoothness, layout, xp, dev)
                    loss = loss + value
                    g = g + dg
                before.append(theta)
                losses.append(loss)
                # the weight decay's gradient, decay * theta, is added inside
                # the update's one pass
                theta = opt.flat_step(theta, g, 0.0 if decay is None else decay)
            # the iteration's objective, summed in float64
            total = xp.sum(xp.astype(_stack(losses, xp), xp.float64))
            if decay is not None:
                # the weight decay's values at the steps' parameters, together:
                # decay/2 . theta_t^2 for every step t
                thetas = xp.stack(before)
                total = total + 0.5 * xp.sum(xp.astype(decay * thetas * thetas,
                                                       xp.float64))
            # 0 * max |theta| is NaN when a parameter overflowed
            total = total + 0 * xp.max(xp.abs(theta))
            value = float(total)                       # the one read-back
        if not math.isfinite(value):
            _find_divergence(est, s, it, step + 1, losses, before, theta, layout, decay,
                             xp)
        step += len(losses)
        params = unflatten(theta, layout, xp)
        est.params_ = params
        est.n_iter_ = it
        est.loss_curve_.append(value / len(losses))
        if end_of_iteration(est, monitor, params, val, progress, it, xp):
            break


def fit_varpro(est, xs, ys, params, class_weight, settings, val, monitor, progress,
               xp, *, varpro=VarPro):
    """VarPro, full batch; updates ``est``'s fitted attributes as it goes.

    ``varpro`` is the class that keeps the data: :class:`arrseg.optim.VarPro`
    for the lists of images ``xs`` and labels ``ys`` in memory, or
    :class:`arrseg.dask.training.ChunkedVarPro` for a chunked problem on a
    Dask cluster (``xs``, with ``ys`` None).
    """
    s = settings
    vp = varpro(activation=s.activation, boundary=s.boundary, method=s.method,
                dilation=s.dilation, layer_step=s.step, layer=s.layer,
                class_weight=class_weight, ignore_index=s.ignore_index,
                weight_decay=s.weight_decay, smoothness=s.smoothness,
                edge_smoothness=s.edge_smoothness)
    params, _ = vp.start(xs, ys, params)
    est.params_ = params
    for it in range(1, s.max_iter + 1):
        params, loss = vp.step()
        est.params_ = params
        est.n_iter_ = it
        est.loss_curve_.append(float(loss))
        if end_of_iteration(est, monitor, params, val, progress, it, xp) or vp.stalled:
            break
