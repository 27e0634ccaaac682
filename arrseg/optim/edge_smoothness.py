"""Edge-aware smoothness of the logits: a graph-Laplacian prior on unlabelled pixels.

With few labelled pixels (scribbles), the cross-entropy says nothing about
the pixels between the strokes, and where a boundary falls between a stroke
inside an object and one outside it is the network's guess. This term asks
the logits S (N, n_c, H, W) to vary little between neighbouring pixels,
except across the image's edges::

    R(S) = alpha / (2 n) sum_{i ~ j} w_ij ||S_i - S_j||^2,
    w_ij = exp(-||x_i - x_j||^2 / (2 sigma^2)) = exp(-beta ||x_i - x_j||^2 / m),

over the pairs of 4-neighbours i ~ j of every image (no pair crosses an
image border) with at least one unlabelled pixel (the prior fills in what
the labels leave open: with every pixel labelled it is 0), n the number of
pixels, x the (normalised) image with its C channels, m the mean of
||x_i - x_j||^2 over the pairs of the training images and beta =
:data:`BETA` (:func:`contrast_scale` gives sigma^2 = m / (2 beta)). A pair
whose step is a fifth of the typical one still has weight 0.45; a typical
step, 2e-9: the weights keep the term off the image's edges and off
textures, and let it act in flat regions. The contrast weights are those of the random walker
(Grady, "Random Walks for Image Segmentation", IEEE TPAMI 2006): the prior
is the random walker's energy on the logits, and its minimiser puts the
class boundaries where the image's contrast is highest. Regularised losses
of this kind train CNNs from scribbles (Tang et al., "On Regularized Losses
for Weakly-supervised CNN Segmentation", ECCV 2018).

The term is quadratic in the classifier: with S = W^T Y + c (c cancels in
the differences),

    R = alpha / (2 n) tr(W^T M W),   M = sum_{i ~ j} w_ij (Y_i - Y_j)(Y_i - Y_j)^T,

so VarPro's inner problem in (W, c) stays convex: :meth:`EdgeSmoothness.gram`
gives (alpha / n) M, a (k, k) penalty matrix. Its gradient in the logits is
``dR/dS = (alpha / n) L_w S`` with L_w the weighted graph Laplacian
(:meth:`EdgeSmoothness.laplacian`), which the core's backward pass takes as
an extra gradient in S (``extra_dS`` of :func:`arrseg.core.loss_and_grad`).
The term shapes training only; prediction is unchanged.

Shapes: images (N, C, H, W); the weights of the vertical pairs (N, 1, H-1, W)
and of the horizontal pairs (N, 1, H, W-1).
"""

from __future__ import annotations

import math

from array_api_compat import array_namespace, device

__all__ = ["BETA", "EdgeSmoothness", "contrast_scale"]

#: beta of the weights exp(-beta ||x_i - x_j||^2 / m) (read at each call of
#: :func:`contrast_scale`). With beta = 0.5 (sigma^2 the mean step) the term
#: also smoothed across the boundaries of textures, whose pairs have average
#: contrast: on the accuracy benchmark's 128 x 128 texture tiles with 2%
#: labelled, the mean IoU over four seeds fell from 0.974 to 0.898 at
#: alpha 0.3; with beta = 20 it stays 0.974 at alpha 1, and coins with 2%
#: labelled keep the gain (docs/training.rst; ``python
#: tools/accuracy_benchmark.py --seeds 0,1,2,3 --edge-beta 0.5 --set
#: edge_smoothness=0.3``).
BETA = 20.0


def _differences(F, xp):
    """Vertical (N, m, H-1, W) and horizontal (N, m, H, W-1) forward differences."""
    return F[:, :, 1:, :] - F[:, :, :-1, :], F[:, :, :, 1:] - F[:, :, :, :-1]


def squared_steps(x, xp):
    """||x_i - x_j||^2 of the vertical (N, 1, H-1, W) and horizontal
    (N, 1, H, W-1) pairs, summed over channels."""
    dv, dh = _differences(x, xp)
    return (xp.sum(dv * dv, axis=1, keepdims=True),
            xp.sum(dh * dh, axis=1, keepdims=True))


def scale_from_steps(total, count, beta=None):
    """sigma^2 = m / (2 beta) from the sum ``total`` of ``count`` squared
    steps (m taken as 1 when there is no pair or no contrast)."""
    m = total / count if count else 0.0
    beta = BETA if beta is None else float(beta)
    return (m if m > 0 and math.isfinite(m) else 1.0) / (2.0 * beta)


def contrast_scale(images, beta=None):
    """sigma^2 = m / (2 beta), m the mean squared step ||x_i - x_j||^2
    between 4-neighbours.

    Parameters
    ----------
    images : list of arrays (N, C, H, W)
        The (normalised) training images, any sizes.
    beta : float, optional
        Default :data:`BETA`.

    Returns
    -------
    float
        Positive (m taken as 1 for images without any pair of neighbours or
        without contrast).
    """
    total, count = 0.0, 0
    for x in images:
        xp = array_namespace(x)
        sv, sh = squared_steps(x, xp)
        total += float(xp.sum(xp.astype(sv, xp.float64)) + xp.sum(xp.astype(sh, xp.float64)))
        count += math.prod(sv.shape) + math.prod(sh.shape)
    return scale_from_steps(total, count, beta)


