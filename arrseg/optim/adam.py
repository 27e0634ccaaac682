"""Adam (Kingma & Ba, 2015)::

    m <- b1 m + (1 - b1) g                 first moment
    v <- b2 v + (1 - b2) g*g               second moment
    p <- p - lr m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t),
                                              v_hat = v / (1 - b2^t)

The update of each entry is at most about lr in size whatever the scale of
the gradient, which is why one default learning rate serves most problems.
"""

from __future__ import annotations

import math

from array_api_compat import array_namespace

from .base import Optimizer, tree_map
from .flat import elementwise, scalars

__all__ = ["Adam"]


class Adam(Optimizer):
    """Adam on :class:`~arrseg.Params`.

    Parameters
    ----------
    learning_rate : float, default 0.01
    beta1, beta2 : float, default 0.9, 0.999
        Decay rates of the moment estimates, in [0, 1).
    eps : float, default 1e-8
        Added to sqrt(v_hat).

    Examples
    --------
    >>> import numpy as np, arrseg
    >>> from arrseg.optim import Adam
    >>> x, y = arrseg.data.make_shapes(n_images=2, size=16, seed=0)
    >>> params = arrseg.init_params(3, 4, 3, seed=0)
    >>> opt = Adam(learning_rate=0.05)
    >>> first, _ = arrseg.loss_and_grad(x, y, params)
    >>> for _ in range(20):
    ...     loss, grads = arrseg.loss_and_grad(x, y, params)
    ...     params = opt.step(params, grads)
    >>> bool(loss < first), opt.n_steps
    (True, 20)
    """

    def __init__(self, learning_rate=0.01, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(learning_rate)
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not (0.0 <= float(b) < 1.0):
                raise ValueError(f"{name} must be in [0, 1), got {b!r}")
        if not (float(eps) > 0 and math.isfinite(float(eps))):
            raise ValueError(f"eps must be a positive finite number, got {eps!r}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.m = self.v = None

    def step(self, params, grads):
        b1, b2 = self.beta1, self.beta2
        if self.m is None:
            self.m = tree_map(lambda g: (1 - b1) * g, grads)
            self.v = tree_map(lambda g: (1 - b2) * (g * g), grads)
        else:
            self.m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, self.m, grads)
            self.v = tree_map(lambda v, g: b2 * v + (1 - b2) * (g * g), self.v, grads)
        self.n_steps += 1
        t = self.n_steps
        # bias corrections folded into the step length and eps
        step = self.learning_rate * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        eps = self.eps * math.sqrt(1 - b2 ** t)

        def update(p, m, v):
            xp = array_namespace(p)
            return p - step * m / (xp.sqrt(v) + eps)

        return tree_map(update, params, self.m, self.v)

    def _flat_update(self, theta, g, decay, xp):
        if self.m is None:
            self.m, self.v = xp.zeros_like(theta), xp.zeros_like(theta)
        t, b1, b2 = self.n_steps, self.beta1, self.beta2
        step = self.learning_rate * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        eps = self.eps * math.sqrt(1 - b2 ** t)
        rule = elementwise(_adam_rule, xp)
        theta, self.m, self.v = rule(theta, g, decay, self.m, self.v,
                                     *scalars(xp, theta.dtype, b1, b2, step, eps))
        return theta

    def reset(self):
        super().reset()
        self.m = self.v = None

    def _hyper_parameters(self):
        return {"learning_rate": self.learning_rate, "beta1": self.beta1,
                "beta2": self.beta2, "eps": self.eps}


def _adam_rule(ns):
    """Adam's update of (theta, m, v) from g, for :func:`~arrseg.optim.flat.elementwise`
    (with m = v = 0 before the first step, the first update is (1 - b1) g and
    (1 - b2) g^2, as in :meth:`Adam.step`)."""

    def rule(p, g, d, m, v, b1, b2, step, eps):
        g = g + d * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * (g * g)
        return p - step * m / (ns.sqrt(v) + eps), m, v

    return rule
