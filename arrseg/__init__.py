"""arrseg: CNN image segmentation on NumPy, CuPy or any array API namespace.

Given images Y0 of shape (N, C, H, W), the network

    P = softmax(W^T sigma(K(theta) Y0 + B b) + c)

gives per-pixel probabilities of n_c classes, and is trained by minimising
the mean cross-entropy over labelled pixels.

Public names
------------
Params, ResidualParams, init_params
    The parameters (K, b, W, c; with residual layers K_layers, b_layers)
    and their initialisation.
predict_proba, loss_and_grad
    The network's forward pass, and its loss with the analytic gradient.
Segmenter
    The scikit-learn style estimator: fit, predict_proba, predict, score,
    save, load.
NonFiniteError, DivergenceWarning
    A finite input that overflowed (the message names the quantity), and
    a fit whose loss rose far above its best.
arrseg.optim
    SGD, Adam, Newton-CG for the classifier, variable projection (VarPro),
    Tikhonov and smoothness regularisation.
arrseg.metrics
    Confusion matrix, pixel accuracy, IoU, Dice, mean IoU (any namespace).
arrseg.model_file
    save / load of parameters and metadata (.npz, no pickle).
arrseg.tiling
    predict_proba_tiled: prediction of large images in bounded memory.
arrseg.testing
    Taylor (derivative) and adjoint checks, backend-agnostic comparisons.
arrseg.data
    Synthetic data.
arrseg.numerics
    The array-API reference implementation (convolution operator and its
    adjoint and Jacobians, activations, classifier).

Importing arrseg imports neither CuPy nor PyTorch.
"""

from . import data, metrics, model_file, optim, testing, tiling
from ._version import __version__
from .estimator.training import DivergenceWarning
from .network import loss_and_grad, predict_proba
from .overflow import NonFiniteError
from .params import Params, ResidualParams, init_params
from .segmenter import NotFittedError, Segmenter

__all__ = ["Params", "ResidualParams", "init_params", "predict_proba", "loss_and_grad",
           "Segmenter", "NotFittedError", "NonFiniteError", "DivergenceWarning",
           "data", "metrics", "model_file", "optim", "testing", "tiling",
           "__version__"]