class EdgeSmoothness:
    """The edge-aware smoothness of the logits of one batch of images.

    Parameters
    ----------
    x : array (N, C, H, W)
        The images (normalised, as the network sees them).
    alpha : float
        The coefficient, > 0.
    sigma2 : float
        The contrast scale (:func:`contrast_scale` of the training images).
    n_pixels : int, optional
        n, the normaliser (default: the pixels of x, N H W).
    labelled : bool array (N, H, W), optional
        The labelled pixels: pairs of two labelled pixels are left out
        (default: every pair counts).

    Examples
    --------
    >>> import numpy as np
    >>> from arrseg.optim.edge_smoothness import EdgeSmoothness
    >>> x = np.zeros((1, 1, 4, 4)); x[..., 2:] = 1.0     # an edge between columns 1 and 2
    >>> reg = EdgeSmoothness(x, alpha=1.0, sigma2=0.1)
    >>> S = np.zeros((1, 2, 4, 4)); S[:, 0, :, 2:] = 1.0  # logits that step at the edge
    >>> value, dS = reg.value_and_grad(S)
    >>> bool(value < 1e-3)                                # the step costs almost nothing
    True
    """

    def __init__(self, x, alpha, sigma2, n_pixels=None, labelled=None):
        xp = array_namespace(x)
        self.xp, self.alpha = xp, float(alpha)
        sv, sh = squared_steps(x, xp)
        self.wv = xp.exp(sv * (-0.5 / sigma2))        # (N, 1, H-1, W)
        self.wh = xp.exp(sh * (-0.5 / sigma2))        # (N, 1, H, W-1)
        if labelled is not None:   # 0 on the pairs of two labelled pixels
            free = xp.astype(~labelled, x.dtype)[:, None, :, :]
            one = xp.ones_like(free[:, :, 1:, :])
            self.wv = self.wv * xp.minimum(free[:, :, 1:, :] + free[:, :, :-1, :], one)
            one = xp.ones_like(free[:, :, :, 1:])
            self.wh = self.wh * xp.minimum(free[:, :, :, 1:] + free[:, :, :, :-1], one)
        N, _, H, W = x.shape
        self.n = N * H * W if n_pixels is None else int(n_pixels)
        self.coefficient = self.alpha / self.n

    @classmethod
    def from_weights(cls, wv, wh, alpha, n_pixels):
        """The term with given pair weights: ``wv`` (N, 1, H-1, W) of the
        vertical pairs and ``wh`` (N, 1, H, W-1) of the horizontal ones (0
        for a pair that does not count), and the normaliser ``n_pixels``.
        A block of a chunked image uses it with the weights of the pairs it
        owns (:mod:`arrseg.dask.edges`)."""
        self = cls.__new__(cls)
        self.xp, self.alpha = array_namespace(wv, wh), float(alpha)
        self.wv, self.wh = wv, wh
        self.n = int(n_pixels)
        self.coefficient = self.alpha / self.n
        return self

    def laplacian(self, F):
        """L_w F: (L_w F)_i = sum_{j ~ i} w_ij (F_i - F_j), F of shape (N, m, H, W)."""
        xp = self.xp
        dv, dh = _differences(F, xp)
        fv, fh = self.wv * dv, self.wh * dh            # w_ij (F_j - F_i), j below / right
        # pair (i, j = i + 1): -f to pixel i, +f to pixel j
        out = xp.zeros(F.shape, dtype=F.dtype, device=device(F))
        out[:, :, :-1, :] -= fv
        out[:, :, 1:, :] += fv
        out[:, :, :, :-1] -= fh
        out[:, :, :, 1:] += fh
        return out

    def value_and_grad(self, S):
        """R(S) as a 0-d array and dR/dS = (alpha / n) L_w S, S of shape (N, n_c, H, W)."""
        xp = self.xp
        dv, dh = _differences(S, xp)
        value = (0.5 * self.coefficient) * (xp.sum(self.wv * dv * dv)
                                            + xp.sum(self.wh * dh * dh))
        return value, self.coefficient * self.laplacian(S)

    def gram(self, Y, LY=None):
        """(alpha / n) M = (alpha / n) sum_{i ~ j} w_ij (Y_i - Y_j)(Y_i - Y_j)^T,
        (k, k), from the features Y of shape (N, k, H, W).

        M = sum over images of Y L_w Y^T: one product with ``LY``, the
        Laplacian of Y (:meth:`laplacian`, computed here unless given; its
        W^T LY is then the term's gradient in the logits, times alpha / n).
        """
        xp = self.xp
        N, k = Y.shape[0], Y.shape[1]
        if LY is None:
            LY = self.laplacian(Y)
        M = xp.sum(xp.matmul(xp.reshape(Y, (N, k, -1)),
                             xp.matrix_transpose(xp.reshape(LY, (N, k, -1)))), axis=0)
        # symmetric in exact arithmetic; made so for Newton-CG's Hessian
        return (0.5 * self.coefficient) * (M + xp.matrix_transpose(M))

