"""Parameters as one flat vector, and update rules as one elementwise pass.

The training loop keeps theta = [K, b, W, c] in one 1-D array (the layout
of the fused backward kernel's gradient, :mod:`arrseg.cuda.fused`), so that
an optimizer step is one elementwise pass over one array rather than one
pass per field and per operation::

    theta (L,)  = [K (k C s s) | b (k) | W (k n_c) | c (n_c)]
    Params views: K = reshape(theta[0:kCss], (k, C, s, s)), ...

:func:`elementwise` runs an update rule: on CuPy it is compiled into one
kernel by ``cupy.fuse`` (one launch per step instead of about twelve); on
any other namespace it is the same formula in array API operations.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

from array_api_compat import is_cupy_namespace

from ..params import Params, ResidualParams

__all__ = ["FlatLayout", "decay_vector", "elementwise", "flatten", "layout_of",
           "scalars", "unflatten"]


class FlatLayout(NamedTuple):
    """Where each field of :class:`~arrseg.Params` lies in theta."""

    #: per field (K, b, W, c): its shape, or None for an absent field
    shapes: tuple
    #: per field: (start, stop) in theta, or None
    spans: tuple
    #: L, the length of theta
    size: int


def layout_of(params):
    """The :class:`FlatLayout` of ``params`` (fields in the order K, b, W, c).

    Examples
    --------
    >>> import arrseg
    >>> from arrseg.optim.flat import layout_of
    >>> layout_of(arrseg.init_params(3, 4, 2, kernel_size=3)).size
    122
    """
    shapes, spans, start = [], [], 0
    for a in params:
        if a is None:
            shapes.append(None)
            spans.append(None)
            continue
        n = math.prod(int(d) for d in a.shape)
        shapes.append(tuple(int(d) for d in a.shape))
        spans.append((start, start + n))
        start += n
    return FlatLayout(tuple(shapes), tuple(spans), start)


def flatten(fields, xp):
    """The present fields of a Params (or tuple) as one 1-D array."""
    return xp.concat([xp.reshape(a, (-1,)) for a in fields if a is not None])


def unflatten(theta, layout, xp):
    """Params whose fields are views of theta (no copy)."""
    cls = ResidualParams if len(layout.shapes) == len(ResidualParams._fields) else Params
    return cls(*(None if span is None else xp.reshape(theta[span[0]:span[1]], shape)
                 for shape, span in zip(layout.shapes, layout.spans)))


def decay_vector(layout, alpha, dtype, xp, device):
    """alpha on the entries of K, W and K_layers, 0 on the biases: the
    gradient of the weight decay ``alpha/2 (||K||^2 + ||W||^2 +
    ||K_layers||^2)`` is ``decay * theta``."""
    parts = []
    for name, shape, span in zip(ResidualParams._fields, layout.shapes, layout.spans):
        if span is None:
            continue
        fill = alpha if name in ("K", "W", "K_layers") else 0.0
        parts.append(xp.full((span[1] - span[0],), fill, dtype=dtype, device=device))
    return xp.concat(parts)


@functools.cache
def _cupy_fused(factory):
    import cupy

    return cupy.fuse(factory(cupy))


# the fused functions keep kernels compiled in the parent's CUDA context,
# which a child made by fork cannot use
if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=_cupy_fused.cache_clear)


def elementwise(factory, xp):
    """The update rule ``factory(namespace)`` as one function of arrays.

    Parameters
    ----------
    factory : callable
        Module-level function ``factory(ns) -> rule``; ``rule(*arrays_and_scalars)``
        uses only arithmetic and ``ns.sqrt``.
    xp : namespace

    Returns
    -------
    callable
        On CuPy, ``cupy.fuse(factory(cupy))`` (memoized): one kernel launch.
        Elsewhere ``factory(xp)``.
    """
    if is_cupy_namespace(xp):
        return _cupy_fused(factory)
    return factory(xp)


def scalars(xp, dtype, *values):
    """The rule's scalar arguments: typed as ``dtype`` on CuPy (so that a
    fused float32 kernel stays float32), Python floats elsewhere."""
    if is_cupy_namespace(xp):
        return tuple(dtype.type(v) for v in values)
    return tuple(float(v) for v in values)
