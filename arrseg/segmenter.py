"""The scikit-learn style estimator: :class:`Segmenter`.

``Segmenter(...).fit(images, labels)`` normalises the images, initialises
the network of :func:`arrseg.init_params` and trains it with one of the
optimizers of :mod:`arrseg.optim`; ``predict_proba``, ``predict`` and
``score`` then work on new images, in the images' own namespace and device.

Data flow of :meth:`Segmenter.fit`::

    images, labels  -> groups of (N, C, H, W) arrays and int64 (N, H, W) labels
                    -> per-channel mean_ / std_ (all pixels of all images)
                    -> x = (images - mean_) / std_   float32 (float64 kept)
    "sgd", "adam"   -> per step: a mini-batch of batch_size random crops
                       (crop_size), loss_and_grad + regularisation, update
    "varpro"        -> per iteration: one L-BFGS step of VarPro, full batch

An *iteration* (``max_iter``, ``n_iter_``, ``loss_curve_``,
``n_iter_no_change``) is an epoch for "sgd" and "adam", as many mini-batch
steps as it takes to cover the training pixels once: ``ceil(N / batch_size)``
steps of whole images, or ``ceil(sum H W / (batch_size * crop pixels))``
steps of crops (with no more crops per step than cover the pixels once); for
"varpro" it is one outer iteration.

No scikit-learn import: ``get_params`` / ``set_params`` introspect
``__init__`` as scikit-learn's ``BaseEstimator`` does, so the estimator can
be used with scikit-learn's tools where they accept duck-typed estimators.
"""

from __future__ import annotations

import inspect
import math
import numbers
import sys
import time

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj

from ._backend import device, to_numpy
from .network import ACTIVATION_NAMES, BOUNDARIES, DEFAULT_IGNORE_INDEX, loss_and_grad
from .optim.adam import Adam
from .optim.base import NonFiniteLossError, all_finite, tree_map
from .optim.regularization import Regularization
from .optim.sgd import SGD
from .optim.varpro import VarPro
from .params import Params, init_params

__all__ = ["DEFAULT_LEARNING_RATES", "OPTIMIZERS", "NotFittedError", "Segmenter"]

#: Values accepted by ``optimizer=``.
OPTIMIZERS = ("sgd", "adam", "varpro")
#: ``learning_rate=None`` gives these (inputs are normalised, so one value
#: serves most images); VarPro chooses its steps by line search.
DEFAULT_LEARNING_RATES = {"sgd": 0.5, "adam": 0.03}
#: ``crop_size=None``: images larger than this (in either direction) are
#: trained on random crops of this size.
DEFAULT_CROP_SIZE = 512


class NotFittedError(ValueError, AttributeError):
    """A :class:`Segmenter` was used before :meth:`~Segmenter.fit`
    (scikit-learn's exception of the same name derives from the same two
    classes)."""


# --- argument checks ---------------------------------------------------------

