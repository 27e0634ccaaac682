"""The Segmenter's hyper-parameters, checked once per fit.

``Segmenter.__init__`` only stores its arguments (scikit-learn's rule);
:func:`check_settings` checks them all at the start of ``fit`` and returns
a frozen :class:`FitSettings`, which the training code reads and never
checks again.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import is_array_api_obj

from .._arguments import check_bool, check_choice, check_float, check_int
from .._backend import to_numpy
from ..core import Options
from ..methods import METHODS
from ..numerics.activations import ACTIVATIONS
from ..numerics.convolution import BOUNDARIES
from ..numerics.residual import LAYERS, receptive_halo

__all__ = ["AUTO_EDGE_SMOOTHNESS", "DEFAULT_CROP_SIZE", "DEFAULT_DEPTH",
           "DEFAULT_DILATION", "DEFAULT_EDGE_SMOOTHNESS", "DEFAULT_LAYER",
           "DEFAULT_LAYER_KERNEL_SIZE", "DEFAULT_LEARNING_RATES", "DEFAULT_STEP",
           "DEFAULT_TOL", "OPTIMIZERS", "FitSettings", "PredictSettings", "check_predict_settings",
           "check_settings", "resolve_dilation"]

#: Values accepted by ``optimizer=``.
OPTIMIZERS = ("sgd", "adam", "varpro")
#: ``learning_rate=None`` gives these (inputs are normalised, so one value
#: serves most images); VarPro chooses its steps by line search.
DEFAULT_LEARNING_RATES = {"sgd": 0.5, "adam": 0.03}
#: ``crop_size=None``: images larger than this (in either direction) are
#: trained on random crops of this size.
DEFAULT_CROP_SIZE = 512

# The Segmenter's constructor defaults that were chosen by measurement (one
# place: the signature reads them): the best accuracy per second of fit
# found by ``python tools/accuracy_benchmark.py --search`` on the texture
# set, coins and horse against scikit-image's random forest (the table is
# in docs/training.rst). Depth 0 is the one-layer network of earlier
# releases (its default width was 16, its optimizer Adam for 200 epochs).
#: ``width=``: k, the feature channels.
DEFAULT_WIDTH = 8
#: ``depth=``: residual layers after the opening layer.
DEFAULT_DEPTH = 3
#: ``dilation=``: an int for every layer, a sequence, or "doubling".
DEFAULT_DILATION = "doubling"
#: ``optimizer=``: VarPro never diverged in the search, where Adam at its
#: default rate did on deep networks, and it was the fastest.
DEFAULT_OPTIMIZER = "varpro"
#: ``max_iter=``: VarPro's outer iterations (60 over 30: +0.25 IoU on the
#: horse image, +0.004 on coins, for twice the fit time; 100 over 60, with
#: the edge-aware smoothness: +0.055 on the horse with dense labels, +0.04
#: with 2%, +0.024 on coins with 2%, for 0.2 to 1.9 s more; the textures
#: and tiles converge before 60).
DEFAULT_MAX_ITER = 100
#: ``tol=``: the least fall of the objective that counts as an improvement
#: (absolute; the mean cross-entropy). 3e-5 over 1e-4, four seeds: VarPro
#: had stopped early on coins with dense labels (0.9865 -> 0.9872, every
#: seed above the forest's 0.9862), the tiles (0.986 -> 0.990) and the
#: textures (0.9923 -> 0.9928), for 0.5 to 1.6 s more; 1e-5 gained little
#: more (the textures with 2% labelled 0.9893 -> 0.9896) for up to 2.5 s
#: more on them (docs/training.rst).
DEFAULT_TOL = 3e-5
#: ``step=``: h of every residual layer.
DEFAULT_STEP = 1.0
#: ``layer=``: "residual" or "symmetric".
DEFAULT_LAYER = "residual"
#: ``layer_kernel_size=``: s_r, the residual layers' kernel size.
DEFAULT_LAYER_KERNEL_SIZE = 3
#: ``edge_smoothness=``: the edge-aware smoothness of the logits; "auto" is
#: :data:`AUTO_EDGE_SMOOTHNESS`, except with "sgd" or "adam" on Dask images
#: (0: not available there).
DEFAULT_EDGE_SMOOTHNESS = "auto"
#: What ``edge_smoothness="auto"`` means on images in memory (with the
#: weights' beta = 20 of :mod:`arrseg.optim.edge_smoothness`): of 0.3, 1
#: and 3, four seeds on the benchmark's four data sets with 2% labelled, 3
#: leans to coins at the textures' and tiles' cost and 1 is the middle
#: (docs/training.rst). With every pixel labelled the term is 0 whatever
#: its weight.
AUTO_EDGE_SMOOTHNESS = 1.0

_WHERE = "Segmenter: "


@dataclass(frozen=True, eq=False)
class FitSettings:
    """The checked hyper-parameters of one ``fit`` (see :class:`arrseg.Segmenter`)."""

    width: int
    kernel_size: int
    activation: str
    boundary: str
    method: str
    optimizer: str
    #: the step length, with the optimizer's default filled in (None for VarPro)
    learning_rate: Any
    momentum: float
    nesterov: bool
    max_iter: int
    batch_size: int
    crop_size: Any
    weight_decay: float
    smoothness: float
    #: None, "balanced" or a float64 ndarray of weights
    class_weight: Any
    n_classes: Any
    ignore_index: int
    early_stopping: bool
    validation_fraction: float
    n_iter_no_change: int
    tol: float
    tile_size: Any
    memory_budget: Any
    seed: Any
    verbose: bool
    #: residual layers (0: the one-layer network)
    depth: int = 0
    #: d_j, one per residual layer (empty at depth 0)
    dilation: tuple = ()
    #: h, the residual layers' step
    step: float = 1.0
    #: "residual" or "symmetric"
    layer: str = "residual"
    #: s_r, odd
    layer_kernel_size: int = 3
    #: alpha of the logits' edge-aware smoothness (0: none)
    edge_smoothness: float = 0.0

    @property
    def options(self):
        """The network's options, for :mod:`arrseg.core`."""
        return Options(self.activation, self.boundary, self.method, self.dilation,
                       self.step, self.layer)

    @property
    def halo(self):
        """How far an output pixel reads, in pixels: the whole receptive
        field's (:func:`arrseg.numerics.residual.receptive_halo`)."""
        return receptive_halo(self.kernel_size, self.layer_kernel_size, self.dilation,
                              self.layer)


