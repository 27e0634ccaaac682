"""Fit the coefficients of arrseg's method cost model (arrseg.methods) on this machine.

Times ``predict_proba`` and ``loss_and_grad`` with ``method="direct"`` and
``method="fft"`` over a grid of sizes, widths and kernel sizes, for NumPy
(the blocked path) and, when installed, PyTorch's namespace (the generic
path), then fits, per (method, backend kind, pass), the non-negative
coefficients of

    seconds = a + b * kernel taps + c * pixel-channels
              + d * FLOPs of the products + e * im2col entries
              + f * FFT butterflies

by least squares on relative errors, and prints the table to paste into
``COST_COEFFICIENTS``. It also prints, for every measured case, which
method was faster and whether the fitted model picks it.

Usage::

    python tools/calibrate_methods.py            # about 10 minutes on 2 cores
    python tools/calibrate_methods.py --quick    # a smaller grid
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import time

import numpy as np

import arrseg
from arrseg import methods


def median_time(fun, repeat):
    fun()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fun()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def namespaces():
    import array_api_compat.numpy as np_xp

    found = {"numpy": np_xp}
    try:
        import array_api_compat.torch as torch_xp

        found["torch"] = torch_xp
    except ImportError:
        pass
    return found


def grid(quick, sizes=None):
    if sizes is None:
        sizes = [(2, 16), (4, 64), (8, 256)] if not quick else [(2, 16), (4, 64)]
    widths = [8, 32, 64] if not quick else [8, 32]
    kernels = [3, 5, 7, 9, 11, 13, 15] if not quick else [3, 7, 11, 15]
    return [(N, H, k, s) for (N, H), k, s in itertools.product(sizes, widths, kernels)]


def measure(quick, repeat, backends, sizes=None):
    rng = np.random.default_rng(0)
    rows = []
    for name, xp in namespaces().items():
        if name not in backends:
            continue
        for N, H, k, s in grid(quick, sizes):
            if name != "numpy" and (H > 128 or k > 32):
                continue  # the generic path is slow; keep the run short
            C, n_c = 3, 4
            x = xp.asarray(rng.standard_normal((N, C, H, H), dtype=np.float32))
            y = xp.asarray(rng.integers(0, n_c, (N, H, H)))
            params = arrseg.init_params(C, k, n_c, s, xp=xp)
            for method, train in itertools.product(("direct", "fft"), (False, True)):
                if train:
                    run = functools.partial(arrseg.loss_and_grad, x, y, params,
                                            method=method)
                else:
                    run = functools.partial(arrseg.predict_proba, x, params,
                                            method=method)
                t = median_time(run, repeat)
                rows.append((name, method, train, (N, C, H, H), (k, C, s, s), t))
                print(f"{name:6s} {method:6s} {'train' if train else 'pred ':5s} "
                      f"N={N} {H}x{H} k={k:2d} s={s:2d}: {t * 1e3:9.1f} ms",
                      flush=True)
    return rows


def fit(rows):
    table = {}
    keys = sorted({(m, "numpy" if b == "numpy" else "generic", tr)
                   for b, m, tr, *_ in rows})
    for method, kind, train in keys:
        sel = [r for r in rows if r[1] == method and r[2] == train
               and ("numpy" if r[0] == "numpy" else "generic") == kind]
        X = np.array([methods._work(method, *r[3], r[4][0], r[4][2]) for r in sel])
        t = np.array([r[5] for r in sel])
        # relative least squares, then clip negative coefficients and refit
        active = [j for j in range(X.shape[1]) if X[:, j].any()]
        while True:
            A = X[:, active] / t[:, None]
            coef, *_ = np.linalg.lstsq(A, np.ones(len(t)), rcond=None)
            if (coef >= 0).all() or len(active) == 1:
                break
            active = [j for j, c in zip(active, coef) if c >= 0] or active[:1]
        full = np.zeros(X.shape[1])
        full[active] = np.maximum(coef, 0)
        table[(method, kind, train)] = tuple(float(f"{c:.3g}") for c in full)
    return table


def report(rows, table):
    methods.COST_COEFFICIENTS.update(table)
    cases = {}
    for b, m, tr, xs, ks, t in rows:
        cases.setdefault((b, tr, xs, ks), {})[m] = t
    worst = 1.0
    print("\nbackend pass  N  size   k   s   direct ms    fft ms  faster  auto  auto/best")
    for (b, tr, xs, ks), ts in sorted(cases.items()):
        if len(ts) < 2:
            continue
        xp = namespaces()[b]
        pick = methods.resolve_method("auto", xp, xs, ks, train=tr)
        best = min(ts, key=ts.get)
        ratio = ts[pick] / ts[best]
        worst = max(worst, ratio)
        print(f"{b:7s} {'train' if tr else 'pred ':5s} {xs[0]:2d} {xs[2]:4d} "
              f"{ks[0]:3d} {ks[2]:3d} {ts['direct'] * 1e3:10.1f} {ts['fft'] * 1e3:9.1f}"
              f"  {best:6s}  {pick:6s} {ratio:6.2f}")
    print(f"\nworst auto/best ratio: {worst:.2f}")
    print("\nCOST_COEFFICIENTS = {")
    for key, value in sorted(table.items()):
        print(f"    {key!r}: {value!r},")
    print("}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backends", default="numpy,torch",
                        help="comma-separated: numpy, torch")
    parser.add_argument("--sizes", help="N:H pairs to measure, e.g. 2:16,4:64 "
                        "(default 2:16,4:64,8:256)")
    parser.add_argument("--save", help="write the timings to this JSON file")
    parser.add_argument("--load", action="append", help="fit timings saved by "
                        "--save instead of measuring (may be repeated)")
    args = parser.parse_args(argv)
    if args.load:
        rows = []
        for path in args.load:
            with open(path) as f:
                rows += [(b, m, tr, tuple(xs), tuple(ks), t)
                         for b, m, tr, xs, ks, t in json.load(f)]
    else:
        sizes = None
        if args.sizes:
            sizes = [tuple(int(v) for v in pair.split(":"))
                     for pair in args.sizes.split(",")]
        rows = measure(args.quick, args.repeat, args.backends.split(","), sizes)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(rows, f)
    report(rows, fit(rows))


if __name__ == "__main__":
    main()
