"""What every optimizer shares: the step interface, arithmetic on Params, and
the error raised when training diverges.

A first-order optimizer is an object holding its hyper-parameters and its
state (momentum, moment estimates); ``step(params, grads)`` returns new
parameters and never modifies an array in place, so it runs on namespaces
whose arrays are immutable (``array_api_strict``, JAX). Fields of ``Params``
that are None (``c`` without a classifier bias) stay None.
"""

from __future__ import annotations


import math

import numpy as np
from array_api_compat import array_namespace

from .._backend import to_numpy
from ..overflow import NonFiniteError
from .flat import scalars

__all__ = [
    "NonFiniteLossError",
    "Optimizer",
    "all_finite",
    "check_learning_rate",
    "tree_axpy",
    "tree_dot",
    "tree_map",
    "tree_norm",
    "tree_scale",
]


def tree_map(fn, *trees):
    """``Params(fn(a, b, ...) for each field)``, of the first tree's class
    (:class:`Params` or :class:`ResidualParams`); None fields stay None.

    Examples
    --------
    >>> import numpy as np
    >>> from arrseg import Params
    >>> from arrseg.optim.base import tree_map
    >>> p = Params(np.ones(2), np.zeros(1), np.ones((1, 1)), None)
    >>> tree_map(lambda a, b: a + 2 * b, p, p).K
    array([3., 3.])
    """
    return type(trees[0])(*(None if leaves[0] is None else fn(*leaves)
                            for leaves in zip(*trees)))


def tree_axpy(x, alpha, y):
    """``x + alpha y`` field by field (alpha a Python float)."""
    return tree_map(lambda a, b: a + alpha * b, x, y)


def tree_scale(alpha, x):
    """``alpha x`` field by field."""
    return tree_map(lambda a: alpha * a, x)


def tree_dot(u, v):
    """sum over fields of <u_i, v_i>, as a Python float (one host transfer
    per field)."""
    total = 0.0
    for a, b in zip(u, v):
        if a is not None and b is not None:
            xp = array_namespace(a)
            total += float(xp.sum(a * b))
    return total


def tree_norm(u):
    """Euclidean norm of all fields together, as a Python float."""
    return math.sqrt(max(tree_dot(u, u), 0.0))


def all_finite(*arrays):
    """True if every given array (None skipped) holds finite values only.

    The checks are reduced on the device and brought to the host once.
    """
    arrays = [a for a in arrays if a is not None]
    if not arrays:
        return True
    xp = array_namespace(*arrays)
    flags = xp.stack([xp.all(xp.isfinite(a)) for a in arrays])
    return bool(np.all(to_numpy(xp.astype(flags, xp.int8))))


def check_learning_rate(value, name="learning_rate"):
    """A positive, finite float, or ValueError naming the argument."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


class NonFiniteLossError(NonFiniteError):
    """Training produced a non-finite loss or non-finite parameters.

    A :class:`arrseg.NonFiniteError` (and so a ``FloatingPointError``).

    Attributes
    ----------
    iteration : int
        The iteration (1-based) at which it happened.
    loss : float
        The offending loss value (NaN or inf), or the last finite loss when
        the parameters overflowed in the update.
    params : Params
        The last parameters at which the loss was finite: training can be
        resumed from them with a smaller learning rate.
    """

    def __init__(self, message, *, iteration, loss, params):
        super().__init__(message)
        self.iteration = iteration
        self.loss = loss
        self.params = params


class Optimizer:
    """Base class of the first-order optimizers (:class:`~arrseg.optim.SGD`,
    :class:`~arrseg.optim.Adam`).

    Subclasses implement :meth:`step`; the state lives in the object and
    :meth:`reset` clears it. ``learning_rate`` may be changed between steps
    (a schedule); the state is kept.
    """

    def __init__(self, learning_rate):
        self.learning_rate = check_learning_rate(learning_rate)
        self.n_steps = 0

    def step(self, params, grads):
        """Return the parameters after one update.

        Parameters
        ----------
        params : Params
        grads : Params
            The gradient of the objective at ``params`` (same shapes).

        Returns
        -------
        Params
            New arrays; ``params`` and ``grads`` are not modified.
        """
        raise NotImplementedError

    def flat_step(self, theta, g, decay=0.0):
        """One step on a flat parameter vector (:mod:`arrseg.optim.flat`).

        The same update as :meth:`step` with the gradient ``g + decay *
        theta``, as one elementwise pass over theta (one kernel on CuPy); the
        state (momentum, moments) is kept flat. Use one of the two forms per
        optimizer object.

        Parameters
        ----------
        theta, g : 1-D arrays of one length
        decay : 1-D array or float, default 0
            Weight decay per entry (:func:`~arrseg.optim.flat.decay_vector`),
            added to the gradient inside the same pass.

        Returns
        -------
        1-D array
            New parameters; theta and g are not modified.
        """
        xp = array_namespace(theta)
        self.n_steps += 1
        if isinstance(decay, (int, float)):
            decay = scalars(xp, theta.dtype, decay)[0]
        return self._flat_update(theta, g, decay, xp)

    def _flat_update(self, theta, g, decay, xp):
        """The update of :meth:`flat_step`, after its step count (subclasses)."""
        raise NotImplementedError

    def reset(self):
        """Forget the state (momentum, moments, step count)."""
        self.n_steps = 0

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyper_parameters().items())
        return f"{type(self).__name__}({args})"

    def _hyper_parameters(self):
        return {"learning_rate": self.learning_rate}