def _class_weight(cw):
    if isinstance(cw, str):
        return check_choice("class_weight", cw, ("balanced",), where=_WHERE)
    if cw is None:
        return None
    try:
        arr = np.asarray(to_numpy(cw) if is_array_api_obj(cw) else cw, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{_WHERE}class_weight must be None, 'balanced' or a "
                        f"sequence of non-negative numbers, got {cw!r}") from None
    if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{_WHERE}class_weight must be a 1-d sequence of finite "
                         f"non-negative numbers, got {cw!r}")
    return arr


class PredictSettings(NamedTuple):
    """The hyper-parameters prediction reads, checked once per call."""

    options: Options
    #: (tile_size, tile_size), or None to plan tiles from the budget
    tile_shape: Any
    memory_budget: Any


def resolve_dilation(dilation, depth, *, where=""):
    """The dilations d_j of ``depth`` residual layers, as a tuple.

    Parameters
    ----------
    dilation : int, sequence of int, or "doubling"
        One dilation for every layer, one per layer (``depth`` of them), or
        "doubling": 1, 2, 4, ..., 2**(depth - 1).
    depth : int
        Checked, >= 0.
    where : str, default ""
        Prefix of the messages.

    Returns
    -------
    tuple of int
        ``depth`` entries, each >= 1.

    Raises
    ------
    TypeError, ValueError
        Naming ``dilation`` (or its entry) and the value received.

    Examples
    --------
    >>> from arrseg.estimator.settings import resolve_dilation
    >>> resolve_dilation("doubling", 4), resolve_dilation(2, 3)
    ((1, 2, 4, 8), (2, 2, 2))
    """
    if isinstance(dilation, str):
        if dilation != "doubling":
            raise ValueError(f"{where}dilation must be an integer >= 1, a sequence of "
                             f"depth = {depth} integers or 'doubling'; got "
                             f"{dilation!r}")
        return tuple(2**j for j in range(depth))
    if isinstance(dilation, (list, tuple, np.ndarray)):
        entries = list(dilation) if not isinstance(dilation, np.ndarray) else (
            dilation.tolist() if dilation.ndim == 1 else None)
        if entries is None or len(entries) != depth:
            raise ValueError(f"{where}dilation must have one entry per residual layer "
                             f"(depth = {depth}), got {dilation!r}")
        return tuple(check_int(f"dilation[{i}]", d, 1, where=where)
                     for i, d in enumerate(entries))
    if isinstance(dilation, (bool, np.bool_)) or not isinstance(dilation,
                                                                numbers.Integral):
        raise TypeError(f"{where}dilation must be an integer >= 1, a sequence of "
                        f"depth = {depth} integers or 'doubling'; got "
                        f"{type(dilation).__name__} {dilation!r}")
    return (check_int("dilation", dilation, 1, where=where),) * depth


def _trunk(est, depth):
    """(dilation tuple, step, layer) of the estimator, for ``depth`` layers."""
    w = _WHERE
    layer = check_choice("layer", est.layer, LAYERS, where=w)
    step = check_float("step", est.step, low_open=True, where=w)
    from .._validation import check_dilation

    # within MAX_DILATION ("doubling" past 13 layers is not)
    dilation = check_dilation(resolve_dilation(est.dilation, depth, where=w), where=w)
    return dilation, step, layer


