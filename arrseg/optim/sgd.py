"""Stochastic gradient descent with momentum, optionally Nesterov's.

PyTorch's formulation (dampening 0), with velocity v starting at zero::

    v <- mu v + g
    p <- p - lr v                   (heavy ball)
    p <- p - lr (g + mu v)          (Nesterov)

``momentum=0`` is plain gradient descent.
"""

from __future__ import annotations

import math

from .base import Optimizer, tree_map
from .flat import elementwise, scalars

__all__ = ["SGD"]


class SGD(Optimizer):
    """Gradient descent with (Nesterov) momentum on :class:`~arrseg.Params`.

    Parameters
    ----------
    learning_rate : float, default 0.1
        lr > 0.
    momentum : float, default 0.9
        mu in [0, 1).
    nesterov : bool, default False
        Use Nesterov's look-ahead form (needs ``momentum > 0``).

    Examples
    --------
    >>> import numpy as np, arrseg
    >>> from arrseg.optim import SGD
    >>> x, y = arrseg.data.make_shapes(n_images=2, size=16, seed=0)
    >>> params = arrseg.init_params(3, 4, 3, seed=0)
    >>> opt = SGD(learning_rate=0.5, momentum=0.9)
    >>> first, _ = arrseg.loss_and_grad(x, y, params)
    >>> for _ in range(20):
    ...     loss, grads = arrseg.loss_and_grad(x, y, params)
    ...     params = opt.step(params, grads)
    >>> bool(loss < first)
    True
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, *, nesterov=False):
        super().__init__(learning_rate)
        momentum = float(momentum)
        if not (0.0 <= momentum < 1.0 and math.isfinite(momentum)):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0, got momentum=0")
        self.momentum = momentum
        self.nesterov = bool(nesterov)
        self.velocity = None

    def step(self, params, grads):
        lr, mu = self.learning_rate, self.momentum
        self.n_steps += 1
        if mu == 0:
            return tree_map(lambda p, g: p - lr * g, params, grads)
        if self.velocity is None:
            self.velocity = grads  # mu * 0 + g
        else:
            self.velocity = tree_map(lambda v, g: mu * v + g, self.velocity, grads)
        if self.nesterov:
            return tree_map(lambda p, g, v: p - lr * (g + mu * v),
                            params, grads, self.velocity)
        return tree_map(lambda p, v: p - lr * v, params, self.velocity)

    def _flat_update(self, theta, g, decay, xp):
        lr, mu = scalars(xp, theta.dtype, self.learning_rate, self.momentum)
        if self.momentum == 0:
            return elementwise(_plain_rule, xp)(theta, g, decay, lr)
        if self.velocity is None:
            self.velocity = xp.zeros_like(theta)
        rule = elementwise(_nesterov_rule if self.nesterov else _momentum_rule, xp)
        theta, self.velocity = rule(theta, g, decay, self.velocity, lr, mu)
        return theta

    def reset(self):
        super().reset()
        self.velocity = None

    def _hyper_parameters(self):
        return {"learning_rate": self.learning_rate, "momentum": self.momentum,
                "nesterov": self.nesterov}


# the update rules of flat_step, for arrseg.optim.flat.elementwise (with the
# velocity 0 before the first step, mu * 0 + g is g, as in SGD.step)

def _plain_rule(ns):
    def rule(p, g, d, lr):
        return p - lr * (g + d * p)

    return rule


def _momentum_rule(ns):
    def rule(p, g, d, v, lr, mu):
        g = g + d * p
        v = mu * v + g
        return p - lr * v, v

    return rule


def _nesterov_rule(ns):
    def rule(p, g, d, v, lr, mu):
        g = g + d * p
        v = mu * v + g
        return p - lr * (g + mu * v), v

    return rule
