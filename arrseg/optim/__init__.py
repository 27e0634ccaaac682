"""Training: optimizers, regularisers and the classifier's Newton solver.

First-order optimizers share ``step(params, grads) -> params`` on
:class:`~arrseg.Params`, with their state kept in the object and no array
modified in place (they run on ``array_api_strict``):

:class:`SGD`
    Gradient descent with momentum, optionally Nesterov's.
:class:`Adam`
    Adam.

Second-order and structured methods:

:func:`newton_cg`, :class:`ClassifierProblem`
    Newton-CG for the convex classifier problem in (W, c) on fixed features,
    with matrix-free Hessian-vector products.
:class:`VarPro`
    Variable projection: L-BFGS on the reduced objective of the feature
    parameters ((K, b), and the residual layers' (K_layers, b_layers)), the
    classifier eliminated by Newton-CG.

Every optimizer takes :class:`~arrseg.Params` and
:class:`~arrseg.ResidualParams` alike (field by field, None fields kept).

Regularisation: :func:`tikhonov` (weight decay on K, W and K_layers),
:func:`smoothness` (the discrete gradient of each kernel), and
:class:`Regularization` combining them; :class:`EdgeSmoothness`, the
edge-aware smoothness of the logits between neighbouring pixels (VarPro's
and the Segmenter's ``edge_smoothness``), with :func:`contrast_scale`.

:class:`NonFiniteLossError` is raised when training diverges; it carries the
iteration and the last parameters with a finite loss.
"""

from .adam import Adam
from .base import NonFiniteLossError, Optimizer
from .edge_smoothness import EdgeSmoothness, contrast_scale
from .newton_cg import ClassifierProblem, NewtonCGResult, newton_cg
from .regularization import Regularization, smoothness, tikhonov
from .sgd import SGD
from .varpro import VarPro

__all__ = [
    "SGD",
    "Adam",
    "ClassifierProblem",
    "EdgeSmoothness",
    "NewtonCGResult",
    "NonFiniteLossError",
    "Optimizer",
    "Regularization",
    "VarPro",
    "contrast_scale",
    "newton_cg",
    "smoothness",
    "tikhonov",
]
