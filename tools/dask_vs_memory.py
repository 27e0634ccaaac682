"""arrseg's Dask paths against the same work in memory, side by side, in one process.

The contenders of ``asv_benchmarks/benchmarks/dask_paths.py`` (its module
docstring gives the network and the data; asv's ``DaskPredict`` and
``DaskGradient`` time them one by one):

==================  ============================================  =================
case                Dask contender                                 goal (issue 14)
==================  ============================================  =================
predict threads     ``arrseg.dask.predict_proba(x).compute()``,   <= 1.3x in memory
                    threaded scheduler, 2 threads
predict 2 procs     the same on a 2-process ``LocalCluster``,     (none)
                    the image made on the workers, P brought back
gradient 2 procs    ``arrseg.dask.loss_and_grad`` on the cluster,  <= 2x in memory
                    the data persisted on the workers
problem 2 procs     ``ChunkedProblem.loss_and_grad``: the haloed   <= 2x in memory
                    blocks kept on the workers (one training step)
==================  ============================================  =================

each against :func:`arrseg.predict_proba` or :func:`arrseg.loss_and_grad`
on the NumPy arrays (the blocked NumPy path on every core). Prediction is of
one image 3 x 4096 x 4096 in 1024 x 1024 chunks, the gradient over 16 images
of 3 x 512 x 512, one chunk each; the network is the Segmenter's default
(k = 8, 3 residual layers with dilations 1, 2, 4, n_c = 2, float32).

Per case: the two results are compared first (max |P difference|; |loss
difference| and max |gradient difference|), then each contender is called
``--warmup`` times, then ``--repeat`` times, the two taking turns (the order
alternating), one timed call per turn; the table gives the medians, their
ratio, the goal and whether it is met. The machine's load average before
the run is printed: other processes on the cores make the figures noisy. The LocalCluster (2 worker processes of 1 thread, loopback) is
started once, before the timings. A case that fails is reported
("failed", traceback on stderr) and the others still run; the exit status
is then 1. Goals not met do not change the exit status.

Run from the repository root::

    python tools/dask_vs_memory.py                 # the issue's sizes, ~2 min
    python tools/dask_vs_memory.py --repeat 5 --markdown
    python tools/dask_vs_memory.py --quick         # smoke run, small sizes
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time
import traceback

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "asv_benchmarks"))

from benchmarks import dask_paths as paths  # noqa: E402
from side_by_side import format_table  # noqa: E402

import arrseg  # noqa: E402

#: name -> (kind, dask contender's path, what it is, goal ratio or None)
CASES = {
    "predict threads": ("predict", "dask-threads",
                        "arrseg.dask.predict_proba, threaded scheduler, 2 threads", 1.3),
    "predict 2 procs": ("predict", "dask-2-processes",
                        "arrseg.dask.predict_proba, 2-process LocalCluster", None),
    "gradient 2 procs": ("gradient", "dask-2-processes",
                         "arrseg.dask.loss_and_grad, 2-process LocalCluster", 2.0),
    "problem 2 procs": ("gradient", "problem-2-processes",
                        "ChunkedProblem.loss_and_grad, 2-process LocalCluster", 2.0),
}


def agreement(kind, ours, reference):
    """How far the Dask result is from the in-memory one, as a short text."""
    if kind == "predict":
        return f"max |dP| {float(np.abs(ours - reference).max()):.1e}"
    (loss, grad), (ref_loss, ref_grad) = ours, reference
    return (f"|dloss| {abs(loss - ref_loss):.1e}, max |dgrad| "
            f"{float(np.abs(grad - ref_grad).max()):.1e}")


def time_pair(contenders, args):
    """Median seconds of each of the two contenders, taking turns."""
    samples = [[], []]
    for c in contenders:
        for _ in range(args.warmup):
            c()
    for r in range(args.repeat):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for i in order:
            start = time.perf_counter()
            contenders[i]()
            samples[i].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def run_case(name, args, cluster, data):
    """(in-memory s, dask s, agreement) of one case."""
    kind, path, _, _ = CASES[name]
    if kind == "predict":
        make, config = paths.predict_contender, args.predict
    else:
        make, config = paths.gradient_contender, args.gradient
    memory = make("in-memory", config, None, data.get(kind))
    data.setdefault(kind, memory.x if kind == "predict" else (memory.x, memory.labels))
    contender = make(path, config, cluster, data[kind])
    try:
        agree = agreement(kind, contender(), memory())
        seconds = time_pair((memory, contender), args)
    finally:
        contender.close()
        memory.close()
    return seconds[0], seconds[1], agree


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated, of: {', '.join(CASES)} (default all)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed calls of each contender, in turns (default 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls of each before timing (default 1)")
    parser.add_argument("--markdown", action="store_true", help="a GitHub markdown table")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 512 x 512 in 256 x 256 chunks, 4 images of "
                             "128 x 128, one timed call each, no warm-up")
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown or not args.cases:
        parser.error(f"--cases must name some of {', '.join(CASES)}, got {unknown or '[]'}")
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    args.predict, args.gradient = paths.PREDICT, paths.GRADIENT
    if args.quick:
        args.predict, args.gradient = paths.QUICK_PREDICT, paths.QUICK_GRADIENT
        args.repeat, args.warmup = 1, 0
    return args


def header(args):
    import dask
    import distributed

    threads = os.environ.get("ARRSEG_NUM_THREADS", f"unset: {os.cpu_count()} CPUs")
    return [
        (f"arrseg {arrseg.__version__} in memory (NumPy {np.__version__}, "
         f"ARRSEG_NUM_THREADS={threads}) vs arrseg.dask (dask {dask.__version__}, "
         f"distributed {distributed.__version__})"),
        (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
         f"{platform.python_version()}"),
        (f"network: C=3 k={paths.WIDTH} n_c={paths.N_CLASSES} s={paths.KERNEL_SIZE}, "
         f"{paths.DEPTH} residual layers (dilations 1, 2, 4), tanh, zeros, float32"),
        f"predict: {args.predict.describe()}; gradient: {args.gradient.describe()}",
        (f"medians of {args.repeat} call(s) each, taking turns, after {args.warmup} "
         f"warm-up call(s)"
         + ("; --quick: small sizes, the goals are for the full ones" if args.quick
            else "")),
    ]


def main(argv=None):
    args = parse_args(argv)
    try:
        paths.require_dask()
    except NotImplementedError as e:
        sys.exit(f"dask_vs_memory.py: {e}")
    started = time.perf_counter()
    load_before = os.getloadavg()
    cluster = None
    if any(CASES[c][1].endswith("-processes") for c in args.cases):
        cluster = paths.Cluster()
    results, data = {}, {}
    try:
        for name in args.cases:
            try:
                results[name] = run_case(name, args, cluster, data)
            except Exception:  # report it and go on with the other cases
                traceback.print_exc()
                results[name] = None
            print(f"{name} {'done' if results[name] else 'FAILED'} "
                  f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    finally:
        if cluster is not None:
            cluster.close()

    rows = []
    for name, result in results.items():
        _, _, what, goal = CASES[name]
        goal_text = "-" if goal is None else f"<= {goal:g}x"
        if result is None:
            rows.append([name, "failed", "failed", "-", goal_text, "-", "-"])
            continue
        memory_s, dask_s, agree = result
        ratio = dask_s / memory_s
        met = "-" if goal is None else ("met" if ratio <= goal else "not met")
        rows.append([name, f"{memory_s:.3f}", f"{dask_s:.3f}", f"{ratio:.2f}",
                     goal_text, met, agree])
    out = header(args) + ["", format_table(
        ["case", "in-memory s", "dask s", "dask / in-memory", "goal", "met",
         "agreement"], rows, args.markdown), ""]
    out += [f"{name}: {CASES[name][2]}" for name in results]
    out += ["", (f"Load average (1 min) before the run {load_before[0]:.2f} (above 0.5: "
                 f"other work shared the cores); total "
                 f"{time.perf_counter() - started:.0f} s.")]
    print("\n".join(out))
    if None in results.values():
        sys.exit(1)


if __name__ == "__main__":
    main()
