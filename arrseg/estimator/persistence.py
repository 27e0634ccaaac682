"""A fitted Segmenter to and from a model file (:mod:`arrseg.model_file`).

The file holds the parameters as arrays and, as JSON metadata, the
hyper-parameters, the normalisation, the class weights and the training
record, under ``"estimator": "arrseg.Segmenter"``:

=========================  ====================================================
metadata field             what :func:`load_segmenter` accepts
=========================  ====================================================
``hyper_parameters``       an object; the names ``Segmenter`` takes are checked
                           as ``fit`` checks them (others are ignored, absent
                           ones take their defaults, see below); ``width`` = k
                           and ``kernel_size`` = s of ``K`` (k, C, s, s),
                           ``n_classes`` null or the ``n_classes`` below, a
                           ``class_weight`` list of ``n_classes`` entries;
                           ``depth`` an integer = ``K_layers.shape[0]`` (0
                           without ``K_layers``), ``layer_kernel_size`` odd,
                           = s_r of ``K_layers`` at depth > 0, ``dilation``
                           an integer >= 1, "doubling" or a list of ``depth``
                           integers >= 1, ``step`` a number > 0, ``layer``
                           "residual" or "symmetric"
``in_channels``            an integer, = C of ``K``
``n_classes``              an integer >= 2, = n_c of ``W`` (k, n_c)
``mean``                   C finite numbers
``std``                    C finite numbers > 0
``class_weight``           null, or ``n_classes`` finite numbers >= 0
``n_iter``                 an integer >= 0
``loss_curve``,            lists of numbers (NaN and infinities allowed: a
``validation_scores``,     diverged run)
``validation_loss_curve``
``validation_score``       a number or null
=========================  ====================================================

Integers are JSON integers (``true`` is not 1; ``2.0`` is not 2); numbers
are JSON integers or floats, never booleans or strings. The parameters must
be finite. Anything else raises :class:`arrseg.model_file.ModelFileError`
naming the file, the field, what was found and what was expected.

Versions. A file of format version 1 (written before the residual layers)
has no ``K_layers`` and no residual layers' hyper-parameters: it loads as
the one-layer network it holds, with the absent ``depth``, ``dilation``,
``step``, ``layer`` and ``layer_kernel_size`` read as
:data:`VERSION_1_HYPER_PARAMETERS` (depth 0), whatever the current
defaults are. From version 2 every hyper-parameter is written, and an
absent one takes the current default, except those added since, which
files written before them lack: an absent ``edge_smoothness`` (0.9.0) reads
as :data:`ADDED_HYPER_PARAMETERS` gives it, 0, the value its writer trained
with.
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import is_array_api_obj

from .. import model_file
from .._backend import resolve_namespace, to_numpy
from ..model_file import _show
from .settings import check_settings

__all__ = ["ADDED_HYPER_PARAMETERS", "ESTIMATOR_TAG", "FIELDS",
           "VERSION_1_HYPER_PARAMETERS", "load_segmenter", "save_segmenter"]

#: The metadata's "estimator" entry of a Segmenter's file.
ESTIMATOR_TAG = "arrseg.Segmenter"
#: The metadata fields a Segmenter's file must hold (beside "estimator").
FIELDS = ("hyper_parameters", "in_channels", "n_classes", "mean", "std",
          "class_weight", "n_iter", "loss_curve", "validation_scores",
          "validation_loss_curve", "validation_score")
_CURVES = ("loss_curve", "validation_scores", "validation_loss_curve")
#: The residual layers' hyper-parameters a version-1 file means (it has none:
#: the one-layer network).
VERSION_1_HYPER_PARAMETERS = {"depth": 0, "dilation": 1, "step": 1.0,
                              "layer": "residual", "layer_kernel_size": 3}
#: Hyper-parameters added after format version 2, as files written before
#: them were trained (absent from such files).
ADDED_HYPER_PARAMETERS = {"edge_smoothness": 0.0}


def save_segmenter(est, path):
    """Write the fitted estimator ``est`` to ``path``."""
    hyper = {}
    for name, value in est.get_params().items():
        if is_array_api_obj(value) or isinstance(value, np.ndarray):
            value = to_numpy(value).tolist()
        elif isinstance(value, (tuple, list)):
            value = list(value)
        hyper[name] = value
    metadata = {
        "estimator": ESTIMATOR_TAG,
        "hyper_parameters": hyper,
        "in_channels": int(est.in_channels_),
        "n_classes": int(est.n_classes_),
        "mean": [float(v) for v in est.mean_],
        "std": [float(v) for v in est.std_],
        "class_weight": (None if est.class_weight_ is None
                         else [float(v) for v in est.class_weight_]),
        "n_iter": int(est.n_iter_),
        "loss_curve": [float(v) for v in est.loss_curve_],
        "validation_scores": [float(v) for v in est.validation_scores_],
        "validation_loss_curve": [float(v) for v in est.validation_loss_curve_],
        "validation_score": est.validation_score_,
    }
    model_file.save(path, est.params_, metadata)


# -- the metadata's schema ---------------------------------------------------------

class _Invalid(Exception):
    """A field's value is not what the schema expects; the argument is the
    message (after the file's name)."""


def _invalid(field, found, expected):
    return _Invalid(f"metadata {field!r} is {_show(found)}, expected {expected}")


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _as_float(v):
    """A JSON number as a Python float, or None (bool, string, an integer
    too large for a float, anything else)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:
        return None


def _integer(meta, field, minimum, equal=None, why=""):
    v = meta[field]
    if not _is_int(v) or v < minimum or (equal is not None and v != equal):
        if equal is None:
            expected = f"an integer >= {minimum}"
        elif equal >= minimum:
            expected = f"the integer {equal}{why}"
        else:   # the arrays themselves are out of range
            expected = f"an integer >= {minimum}, equal to{why.rstrip(')')} = {equal})"
        raise _invalid(field, v, expected)
    return v


def _numbers(meta, field, *, length=None, low=None, low_open=False, finite=True,
             why=""):
    """A list of JSON numbers as Python floats: ``length`` of them, finite,
    above ``low`` when given."""
    v = meta[field]
    floats = [_as_float(x) for x in v] if isinstance(v, list) else None
    ok = floats is not None and None not in floats
    ok = ok and (length is None or len(floats) == length)
    ok = ok and (not finite or all(math.isfinite(x) for x in floats))
    if ok and low is not None:
        ok = all(x > low if low_open else x >= low for x in floats)
    if not ok:
        what = "finite numbers" if finite else "numbers (NaN and infinities allowed)"
        if low is not None:
            what += f" {'>' if low_open else '>='} {low}"
        count = "a list of" if length is None else f"a list of {length}"
        raise _invalid(field, v, f"{count} {what}{why}")
    return floats


def _hyper_parameters(cls, meta, params, n_classes):
    """The estimator of the file's hyper-parameters, checked as ``fit``
    checks them and against the arrays."""
    hyper = meta["hyper_parameters"]
    if not isinstance(hyper, dict):
        raise _invalid("hyper_parameters", hyper, "a JSON object of Segmenter's "
                       "hyper-parameters")
    valid = cls._get_param_names()
    given = {k: v for k, v in hyper.items() if k in valid}
    given = {**ADDED_HYPER_PARAMETERS, **given}
    if meta["format_version"] < 2:   # before the residual layers: depth 0
        given = {**VERSION_1_HYPER_PARAMETERS, **given}
    est = cls(**given)
    try:
        check_settings(est)   # also what check_predict_settings checks
    except (TypeError, ValueError, OverflowError) as e:
        message = str(e).removeprefix("Segmenter: ")
        if len(message) > 300:
            message = message[:300] + "..."
        raise _Invalid("metadata 'hyper_parameters' holds a value that Segmenter "
                       f"refuses: {message}") from None
    k, _, s, _ = params.K.shape
    depth = params.depth
    checks = [("width", est.width == k, f"{k} (K.shape[0])"),
              ("kernel_size", est.kernel_size == s, f"{s} (K.shape[2])"),
              ("n_classes", est.n_classes in (None, n_classes),
               f"null or {n_classes} (W.shape[1])"),
              ("depth", est.depth == depth,
               f"{depth} (K_layers.shape[0])" if depth
               else "0 (the file has no K_layers)")]
    if depth:
        s_r = params.layer_kernel_size
        checks.append(("layer_kernel_size", est.layer_kernel_size == s_r,
                       f"{s_r} (K_layers.shape[3])"))
    if isinstance(est.class_weight, list):
        checks.append(("class_weight", len(est.class_weight) == n_classes,
                       f"a list of {n_classes} weights (W.shape[1])"))
    for name, ok, expected in checks:
        if not ok:
            absent = "" if name in hyper else " (absent: the default)"
            raise _invalid(f"hyper_parameters.{name}", getattr(est, name),
                           f"{expected}{absent}")
    return est


def _fitted(cls, meta, params):
    """The fitted estimator the metadata and the NumPy ``params`` describe;
    _Invalid for the first field that is wrong."""
    C = params.K.shape[1]
    n_c = params.W.shape[1]
    in_channels = _integer(meta, "in_channels", 1, C, " (K.shape[1])")
    n_classes = _integer(meta, "n_classes", 2, n_c, " (W.shape[1])")
    why = f" (in_channels = K.shape[1] = {C})"
    mean = _numbers(meta, "mean", length=C, why=why)
    std = _numbers(meta, "std", length=C, low=0, low_open=True, why=why)
    class_weight = None
    if meta["class_weight"] is not None:
        class_weight = _numbers(meta, "class_weight", length=n_classes, low=0,
                                why=f" (n_classes = {n_classes}), or null")
    n_iter = _integer(meta, "n_iter", 0)
    curves = {name: _numbers(meta, name, finite=False) for name in _CURVES}
    score = meta["validation_score"]
    if score is not None:
        score = _as_float(score)
        if score is None:
            raise _invalid("validation_score", meta["validation_score"],
                           "a number or null")
    est = _hyper_parameters(cls, meta, params, n_classes)
    est.in_channels_ = in_channels
    est.n_classes_ = n_classes
    est.classes_ = np.arange(n_classes)
    est.mean_ = np.asarray(mean, dtype=np.float64)
    est.std_ = np.asarray(std, dtype=np.float64)
    est.class_weight_ = (None if class_weight is None
                         else np.asarray(class_weight, dtype=np.float64))
    est.n_iter_ = n_iter
    est.loss_curve_ = curves["loss_curve"]
    est.validation_scores_ = curves["validation_scores"]
    est.validation_loss_curve_ = curves["validation_loss_curve"]
    est.validation_score_ = score
    return est


def load_segmenter(cls, path, *, xp=None, device=None):
    """A fitted ``cls`` (a Segmenter class) from a file of :func:`save_segmenter`.

    Every metadata field is checked against the module's schema and against
    the parameter arrays before the estimator is built.

    Raises
    ------
    arrseg.model_file.ModelFileError
        If the file is not a model file (see :func:`arrseg.model_file.load`),
        was not written by ``Segmenter.save``, lacks a field of the schema,
        holds a field of the wrong type or value or one that disagrees with
        the arrays, or holds non-finite parameters. The message names the
        file, the field, what was found and what was expected.
    TypeError
        If ``xp`` is not an array namespace.
    """
    xp = resolve_namespace(xp)
    params, meta = model_file.load(path)   # NumPy arrays, checked

    def fail(reason):
        return model_file.ModelFileError(
            f"cannot load {str(path)!r} as a Segmenter: {reason}")

    if meta.get("estimator") != ESTIMATOR_TAG:
        raise fail(f"its metadata 'estimator' is {_show(meta.get('estimator'))}, "
                   "expected 'arrseg.Segmenter' (it was not written by "
                   "Segmenter.save; use arrseg.model_file.load)")
    missing = [name for name in FIELDS if name not in meta]
    if missing:
        raise fail(f"its metadata lacks the field(s) {missing} that Segmenter.save "
                   "writes")
    try:
        est = _fitted(cls, meta, params)
    except _Invalid as e:
        raise fail(e.args[0]) from None
    for name, a in zip(type(params)._fields, params):
        if a is not None and not np.isfinite(a).all():
            raise fail(f"params.{name} holds non-finite values (NaN or infinity), "
                       "expected the finite parameters of a fitted model")
    est.params_ = model_file._in_namespace(params, xp, device)
    return est
