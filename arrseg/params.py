"""The network's parameters (K, b, W, c) and their initialisation."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._arguments import check_bytes, check_int
from ._backend import float_dtype, resolve_namespace

__all__ = ["Params", "ResidualParams", "init_params", "params_like"]


class Params(NamedTuple):
    """Parameters of the one-layer segmentation network.

    The network is ``P = softmax(W^T sigma(K(theta) Y0 + B b) + c)``, applied
    per pixel (see :func:`arrseg.predict_proba`); a network with residual
    layers has :class:`ResidualParams`. ``Params`` is immutable; use
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
    >>> p.in_channels, p.width, p.n_classes, p.kernel_size, p.depth
    (3, 8, 4, 5, 0)
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
        """s, the spatial size of the opening layer's kernels."""
        return int(self.K.shape[2])

    #: No residual layers: depth 0.
    depth = 0
    #: None: the one-layer network has no residual layers.
    K_layers = None
    b_layers = None
    layer_kernel_size = None


class ResidualParams(NamedTuple):
    """Parameters of the network with residual layers (the course's ResNet).

    The network opens with ``Y1 = sigma(K(theta) Y0 + B b)`` (C -> k
    channels), runs ``depth`` residual layers on the k channels, j = 1 ..
    depth::

        "residual":   Y_{j+1} = Y_j + h sigma(K_j Y_j + b_j)
        "symmetric":  Y_{j+1} = Y_j - h K_j^T sigma(K_j Y_j + b_j)

    and classifies each pixel, ``P = softmax(W^T Y + c)`` (see
    :func:`arrseg.predict_proba`: the step h, the dilations d_j and the
    layer type are options of the call, like the activation;
    :mod:`arrseg.numerics.residual` has the equations). The first four
    fields are those of :class:`Params`; gradients come back as a
    ``ResidualParams`` of the same shapes.

    Attributes
    ----------
    K, b, W, c
        As in :class:`Params`.
    K_layers : array, shape (depth, k, k, s_r, s_r)
        The residual layers' kernels, stacked: ``K_layers[j]`` is K_j (k -> k
        channels, one odd kernel size s_r for every layer).
    b_layers : array, shape (depth, k)
        The residual layers' biases b_j.

    Examples
    --------
    >>> import arrseg
    >>> p = arrseg.init_params(3, 8, 4, depth=2, layer_kernel_size=3)
    >>> p.K_layers.shape, p.b_layers.shape, p.depth, p.layer_kernel_size
    ((2, 8, 8, 3, 3), (2, 8), 2, 3)
    """

    K: Any
    b: Any
    W: Any
    c: Any
    K_layers: Any
    b_layers: Any

    in_channels = Params.in_channels
    width = Params.width
    n_classes = Params.n_classes
    kernel_size = Params.kernel_size

    @property
    def depth(self) -> int:
        """The number of residual layers."""
        return int(self.K_layers.shape[0])

    @property
    def layer_kernel_size(self) -> int:
        """s_r, the residual layers' kernel size."""
        return int(self.K_layers.shape[3])


def params_like(params, fields):
    """A parameter tuple of ``params``' class (:class:`Params` or
    :class:`ResidualParams`) holding ``fields``, an iterable of arrays (or
    None) in field order."""
    return type(params)(*fields)


def init_params(
    in_channels,
    width,
    n_classes,
    kernel_size=3,
    *,
    seed=0,
    dtype=None,
    bias=True,
    depth=0,
    layer_kernel_size=3,
    xp=None,
    device=None,
):
    """Random initial parameters for the network.

    The kernels are drawn from ``N(0, 1 / (C s^2))`` and the classifier from
    ``N(0, 1 / k)`` (LeCun's scaling, so that pre-activations and logits start
    at unit scale); both biases start at zero. The residual layers' kernels
    are drawn from ``N(0, 1 / (k s_r^2))`` and their biases start at zero.
    The numbers are drawn by
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
    depth : int, default 0
        The number of residual layers after the opening layer; 0 gives the
        one-layer network (a :class:`Params`). The opening
        layer and the classifier are drawn first, so they are the same for
        every depth.
    layer_kernel_size : int, default 3
        s_r, odd: the residual layers' kernel size (ignored at depth 0).
    xp : namespace, optional
        Array namespace of the result (``numpy``, ``cupy``, ``torch``,
        ``array_api_strict``, ...). Default NumPy.
    device : device, optional
        Device of the result, for namespaces with several.

    Returns
    -------
    Params, or ResidualParams for depth > 0

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
    depth = check_int("depth", depth, 0)
    s_r = check_int("layer_kernel_size", layer_kernel_size, 1)
    if s_r % 2 == 0:
        raise ValueError(
            f"layer_kernel_size must be odd (the output keeps the input's size), "
            f"got {s_r}")
    # drawn in float64 on the host, then copied: 16 bytes a parameter
    check_bytes(f"init_params: the parameters (in_channels={C}, width={k}, "
                f"n_classes={n_c}, kernel_size={s}, depth={depth}, "
                f"layer_kernel_size={s_r})",
                16 * (k * C * s * s + k + k * n_c + n_c
                      + depth * (k * k * s_r * s_r + k)))
    xp = resolve_namespace(xp)
    dt = float_dtype(xp, dtype)

    rng = np.random.default_rng(seed)
    K = rng.standard_normal((k, C, s, s)) / np.sqrt(C * s * s)
    W = rng.standard_normal((k, n_c)) / np.sqrt(k)

    # drawn after K and W: the opening layer and classifier of a seed do
    # not depend on the depth
    K_layers = (rng.standard_normal((depth, k, k, s_r, s_r)) / np.sqrt(k * s_r * s_r)
                if depth else None)

    def put(a):
        return xp.asarray(np.ascontiguousarray(a), dtype=dt, device=device)

    params = Params(
        K=put(K),
        b=put(np.zeros(k)),
        W=put(W),
        c=put(np.zeros(n_c)) if bias else None,
    )
    if not depth:
        return params
    return ResidualParams(*params, K_layers=put(K_layers),
                          b_layers=put(np.zeros((depth, k))))
