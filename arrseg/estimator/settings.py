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

__all__ = ["DEFAULT_CROP_SIZE", "DEFAULT_LEARNING_RATES", "OPTIMIZERS", "FitSettings",
           "PredictSettings", "check_predict_settings", "check_settings"]

#: Values accepted by ``optimizer=``.
OPTIMIZERS = ("sgd", "adam", "varpro")
#: ``learning_rate=None`` gives these (inputs are normalised, so one value
#: serves most images); VarPro chooses its steps by line search.
DEFAULT_LEARNING_RATES = {"sgd": 0.5, "adam": 0.03}
#: ``crop_size=None``: images larger than this (in either direction) are
#: trained on random crops of this size.
DEFAULT_CROP_SIZE = 512

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

    @property
    def options(self):
        """The network's options, for :mod:`arrseg.core`."""
        return Options(self.activation, self.boundary, self.method)


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


def _options(est):
    w = _WHERE
    return Options(check_choice("activation", est.activation, tuple(ACTIVATIONS), where=w),
                   check_choice("boundary", est.boundary, BOUNDARIES, where=w),
                   check_choice("method", est.method, METHODS, where=w))


def _tiles(est):
    tile = check_int("tile_size", est.tile_size, 1, allow_none=True, where=_WHERE)
    budget = check_int("memory_budget", est.memory_budget, 1, allow_none=True,
                       where=_WHERE)
    return tile, budget


def check_predict_settings(est):
    """Check what prediction reads of the estimator ``est`` (the network's
    options and the tiling); see :func:`check_settings` for ``fit``.

    Returns
    -------
    PredictSettings
    """
    tile, budget = _tiles(est)
    return PredictSettings(_options(est), None if tile is None else (tile, tile), budget)


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
    options = _options(est)
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
        crop_size=check_int("crop_size", est.crop_size, s, allow_none=True, where=w),
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
    )
