"""The scikit-learn style estimator: :class:`Segmenter`.

``Segmenter(...).fit(images, labels)`` normalises the images, initialises
the network of :func:`arrseg.init_params` and trains it with one of the
optimizers of :mod:`arrseg.optim`; ``predict_proba``, ``predict`` and
``score`` then work on new images, in the images' own namespace and device.

This module orchestrates; the work is in :mod:`arrseg.estimator`
(settings, input forms and normalisation, crops, training loops, model
files). Data flow of :meth:`Segmenter.fit`::

    hyper-parameters -> FitSettings, checked once        (estimator.settings)
    images, labels  -> groups of (N, C, H, W) arrays and int64 (N, H, W) labels
                       (labels read to the host once, for the checks, the
                       class count and the crop plan)     (estimator.inputs)
                    -> per-channel mean_ / std_ (all pixels of all images)
                    -> x = (images - mean_) / std_   float32 (float64 kept),
                       on the images' device; labels moved there once
    "sgd", "adam"   -> per step: a mini-batch of batch_size random crops
                       gathered on the device, the core's loss_and_grad
                       (no checks) + regularisation, update; the loss read
                       back once per iteration            (estimator.training)
    "varpro"        -> per iteration: one L-BFGS step of VarPro, full batch

An *iteration* (``max_iter``, ``n_iter_``, ``loss_curve_``,
``n_iter_no_change``) is an epoch for "sgd" and "adam", as many mini-batch
steps as it takes to cover the training pixels once: ``ceil(N / batch_size)``
steps of whole images, or ``ceil(sum H W / (batch_size * crop pixels))``
steps of crops (with no more crops per step than cover the pixels once); for
"varpro" it is one outer iteration.

Prediction checks the images and parameters once per call (one host
synchronisation per group of same-sized images), normalises on the device
and runs :func:`arrseg.tiling.proba_tiled`: one forward pass over the whole
image unless its working memory exceeds ``memory_budget``.

No scikit-learn import: ``get_params`` / ``set_params`` introspect
``__init__`` as scikit-learn's ``BaseEstimator`` does, so the estimator can
be used with scikit-learn's tools where they accept duck-typed estimators.
"""

from __future__ import annotations

import inspect
import time

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj

from ._backend import device, image_float_dtype, is_dask_array, to_numpy
from ._validation import check_call, finish_calls
from .estimator import classes, inputs, persistence, training
from .estimator.settings import (
    DEFAULT_CROP_SIZE,
    DEFAULT_DEPTH,
    DEFAULT_DILATION,
    DEFAULT_EDGE_SMOOTHNESS,
    DEFAULT_LAYER,
    DEFAULT_LAYER_KERNEL_SIZE,
    DEFAULT_LEARNING_RATES,
    DEFAULT_MAX_ITER,
    DEFAULT_OPTIMIZER,
    DEFAULT_STEP,
    DEFAULT_TOL,
    DEFAULT_WIDTH,
    OPTIMIZERS,
    check_predict_settings,
    check_settings,
)
from .network import DEFAULT_IGNORE_INDEX
from .overflow import diagnose, quiet_overflow, sum_probe
from .params import init_params, params_like
from .tiling import proba_tiled

__all__ = ["DEFAULT_CROP_SIZE", "DEFAULT_LEARNING_RATES", "OPTIMIZERS",
           "NotFittedError", "Segmenter"]


class NotFittedError(ValueError, AttributeError):
    """A :class:`Segmenter` was used before :meth:`~Segmenter.fit`
    (scikit-learn's exception of the same name derives from the same two
    classes)."""


