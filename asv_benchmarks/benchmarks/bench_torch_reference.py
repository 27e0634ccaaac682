"""The same network in PyTorch (CPU), the reference for arrseg's timings.

conv2d (padding s // 2) -> + b -> tanh -> 1x1 conv2d (weight W.T, bias c)
-> softmax / cross_entropy, with the data and parameters of
:mod:`.bench_network` and the same size, width, kernel size and dtype grid,
so that ``Network.time_loss_and_grad`` / ``time_torch_forward_backward``
ratios come from one asv run. The backward pass is autograd's.
"""

from __future__ import annotations

from .common import (DTYPES, GRID_NAMES, KERNEL_SIZES, SIZES, TIMEOUT, WIDTHS,
                     make_problem, torch, torch_xp)

MEMORY_FORMATS = ("NCHW", "channels_last")


class TorchReference:
    """Forward + softmax, and forward + cross-entropy + backward, in PyTorch."""

    params = (MEMORY_FORMATS, SIZES, WIDTHS, KERNEL_SIZES, DTYPES)
    param_names = ("memory_format",) + GRID_NAMES
    timeout = TIMEOUT

    def setup(self, memory_format, size, width, kernel_size, dtype):
        if torch is None:
            raise NotImplementedError("PyTorch is not installed")
        x, self.labels, theta = make_problem(
            torch_xp, size, width, kernel_size, dtype)
        fmt = {"NCHW": torch.contiguous_format,
               "channels_last": torch.channels_last}[memory_format]
        self.x = x.contiguous(memory_format=fmt)
        self.K = theta.K.contiguous(memory_format=fmt).requires_grad_()
        self.b, self.W, self.c = (a.clone().requires_grad_()
                                  for a in (theta.b, theta.W, theta.c))
        self.padding = kernel_size // 2

    def _logits(self):
        features = torch.tanh(torch.nn.functional.conv2d(
            self.x, self.K, self.b, padding=self.padding))
        return torch.nn.functional.conv2d(
            features, self.W.T[:, :, None, None], self.c)

    def time_torch_predict(self, *_):
        with torch.no_grad():
            torch.softmax(self._logits(), dim=1)

    def time_torch_forward_backward(self, *_):
        loss = torch.nn.functional.cross_entropy(self._logits(), self.labels)
        torch.autograd.grad(loss, (self.K, self.b, self.W, self.c))
