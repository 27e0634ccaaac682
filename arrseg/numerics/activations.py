"""Pointwise activations sigma and their derivatives.

Each entry maps the pre-activation Z (any shape) to ``(sigma(Z), sigma'(Z))``.
The derivative is returned with the value because the backward pass needs
both and most derivatives are cheapest written through the value
(tanh' = 1 - tanh^2, sigmoid' = sigmoid (1 - sigmoid)).
"""

from __future__ import annotations

__all__ = ["ACTIVATIONS", "activation_and_derivative", "activation"]


def _tanh(Z, xp):
    Y = xp.tanh(Z)
    return Y, 1 - Y * Y


def _relu(Z, xp):
    positive = Z > 0
    Y = xp.where(positive, Z, xp.zeros_like(Z))
    return Y, xp.astype(positive, Z.dtype)


def _sigmoid(Z, xp):
    # exp(-|Z|) never overflows; the two branches are the same function
    E = xp.exp(-xp.abs(Z))
    Y = xp.where(Z >= 0, 1 / (1 + E), E / (1 + E))
    return Y, Y * (1 - Y)


def _identity(Z, xp):
    return Z, xp.ones_like(Z)


#: name -> function ``(Z, xp) -> (sigma(Z), sigma'(Z))``
ACTIVATIONS = {
    "tanh": _tanh,
    "relu": _relu,
    "sigmoid": _sigmoid,
    "identity": _identity,
}


def activation_and_derivative(name, Z, xp):
    """``(sigma(Z), sigma'(Z))`` for the activation called ``name``."""
    return ACTIVATIONS[name](Z, xp)


def activation(name, Z, xp):
    """``sigma(Z)`` alone (the forward pass; the derivative is discarded)."""
    if name == "identity":
        return Z
    if name == "tanh":
        return xp.tanh(Z)
    return ACTIVATIONS[name](Z, xp)[0]