def _int_arg(name, value, minimum=None, *, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Segmenter: {name} must be an integer"
                        + (" or None" if allow_none else "")
                        + f", got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"Segmenter: {name} must be >= {minimum}, got {value}")
    return value


def _float_arg(name, value, *, low=0.0, low_open=False, high=None, high_open=True,
               allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Segmenter: {name} must be a number"
                        + (" or None" if allow_none else "")
                        + f", got {type(value).__name__} {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        interval = (("(" if low_open else "[") + f"{low:g}, "
                    + ("inf)" if high is None else f"{high:g}" + (")" if high_open else "]")))
        raise ValueError(f"Segmenter: {name} must be a finite number in {interval}, "
                         f"got {value!r}")
    return v


def _choice_arg(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"Segmenter: {name} must be one of "
                         f"{', '.join(map(repr, choices))}; got {value!r}")
    return value


def _bool_arg(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Segmenter: {name} must be True or False, got {value!r}")
    return bool(value)


# --- images and labels in their accepted forms -------------------------------

def _as_array(a, name):
    if is_array_api_obj(a):
        return a
    try:
        return np.asarray(a)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}") from None


def _image_groups(images, name="images"):
    """The accepted image forms -> (list of (N, C, H, W) arrays, form).

    form is "HW", "CHW", "NCHW" or "list". A list of images of one shape is
    stacked into one group; otherwise each image is its own group.
    """
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError(f"{name} must not be an empty list")
        arrays = [_as_array(a, f"{name}[{i}]") for i, a in enumerate(images)]
        for i, a in enumerate(arrays):
            if a.ndim not in (2, 3):
                raise ValueError(
                    f"{name}[{i}] must be one image, (H, W) or (C, H, W), got shape "
                    f"{tuple(a.shape)}")
        xp = array_namespace(arrays[0])
        arrays = [a[None, ...] if a.ndim == 2 else a for a in arrays]  # (C, H, W)
        channels = {int(a.shape[0]) for a in arrays}
        if len(channels) > 1:
            raise ValueError(f"{name} must all have the same number of channels, got "
                             f"{sorted(channels)} (shapes "
                             f"{[tuple(a.shape) for a in arrays]})")
        if len({tuple(a.shape) for a in arrays}) == 1:
            return [xp.stack(arrays, axis=0)], "list"
        return [a[None, ...] for a in arrays], "list"
    a = _as_array(images, name)
    if a.ndim == 2:
        return [a[None, None, ...]], "HW"
    if a.ndim == 3:
        return [a[None, ...]], "CHW"
    if a.ndim == 4:
        return [a], "NCHW"
    raise ValueError(f"{name} must be one image (H, W) or (C, H, W), a batch "
                     f"(N, C, H, W) or a list of images; got shape {tuple(a.shape)}")


def _label_groups(labels, groups, form, name="labels"):
    """Labels in the form matching the images -> list of host int64 (N, H, W),
    one per image group."""
    if form == "list":
        if not isinstance(labels, (list, tuple)):
            raise TypeError(f"{name} must be a list of (H, W) label maps, one per "
                            f"image, when the images are a list; got "
                            f"{type(labels).__name__}")
        n_images = sum(int(g.shape[0]) for g in groups)
        if len(labels) != n_images:
            raise ValueError(f"{name} has {len(labels)} label maps but there are "
                             f"{n_images} images")
        maps = [_host_labels(lab, f"{name}[{i}]") for i, lab in enumerate(labels)]
        sizes = [tuple(int(n) for n in g.shape[2:]) for g in groups
                 for _ in range(int(g.shape[0]))]
        for i, (m, size) in enumerate(zip(maps, sizes)):
            if m.shape != size:
                raise ValueError(f"{name}[{i}] must have shape (H, W) = {size} to "
                                 f"match images[{i}], got shape {m.shape}")
        return [np.stack(maps)] if len(groups) == 1 else [m[None] for m in maps]
    lab = _host_labels(labels, name)
    x = groups[0]
    if form == "NCHW":
        image_shape, want = tuple(x.shape), (int(x.shape[0]),) + tuple(x.shape[2:])
    else:
        image_shape, want = tuple(x.shape[1:] if form == "CHW" else x.shape[2:]), \
            tuple(x.shape[2:])
    if lab.shape != want:
        hint = ""
        if form == "CHW" and lab.ndim == 3:
            hint = (" (a 3-d image is read as one (C, H, W) image; for a batch of "
                    "single-channel images pass images[:, None], shape (N, 1, H, W))")
        layout = "(N, H, W)" if form == "NCHW" else "(H, W)"
        raise ValueError(f"{name} must have shape {layout} = {want} to match images "
                         f"of shape {image_shape}, got shape {lab.shape}{hint}")
    return [lab if form == "NCHW" else lab[None]]


def _host_labels(labels, name):
    a = to_numpy(labels) if is_array_api_obj(labels) else np.asarray(labels)
    if a.dtype == bool:
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array of class indices, got "
                        f"dtype {a.dtype}")
    return a.astype(np.int64)


def _float_dtype_of(x, xp):
    """float64 for float64 images, else float32 (integer images included)."""
    if xp.isdtype(x.dtype, "real floating"):
        if x.dtype == xp.float64:
            return xp.float64
        if x.dtype == xp.float32:
            return xp.float32
        raise TypeError(f"images must be float32, float64 or integer, got dtype "
                        f"{x.dtype}")
    if xp.isdtype(x.dtype, ("integral", "bool")):
        return xp.float32
    raise TypeError(f"images must be real (float, integer or bool), got dtype {x.dtype}")


class _Progress:
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


# --- the estimator ------------------------------------------------------------

class Segmenter:
    """Pixel classifier: a one-layer CNN trained on labelled (or scribbled)
    images, with a scikit-learn style interface.

    The network is ``P = softmax(W^T sigma(K(theta) x + b) + c)`` of
    :func:`arrseg.predict_proba`, on images normalised per channel with the
    mean and standard deviation learnt in :meth:`fit`.

    Parameters
    ----------
    width : int, default 16
        k, the number of feature channels.
    kernel_size : int, default 3
        s, odd: each feature sees an s x s neighbourhood.
    activation : {"tanh", "relu", "sigmoid", "identity"}, default "tanh"
    boundary : {"zeros", "periodic"}, default "zeros"
    method : {"auto", "direct", "fft"}, default "auto"
        How the convolution is computed (:func:`arrseg.predict_proba`).
    optimizer : {"adam", "sgd", "varpro"}, default "adam"
        Adam or SGD with momentum on mini-batches of random crops, or
        variable projection (:class:`arrseg.optim.VarPro`: L-BFGS on the
        kernels, Newton-CG for the classifier) on the full batch.
    learning_rate : float, optional
        Step length of "sgd" and "adam"; default
        :data:`DEFAULT_LEARNING_RATES` (0.5 for SGD, 0.03 for Adam). Not used
        by "varpro" (its steps come from a line search).
    momentum : float, default 0.9
        SGD's momentum, in [0, 1).
    nesterov : bool, default False
        Nesterov momentum for SGD.
    max_iter : int, default 200
        Maximum number of iterations (epochs for "sgd" and "adam", outer
        iterations for "varpro"; see the module docstring).
    batch_size : int, default 4
        Crops (or whole images) per mini-batch.
    crop_size : int, optional
        Side of the random square crops of "sgd" and "adam". Default: whole
        images when every image is at most 512 pixels in both directions,
        else 512. Crops are drawn around a random labelled pixel, and their
        border of s // 2 pixels (where the convolution would see the crop's
        padding instead of the image) does not count in the loss.
    weight_decay : float, default 1e-4
        Tikhonov regularisation ``weight_decay/2 (||K||^2 + ||W||^2)``.
    smoothness : float, default 0.0
        Smoothness regularisation of the kernels,
        ``smoothness/2 sum ||grad theta_ij||^2``.
    class_weight : None, "balanced" or array of shape (n_classes,)
        Weights of the classes in the loss; "balanced" weighs class j by
        ``n_labelled / (n_classes * n_j)``.
    n_classes : int, optional
        Number of classes; default 1 + the largest label.
    ignore_index : int, default -100
        Label of unlabelled pixels: they do not count in the loss, so a few
        scribbled strokes are enough to get a full probability map.
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the labelled pixels (or use the
        ``validation`` passed to :meth:`fit`), evaluate the model on them
        every iteration, stop when the validation loss has not fallen by
        ``tol`` for ``n_iter_no_change`` iterations, and return the model of
        the lowest validation loss. (The loss, not the mean IoU, is
        monitored: the IoU can stay flat for many iterations early in
        training while the model is still improving.)
    validation_fraction : float, default 0.1
        In (0, 1).
    n_iter_no_change : int, default 10
        Iterations without an improvement of ``tol`` before stopping (of
        the training objective without early stopping, of the validation
        loss with it).
    tol : float, default 1e-4
    tile_size : int, optional
        Prediction works on tiles of this size (:mod:`arrseg.tiling`) when
        an image is larger; default 512.
    seed : int or None, default 0
        Seed of the initialisation, the crops and the validation split: the
        same seed gives the same model on the same backend.
    verbose : bool, default False
        Show a progress bar on stderr.

    Attributes
    ----------
    params_ : Params
        The trained parameters, in the namespace and on the device of the
        training images.
    n_classes_ : int
    classes_ : ndarray
        ``arange(n_classes_)``.
    in_channels_ : int
    mean_, std_ : ndarray, shape (C,)
        The per-channel normalisation.
    class_weight_ : ndarray or None
    n_iter_ : int
    loss_curve_ : list of float
        Training objective (loss + regularisation) per iteration; the mean
        over the mini-batches of the iteration for "sgd" and "adam".
    validation_scores_ : list of float
        Validation mean IoU per iteration (with early stopping or a
        ``validation`` set); empty without validation.
    validation_loss_curve_ : list of float
        Validation loss (weighted mean cross-entropy) per iteration.
    validation_score_ : float or None
        Validation mean IoU of the returned model.
    fit_time_ : float
        Seconds spent in :meth:`fit`.

    Examples
    --------
    >>> import arrseg
    >>> from arrseg.segmenter import Segmenter
    >>> x, y = arrseg.data.make_shapes(n_images=3, size=32, seed=0)
    >>> model = Segmenter(width=8, kernel_size=5).fit(x[:2], y[:2])
    >>> model.predict(x[2]).shape                   # one (C, H, W) image
    (32, 32)
    >>> bool(model.score(x[2:], y[2:]) > 0.8)        # mean IoU on a new image
    True
    """

    def __init__(self, width=16, kernel_size=3, *, activation="tanh",
                 boundary="zeros", method="auto", optimizer="adam",
                 learning_rate=None, momentum=0.9, nesterov=False, max_iter=200,
                 batch_size=4, crop_size=None, weight_decay=1e-4, smoothness=0.0,
                 class_weight=None, n_classes=None,
                 ignore_index=DEFAULT_IGNORE_INDEX, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4,
                 tile_size=None, seed=0, verbose=False):
        self.width = width
        self.kernel_size = kernel_size
        self.activation = activation
        self.boundary = boundary
        self.method = method
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.nesterov = nesterov
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.crop_size = crop_size
        self.weight_decay = weight_decay
        self.smoothness = smoothness
        self.class_weight = class_weight
        self.n_classes = n_classes
        self.ignore_index = ignore_index
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.tile_size = tile_size
        self.seed = seed
        self.verbose = verbose

    # -- scikit-learn's estimator protocol -------------------------------------

    @classmethod
    def _get_param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep=True):
        """The hyper-parameters, as a dict of constructor arguments.

        Examples
        --------
        >>> from arrseg.segmenter import Segmenter
        >>> Segmenter(width=8).get_params()["width"]
        8
        """
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set hyper-parameters; returns self. Unknown names raise ValueError.

        Examples
        --------
        >>> from arrseg.segmenter import Segmenter
        >>> Segmenter().set_params(optimizer="varpro", width=4)
        Segmenter(optimizer='varpro', width=4)
        """
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator "
                                 f"Segmenter. Valid parameters are: {valid}")
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = {p.name: p.default for p in
                    inspect.signature(type(self).__init__).parameters.values()}
        changed = []
        for name in self._get_param_names():
            value = getattr(self, name)
            default = defaults[name]
            same = value is default or (type(value) is type(default)
                                        and not is_array_api_obj(value)
                                        and value == default)
            if not same:
                changed.append(f"{name}={value!r}")
        return f"Segmenter({', '.join(changed)})"

    def __sklearn_is_fitted__(self):
        return hasattr(self, "params_")

    # -- hyper-parameter checks ---------------------------------------------

    def _check_hyper_parameters(self):
        h = {}
        h["width"] = _int_arg("width", self.width, 1)
        s = _int_arg("kernel_size", self.kernel_size, 1)
        if s % 2 == 0:
            raise ValueError(f"Segmenter: kernel_size must be odd (the output keeps "
                             f"the image's size), got {s}")
        h["kernel_size"] = s
        h["activation"] = _choice_arg("activation", self.activation, ACTIVATION_NAMES)
        h["boundary"] = _choice_arg("boundary", self.boundary, BOUNDARIES)
        from .network import METHODS  # the other engineer's list, when present

        h["method"] = _choice_arg("method", self.method, tuple(METHODS))
        h["optimizer"] = _choice_arg("optimizer", self.optimizer, OPTIMIZERS)
        lr = _float_arg("learning_rate", self.learning_rate, low_open=True,
                        allow_none=True)
        h["learning_rate"] = (DEFAULT_LEARNING_RATES.get(h["optimizer"])
                              if lr is None else lr)
        h["momentum"] = _float_arg("momentum", self.momentum, high=1.0)
        h["nesterov"] = _bool_arg("nesterov", self.nesterov)
        if h["nesterov"] and h["momentum"] == 0 and h["optimizer"] == "sgd":
            raise ValueError("Segmenter: nesterov=True needs momentum > 0, got "
                             "momentum=0")
        h["max_iter"] = _int_arg("max_iter", self.max_iter, 1)
        h["batch_size"] = _int_arg("batch_size", self.batch_size, 1)
        h["crop_size"] = _int_arg("crop_size", self.crop_size, s, allow_none=True)
        h["weight_decay"] = _float_arg("weight_decay", self.weight_decay)
        h["smoothness"] = _float_arg("smoothness", self.smoothness)
        cw = self.class_weight
        if isinstance(cw, str):
            h["class_weight"] = _choice_arg("class_weight", cw, ("balanced",))
        elif cw is None:
            h["class_weight"] = None
        else:
            try:
                arr = np.asarray(to_numpy(cw) if is_array_api_obj(cw) else cw,
                                 dtype=np.float64)
            except (TypeError, ValueError):
                raise TypeError(f"Segmenter: class_weight must be None, 'balanced' "
                                f"or a sequence of non-negative numbers, got "
                                f"{cw!r}") from None
            if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise ValueError(f"Segmenter: class_weight must be a 1-d sequence of "
                                 f"finite non-negative numbers, got {cw!r}")
            h["class_weight"] = arr
        h["n_classes"] = _int_arg("n_classes", self.n_classes, 2, allow_none=True)
        h["ignore_index"] = _int_arg("ignore_index", self.ignore_index)
        h["early_stopping"] = _bool_arg("early_stopping", self.early_stopping)
        h["validation_fraction"] = _float_arg("validation_fraction",
                                              self.validation_fraction,
                                              low_open=True, high=1.0)
        h["n_iter_no_change"] = _int_arg("n_iter_no_change", self.n_iter_no_change, 1)
        h["tol"] = _float_arg("tol", self.tol)
        h["tile_size"] = _int_arg("tile_size", self.tile_size, 1, allow_none=True)
        if self.seed is not None:
            _int_arg("seed", self.seed, 0)
        if not isinstance(self.verbose, (bool, numbers.Integral)):
            raise TypeError(f"Segmenter: verbose must be True or False, got "
                            f"{self.verbose!r}")
        h["verbose"] = bool(self.verbose)
        return h

    # -- fitting ------------------------------------------------------------

    def fit(self, images, labels, *, validation=None):
        """Train on labelled images.

        Parameters
        ----------
        images : array or list of arrays
            One image (H, W) or (C, H, W), a batch (N, C, H, W), or a list of
            (H, W) / (C, H, W) images (of different sizes if need be). Any
            array API namespace; integer images (uint8, uint16) are fine:
            they are normalised.
        labels : integer array or list of arrays
            Class indices of the pixels, (H, W) per image: (H, W) for one
            image, (N, H, W) for a batch, a list for a list.
            ``ignore_index`` marks pixels without a label.
        validation : (images, labels), optional
            Validation data scored every iteration (``validation_scores_``),
            and used for early stopping when ``early_stopping=True``.

        Returns
        -------
        self

        Raises
        ------
        ValueError, TypeError
            For bad hyper-parameters or data; the message names them.
        arrseg.optim.NonFiniteLossError
            When the loss becomes NaN or infinite (a learning rate too
            large); the estimator keeps the last parameters with a finite
            loss and the error names the iteration.
        """
        start_time = time.perf_counter()
        h = self._check_hyper_parameters()
        groups, form = _image_groups(images)
        xp = array_namespace(groups[0])
        dev = device(groups[0])
        host_labels = _label_groups(labels, groups, form)
        C = int(groups[0].shape[1])
        dtype = _float_dtype_of(groups[0], xp)
        for g in groups:
            _float_dtype_of(g, xp)

        n_classes = self._infer_n_classes(host_labels, h)
        class_weight = self._resolve_class_weight(host_labels, n_classes, h)
        mean, std = self._normalisation(groups, xp)

        rng = np.random.default_rng(self.seed)
        xs = [self._normalise(g, mean, std, dtype, xp) for g in groups]

        val = None
        if validation is not None:
            val = self._validation_data(validation, C, mean, std, n_classes, h)
        elif h["early_stopping"]:
            host_labels, val_labels = self._split_pixels(host_labels, rng, h)
            val = (xs, [xp.asarray(v, device=dev) for v in val_labels])

        params = init_params(C, h["width"], n_classes, h["kernel_size"],
                             seed=self.seed, dtype="float64" if dtype == xp.float64
                             else "float32", xp=xp, device=dev)
        cw = (None if class_weight is None
              else xp.asarray(class_weight, dtype=dtype, device=dev))

        # the fitted state, kept up to date so that an error leaves a usable model
        self.in_channels_ = C
        self.n_classes_ = n_classes
        self.classes_ = np.arange(n_classes)
        self.mean_, self.std_ = mean, std
        self.class_weight_ = class_weight
        self.loss_curve_ = []
        self.validation_scores_ = []
        self.validation_loss_curve_ = []
        self.validation_score_ = None
        self.n_iter_ = 0
        self.params_ = params
        self._params_cache = {}

        reg = Regularization(h["weight_decay"], h["smoothness"])
        options = {"activation": h["activation"], "boundary": h["boundary"],
                   "class_weight": cw, "ignore_index": h["ignore_index"],
                   "method": h["method"]}
        progress = _Progress(h["max_iter"]) if h["verbose"] else None
        monitor = _Monitor(h, val is not None)
        try:
            if h["optimizer"] == "varpro":
                self._fit_varpro(xs, host_labels, params, options, h, val, monitor,
                                 progress, xp, dev)
            else:
                self._fit_first_order(xs, host_labels, params, reg, options, h, val,
                                      monitor, progress, rng, xp, dev)
            if monitor.uses_validation:  # keep the best model seen
                self.params_ = monitor.best_params
                self.validation_score_ = monitor.best_score
            elif self.validation_scores_:
                self.validation_score_ = self.validation_scores_[-1]
        finally:
            if progress is not None:
                progress.close()
            self._params_cache = {}
            self.fit_time_ = time.perf_counter() - start_time
        return self

    def _infer_n_classes(self, host_labels, h):
        ignore = h["ignore_index"]
        values = np.unique(np.concatenate([np.unique(m) for m in host_labels]))
        values = values[values != ignore]
        bad = values[values < 0]
        if h["n_classes"] is not None:
            bad = values[(values < 0) | (values >= h["n_classes"])]
        if bad.size:
            upper = "" if h["n_classes"] is None else f", {h['n_classes']})"
            raise ValueError(
                "labels must be class indices "
                + (f"in [0{upper}" if upper else ">= 0")
                + f" or ignore_index = {ignore}; got {bad.size} other value(s), e.g. "
                f"{bad[:5].tolist()}")
        if values.size == 0:
            raise ValueError(f"labels has no labelled pixel: every label is "
                             f"ignore_index = {ignore}")
        if h["n_classes"] is not None:
            return h["n_classes"]
        n = int(values.max()) + 1
        if n < 2:
            raise ValueError("labels hold only class 0: a segmenter needs at least "
                             "2 classes (label some pixels of another class, or set "
                             "n_classes)")
        return n

    def _resolve_class_weight(self, host_labels, n_classes, h):
        cw = h["class_weight"]
        if cw is None:
            return None
        if isinstance(cw, str):  # "balanced", as scikit-learn
            counts = np.zeros(n_classes)
            for m in host_labels:
                v = m[(m >= 0) & (m < n_classes) & (m != h["ignore_index"])]
                counts += np.bincount(v, minlength=n_classes)
            total = counts.sum()
            return np.where(counts > 0, total / (n_classes * np.maximum(counts, 1)), 0.0)
        if cw.shape != (n_classes,):
            raise ValueError(f"Segmenter: class_weight must have one weight per class, "
                             f"shape ({n_classes},), got shape {cw.shape}")
        return cw

    @staticmethod
    def _normalisation(groups, xp):
        """Per-channel mean and standard deviation over all pixels (float64,
        computed on the device, two passes)."""
        n = sum(int(g.shape[0]) * int(g.shape[2]) * int(g.shape[3]) for g in groups)
        f64 = [xp.astype(g, xp.float64) for g in groups]
        mean = sum(xp.sum(g, axis=(0, 2, 3)) for g in f64) / n
        var = sum(xp.sum((g - mean[:, None, None]) ** 2, axis=(0, 2, 3))
                  for g in f64) / n
        mean, std = to_numpy(mean).astype(np.float64), np.sqrt(to_numpy(var))
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
            raise ValueError("images must be finite, got NaN or inf values")
        return mean, np.where(std > 0, std, 1.0)

    @staticmethod
    def _normalise(x, mean, std, dtype, xp):
        dev = device(x)
        m = xp.asarray(mean, dtype=dtype, device=dev)[:, None, None]
        s = xp.asarray(std, dtype=dtype, device=dev)[:, None, None]
        return (xp.astype(x, dtype) - m) / s

    def _split_pixels(self, host_labels, rng, h):
        """Hold out validation_fraction of each image's labelled pixels."""
        ignore = h["ignore_index"]
        train, val = [], []
        for m in host_labels:
            flat = m.reshape(-1)
            labelled = np.flatnonzero(flat != ignore)
            n_val = round(h["validation_fraction"] * labelled.size)
            if labelled.size >= 2:
                n_val = min(max(n_val, 1), labelled.size - 1)
            else:
                n_val = 0
            chosen = rng.choice(labelled, size=n_val, replace=False)
            t = flat.copy()
            t[chosen] = ignore
            v = np.full_like(flat, ignore)
            v[chosen] = flat[chosen]
            train.append(t.reshape(m.shape))
            val.append(v.reshape(m.shape))
        return train, val

    def _validation_data(self, validation, C, mean, std, n_classes, h):
        try:
            vx, vy = validation
        except (TypeError, ValueError):
            raise TypeError("validation must be a pair (images, labels)") from None
        groups, form = _image_groups(vx, "validation images")
        xp = array_namespace(groups[0])
        dev = device(groups[0])
        for g in groups:
            if int(g.shape[1]) != C:
                raise ValueError(f"validation images have {int(g.shape[1])} channels "
                                 f"but the training images have {C}")
        maps = _label_groups(vy, groups, form, "validation labels")
        ignore = h["ignore_index"]
        for m in maps:
            bad = m[(m != ignore) & ((m < 0) | (m >= n_classes))]
            if bad.size:
                raise ValueError(f"validation labels must be in [0, {n_classes}) or "
                                 f"ignore_index = {ignore}; got {bad[:5].tolist()}")
        dtype = _float_dtype_of(groups[0], xp)
        xs = [self._normalise(g, mean, std, dtype, xp) for g in groups]
        return xs, [xp.asarray(m, device=dev) for m in maps]

    def _validation_scores(self, val, params):
        """(loss, mean IoU) of the model on the validation pixels.

        The loss is the weighted mean cross-entropy of :func:`loss_and_grad`
        (without regularisation), read off the predicted probabilities.
        """
        from .metrics import mean_iou

        xs, ys = val
        xp = array_namespace(xs[0])
        n_c, ignore = self.n_classes_, int(self.ignore_index)
        preds, trues = [], []
        num = den = 0.0
        for x, y in zip(xs, ys):
            dev = device(x)
            P = self._proba_normalised(x, self._params_for(params, xp, dev))
            classes = xp.arange(n_c, dtype=y.dtype, device=dev)
            onehot = xp.astype((y[:, None, ...] == classes[None, :, None, None])
                               & (y != ignore)[:, None, ...], P.dtype)
            if self.class_weight_ is not None:
                w = xp.asarray(self.class_weight_, dtype=P.dtype, device=dev)
                onehot = onehot * w[None, :, None, None]
            tiny = float(np.finfo(to_numpy(P[:1, :1, :1, :1]).dtype).tiny)
            num += float(xp.sum(onehot * -xp.log(xp.maximum(P, xp.asarray(
                tiny, dtype=P.dtype, device=dev)))))
            den += float(xp.sum(onehot))
            preds.append(xp.reshape(xp.argmax(P, axis=1), (-1,)))
            trues.append(xp.reshape(y, (-1,)))
        score = mean_iou(xp.concat(trues), xp.concat(preds), n_c, ignore_index=ignore)
        return (num / den if den > 0 else 0.0), float(score)

    # the two training loops --------------------------------------------------

    def _fit_first_order(self, xs, host_labels, params, reg, options, h, val,
                         monitor, progress, rng, xp, dev):
        opt = (SGD(h["learning_rate"], h["momentum"], nesterov=h["nesterov"])
               if h["optimizer"] == "sgd" else Adam(h["learning_rate"]))
        sampler = _CropSampler(xs, host_labels, h, rng, xp, dev)
        step = 0
        for it in range(1, h["max_iter"] + 1):
            losses = []
            for _ in range(sampler.steps_per_epoch):
                step += 1
                xb, yb = sampler.batch()
                # overflow is detected below and reported with the iteration
                with np.errstate(over="ignore", invalid="ignore"):
                    loss, grads = loss_and_grad(xb, yb, params, **options)
                    if reg.active:
                        r, rg = reg(params)
                        loss = loss + r
                        grads = tree_map(lambda a, b: a + b, grads, rg)
                    value = float(loss)
                if not math.isfinite(value):
                    self._diverged(f"the training loss is {value}", it, step, value,
                                   params, h)
                with np.errstate(over="ignore", invalid="ignore"):
                    new = opt.step(params, grads)
                if not all_finite(*new):
                    self._diverged("the parameters overflowed in the update", it,
                                   step, value, params, h)
                params = new
                losses.append(value)
            self.params_ = params
            self.n_iter_ = it
            self.loss_curve_.append(float(np.mean(losses)))
            if self._end_of_iteration(monitor, params, val, progress, it):
                break

    def _fit_varpro(self, xs, host_labels, params, options, h, val, monitor,
                    progress, xp, dev):
        vp = VarPro(activation=options["activation"], boundary=options["boundary"],
                    method=options["method"], class_weight=options["class_weight"],
                    ignore_index=options["ignore_index"],
                    weight_decay=h["weight_decay"], smoothness=h["smoothness"])
        ys = [xp.asarray(m, device=dev) for m in host_labels]
        params, _ = vp.start(xs, ys, params)
        self.params_ = params
        for it in range(1, h["max_iter"] + 1):
            params, loss = vp.step()
            self.params_ = params
            self.n_iter_ = it
            self.loss_curve_.append(float(loss))
            if self._end_of_iteration(monitor, params, val, progress, it) or vp.stalled:
                break

    def _end_of_iteration(self, monitor, params, val, progress, it):
        """Record scores, keep the best model; True to stop."""
        score = val_loss = None
        if val is not None:
            val_loss, score = self._validation_scores(val, params)
            self.validation_loss_curve_.append(val_loss)
            self.validation_scores_.append(score)
        stop = monitor.update(self.loss_curve_[-1], val_loss, score, params)
        if progress is not None:
            progress.update(it, self.loss_curve_[-1], score)
        return stop

    def _diverged(self, what, it, step, value, params, h):
        self.params_ = params
        self.n_iter_ = it - 1
        raise NonFiniteLossError(
            f"Segmenter.fit: {what} at iteration {it} (optimizer step {step}) with "
            f"optimizer={h['optimizer']!r}, learning_rate={h['learning_rate']:g}; "
            "the model keeps the last parameters with a finite loss; try a smaller "
            "learning_rate", iteration=it, loss=value, params=params)

    # -- prediction --------------------------------------------------------------

    def _check_fitted(self, what):
        if not hasattr(self, "params_"):
            raise NotFittedError(
                f"This Segmenter instance is not fitted yet: call fit(images, labels) "
                f"before {what}, or load a saved model with Segmenter.load(path)")

    def _params_for(self, params, xp, dev):
        """The parameters in namespace xp on device dev (converted once)."""
        try:
            if array_namespace(params.K) is xp and device(params.K) == dev:
                return params
        except TypeError:
            pass
        key = (id(params), getattr(xp, "__name__", str(xp)), str(dev))
        cache = self.__dict__.setdefault("_params_cache", {})
        if key not in cache:
            cache.clear()
            cache[key] = Params(*(None if a is None else
                                  xp.asarray(to_numpy(a), device=dev) for a in params))
        return cache[key]

    def _proba_normalised(self, x, params):
        from .tiling import predict_proba_tiled

        return predict_proba_tiled(x, params, tile_size=self.tile_size,
                                   activation=self.activation, boundary=self.boundary,
                                   method=self.method)

    def _proba_groups(self, images, what):
        self._check_fitted(what)
        groups, form = _image_groups(images)
        out = []
        for g in groups:
            if int(g.shape[1]) != self.in_channels_:
                raise ValueError(
                    f"images have {int(g.shape[1])} channel(s) (shape "
                    f"{tuple(g.shape[1:]) if form != 'NCHW' else tuple(g.shape)}) but "
                    f"this Segmenter was fitted on images with {self.in_channels_}")
            xp = array_namespace(g)
            # float images keep their dtype (as in arrseg.predict_proba);
            # integer images take the parameters'
            dtype = _float_dtype_of(g, xp)
            if not xp.isdtype(g.dtype, "real floating"):
                xp_p = array_namespace(self.params_.K)
                dtype = xp.float64 if self.params_.K.dtype == xp_p.float64 else xp.float32
            x = self._normalise(g, self.mean_, self.std_, dtype, xp)
            out.append(self._proba_normalised(x, self._params_for(self.params_, xp,
                                                                  device(g))))
        return out, form

    def predict_proba(self, images):
        """Per-pixel class probabilities.

        Parameters
        ----------
        images : array or list of arrays
            In one of the forms :meth:`fit` accepts, with the training images'
            number of channels.

        Returns
        -------
        array or list of arrays
            (n_c, H, W) for one image, (N, n_c, H, W) for a batch, a list of
            (n_c, H, W) for a list; in the images' namespace and device.
        """
        out, form = self._proba_groups(images, "predict_proba")
        return self._reshape_out(out, form, channels=True)

    def predict(self, images):
        """Per-pixel class labels (the most probable class), int64.

        Returns
        -------
        array or list of arrays
            (H, W) for one image, (N, H, W) for a batch, a list of (H, W).
        """
        out, form = self._proba_groups(images, "predict")
        labels = []
        for P in out:
            xp = array_namespace(P)
            labels.append(xp.astype(xp.argmax(P, axis=1), xp.int64))
        return self._reshape_out(labels, form, channels=False)

    @staticmethod
    def _reshape_out(out, form, channels):
        if form == "NCHW":
            return out[0]
        if form in ("HW", "CHW"):
            return out[0][0, ...]
        return [a[i, ...] for a in out for i in range(int(a.shape[0]))]

    def score(self, images, labels):
        """Mean IoU (:func:`arrseg.metrics.mean_iou`) of the predictions on the
        labelled pixels (``ignore_index`` pixels do not count).

        Returns
        -------
        float
        """
        from .metrics import mean_iou

        self._check_fitted("score")
        groups, form = _image_groups(images)
        xp = array_namespace(groups[0])
        maps = _label_groups(labels, groups, form)
        pred = self.predict(images)
        preds = pred if isinstance(pred, list) else [pred]
        trues = [xp.asarray(m.reshape(-1), device=device(groups[0])) for m in maps]
        flat = xp.concat([xp.reshape(p, (-1,)) for p in preds])
        return float(mean_iou(xp.concat(trues), flat, self.n_classes_,
                              ignore_index=int(self.ignore_index)))

    # -- model files ---------------------------------------------------------

    def save(self, path):
        """Write the fitted model to a file (:func:`arrseg.model_file.save`):
        parameters, hyper-parameters, normalisation and training record."""
        from . import model_file

        self._check_fitted("save")
        hyper = {}
        for name, value in self.get_params().items():
            if is_array_api_obj(value) or isinstance(value, np.ndarray):
                value = to_numpy(value).tolist()
            elif isinstance(value, (tuple, list)):
                value = list(value)
            hyper[name] = value
        metadata = {
            "estimator": "arrseg.Segmenter",
            "hyper_parameters": hyper,
            "in_channels": int(self.in_channels_),
            "n_classes": int(self.n_classes_),
            "mean": [float(v) for v in self.mean_],
            "std": [float(v) for v in self.std_],
            "class_weight": (None if self.class_weight_ is None
                             else [float(v) for v in self.class_weight_]),
            "n_iter": int(self.n_iter_),
            "loss_curve": [float(v) for v in self.loss_curve_],
            "validation_scores": [float(v) for v in self.validation_scores_],
            "validation_loss_curve": [float(v) for v in self.validation_loss_curve_],
            "validation_score": self.validation_score_,
        }
        model_file.save(path, self.params_, metadata)

    @classmethod
    def load(cls, path, *, xp=None, device=None):
        """A fitted Segmenter from a file written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
        xp : namespace, optional
            Namespace of the loaded parameters (default NumPy); prediction
            converts them to the images' namespace as needed.
        device : optional

        Raises
        ------
        arrseg.model_file.ModelFileError
            If the file is not a model file, or was not written by
            ``Segmenter.save``.
        """
        from . import model_file

        params, meta = model_file.load(path, xp=xp, device=device)
        if meta.get("estimator") != "arrseg.Segmenter":
            raise model_file.ModelFileError(
                f"cannot load {str(path)!r} as a Segmenter: its metadata 'estimator' "
                f"is {meta.get('estimator')!r}, expected 'arrseg.Segmenter' (it was "
                "not written by Segmenter.save; use arrseg.model_file.load)")
        valid = cls._get_param_names()
        model = cls(**{k: v for k, v in meta["hyper_parameters"].items() if k in valid})
        model.params_ = params
        model.in_channels_ = int(meta["in_channels"])
        model.n_classes_ = int(meta["n_classes"])
        model.classes_ = np.arange(model.n_classes_)
        model.mean_ = np.asarray(meta["mean"], dtype=np.float64)
        model.std_ = np.asarray(meta["std"], dtype=np.float64)
        model.class_weight_ = (None if meta["class_weight"] is None
                               else np.asarray(meta["class_weight"], dtype=np.float64))
        model.n_iter_ = int(meta["n_iter"])
        model.loss_curve_ = list(meta["loss_curve"])
        model.validation_scores_ = list(meta["validation_scores"])
        model.validation_loss_curve_ = list(meta["validation_loss_curve"])
        model.validation_score_ = meta["validation_score"]
        return model


class _Monitor:
    """Convergence and early stopping: counts the iterations in which the
    training objective (with early stopping: the validation loss) has not
    fallen below its best value by more than tol; keeps the parameters (and
    the validation score) of the best value."""

    def __init__(self, h, have_validation):
        self.uses_validation = h["early_stopping"] and have_validation
        self.tol, self.patience = h["tol"], h["n_iter_no_change"]
        self.best = None
        self.best_params = self.best_score = None
        self.bad = 0

    def update(self, loss, val_loss, score, params):
        value = val_loss if self.uses_validation else loss
        improved = self.best is None or value < self.best - self.tol
        if self.best is None or value < self.best:
            self.best, self.best_params, self.best_score = value, params, score
        self.bad = 0 if improved else self.bad + 1
        return self.bad >= self.patience


class _CropSampler:
    """Mini-batches of random crops (or whole images) of the training data.

    Crops are placed around a labelled pixel drawn at random, so sparse
    labels are not wasted on empty crops. On the sides where a crop is inside
    the image (or everywhere with periodic boundaries), its border of s // 2
    pixels is marked ignore_index: there the convolution sees the crop's
    padding, not the image.
    """

    def __init__(self, xs, host_labels, h, rng, xp, dev):
        self.xs, self.labels = xs, host_labels
        self.xp, self.dev, self.rng = xp, dev, rng
        self.ignore = h["ignore_index"]
        self.boundary = h["boundary"]
        self.halo = h["kernel_size"] // 2
        self.batch_size = h["batch_size"]
        self.images = [(g, n) for g, x in enumerate(xs) for n in range(int(x.shape[0]))]
        H = min(int(x.shape[2]) for x in xs)
        W = min(int(x.shape[3]) for x in xs)
        crop = DEFAULT_CROP_SIZE if h["crop_size"] is None else h["crop_size"]
        whole = len(xs) == 1 and H <= crop and W <= crop
        self.whole = whole
        self.crop = (min(crop, H), min(crop, W))
        total_pixels = sum(int(x.shape[0]) * int(x.shape[2]) * int(x.shape[3])
                           for x in xs)
        if whole:
            self.batch_size = min(self.batch_size, len(self.images))
            self.steps_per_epoch = math.ceil(len(self.images) / self.batch_size)
            self.device_labels = xp.asarray(host_labels[0], device=dev)
        else:
            # no more crops per step than it takes to cover the pixels once
            crop_pixels = self.crop[0] * self.crop[1]
            self.batch_size = min(self.batch_size, math.ceil(total_pixels / crop_pixels))
            self.steps_per_epoch = math.ceil(
                total_pixels / (self.batch_size * crop_pixels))
            self.labelled = [np.flatnonzero(host_labels[g][n].reshape(-1) != self.ignore)
                             for g, n in self.images]
        self.order = []

    def _next_images(self, count):
        out = []
        while len(out) < count:
            if not self.order:
                self.order = list(self.rng.permutation(len(self.images)))
            out.append(self.order.pop())
        return out

    def batch(self):
        xp = self.xp
        chosen = self._next_images(self.batch_size)
        if self.whole:
            if self.batch_size == len(self.images):
                return self.xs[0], self.device_labels
            idx = xp.asarray(np.sort(chosen), dtype=xp.int64, device=self.dev)
            return (xp.take(self.xs[0], idx, axis=0),
                    xp.take(self.device_labels, idx, axis=0))
        ch, cw = self.crop
        xb, yb = [], []
        for i in chosen:
            g, n = self.images[i]
            lab = self.labels[g][n]
            H, W = lab.shape
            labelled = self.labelled[i]
            if labelled.size:
                h0, w0 = divmod(int(labelled[self.rng.integers(labelled.size)]), W)
                r = int(self.rng.integers(max(0, h0 - ch + 1), min(h0, H - ch) + 1))
                c = int(self.rng.integers(max(0, w0 - cw + 1), min(w0, W - cw) + 1))
            else:
                r = int(self.rng.integers(0, H - ch + 1))
                c = int(self.rng.integers(0, W - cw + 1))
            y = lab[r:r + ch, c:c + cw].copy()
            p = self.halo
            if p:
                inner = self.boundary != "zeros"
                if r > 0 or inner:
                    y[:p] = self.ignore
                if r + ch < H or inner:
                    y[ch - p:] = self.ignore
                if c > 0 or inner:
                    y[:, :p] = self.ignore
                if c + cw < W or inner:
                    y[:, cw - p:] = self.ignore
            xb.append(self.xs[g][n:n + 1, :, r:r + ch, c:c + cw])
            yb.append(y)
        x = xb[0] if len(xb) == 1 else xp.concat(xb, axis=0)
        return x, xp.asarray(np.stack(yb), device=self.dev)