def _options(est, depth):
    w = _WHERE
    dilation, step, layer = _trunk(est, depth)
    return Options(check_choice("activation", est.activation, tuple(ACTIVATIONS), where=w),
                   check_choice("boundary", est.boundary, BOUNDARIES, where=w),
                   check_choice("method", est.method, METHODS, where=w),
                   dilation, step, layer)


def _tiles(est):
    tile = check_int("tile_size", est.tile_size, 1, allow_none=True, where=_WHERE)
    budget = check_int("memory_budget", est.memory_budget, 1, allow_none=True,
                       where=_WHERE)
    return tile, budget


def check_predict_settings(est, depth):
    """Check what prediction reads of the estimator ``est`` (the network's
    options and the tiling); see :func:`check_settings` for ``fit``.

    Parameters
    ----------
    est : Segmenter
    depth : int
        The fitted parameters' depth: the dilations are fitted to it.

    Returns
    -------
    PredictSettings
    """
    tile, budget = _tiles(est)
    return PredictSettings(_options(est, depth), None if tile is None else (tile, tile),
                           budget)


def _edge_smoothness(value, where):
    """``edge_smoothness``: "auto" (:data:`AUTO_EDGE_SMOOTHNESS`; the Dask
    fit with "sgd" or "adam" reads it as 0) or a non-negative number."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"{where}edge_smoothness must be 'auto' or a non-negative "
                             f"number, got {value!r}")
        return AUTO_EDGE_SMOOTHNESS
    return check_float("edge_smoothness", value, where=where)


def check_settings(est):
    """Check the hyper-parameters of the estimator ``est``.

    Returns
    -------
    FitSettings

    Raises
    ------
    TypeError, ValueError
        Naming the hyper-parameter, the value and what was expected.
    """
    w = _WHERE
    s = check_int("kernel_size", est.kernel_size, 1, where=w)
    if s % 2 == 0:
        raise ValueError(f"{w}kernel_size must be odd (the output keeps the image's "
                         f"size), got {s}")
    optimizer = check_choice("optimizer", est.optimizer, OPTIMIZERS, where=w)
    lr = check_float("learning_rate", est.learning_rate, low_open=True,
                     allow_none=True, where=w)
    momentum = check_float("momentum", est.momentum, high=1.0, where=w)
    nesterov = check_bool("nesterov", est.nesterov, where=w)
    if nesterov and momentum == 0 and optimizer == "sgd":
        raise ValueError(f"{w}nesterov=True needs momentum > 0, got momentum=0")
    if est.seed is not None:
        check_int("seed", est.seed, 0, where=w)
    if not isinstance(est.verbose, (bool, numbers.Integral)):
        raise TypeError(f"{w}verbose must be True or False, got {est.verbose!r}")
    depth = check_int("depth", est.depth, 0, where=w)
    s_r = check_int("layer_kernel_size", est.layer_kernel_size, 1, where=w)
    if s_r % 2 == 0:
        raise ValueError(f"{w}layer_kernel_size must be odd (the output keeps the "
                         f"image's size), got {s_r}")
    options = _options(est, depth)
    halo = receptive_halo(s, s_r, options.dilation, options.layer)
    tile, budget = _tiles(est)
    return FitSettings(
        width=check_int("width", est.width, 1, where=w),
        kernel_size=s,
        activation=options.activation,
        boundary=options.boundary,
        method=options.method,
        optimizer=optimizer,
        learning_rate=DEFAULT_LEARNING_RATES.get(optimizer) if lr is None else lr,
        momentum=momentum,
        nesterov=nesterov,
        max_iter=check_int("max_iter", est.max_iter, 1, where=w),
        batch_size=check_int("batch_size", est.batch_size, 1, where=w),
        # a crop keeps at least one pixel inside its ignore border of the halo
        crop_size=check_int("crop_size", est.crop_size, 2 * halo + 1, allow_none=True,
                            where=w),
        weight_decay=check_float("weight_decay", est.weight_decay, where=w),
        smoothness=check_float("smoothness", est.smoothness, where=w),
        class_weight=_class_weight(est.class_weight),
        n_classes=check_int("n_classes", est.n_classes, 2, allow_none=True, where=w),
        ignore_index=check_int("ignore_index", est.ignore_index, where=w),
        early_stopping=check_bool("early_stopping", est.early_stopping, where=w),
        validation_fraction=check_float("validation_fraction", est.validation_fraction,
                                        low_open=True, high=1.0, where=w),
        n_iter_no_change=check_int("n_iter_no_change", est.n_iter_no_change, 1,
                                   where=w),
        tol=check_float("tol", est.tol, where=w),
        tile_size=tile,
        memory_budget=budget,
        seed=est.seed,
        verbose=bool(est.verbose),
        depth=depth,
        dilation=options.dilation,
        step=options.step,
        layer=options.layer,
        layer_kernel_size=s_r,
        edge_smoothness=_edge_smoothness(est.edge_smoothness, w),
    )
