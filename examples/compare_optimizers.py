"""Compare SGD, Adam and VarPro on the same data within the same time budget.

The three optimizers of :mod:`arrseg.optim` minimise the same objective,

    E(K, b, W, c) + alpha/2 (||K||^2 + ||W||^2),   alpha = 1e-4

(E the mean cross-entropy over the training pixels), from the same initial
parameters, on the same normalised synthetic images
(:func:`arrseg.data.make_shapes`), full batch:

* SGD: momentum 0.9, learning rate 0.5 (the Segmenter's defaults);
* Adam: learning rate 0.03 (the Segmenter's default);
* VarPro: L-BFGS on the kernels (K, b), the classifier (W, c) eliminated by
  Newton-CG at every evaluation (:class:`arrseg.optim.VarPro`).

A random fraction ``--train-fraction`` of the pixels (0.8) is labelled for
training, the others are held out. Each optimizer runs until the wall clock
budget is spent; the table gives the iterations done, the training objective
at budget/4, budget/2 and the end, the time it took to reach an objective of
0.02 and 0.005, and the mean IoU on the held-out pixels.

Run from the repository root::

    python examples/compare_optimizers.py --budget 10
    python examples/compare_optimizers.py --budget 10 --train-fraction 0.05

Timings depend on the machine and on its load (printed first).
"""

import argparse
import os
import time

import numpy as np

import arrseg
from arrseg.metrics import mean_iou
from arrseg.optim import SGD, Adam, Regularization, VarPro

IGNORE = -100


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=10.0,
                        help="seconds per optimizer (default 10)")
    parser.add_argument("--images", type=int, default=4, help="N (default 4)")
    parser.add_argument("--size", type=int, default=96, help="H = W (default 96)")
    parser.add_argument("--width", type=int, default=16, help="k (default 16)")
    parser.add_argument("--kernel-size", type=int, default=5, help="s (default 5)")
    parser.add_argument("--train-fraction", type=float, default=0.8,
                        help="fraction of the pixels labelled for training; the "
                        "others are held out (default 0.8)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def data(args):
    x, y = arrseg.data.make_shapes(n_images=args.images, size=args.size,
                                   seed=args.seed)
    x = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3),
                                                            keepdims=True)
    held_out = np.random.default_rng(args.seed).random(y.shape) >= args.train_fraction
    return x, np.where(held_out, IGNORE, y), np.where(held_out, y, IGNORE)


def objective(x, y, params, reg):
    loss, _ = arrseg.loss_and_grad(x, y, params)
    return float(loss) + float(reg(params)[0])


def run_first_order(opt, x, y, params, reg, budget):
    """Full-batch steps until the budget is spent: [(seconds, objective)]."""
    trace = []
    start = time.perf_counter()
    while True:
        loss, grads = arrseg.loss_and_grad(x, y, params)
        r, rg = reg(params)
        trace.append((time.perf_counter() - start, float(loss) + float(r)))
        if trace[-1][0] >= budget:
            return params, trace
        params = opt.step(params, arrseg.Params(*(
            None if g is None else g + h for g, h in zip(grads, rg))))


def run_varpro(x, y, params, weight_decay, budget):
    vp = VarPro(weight_decay=weight_decay)
    start = time.perf_counter()
    params, phi = vp.start(x, y, params)
    trace = [(time.perf_counter() - start, phi)]
    while trace[-1][0] < budget and not vp.stalled:
        params, phi = vp.step()
        trace.append((time.perf_counter() - start, phi))
    return params, trace


def at(trace, t):
    """The objective reached by time t (the last entry at or before t)."""
    done = [f for s, f in trace if s <= t]
    return f"{done[-1]:.4f}" if done else "-"


def time_to(trace, level):
    hit = [s for s, f in trace if f <= level]
    return f"{hit[0]:.2f} s" if hit else "-"


def main():
    args = parse()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    x, y_train, y_test = data(args)
    print(f"arrseg {arrseg.__version__}: N={args.images} C=3 H=W={args.size} "
          f"k={args.width} s={args.kernel_size} n_c=3, "
          f"{int(np.sum(y_train >= 0))} training pixels, "
          f"{int(np.sum(y_test >= 0))} held-out pixels; budget {args.budget:g} s "
          f"per optimizer; {os.cpu_count()} CPUs, load average {load:.2f}")
    reg = Regularization(weight_decay=args.weight_decay)
    params0 = arrseg.init_params(3, args.width, 3, args.kernel_size, seed=args.seed)
    arrseg.loss_and_grad(x, y_train, params0)  # warm up (threads, caches)
    VarPro(weight_decay=args.weight_decay).start(x[:1], y_train[:1], params0)
    print(f"initial objective {objective(x, y_train, params0, reg):.4f}")
    runs = {
        "SGD": lambda: run_first_order(SGD(0.5, momentum=0.9), x, y_train, params0,
                                       reg, args.budget),
        "Adam": lambda: run_first_order(Adam(0.03), x, y_train, params0, reg,
                                        args.budget),
        "VarPro": lambda: run_varpro(x, y_train, params0, args.weight_decay,
                                     args.budget),
    }
    b = args.budget
    header = (f"{'optimizer':<9} {'iters':>6} {f'obj@{b / 4:g}s':>10} "
              f"{f'obj@{b / 2:g}s':>10} {f'obj@{b:g}s':>10} {'to 0.02':>8} "
              f"{'to 0.005':>9} {'held-out mIoU':>14}")
    print(header)
    for name, run in runs.items():
        params, trace = run()
        final = objective(x, y_train, params, reg)
        pred = np.argmax(arrseg.predict_proba(x, params), axis=1)
        score = float(mean_iou(y_test, pred, 3))
        print(f"{name:<9} {len(trace) - 1:>6} {at(trace, b / 4):>10} "
              f"{at(trace, b / 2):>10} {final:>10.4f} {time_to(trace, 0.02):>8} "
              f"{time_to(trace, 0.005):>9} {score:>14.4f}", flush=True)


if __name__ == "__main__":
    main()
