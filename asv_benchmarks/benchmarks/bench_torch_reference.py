"""The same network in PyTorch (CPU, eager), the reference for arrseg's timings.

``common.TorchNetwork``: conv2d (padding s // 2, bias b) -> tanh -> 1 x 1
conv2d (weight W^T, bias c) -> softmax under ``torch.inference_mode``
(``*_predict_proba``), or cross_entropy and autograd's gradient in
(K, b, W, c) (``*_loss_and_grad``). Same data, parameters and ``config``
grid as ``bench_network.SeedConfig``, whose methods have the same names, so
that e.g. ``SeedConfig.time_loss_and_grad / TorchReference.time_loss_and_grad``
comes from one asv run.
"""

from __future__ import annotations

from .common import (CONFIGS, MEMORY_FORMATS, AsvSettings, TorchNetwork,
                     reset_peak_rss)


class TorchReference(AsvSettings):
    """PyTorch's forward + softmax, and forward + cross-entropy + backward.

    In both memory layouts of the images and kernels: NCHW (contiguous) and
    channels_last (NHWC in memory); PyTorch's default number of threads.
    Skipped without PyTorch.
    """

    params = (MEMORY_FORMATS, tuple(CONFIGS))
    param_names = ("memory_format", "config")

    def setup(self, memory_format, config):
        config = CONFIGS[config]
        # a tiny problem first: starts the thread pool and touches the code
        tiny = TorchNetwork(config._replace(n_images=1, size=16), memory_format)
        tiny.predict_proba()
        tiny.loss_and_grad()
        self.net = TorchNetwork(config, memory_format)
        reset_peak_rss()

    def time_predict_proba(self, *_):
        self.net.predict_proba()

    def time_loss_and_grad(self, *_):
        self.net.loss_and_grad()

    def peakmem_predict_proba(self, *_):
        self.net.predict_proba()

    def peakmem_loss_and_grad(self, *_):
        self.net.loss_and_grad()
