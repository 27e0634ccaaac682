"""The residual network: arrseg beside PyTorch, on the CPU and on a CUDA GPU.

The network: opening convolution C -> k (3 x 3, tanh), ``depth`` residual
layers k -> k (3 x 3, dilations 1, 2, 4, ... doubling, step 1), a 1 x 1
classifier and the mean cross-entropy; N = 4 images of 3 x 256 x 256,
k = 16, n_c = 4, float32 (:data:`RESIDUAL_CONFIG`). ``ResidualNetwork``
times arrseg's ``loss_and_grad`` and ``predict_proba`` (method "direct":
the blocked NumPy path, :mod:`arrseg.cpu.residual`);
``TorchResidual`` the same network in PyTorch (eager, default threads:
forward, ``cross_entropy`` and ``.backward()``; forward and softmax under
``torch.inference_mode``), with the same method names, so that
``ResidualNetwork.time_loss_and_grad / TorchResidual.time_loss_and_grad``
comes from one asv run. ``SymmetricNetwork`` and ``TorchSymmetric`` are
the same pair with the course's symmetric layer (``layer="symmetric"``,
h = 1). ``tools/deep_vs_torch.py`` (``--layer symmetric``) times the same
classes side by side in one process.

``ResidualNetworkGPU`` and ``TorchResidualGPU`` are the same pair on a CUDA
GPU: arrseg on CuPy arrays (method "auto": at depth 0 the fused kernels, with
residual layers the array-API path) and PyTorch on CUDA (cuDNN with
``cudnn.benchmark``, TF32 off, so that both compute in float32), each timed
call ending with a device synchronisation. Without CuPy, a GPU or PyTorch's
CUDA, their ``setup`` raises NotImplementedError (asv: skipped) before any
work.
"""

from __future__ import annotations

import numpy as np

import arrseg

from .common import (CHANNELS, N_CLASSES, AsvSettings, Config, get_backend, reset_peak_rss,
                     torch)

#: Numbers of residual layers benchmarked.
DEPTHS = (2, 4, 6)
#: On the GPU also depth 0, the one-layer network that the fused kernels run.
GPU_DEPTHS = (0,) + DEPTHS
#: N, size, k, s, dtype of the residual benchmarks.
RESIDUAL_CONFIG = Config(n_images=4, size=256, width=16, kernel_size=3,
                         dtype="float32")
#: s_r, the residual layers' kernel size.
LAYER_KERNEL_SIZE = 3


def make_residual_problem(config, depth, layer_kernel_size=LAYER_KERNEL_SIZE):
    """NumPy images, labels, ResidualParams and dilations (1, 2, 4, ...).

    Returns
    -------
    x : array (N, CHANNELS, size, size)
    labels : int64 array (N, size, size)
    params : arrseg.ResidualParams (arrseg.Params at depth 0)
    dilation : tuple of int, length depth
    """
    x, labels = arrseg.data.make_shapes(
        n_images=config.n_images, size=config.size, n_classes=N_CLASSES,
        channels=CHANNELS, seed=0, dtype=config.dtype)
    params = arrseg.init_params(CHANNELS, config.width, N_CLASSES, config.kernel_size,
                                depth=depth, layer_kernel_size=layer_kernel_size,
                                seed=0, dtype=config.dtype)
    return x, labels, params, tuple(2 ** j for j in range(depth))


def _no_sync():
    """Host computations are done when the call returns."""


class ArrsegResidualNetwork:
    """arrseg's public functions on NumPy or CuPy arrays, with the network's options.

    ``backend`` "numpy" or "cupy" (:func:`benchmarks.common.get_backend`:
    NotImplementedError without CuPy or a GPU); on CuPy the problem's arrays
    are copied to the device and every call ends with
    ``cupy.cuda.Device().synchronize()``, so that a timed call is the device's
    work. ``path(pass_)`` names the implementation arrseg's dispatcher picks.
    """

    def __init__(self, problem, *, step=1.0, layer="residual", method="direct",
                 backend="numpy"):
        xp = get_backend(backend).xp
        x, labels, params, dilation = problem
        self.sync = _no_sync
        if backend == "cupy":
            x, labels = xp.asarray(x), xp.asarray(labels)
            params = arrseg.params.params_like(
                params, (None if a is None else xp.asarray(a) for a in params))
            self.sync = xp.cuda.Device().synchronize
        self.xp, self.x, self.labels, self.params = xp, x, labels, params
        self.options = dict(dilation=dilation, step=step, layer=layer, method=method)

    def loss_and_grad(self):
        out = arrseg.loss_and_grad(self.x, self.labels, self.params, **self.options)
        self.sync()
        return out

    def predict_proba(self):
        out = arrseg.predict_proba(self.x, self.params, **self.options)
        self.sync()
        return out

    def path(self, pass_):
        """The dispatcher's choice for ``pass_`` ("train" or "predict"), or "?"."""
        from array_api_compat import array_namespace
        from arrseg.core import select_path
        p = self.params
        layers = None if p.K_layers is None else tuple(p.K_layers.shape)
        try:
            return select_path(self.options["method"], array_namespace(self.x),
                               tuple(self.x.shape), tuple(p.K.shape), p.W.shape[1],
                               self.x.dtype, pass_, layers)
        except Exception:  # an internal function: its signature may change
            return "?"


