"""Checks of derivatives and adjoints, and an array comparison for any backend.

* :func:`check_derivative` -- the course's checkDerivative: a Taylor
  expansion test of a function and its gradient.
* :func:`check_adjoint` -- ``<A x, y> = <x, A^T y>`` for a linear operator
  given as two functions.
* :func:`assert_close` -- compare an array of any namespace with a reference,
  checking namespace, dtype, shape and device first.

These are used by arrseg's own test-suite and are public so that users can
check their own extensions (a new activation, a new convolution method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from array_api_compat import array_namespace

from ._backend import device, resolve_namespace, to_numpy
from .params import Params, ResidualParams, params_like

__all__ = ["check_derivative", "DerivativeCheck", "check_adjoint", "assert_close",
           "to_numpy"]


# --- helpers over "trees": a single array, or a Params / ResidualParams
# with optional None fields ---------------------------------------------------

_TREES = (Params, ResidualParams)


def _leaves(x):
    if isinstance(x, _TREES):
        return [a for a in x if a is not None]
    return [x]


def _rebuild(x, leaves):
    if isinstance(x, _TREES):
        it = iter(leaves)
        return params_like(x, (None if a is None else next(it) for a in x))
    return leaves[0]


def _dot(u, v):
    """sum_i <u_i, v_i> as a Python float (float64 on the host)."""
    return float(sum(np.vdot(to_numpy(a).astype(np.float64),
                             to_numpy(b).astype(np.float64))
                     for a, b in zip(_leaves(u), _leaves(v))))


def _axpy(x, h, v):
    """x + h v, leaf by leaf, in x's namespace and dtype."""
    out = []
    for a, d in zip(_leaves(x), _leaves(v)):
        xp = array_namespace(a)
        out.append(a + xp.astype(xp.asarray(h * to_numpy(d), device=device(a)),
                                 a.dtype))
    return _rebuild(x, out)


def _random_like(x, rng):
    """Unit-norm random direction, leaf by leaf in x's namespace."""
    leaves = [rng.standard_normal(tuple(a.shape)) for a in _leaves(x)]
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in leaves)) or 1.0
    out = []
    for a, d in zip(_leaves(x), leaves):
        xp = array_namespace(a)
        out.append(xp.asarray(d / norm, dtype=a.dtype, device=device(a)))
    return _rebuild(x, out)


