"""What the finiteness check of arrseg.overflow costs a NumPy prediction.

Times ``arrseg.predict_proba`` (which includes the check) and the check
alone (``sum_probe`` of P and its read-back) on the same P, best of
``--repeat`` runs, and prints both and their ratio::

    python tools/overflow_check_cost.py
    python tools/overflow_check_cost.py --shape 8 3 512 512 --width 32
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import arrseg
from arrseg.overflow import is_finite, sum_probe


def best_of(f, repeat):
    f()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[4, 3, 256, 256],
                        metavar=("N", "C", "H", "W"))
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    N, C, H, W = args.shape
    x = np.random.default_rng(0).random((N, C, H, W), dtype=np.float32)
    params = arrseg.init_params(C, args.width, args.classes, seed=0)
    P = arrseg.predict_proba(x, params)
    call = best_of(lambda: arrseg.predict_proba(x, params), args.repeat)
    check = best_of(lambda: is_finite(sum_probe([P], np)), args.repeat)
    print(f"predict_proba {tuple(args.shape)} k={args.width} n_c={args.classes} "
          f"float32: {call * 1e3:.2f} ms; of which the finiteness check: "
          f"{check * 1e3:.3f} ms ({100 * check / call:.1f}%)")


if __name__ == "__main__":
    main()
