"""The residual network (depth > 0): arrseg on NumPy beside PyTorch on the CPU.

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
comes from one asv run. ``tools/deep_vs_torch.py`` times the same classes
side by side in one process.
"""

from __future__ import annotations

import numpy as np

import arrseg

from .common import CHANNELS, N_CLASSES, AsvSettings, Config, reset_peak_rss, torch

#: Numbers of residual layers benchmarked.
DEPTHS = (2, 4, 6)
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
    params : arrseg.ResidualParams
    dilation : tuple of int, length depth
    """
    x, labels = arrseg.data.make_shapes(
        n_images=config.n_images, size=config.size, n_classes=N_CLASSES,
        channels=CHANNELS, seed=0, dtype=config.dtype)
    params = arrseg.init_params(CHANNELS, config.width, N_CLASSES, config.kernel_size,
                                depth=depth, layer_kernel_size=layer_kernel_size,
                                seed=0, dtype=config.dtype)
    return x, labels, params, tuple(2 ** j for j in range(depth))


class ArrsegResidualNetwork:
    """arrseg's public functions on NumPy arrays, with the network's options."""

    def __init__(self, problem, *, step=1.0, layer="residual", method="direct"):
        self.x, self.labels, self.params, dilation = problem
        self.options = dict(dilation=dilation, step=step, layer=layer, method=method)

    def loss_and_grad(self):
        return arrseg.loss_and_grad(self.x, self.labels, self.params, **self.options)

    def predict_proba(self):
        return arrseg.predict_proba(self.x, self.params, **self.options)


class TorchResidualNetwork:
    """The same network in PyTorch (CPU, eager, NCHW), the reference.

    ``loss_and_grad`` runs the forward pass, ``cross_entropy`` (mean over
    pixels, as arrseg's) and ``.backward()`` into every parameter's
    ``.grad``; ``predict_proba`` the softmax under ``torch.inference_mode``.
    The symmetric layer's K_j^T is ``conv_transpose2d`` with the same kernel.
    """

    def __init__(self, problem, *, step=1.0, layer="residual"):
        if torch is None:
            raise NotImplementedError("PyTorch is not installed")
        x, labels, params, self.dilation = problem
        self.x = torch.from_numpy(np.ascontiguousarray(x))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels))
        self.h, self.symmetric = step, layer == "symmetric"
        self.K, self.b, self.W, self.c = (torch.from_numpy(np.array(a)).requires_grad_()
                                          for a in params[:4])
        self.K_layers = [torch.from_numpy(np.array(K)).requires_grad_()
                         for K in params.K_layers]
        self.b_layers = [torch.from_numpy(np.array(b)).requires_grad_()
                         for b in params.b_layers]
        self.p = params.K.shape[2] // 2
        self.p_r = params.K_layers.shape[3] // 2

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
        return loss

    def predict_proba(self):
        with torch.inference_mode():
            return torch.softmax(self.logits(), dim=1)


class _ResidualBenchmark(AsvSettings):
    """Common setup: a tiny problem first (thread pools, code pages), then
    the measured one; the peak RSS reset last."""

    params = (DEPTHS,)
    param_names = ("depth",)

    def network(self, problem):
        raise NotImplementedError

    def setup(self, depth):
        tiny = self.network(make_residual_problem(
            RESIDUAL_CONFIG._replace(n_images=1, size=16), depth))
        tiny.predict_proba()
        tiny.loss_and_grad()
        self.net = self.network(make_residual_problem(RESIDUAL_CONFIG, depth))
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
