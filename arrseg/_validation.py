"""Argument checks of the network's arrays: the public edge.

Every check names the argument, the value received and what was expected.
Shape and dtype checks cost nothing; the value checks (finite images and
parameters, labels in range, class weights) are made in one pass over the
arrays and read back to the host once, as one small array of flags:

- on CuPy arrays, one kernel (:func:`arrseg.cuda.checks.value_flags`)
  checks every array of the call and writes seven flags;
- elsewhere, one reduction per array, stacked on the device.

So a checked call costs one synchronisation however many arrays it checks.
The public calls go further (``check_call(defer=True)``): they launch the
checks, compute, and read the flags back together with their result's
finiteness probe (:mod:`arrseg.overflow`) in :func:`finish_calls`: one
synchronisation per call for both, and the device never waits for the
host between the checks and the work. Only when a flag is set are the
offending values read back, to say which they are. The scalar checks are
in :mod:`arrseg._arguments`.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, NamedTuple

import numpy as np
from array_api_compat import is_cupy_namespace

from ._arguments import check_bytes, check_choice, check_float, check_int
from ._backend import device, float_name, namespace_of, to_numpy
from .core import Options, fused_kernels
from .methods import METHODS
from .numerics.activations import ACTIVATIONS
from .numerics.convolution import BOUNDARIES
from .numerics.residual import LAYERS
from .overflow import scaled_class_weight
from .params import Params, ResidualParams, params_like

__all__ = ["CHECK_NAMES", "Checked", "Pending", "check_call", "check_choice",
           "check_dilation", "check_ignore_index", "check_options", "check_values",
           "finish_calls", "fit_options"]

#: The value checks of one call, in the order of their flags.
CHECK_NAMES = ("x", "params.K", "params.b", "params.W", "params.c", "labels",
               "class_weight")


#: The largest dilation accepted: its taps are this many pixels apart.
MAX_DILATION = 4096


def check_dilation(dilation, *, where=""):
    """``dilation`` as an int in [1, :data:`MAX_DILATION`], a tuple of them,
    or "doubling" (1, 2, 4, ..., resolved by :func:`fit_options`).

    Raises
    ------
    TypeError, ValueError
        Naming ``dilation`` and the entry that is wrong.
    """
    def one(name, d):
        d = check_int(name, d, 1, where=where)
        if d > MAX_DILATION:
            raise ValueError(f"{where}{name} must be at most {MAX_DILATION} (the taps "
                             f"are that many pixels apart), got {d}")
        return d

    if isinstance(dilation, str):
        if dilation != "doubling":
            raise ValueError(f"{where}dilation must be an integer >= 1, a sequence "
                             f"of them or 'doubling', got {dilation!r}")
        return dilation
    if isinstance(dilation, (list, tuple)):
        return tuple(one(f"dilation[{i}]", d) for i, d in enumerate(dilation))
    return one("dilation", dilation)


def check_options(activation, boundary, method, dilation=1, step=1.0,
                  layer="residual"):
    """The network's options, checked, as an :class:`arrseg.core.Options`.

    ``dilation`` stays an int or a tuple here; :func:`fit_options` fits it
    to the parameters' depth.
    """
    check_choice("activation", activation, tuple(ACTIVATIONS))
    check_choice("boundary", boundary, BOUNDARIES)
    check_choice("method", method, METHODS)
    check_choice("layer", layer, LAYERS)
    dilation = check_dilation(dilation)
    step = check_float("step", step, low=0.0, low_open=True)
    return Options(activation, boundary, method, dilation, step, layer)


def fit_options(options, depth, *, params=None, x_shape=None):
    """``options`` with one dilation per residual layer of ``depth``.

    An int dilation is repeated, "doubling" gives 1, 2, 4, ...,
    2**(depth - 1); a sequence must have ``depth`` entries.
    With ``params`` and ``x_shape`` (N, C, H, W), the size of one padded
    feature array of the widest dilation, (N, k, H + 2p, W + 2p) with
    p = d (s_r // 2), is checked before anything is allocated.
    """
    d = options.dilation
    if d == "doubling":
        d = check_dilation(tuple(2**j for j in range(depth)))
    elif isinstance(d, int):
        d = (d,) * depth
    elif len(d) != depth:
        raise ValueError(
            f"dilation must have one entry per residual layer: params has depth "
            f"{depth} (params.K_layers.shape[0]), got {len(d)} dilation(s) {d}")
    if depth and params is not None and x_shape is not None:
        N, _, H, W = (int(n) for n in x_shape)
        p = max(d) * (params.layer_kernel_size // 2)
        check_bytes(f"a residual layer's padded features (N, k, H + 2p, W + 2p) = "
                    f"{(N, params.width, H + 2 * p, W + 2 * p)} with dilation "
                    f"{max(d)}", 8 * N * params.width * (H + 2 * p) * (W + 2 * p),
                    "pass smaller dilations or fewer images")
    return dataclasses.replace(options, dilation=tuple(d))


def _as_params(params):
    if isinstance(params, Params):
        return params
    if isinstance(params, tuple) and len(params) in (3, 4):
        return Params(*params)
    if isinstance(params, tuple) and len(params) == 6:
        if params[4] is None and params[5] is None:   # no layers: depth 0
            return Params(*params[:4])
        return ResidualParams(*params)
    raise TypeError(
        "params must be an arrseg.Params (K, b, W, c[, K_layers, b_layers]), as "
        f"returned by arrseg.init_params; got {type(params).__name__}"
    )


def _check_layer_shapes(p):
    """The residual layers' arrays against the opening layer's width k."""
    K_layers, b_layers = p.K_layers, p.b_layers
    if (K_layers is None) != (b_layers is None):
        have, missing = (("K_layers", "b_layers") if b_layers is None
                         else ("b_layers", "K_layers"))
        raise TypeError(f"params.{missing} must be an array when params.{have} is "
                        f"one (both None means depth 0), got None")
    if K_layers is None:
        return
    k = p.K.shape[0]
    shape = tuple(K_layers.shape)
    if (K_layers.ndim != 5 or shape[1:3] != (k, k) or shape[3] != shape[4]
            or shape[3] % 2 == 0 or shape[0] < 1):
        raise ValueError(
            f"params.K_layers must have shape (depth, k, k, s_r, s_r) with k = {k} "
            f"from params.K, depth >= 1 and s_r odd, got shape {shape}")
    if tuple(b_layers.shape) != (shape[0], k):
        raise ValueError(
            f"params.b_layers must have shape (depth, k) = {(shape[0], k)} to match "
            f"params.K_layers, got shape {tuple(b_layers.shape)}")


def _check_param_shapes(p, xp):
    for name in ("K", "b", "W"):
        if getattr(p, name) is None:
            raise TypeError(f"params.{name} must be an array, got None")
    _check_layer_shapes(p)
    K, b, W, c = p[:4]
    if K.ndim != 4:
        raise ValueError(
            f"params.K must have shape (k, C, s, s), got ndim {K.ndim} "
            f"(shape {tuple(K.shape)})"
        )
    k, _, s, s2 = K.shape
    if s != s2:
        raise ValueError(
            f"params.K must hold square s x s kernels, got {s} x {s2} "
            f"(shape {tuple(K.shape)})"
        )
    if s % 2 == 0:
        raise ValueError(
            f"params.K's kernel size must be odd (the output keeps the input's "
            f"size), got s = {s} (shape {tuple(K.shape)})"
        )
    if min(K.shape) < 1:
        raise ValueError(f"params.K must not be empty, got shape {tuple(K.shape)}")
    if tuple(b.shape) != (k,):
        raise ValueError(
            f"params.b must have shape (k,) = ({k},) to match params.K, got "
            f"shape {tuple(b.shape)}"
        )
    if W.ndim != 2 or W.shape[0] != k or W.shape[1] < 1:
        raise ValueError(
            f"params.W must have shape (k, n_c) with k = {k} from params.K, got "
            f"shape {tuple(W.shape)}"
        )
    n_c = W.shape[1]
    if c is not None and tuple(c.shape) != (n_c,):
        raise ValueError(
            f"params.c must have shape (n_c,) = ({n_c},) to match params.W, or "
            f"be None; got shape {tuple(c.shape)}"
        )
    dtypes = {name: a.dtype for name, a in zip(type(p)._fields, p) if a is not None}
    for name, dt in dtypes.items():
        if float_name(xp, dt) is None:
            raise TypeError(
                f"params.{name} must be float32 or float64, got dtype {dt}"
            )
    if len(set(float_name(xp, dt) for dt in dtypes.values())) > 1:
        listing = ", ".join(f"{n}: {float_name(xp, d)}" for n, d in dtypes.items())
        raise TypeError(
            f"params must share one dtype, got {listing}; cast them with astype"
        )


def _check_images(x, p, xp):
    if x.ndim != 4:
        hint = " (for one image, pass x[None])" if x.ndim == 3 else ""
        raise ValueError(
            f"x must have shape (N, C, H, W), got ndim {x.ndim} "
            f"(shape {tuple(x.shape)}){hint}"
        )
    if min(x.shape) < 1:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    C = p.K.shape[1]
    if x.shape[1] != C:
        raise ValueError(
            f"x has {x.shape[1]} channels (shape {tuple(x.shape)}) but params.K "
            f"expects C = {C} (shape {tuple(p.K.shape)})"
        )
    if xp.isdtype(x.dtype, ("real floating")):
        if float_name(xp, x.dtype) is None:
            raise TypeError(
                f"x must be float32 or float64 (or integer/bool, converted), got "
                f"dtype {x.dtype}; float16 is not supported, cast with "
                "astype(float32)"
            )
        return True
    if xp.isdtype(x.dtype, ("integral", "bool")):
        return False
    raise TypeError(f"x must be a real (float, integer or bool) array, got dtype {x.dtype}")


def _check_labels(labels, x, xp):
    if labels.ndim != 3 or tuple(labels.shape) != (x.shape[0],) + tuple(x.shape[2:]):
        raise ValueError(
            f"labels must have shape (N, H, W) = {(x.shape[0],) + tuple(x.shape[2:])} "
            f"to match x of shape {tuple(x.shape)}, got shape {tuple(labels.shape)}"
        )
    if not xp.isdtype(labels.dtype, ("integral", "bool")):
        raise TypeError(
            f"labels must be an integer array of class indices, got dtype "
            f"{labels.dtype}"
        )
    if labels.dtype == xp.uint64 and labels.size:
        # int64 would wrap values >= 2**63 to negative ones, even to
        # ignore_index; uint64 labels are rare, so this costs one read-back
        # only for them
        top = int(to_numpy(xp.max(labels)))
        if top > np.iinfo(np.int64).max:
            raise ValueError(f"labels holds the value {top}, beyond int64: class "
                             "indices must be small non-negative integers")
    # one signed type, so that comparisons with ignore_index = -100 are
    # defined for uint8 labels too (the standard leaves out-of-range Python
    # scalars undefined)
    return labels if labels.dtype == xp.int64 else xp.astype(labels, xp.int64)


def _check_class_weight(class_weight, n_c, dtype, xp, dev):
    if class_weight is None:
        return None
    if isinstance(class_weight, (list, tuple)):
        try:
            class_weight = xp.asarray(np.asarray(class_weight, dtype=np.float64),
                                      dtype=dtype, device=dev)
        except (TypeError, ValueError):
            raise TypeError(
                f"class_weight must be a sequence of numbers, got {class_weight!r}"
            ) from None
    if class_weight.ndim != 1 or class_weight.shape[0] != n_c:
        raise ValueError(
            f"class_weight must have shape (n_c,) = ({n_c},), one weight per "
            f"class, got shape {tuple(class_weight.shape)}"
        )
    if not xp.isdtype(class_weight.dtype, ("real floating", "integral")):
        raise TypeError(f"class_weight must be real, got dtype {class_weight.dtype}")
    return xp.astype(class_weight, dtype)


class Checked(NamedTuple):
    """Validated, converted arguments of one public call."""

    xp: Any
    #: images (N, C, H, W) in ``dtype``
    x: Any
    #: parameters in ``dtype``
    params: Params
    #: int64 labels (N, H, W), or None
    labels: Any
    #: weights (n_c,) in ``dtype``, or None
    class_weight: Any
    #: the compute dtype: float64 if x or the parameters are float64
    dtype: Any
    #: dtype of P: x's float dtype, the parameters' for integer images
    out_dtype: Any
    #: dtype of the loss and the gradients: the parameters'
    param_dtype: Any
    #: the label of pixels that do not count, a Python int
    ignore_index: int = -100
    #: the value checks not read back yet (``check_call(defer=True)``):
    #: :class:`Pending`, read by :func:`finish_calls`; None once checked
    pending: Any = None


class Pending(NamedTuple):
    """Value checks computed on the device but not yet read back."""

    #: names of the flags, from CHECK_NAMES
    names: tuple
    #: device int array, nonzero where a check failed
    flags: Any
    #: the checked arrays as the user passed their values (class_weight
    #: before scaling), for the messages
    x: Any
    params: Params
    labels: Any
    class_weight: Any
    ignore_index: int


def check_ignore_index(ignore_index):
    """ignore_index as a Python int; TypeError naming it otherwise (bool
    included: ``True`` is no label)."""
    if isinstance(ignore_index, (bool, np.bool_)):
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
    try:
        return operator.index(ignore_index)
    except TypeError:
        raise TypeError(
            f"ignore_index must be an integer, got {ignore_index!r}"
        ) from None


def check_call(x, params, labels=None, class_weight=None, ignore_index=-100, *,
               defer=False):
    """Validate and convert the arguments of predict_proba / loss_and_grad.

    Raises TypeError or ValueError naming the bad argument. See the
    module docstring for the cost.

    With ``defer=True`` the value checks are launched on the device but
    not read back: the result's ``pending`` holds them, and the caller
    reads them with :func:`finish_calls`, together with its result's
    finiteness probe, after computing. Every path is memory-safe on
    unchecked values (labels are compared, never used as indices
    unguarded), so the computation may run before the check is read; its
    result is discarded when a check failed.
    """
    p = _as_params(params)
    cw_array = None if isinstance(class_weight, (list, tuple)) else class_weight
    xp = namespace_of(x=x, labels=labels, **{f"params.{n}": a for n, a in
                                           zip(type(p)._fields, p)},
                      class_weight=cw_array)
    _check_param_shapes(p, xp)
    x_is_float = _check_images(x, p, xp)
    N, _, H, W = (int(n) for n in x.shape)
    n_c = int(p.W.shape[1])
    # P (N, n_c, H, W) exists whatever the path (tiling bounds the rest)
    check_bytes(f"the probabilities P (N, n_c, H, W) = {(N, n_c, H, W)} of x with "
                f"the n_c = {n_c} classes of params.W", 4 * N * n_c * H * W,
                "pass fewer or smaller images, or a model with fewer classes")
    param_dtype = p.K.dtype
    out_dtype = x.dtype if x_is_float else param_dtype
    dtype = xp.result_type(out_dtype, param_dtype)
    if x.dtype != dtype:
        x = xp.astype(x, dtype)
    if param_dtype != dtype:
        p = params_like(p, (None if a is None else xp.astype(a, dtype) for a in p))

    if labels is not None:
        labels = _check_labels(labels, x, xp)
        ignore_index = check_ignore_index(ignore_index)
        class_weight = _check_class_weight(class_weight, p.W.shape[1], dtype, xp,
                                           device(x))
    else:
        ignore_index = check_ignore_index(ignore_index)
        class_weight = None

    pending = None
    if defer:
        names, flags = _value_flags(x, p, labels, class_weight, ignore_index, xp)
        pending = Pending(names, flags, x, p, labels, class_weight, ignore_index)
    else:
        check_values(x, p, labels, class_weight, ignore_index, xp)
    # the loss is a ratio of class-weighted sums: weights scaled to at most
    # 1 keep those sums from overflowing (arrseg.overflow)
    class_weight = scaled_class_weight(class_weight, xp)

    return Checked(xp, x, p, labels, class_weight, dtype, out_dtype, param_dtype,
                   ignore_index, pending)


def finish_calls(checked, probe, xp):
    """The one read-back of deferred calls: their value checks and a probe.

    Parameters
    ----------
    checked : sequence of Checked
        From ``check_call(defer=True)``, in the order their errors take.
    probe : array
        The caller's finiteness probe of its results (:mod:`arrseg.overflow`),
        any shape, on the same device.
    xp : namespace

    Returns
    -------
    numpy.ndarray of float64
        The probe's values, flattened, on the host.

    Raises
    ------
    ValueError
        For the first failed value check, with the message of
        :func:`check_values`.
    """
    pending = [a.pending for a in checked]
    parts = [xp.astype(q.flags, xp.float64) for q in pending]
    parts.append(xp.reshape(xp.astype(probe, xp.float64), (-1,)))
    host = to_numpy(xp.concat(parts))                      # the one read-back
    start = 0
    for q in pending:
        bad = host[start:start + len(q.names)]
        start += len(q.names)
        if bad.any():
            _raise_value_error(q.names[int(np.flatnonzero(bad)[0])], q.x, q.params,
                               q.labels, q.class_weight, q.ignore_index)
    return host[start:]


def _value_flags(x, p, labels, class_weight, ignore_index, xp):
    """The failed checks, as (names, device array of flags, nonzero = failed)."""
    kernels = fused_kernels(xp)
    if (is_cupy_namespace(xp) or kernels is not None) and p.K_layers is None:
        from .cuda.checks import value_flags

        return CHECK_NAMES, value_flags(x, p, labels, class_weight, ignore_index,
                                        kernels=kernels)
    names, ok = [], []
    arrays = ("x", *(f"params.{n}" for n in type(p)._fields))
    for name, a in zip(arrays, (x, *p)):
        if a is not None:
            names.append(name)
            ok.append(xp.all(xp.isfinite(a)))
    if labels is not None:
        n_c = p.W.shape[1]
        names.append("labels")
        ok.append(xp.all(((labels >= 0) & (labels < n_c)) | (labels == ignore_index)))
    if class_weight is not None:
        names.append("class_weight")
        ok.append(xp.all(xp.isfinite(class_weight) & (class_weight >= 0)))
    return tuple(names), xp.astype(~xp.stack(ok), xp.int8)


def check_values(x, p, labels, class_weight, ignore_index, xp):
    """All value checks of a call: one pass, one host transfer.

    Parameters
    ----------
    x : array (N, C, H, W), the compute dtype
    p : Params, in x's dtype
    labels : int64 array (N, H, W), or None
    class_weight : array (n_c,), or None
    ignore_index : int
    xp : namespace

    Raises
    ------
    ValueError
        For the first failed check of :data:`CHECK_NAMES`, with the message
        of that check.
    """
    names, flags = _value_flags(x, p, labels, class_weight, ignore_index, xp)
    bad = to_numpy(flags)
    if bad.any():
        _raise_value_error(names[int(np.flatnonzero(bad)[0])], x, p, labels,
                           class_weight, ignore_index)


def _raise_value_error(name, x, p, labels, class_weight, ignore_index):
    """The ValueError of the failed value check ``name``, with the offending
    values read back (the error path)."""
    n_c = p.W.shape[1]
    if name == "labels":
        lab = to_numpy(labels)
        outside = lab[((lab < 0) | (lab >= n_c)) & (lab != ignore_index)]
        values = sorted(set(outside.tolist()))
        hint = ""
        if values[-1] in (255, 65535, 2**32 - 1):
            hint = (f"; if {values[-1]} marks unlabelled pixels, pass "
                    f"ignore_index={values[-1]}")
        raise ValueError(
            f"labels must be class indices in [0, {n_c}) or ignore_index = "
            f"{ignore_index}; got {outside.size} other value(s), e.g. "
            f"{values[:5]}{hint}"
        )
    if name == "class_weight":
        raise ValueError(
            "class_weight must be finite and non-negative, got "
            f"{to_numpy(class_weight).tolist()}"
        )
    arr = to_numpy(x if name == "x" else getattr(p, name.split(".")[1]))
    n_bad = int(np.sum(~np.isfinite(arr)))
    raise ValueError(
        f"{name} must be finite, got {n_bad} non-finite value(s) (NaN or inf) "
        f"of {arr.size}"
    )