class TorchResidualNetwork:
    """The same network in PyTorch (eager, NCHW), the reference.

    ``loss_and_grad`` runs the forward pass, ``cross_entropy`` (mean over
    pixels, as arrseg's) and ``.backward()`` into every parameter's
    ``.grad``; ``predict_proba`` the softmax under ``torch.inference_mode``.
    The symmetric layer's K_j^T is ``conv_transpose2d`` with the same kernel.

    ``device`` "cpu" or "cuda"; on CUDA (NotImplementedError where PyTorch
    sees none) this sets ``torch.backends.cudnn.benchmark = True`` and
    ``cudnn.allow_tf32 = tf32`` (default False: float32 arithmetic, as
    arrseg's), and every call ends with ``torch.cuda.synchronize()``.
    """

    def __init__(self, problem, *, step=1.0, layer="residual", device="cpu", tf32=False):
        if torch is None:
            raise NotImplementedError("PyTorch is not installed")
        self.sync = _no_sync
        if device == "cuda":
            if not torch.cuda.is_available():
                raise NotImplementedError(f"PyTorch {torch.__version__} sees no CUDA GPU")
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.allow_tf32 = tf32
            self.sync = torch.cuda.synchronize

        def tensor(a):  # a leaf on the device, owning its memory
            return torch.from_numpy(np.array(a)).to(device)

        x, labels, params, self.dilation = problem
        self.x, self.labels = tensor(x), tensor(labels)
        self.h, self.symmetric = step, layer == "symmetric"
        self.K, self.b, self.W, self.c = (tensor(a).requires_grad_() for a in params[:4])
        depth = 0 if params.K_layers is None else len(params.K_layers)
        self.K_layers = [tensor(params.K_layers[j]).requires_grad_() for j in range(depth)]
        self.b_layers = [tensor(params.b_layers[j]).requires_grad_() for j in range(depth)]
        self.p = params.K.shape[2] // 2
        self.p_r = params.K_layers.shape[3] // 2 if depth else 0

    def parameters(self):
        return [self.K, self.b, self.W, self.c, *self.K_layers, *self.b_layers]

    def logits(self):
        F = torch.nn.functional
        Y = torch.tanh(F.conv2d(self.x, self.K, self.b, padding=self.p))
        for K, b, d in zip(self.K_layers, self.b_layers, self.dilation):
            A = torch.tanh(F.conv2d(Y, K, b, padding=d * self.p_r, dilation=d))
            if self.symmetric:
                Y = Y - self.h * F.conv_transpose2d(A, K, padding=d * self.p_r,
                                                    dilation=d)
            else:
                Y = Y + self.h * A
        return F.conv2d(Y, self.W.T[:, :, None, None], self.c)

    def loss_and_grad(self):
        for p in self.parameters():
            p.grad = None
        loss = torch.nn.functional.cross_entropy(self.logits(), self.labels)
        loss.backward()
        self.sync()
        return loss

    def predict_proba(self):
        with torch.inference_mode():
            P = torch.softmax(self.logits(), dim=1)
        self.sync()
        return P


class _ResidualBenchmark(AsvSettings):
    """Common setup: a tiny problem first (thread pools, code pages), then
    the measured one; on a GPU (``gpu = True``) the measured calls once
    (compilation, cuDNN's autotuning); the peak RSS reset last."""

    params = (DEPTHS,)
    param_names = ("depth",)
    #: Whether the network runs on the GPU (setup warms the measured calls).
    gpu = False

    def network(self, problem):
        raise NotImplementedError

    def setup(self, depth):
        tiny = self.network(make_residual_problem(
            RESIDUAL_CONFIG._replace(n_images=1, size=16), depth))
        tiny.predict_proba()
        tiny.loss_and_grad()
        self.net = self.network(make_residual_problem(RESIDUAL_CONFIG, depth))
        if self.gpu:
            self.net.predict_proba()
            self.net.loss_and_grad()
        reset_peak_rss()

    def time_loss_and_grad(self, depth):
        self.net.loss_and_grad()

    def time_predict_proba(self, depth):
        self.net.predict_proba()


class ResidualNetwork(_ResidualBenchmark):
    """arrseg on NumPy (the blocked path), over the depth."""

    def network(self, problem):
        return ArrsegResidualNetwork(problem)

    def peakmem_predict_proba(self, depth):
        self.net.predict_proba()


class TorchResidual(_ResidualBenchmark):
    """PyTorch CPU, eager, the same network; skipped without PyTorch."""

    def network(self, problem):
        return TorchResidualNetwork(problem)


class ResidualNetworkGPU(_ResidualBenchmark):
    """arrseg on CuPy, method "auto", over the depth (0: the fused kernels);
    skipped without CuPy or a GPU."""

    params = (GPU_DEPTHS,)
    gpu = True

    def network(self, problem):
        return ArrsegResidualNetwork(problem, method="auto", backend="cupy")


class TorchResidualGPU(_ResidualBenchmark):
    """PyTorch on CUDA (cuDNN, benchmark mode, TF32 off), the same network;
    skipped without PyTorch's CUDA."""

    params = (GPU_DEPTHS,)
    gpu = True

    def network(self, problem):
        return TorchResidualNetwork(problem, device="cuda")


class SymmetricNetwork(_ResidualBenchmark):
    """arrseg on NumPy (the blocked path) with the course's symmetric layer
    ``Y_{j+1} = Y_j - h K_j^T sigma(K_j Y_j + b_j)``, h = 1, over the depth."""

    def network(self, problem):
        return ArrsegResidualNetwork(problem, layer="symmetric")


class TorchSymmetric(_ResidualBenchmark):
    """PyTorch CPU, eager, the same symmetric network (K_j^T as
    ``conv_transpose2d``); skipped without PyTorch."""

    def network(self, problem):
        return TorchResidualNetwork(problem, layer="symmetric")