class Segmenter:
    """Pixel classifier: a CNN trained on labelled (or scribbled) images,
    with a scikit-learn style interface.

    The network is ``P = softmax(W^T sigma(K(theta) x + b) + c)`` of
    :func:`arrseg.predict_proba`, on images normalised per channel with the
    mean and standard deviation learnt in :meth:`fit`; with ``depth > 0``
    the features run through ``depth`` residual layers (the course's ResNet,
    :mod:`arrseg.numerics.residual`) before the classifier.

    The defaults (depth 3 with dilations 1, 2, 4, width 8, VarPro for 60
    iterations) are the best accuracy per second of fit found against
    scikit-image's random forest (:doc:`training`, "Choosing the defaults").

    Parameters
    ----------
    width : int, default 8
        k, the number of feature channels.
    kernel_size : int, default 3
        s, odd: each feature sees an s x s neighbourhood.
    depth : int, default 3
        The number of residual layers after the opening layer, >= 0; 0 is
        the one-layer network (the default of releases before 0.7).
    dilation : int, sequence of int, or "doubling", default "doubling"
        The residual layers' dilations d_j (taps d_j pixels apart): one for
        every layer, one per layer (``depth`` entries), or "doubling" for
        1, 2, 4, ..., 2**(depth - 1), whose receptive field grows
        geometrically with the depth. Unused at depth 0.
    step : float, default 1.0
        h > 0, the residual layers' step.
    layer : {"residual", "symmetric"}, default "residual"
        ``Y + h sigma(K_j Y + b_j)``, or the course's stable
        ``Y - h K_j^T sigma(K_j Y + b_j)``. Unused at depth 0.
    layer_kernel_size : int, default 3
        s_r, odd: the residual layers' kernel size. Unused at depth 0.
    activation : {"tanh", "relu", "sigmoid", "identity"}, default "tanh"
    boundary : {"zeros", "periodic"}, default "zeros"
    method : {"auto", "direct", "fft", "fused"}, default "auto"
        How the convolution is computed (:func:`arrseg.predict_proba`).
    optimizer : {"adam", "sgd", "varpro"}, default "varpro"
        Adam or SGD with momentum on mini-batches of random crops, or
        variable projection (:class:`arrseg.optim.VarPro`: L-BFGS on the
        kernels and biases of every layer, Newton-CG for the classifier) on
        the full batch.
    learning_rate : float, optional
        Step length of "sgd" and "adam"; default
        :data:`DEFAULT_LEARNING_RATES` (0.5 for SGD, 0.03 for Adam). Not used
        by "varpro" (its steps come from a line search).
    momentum : float, default 0.9
        SGD's momentum, in [0, 1).
    nesterov : bool, default False
        Nesterov momentum for SGD.
    max_iter : int, default 100
        Maximum number of iterations (epochs for "sgd" and "adam", outer
        iterations for "varpro"; see the module docstring).
    batch_size : int, default 4
        Crops (or whole images) per mini-batch.
    crop_size : int, optional
        Side of the random square crops of "sgd" and "adam". Default: whole
        images when every image is at most 512 pixels in both directions,
        else 512. Crops are drawn around a random labelled pixel, and their
        border of the network's halo (s // 2 pixels at depth 0, the whole
        receptive field's with residual layers,
        :func:`arrseg.numerics.residual.receptive_halo`), where the
        convolutions would see the crop's padding instead of the image, does
        not count in the loss; so crop_size must be at least twice the halo
        plus one.
    weight_decay : float, default 1e-4
        Tikhonov regularisation ``weight_decay/2 (||K||^2 + ||W||^2 +
        ||K_layers||^2)``; the biases are not penalised.
    smoothness : float, default 0.0
        Smoothness regularisation of every kernel, the residual layers'
        included, ``smoothness/2 sum ||grad theta_ij||^2``
        (:func:`arrseg.optim.smoothness`).
    edge_smoothness : "auto" or float, default "auto"
        Edge-aware smoothness of the logits on every training pixel,
        labelled or not: ``edge_smoothness/(2 n) sum_{i~j} w_ij ||S_i -
        S_j||^2`` over neighbouring pixels, with weights
        ``w_ij = exp(-20 ||x_i - x_j||^2 / m)`` (m the mean of
        ``||x_i - x_j||^2``) that vanish across the image's edges and
        textures, on the pairs with at least one unlabelled pixel
        (:mod:`arrseg.optim.edge_smoothness`). With few
        labelled pixels (scribbles) it puts the class boundaries on the
        image's edges between the strokes. It shapes training only; 0
        leaves it out. "auto" is 1 (the benchmark's best,
        docs/training.rst), except with "sgd" or "adam" on Dask images:
        0, where it is not available (a positive value is refused there).
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
    tol : float, default 3e-5
        The least fall of the monitored loss that counts as an
        improvement (:data:`arrseg.estimator.settings.DEFAULT_TOL`).
    tile_size : int, optional
        Prediction works on tiles of this size (:mod:`arrseg.tiling`).
        Default: no tiles unless one forward pass would hold more than
        ``memory_budget`` bytes of intermediates (on CuPy and NumPy, never:
        an image of any size is one pass).
    memory_budget : int, optional
        Working memory of one forward pass, in bytes, above which
        ``tile_size=None`` tiles; default
        :data:`arrseg.tiling.DEFAULT_MEMORY_BUDGET` (512 MiB).
    seed : int or None, default 0
        Seed of the initialisation, the crops and the validation split: the
        same seed gives the same model on the same backend.
    verbose : bool, default False
        Show a progress bar on stderr.

    Attributes
    ----------
    params_ : Params or ResidualParams
        The trained parameters, in the namespace and on the device of the
        training images (:class:`arrseg.ResidualParams` at depth > 0).
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

    With two residual layers of dilations 1 and 2:

    >>> deep = Segmenter(width=8, depth=2, dilation="doubling", max_iter=20)
    >>> deep.fit(x[:2], y[:2]).params_.K_layers.shape
    (2, 8, 8, 3, 3)
    """

    def __init__(self, width=DEFAULT_WIDTH, kernel_size=3, *, depth=DEFAULT_DEPTH,
                 dilation=DEFAULT_DILATION, step=DEFAULT_STEP, layer=DEFAULT_LAYER,
                 layer_kernel_size=DEFAULT_LAYER_KERNEL_SIZE, activation="tanh",
                 boundary="zeros", method="auto", optimizer=DEFAULT_OPTIMIZER,
                 learning_rate=None, momentum=0.9, nesterov=False,
                 max_iter=DEFAULT_MAX_ITER,
                 batch_size=4, crop_size=None, weight_decay=1e-4, smoothness=0.0,
                 edge_smoothness=DEFAULT_EDGE_SMOOTHNESS,
                 class_weight=None, n_classes=None,
                 ignore_index=DEFAULT_IGNORE_INDEX, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=DEFAULT_TOL,
                 tile_size=None, memory_budget=None, seed=0, verbose=False):
        self.width = width
        self.kernel_size = kernel_size
        self.depth = depth
        self.dilation = dilation
        self.step = step
        self.layer = layer
        self.layer_kernel_size = layer_kernel_size
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
        self.edge_smoothness = edge_smoothness
        self.class_weight = class_weight
        self.n_classes = n_classes
        self.ignore_index = ignore_index
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.tile_size = tile_size
        self.memory_budget = memory_budget
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
        >>> Segmenter().set_params(optimizer="adam", width=4)
        Segmenter(optimizer='adam', width=4)
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

    # -- fitting ------------------------------------------------------------

    def fit(self, images, labels, *, validation=None, progress=None):
        """Train on labelled images.

        Parameters
        ----------
        images : array or list of arrays
            One image (H, W) or (C, H, W), a batch (N, C, H, W), or a list of
            (H, W) / (C, H, W) images (of different sizes if need be). Any
            array API namespace; integer images (uint8, uint16) are fine:
            they are normalised. A dask array (one image or a batch) trains
            data-parallel on the active Dask scheduler, a ``dask.distributed``
            Client's workers included (:mod:`arrseg.dask.training`).
        labels : integer array or list of arrays
            Class indices of the pixels, (H, W) per image: (H, W) for one
            image, (N, H, W) for a batch, a list for a list.
            ``ignore_index`` marks pixels without a label.
        validation : (images, labels), optional
            Validation data scored every iteration (``validation_scores_``),
            and used for early stopping when ``early_stopping=True``.
        progress : callable, optional
            ``progress(total)`` returns the object that hears of each
            iteration: ``update(it, loss, score=None)`` after iteration
            ``it`` of at most ``total`` (``score``: the validation mean IoU,
            if any) and ``close()`` at the end; shown whatever ``verbose``
            is (the command line passes a tqdm bar). Default: the one-line
            bar on stderr of ``verbose=True``, else nothing.

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

        Warns
        -----
        arrseg.DivergenceWarning
            When the training loss ends above twice the lowest it reached
            (training stops once it exceeds 100 times): the estimator keeps
            the parameters of the iteration with the lowest loss.
        """
        if is_dask_array(images):  # data-parallel, on the active Dask scheduler
            from .dask import training as dask_training

            return dask_training.fit(self, images, labels, validation=validation,
                                     progress=progress)
        start_time = time.perf_counter()
        s = check_settings(self)
        groups, form = inputs.image_groups(images)
        xp = array_namespace(groups[0])
        dev = device(groups[0])
        host_labels = inputs.label_groups(labels, groups, form)
        C = int(groups[0].shape[1])
        dtype = image_float_dtype(xp, groups[0].dtype)

        n_classes = classes.infer_n_classes(
            host_labels, s, max(int(g.shape[2]) * int(g.shape[3]) for g in groups))
        class_weight = classes.resolve_class_weight(host_labels, n_classes, s)
        mean, std = inputs.normalisation(groups, xp)

        rng = np.random.default_rng(self.seed)
        xs = [inputs.normalise(g, mean, std, dtype, xp) for g in groups]
        # scaled to at most 1: the loss is unchanged, its sums cannot overflow
        cw = (None if class_weight is None
              else xp.asarray(class_weight / max(class_weight.max(), 1e-300),
                              dtype=dtype, device=dev))

        val = None
        if validation is not None:
            val = self._validation_data(validation, C, mean, std, n_classes, cw, s)
        elif s.early_stopping:
            host_labels, val_labels = self._split_pixels(host_labels, rng, s)
            val = training.Validation(xs, [xp.asarray(v, device=dev) for v in val_labels],
                                      n_classes, s.ignore_index, cw, s)
        # the labels cross to the device once, here
        ys = [xp.asarray(m, device=dev) for m in host_labels]

        params = init_params(C, s.width, n_classes, s.kernel_size,
                             depth=s.depth, layer_kernel_size=s.layer_kernel_size,
                             seed=self.seed, dtype="float64" if dtype == xp.float64
                             else "float32", xp=xp, device=dev)

        self._start_fit(C, n_classes, mean, std, class_weight, params)

        if progress is None and s.verbose:
            progress = training.Progress
        progress = None if progress is None else progress(s.max_iter)
        monitor = training.Monitor(s, val is not None)
        try:
            if s.optimizer == "varpro":
                training.fit_varpro(self, xs, ys, params, cw, s, val, monitor, progress,
                                    xp)
            else:
                batches = training.CropBatches(xs, ys, host_labels, cw, s, rng, xp, dev)
                training.fit_first_order(self, batches, params, s, val, monitor,
                                         progress, xp, dev)
            training.finish_fit(self, monitor, s)
        finally:
            if progress is not None:
                progress.close()
            self._params_cache = {}
            self.fit_time_ = time.perf_counter() - start_time
        return self

    def _start_fit(self, C, n_classes, mean, std, class_weight, params):
        """The fitted state at the start of training, kept up to date from
        then on, so that an error leaves a usable model."""
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

    @staticmethod
    def _split_pixels(host_labels, rng, s):
        """Hold out validation_fraction of each image's labelled pixels."""
        ignore = s.ignore_index
        train, val = [], []
        for m in host_labels:
            flat = m.reshape(-1)
            labelled = np.flatnonzero(flat != ignore)
            n_val = round(s.validation_fraction * labelled.size)
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

    @staticmethod
    def _validation_data(validation, C, mean, std, n_classes, cw, s):
        try:
            vx, vy = validation
        except (TypeError, ValueError):
            raise TypeError("validation must be a pair (images, labels)") from None
        groups, form = inputs.image_groups(vx, "validation images")
        xp = array_namespace(groups[0])
        dev = device(groups[0])
        for g in groups:
            if int(g.shape[1]) != C:
                raise ValueError(f"validation images have {int(g.shape[1])} channels "
                                 f"but the training images have {C}")
        maps = inputs.label_groups(vy, groups, form, "validation labels")
        ignore = s.ignore_index
        for m in maps:
            bad = m[(m != ignore) & ((m < 0) | (m >= n_classes))]
            if bad.size:
                raise ValueError(f"validation labels must be in [0, {n_classes}) or "
                                 f"ignore_index = {ignore}; got {bad[:5].tolist()}")
        dtype = image_float_dtype(xp, groups[0].dtype, "validation images")
        xs = [inputs.normalise(g, mean, std, dtype, xp) for g in groups]
        if cw is not None and (array_namespace(cw) is not xp or cw.dtype != dtype):
            cw = xp.asarray(to_numpy(cw), dtype=dtype, device=dev)
        return training.Validation(xs, [xp.asarray(m, device=dev) for m in maps],
                                   n_classes, ignore, cw, s)

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
            cache[key] = params_like(params, (None if a is None else
                                              xp.asarray(to_numpy(a), device=dev)
                                              for a in params))
        return cache[key]

    def _proba_groups(self, images, what):
        """P per image group: checked once per group, one forward pass per tile."""
        self._check_fitted(what)
        settings = check_predict_settings(self, self.params_.depth)
        groups, form = inputs.image_groups(images)
        out, checked = [], []
        for g in groups:
            if int(g.shape[1]) != self.in_channels_:
                raise ValueError(
                    f"images have {int(g.shape[1])} channel(s) (shape "
                    f"{tuple(g.shape[1:]) if form != 'NCHW' else tuple(g.shape)}) but "
                    f"this Segmenter was fitted on images with {self.in_channels_}")
            xp = array_namespace(g)
            params = self._params_for(self.params_, xp, device(g))
            # float images keep their dtype (as in arrseg.predict_proba);
            # integer images take the parameters'
            dtype = image_float_dtype(xp, g.dtype)
            if not xp.isdtype(g.dtype, "real floating"):
                dtype = params.K.dtype
            with quiet_overflow():  # a finite check of x follows
                x = inputs.normalise(g, self.mean_, self.std_, dtype, xp)
            a = check_call(x, params, defer=True)    # read back below
            with quiet_overflow():                   # checked below
                out.append(proba_tiled(a.x, a.params, settings.options, xp,
                                       tile_shape=settings.tile_shape,
                                       out_dtype=a.out_dtype,
                                       memory_budget=settings.memory_budget))
            checked.append(a)
        # every group's value checks and P's finiteness: the call's one read-back
        xp = checked[0].xp
        with quiet_overflow():
            probe = sum_probe(out, xp)
        try:
            finite = np.isfinite(finish_calls(checked, probe, xp))
        except ValueError as e:
            if not str(e).startswith("x must be finite"):
                raise
            # the images were checked after normalisation: say which failed
            if all(np.isfinite(to_numpy(g)).all() for g in groups):
                raise ValueError(
                    f"Segmenter.{what}: the images are finite but (images - mean_) "
                    f"/ std_ is not, with mean_ = {self.mean_.tolist()} and std_ = "
                    f"{self.std_.tolist()}: the model's normalisation is unusable "
                    "(refit, or check the model file)") from None
            raise ValueError(f"images must be finite: {e}") from None
        for ok, a in zip(finite, checked):
            if not ok:
                raise diagnose(f"Segmenter.{what}", a.x, a.params, settings.options)
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
            For a dask array, a lazy dask array chunked like it in N, H and
            W (:mod:`arrseg.dask.estimator`).
        """
        if is_dask_array(images):
            from .dask import estimator as dask_estimator

            return dask_estimator.predict_proba(self, images)
        out, form = self._proba_groups(images, "predict_proba")
        return inputs.reshape_out(out, form)

    def predict(self, images):
        """Per-pixel class labels (the most probable class), int64.

        Returns
        -------
        array or list of arrays
            (H, W) for one image, (N, H, W) for a batch, a list of (H, W).
            For a dask array, a lazy dask array chunked like it.
        """
        if is_dask_array(images):
            from .dask import estimator as dask_estimator

            return dask_estimator.predict(self, images)
        out, form = self._proba_groups(images, "predict")
        labels = []
        for P in out:
            xp = array_namespace(P)
            labels.append(xp.astype(xp.argmax(P, axis=1), xp.int64))
        return inputs.reshape_out(labels, form)

    def score(self, images, labels):
        """Mean IoU (:func:`arrseg.metrics.mean_iou`) of the predictions on the
        labelled pixels (``ignore_index`` pixels do not count).

        Dask images (and dask or NumPy labels) are scored by one dask
        reduction of the confusion counts (:mod:`arrseg.dask.estimator`).

        Returns
        -------
        float
        """
        from .metrics import mean_iou

        if is_dask_array(images):  # one dask reduction of the confusion counts
            from .dask import estimator as dask_estimator

            return dask_estimator.score(self, images, labels)
        self._check_fitted("score")
        groups, form = inputs.image_groups(images)
        xp = array_namespace(groups[0])
        maps = inputs.label_groups(labels, groups, form)
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
        self._check_fitted("save")
        persistence.save_segmenter(self, path)

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
        return persistence.load_segmenter(cls, path, xp=xp, device=device)
