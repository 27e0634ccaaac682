"""The network's parameters (K, b, W, c) and their initialisation."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._arguments import check_bytes, check_int
from ._backend import float_dtype, resolve_namespace

__all__ = ["Params", "init_params"]


class Params(NamedTuple):
    """Parameters of the one-layer segmentation network.

    The network is ``P = softmax(W^T sigma(K(theta) Y0 + B b) + c)``, applied
    per pixel (see :func:`arrseg.predict_proba`). ``Params`` is immutable; use
    ``params._replace(K=...)`` to derive a new one. Gradients returned by
    :func:`arrseg.loss_and_grad` are a ``Params`` of the same shapes.

    Attributes
    ----------
    K : array, shape (k, C, s, s)
        Convolution kernels theta: ``K[i, j]`` maps input channel ``j`` to
        feature ``i``, applied as cross-correlation (PyTorch's ``conv2d``
        weight, exchangeable as is). ``s`` is odd.
    b : array, shape (k,)
        One bias per feature channel.
    W : array, shape (k, n_c)
        Classifier weights: feature vector -> class logits. (PyTorch's 1x1
        convolution weight is ``W.T[:, :, None, None]``.)
    c : array, shape (n_c,), or None
        Classifier bias; ``None`` means no bias (and no gradient for it).

    Examples
    --------
    >>> import arrseg
    >>> p = arrseg.init_params(3, 8, 4, kernel_size=5)
    >>> p.K.shape, p.b.shape, p.W.shape, p.c.shape
    ((8, 3, 5, 5), (8,), (8, 4), (4,))
    >>> p.in_channels, p.width, p.n_classes, p.kernel_size
    (3, 8, 4, 5)
    """

    K: Any
    b: Any
    W: Any
    c: Any = None

    @property
    def in_channels(self) -> int:
        """C, the number of image channels."""
        return int(self.K.shape[1])

    @property
    def width(self) -> int:
        """k, the number of feature channels."""
        return int(self.K.shape[0])

    @property
    def n_classes(self) -> int:
        """n_c, the number of classes."""
        return int(self.W.shape[1])

    @property
    def kernel_size(self) -> int:
        """s, the spatial size of each kernel."""
        return int(self.K.shape[2])


def init_params(
    in_channels,
    width,
    n_classes,
    kernel_size=3,
    *,
    seed=0,
    dtype=None,
    bias=True,
    xp=None,
    device=None,
):
    """Random initial parameters for the network.

    The kernels are drawn from ``N(0, 1 / (C s^2))`` and the classifier from
    ``N(0, 1 / k)`` (LeCun's scaling, so that pre-activations and logits start
    at unit scale); both biases start at zero. The numbers are drawn by
    NumPy's ``default_rng(seed)`` on the host and then moved to ``xp``, so the
    same seed gives the same parameters on every backend.

    Parameters
    ----------
    in_channels : int
        C, the number of image channels (3 for RGB).
    width : int
        k, the number of feature channels.
    n_classes : int
        n_c, the number of classes.
    kernel_size : int, default 3
        s, odd.
    seed : int or None, default 0
        Seed of the random generator; ``None`` draws fresh entropy.
    dtype : dtype or str, optional
        float32 (default) or float64.
    bias : bool, default True
        If False, ``c`` is None (the classifier has no bias).
    xp : namespace, optional
        Array namespace of the result (``numpy``, ``cupy``, ``torch``,
        ``array_api_strict``, ...). Default NumPy.
    device : device, optional
        Device of the result, for namespaces with several.

    Returns
    -------
    Params

    Examples
    --------
    >>> import numpy as np, arrseg
    >>> p = arrseg.init_params(3, 16, 2, seed=1, dtype="float64")
    >>> p.K.dtype, p.c
    (dtype('float64'), array([0., 0.]))
    """
    C = check_int("in_channels", in_channels, 1)
    k = check_int("width", width, 1)
    n_c = check_int("n_classes", n_classes, 1)
    s = check_int("kernel_size", kernel_size, 1)
    if s % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd (the output keeps the input's size), got {s}"
        )
    # drawn in float64 on the host, then copied: 16 bytes a parameter
    check_bytes(f"init_params: the parameters (in_channels={C}, width={k}, "
                f"n_classes={n_c}, kernel_size={s})",
                16 * (k * C * s * s + k + k * n_c + n_c))
    xp = resolve_namespace(xp)
    dt = float_dtype(xp, dtype)

    rng = np.random.default_rng(seed)
    K = rng.standard_normal((k, C, s, s)) / np.sqrt(C * s * s)
    W = rng.standard_normal((k, n_c)) / np.sqrt(k)

    def put(a):
        return xp.asarray(np.ascontiguousarray(a), dtype=dt, device=device)

    return Params(
        K=put(K),
        b=put(np.zeros(k)),
        W=put(W),
        c=put(np.zeros(n_c)) if bias else None,
    )
