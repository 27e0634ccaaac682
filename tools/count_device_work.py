"""Count what the GPU path asks of the device, without a GPU.

Two counters, the same as the tests use:

- host <-> device transfers, on the counting "device" namespace of
  tests/device_namespace.py (its arrays behave like CuPy's: every crossing
  is explicit and recorded);
- kernel launches of the fused path, on the CPU emulator of the CUDA
  kernels (arrseg.cuda.emulation), through the same dispatcher and
  launchers as on CuPy.

Usage::

    python tools/count_device_work.py          # prints an RST table

It needs g++ for the launch counts (without it those are left out).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import arrseg  # noqa: E402
from arrseg import core  # noqa: E402
from arrseg.segmenter import Segmenter  # noqa: E402
from device_namespace import make_namespace  # noqa: E402

FIT = dict(width=8, kernel_size=5, crop_size=32, batch_size=2, n_iter_no_change=100,
           tol=0.0, depth=0, optimizer="adam")
#: The Segmenter's defaults (a residual network of depth 3 trained by VarPro:
#: the array-API path on the device, line searches decided on the host).
DEFAULTS = dict(n_iter_no_change=100, tol=0.0)


def transfers():
    """Rows (what, uploads, read-backs) on the counting namespace."""
    xp = make_namespace()
    x, y = arrseg.data.make_shapes(n_images=3, size=64, seed=0)
    x, y = xp.asarray(x), xp.asarray(y)
    params = arrseg.init_params(3, 8, 3, kernel_size=5, xp=xp)
    rows = []
    with xp.counting() as log:
        arrseg.predict_proba(x, params)
    rows.append(("arrseg.predict_proba", len(log.to_device), len(log.to_host)))
    with xp.counting() as log:
        arrseg.loss_and_grad(x, y, params)
    rows.append(("arrseg.loss_and_grad", len(log.to_device), len(log.to_host)))

    def fit(max_iter, settings=FIT, **extra):
        with xp.counting() as log:
            Segmenter(max_iter=max_iter, **settings, **extra).fit(x, y)
        return len(log.to_device), len(log.to_host)

    for label, extra in (("crops", {}), ("crops, validation", {"early_stopping": True})):
        one, five = fit(1, **extra), fit(5, **extra)
        rows.append((f"Segmenter.fit depth 0 Adam, per iteration ({label}, 6 steps)",
                     (five[0] - one[0]) / 4, (five[1] - one[1]) / 4))
        rows.append((f"Segmenter.fit depth 0 Adam, set-up ({label})", one[0],
                     one[1] - 1))
    one, five = fit(1, DEFAULTS), fit(5, DEFAULTS)
    rows.append(("Segmenter.fit defaults (depth 3, VarPro), per iteration",
                 (five[0] - one[0]) / 4, (five[1] - one[1]) / 4))
    model = Segmenter(max_iter=2, **FIT).fit(x, y)
    big = xp.asarray(arrseg.data.make_shapes(n_images=1, size=(300, 260), seed=1)[0])
    for tile in (None, 64):
        model.set_params(tile_size=tile)
        with xp.counting() as log:
            model.predict_proba(big)
        rows.append((f"Segmenter.predict_proba 300x260, tile_size={tile}",
                     len(log.to_device), len(log.to_host)))
    return rows


def launches():
    """Rows (what, launches by kernel) on the CPU emulator, or None."""
    from arrseg.cuda import emulation

    if emulation.find_compiler() is None:
        return None

    class Counting:
        def __init__(self, inner):
            self.inner, self.names = inner, []

        def function(self, config, filename, name):
            kernel = self.inner.function(config, filename, name)

            def launch(grid, block, args, shared_mem=0, stream=None):
                self.names.append(name.replace("arrseg_", ""))
                return kernel(grid, block, args, shared_mem=shared_mem)

            return launch

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        counting = Counting(emulation.EmulatedKernels(cache_dir=cache))
        with core.fused_kernels_on_numpy(counting):
            x, y = arrseg.data.make_shapes(n_images=3, size=64, seed=0)
            params = arrseg.init_params(3, 8, 3, kernel_size=5)

            def record(label, fn):
                counting.names.clear()
                fn()
                names = counting.names
                rows.append((label, ", ".join(f"{n} x{names.count(n)}"
                                              for n in dict.fromkeys(names))))

            record("arrseg.predict_proba", lambda: arrseg.predict_proba(x, params))
            record("arrseg.loss_and_grad", lambda: arrseg.loss_and_grad(x, y, params))
            record("Segmenter.fit, 2 iterations of 6 steps",
                   lambda: Segmenter(max_iter=2, **FIT).fit(x, y))
            model = Segmenter(max_iter=1, **FIT).fit(x, y)
            big = arrseg.data.make_shapes(n_images=1, size=(300, 260), seed=1)[0]
            record("Segmenter.predict_proba 300x260",
                   lambda: model.predict_proba(big))
    return rows


def main():
    rows = transfers()
    w = max(len(r[0]) for r in rows)
    line = "=" * w + "  " + "=" * 9 + "  " + "=" * 10
    print("Host <-> device transfers (tests/device_namespace.py)\n")
    print(line)
    print(f"{'call':<{w}}  {'uploads':>9}  {'read-backs':>10}")
    print(line)
    for what, up, down in rows:
        print(f"{what:<{w}}  {up:>9g}  {down:>10g}")
    print(line)
    found = launches()
    if found is None:
        print("\n(no C++ compiler: kernel launches not counted)")
        return
    w = max(len(r[0]) for r in found)
    v = max(len(r[1]) for r in found)
    line = "=" * w + "  " + "=" * v
    print("\nKernel launches of the fused path (CPU emulator)\n")
    print(line)
    print(f"{'call':<{w}}  {'launches':<{v}}")
    print(line)
    for what, names in found:
        print(f"{what:<{w}}  {names:<{v}}")
    print(line)


if __name__ == "__main__":
    np.seterr(all="raise", under="ignore")   # exp underflowing to 0 is fine
    main()