@dataclass(frozen=True)
class DerivativeCheck:
    """Result of :func:`check_derivative`.

    Attributes
    ----------
    h : list of float
        Step lengths, each half the previous.
    zeroth : list of float
        ``|E(x + h v) - E(x)|``: falls like h.
    first : list of float
        ``|E(x + h v) - E(x) - h <grad E(x), v>|``: falls like h^2 when the
        gradient is right, like h when it is wrong.
    noise : float
        Round-off level of E: errors below it carry no information.
    """

    h: list
    zeroth: list
    first: list
    noise: float

    @property
    def orders(self):
        """Observed order of ``first`` between successive steps, where both
        errors are above the noise level (``log2`` of their ratio)."""
        out = []
        for e0, e1 in zip(self.first, self.first[1:]):
            if e0 > self.noise and e1 > self.noise:
                out.append(math.log2(e0 / e1))
        return out

    @property
    def passed(self):
        """True when the second-order decrease is seen: at least two resolved
        ratios, their median order at least 1.8; or the first-order error is
        at round-off from the largest step on (an exact linearisation)."""
        orders = self.orders
        if len(orders) >= 2:
            return sorted(orders)[len(orders) // 2] >= 1.8
        return all(e <= self.noise for e in self.first[:3])

    def __str__(self):
        rows = ["       h        |E(x+hv)-E(x)|   |E(x+hv)-E(x)-h g.v|"]
        rows += [f"  {h:12.4e}   {a:14.4e}   {b:14.4e}"
                 for h, a, b in zip(self.h, self.zeroth, self.first)]
        orders = ", ".join(f"{o:.2f}" for o in self.orders)
        rows.append(f"  observed orders: [{orders}] (2 expected); "
                    f"passed={self.passed}")
        return "\n".join(rows)


def check_derivative(fun, x0, *, direction=None, h0=1.0, n_steps=12, seed=0):
    """Taylor test of a scalar function and its gradient (course: checkDerivative).

    For a direction v and steps h = h0, h0/2, ...:

    * ``|E(x0 + h v) - E(x0)|`` falls as O(h);
    * ``|E(x0 + h v) - E(x0) - h <grad E(x0), v>|`` falls as O(h^2) if and
      only if the gradient is right.

    Parameters
    ----------
    fun : callable
        ``fun(x) -> (E, grad)`` with E a scalar (0-d array or float) and grad
        shaped like x. Only ``fun(x0)`` uses the gradient.
    x0 : array, Params or ResidualParams
        Point of expansion. For a parameter tuple, fields that are None are
        skipped (the gradient must have None in the same fields).
    direction : like x0, optional
        v; default a random unit direction (``seed``).
    h0 : float, default 1.0
        Largest step.
    n_steps : int, default 12
    seed : int, default 0

    Returns
    -------
    DerivativeCheck
        Print it for the course's table; ``.passed`` for a verdict.

    Examples
    --------
    >>> import numpy as np
    >>> from arrseg.testing import check_derivative
    >>> A = np.array([[2.0, 1.0], [1.0, 3.0]])
    >>> res = check_derivative(lambda x: (x @ A @ x / 2 + np.sin(x).sum(),
    ...                                   A @ x + np.cos(x)), np.ones(2))
    >>> res.passed
    True
    """
    rng = np.random.default_rng(seed)
    v = _random_like(x0, rng) if direction is None else direction
    E0, g = fun(x0)
    E0 = float(E0)
    slope = _dot(g, v)
    eps = float(np.finfo(to_numpy(_leaves(x0)[0]).dtype).eps)
    noise = 32 * eps * max(abs(E0), 1e-30)
    hs, zeroth, first = [], [], []
    h = h0
    for _ in range(n_steps):
        Eh = float(fun(_axpy(x0, h, v))[0])
        hs.append(h)
        zeroth.append(abs(Eh - E0))
        first.append(abs(Eh - E0 - h * slope))
        h /= 2
    return DerivativeCheck(hs, zeroth, first, noise)


def check_adjoint(forward, adjoint, x, y):
    """Relative mismatch of ``<A x, y>`` and ``<x, A^T y>``.

    Parameters
    ----------
    forward : callable
        x -> A x.
    adjoint : callable
        y -> A^T y.
    x, y : arrays
        Points in A's domain and range (any namespace).

    Returns
    -------
    float
        ``|<A x, y> - <x, A^T y>| / max(|A x| |y|, |x| |A^T y|)``: of the
        order of the dtype's epsilon when ``adjoint`` is the adjoint of
        ``forward``, of order one when it is not. (The norms bound both
        inner products, so cancellation in the sums does not inflate it.)

    Examples
    --------
    >>> import numpy as np
    >>> from arrseg.testing import check_adjoint
    >>> A = np.arange(6.0).reshape(2, 3)
    >>> check_adjoint(lambda x: A @ x, lambda y: A.T @ y, np.ones(3), np.ones(2))
    0.0
    """
    Ax, ATy = forward(x), adjoint(y)
    lhs, rhs = _dot(Ax, y), _dot(x, ATy)
    # Cauchy-Schwarz bounds both products by these norms; unlike |<A x, y>|
    # itself they do not shrink when the sum cancels.
    scale = max(math.sqrt(_dot(Ax, Ax) * _dot(y, y)),
                math.sqrt(_dot(x, x) * _dot(ATy, ATy)))
    return abs(lhs - rhs) / scale if scale > 0 else 0.0


_DEFAULT_RTOL = {"float32": 1e-5, "float64": 1e-12}


def assert_close(actual, desired, *, xp=None, dtype=None, rtol=None, atol=None,
                 err_msg=""):
    """Assert that ``actual`` matches a reference, after checking its type.

    Parameters
    ----------
    actual : array
        The result under test (any namespace).
    desired : array_like
        The reference, of any namespace (a NumPy float64 result, a PyTorch
        autograd gradient).
    xp : namespace, optional
        Namespace ``actual`` must belong to.
    dtype : dtype, optional
        dtype ``actual`` must have (an ``xp`` dtype, or a name such as
        ``"float32"``). Default: desired's dtype if it is a NumPy array of
        the same precision kind, else unchecked.
    rtol, atol : float, optional
        ``|actual - desired| <= atol + rtol |desired|`` elementwise. Defaults
        by actual's dtype: rtol 1e-5 (float32) or 1e-12 (float64); atol =
        rtol times the largest ``|desired|``.
    err_msg : str
        Added to the failure message.
    """
    if xp is not None:
        got = array_namespace(actual)
        want = resolve_namespace(xp)
        assert got is want, f"namespace {got.__name__} != {want.__name__}. {err_msg}"
    a = to_numpy(actual)
    d = to_numpy(desired) if not isinstance(desired, (int, float)) else np.asarray(desired)
    if dtype is not None:
        want_name = dtype if isinstance(dtype, str) else str(dtype).split(".")[-1]
        assert a.dtype.name == want_name, (
            f"dtype {a.dtype.name} != {want_name}. {err_msg}")
    assert a.shape == d.shape, f"shape {a.shape} != {d.shape}. {err_msg}"
    if rtol is None:
        rtol = _DEFAULT_RTOL.get(a.dtype.name, 0.0)
    if atol is None:
        atol = rtol * (float(np.max(np.abs(d))) if d.size else 0.0)
    np.testing.assert_allclose(a.astype(np.float64) if a.dtype.kind == "f" else a,
                               d, rtol=rtol, atol=atol, err_msg=err_msg)
