"""arrseg against PyTorch on the seed configuration and its variants, in one process.

Three contenders compute the same network on the same data
(``benchmarks/common.py``: ``make_problem`` and ``TorchNetwork``):

- arrseg on NumPy arrays, ``method=--method``;
- PyTorch (CPU, eager) with images and kernels in NCHW layout;
- PyTorch with images and kernels in channels_last layout.

For ``loss_and_grad`` (fwd+bwd: PyTorch's cross_entropy and autograd.grad in
(K, b, W, c)) and ``predict_proba`` (predict: PyTorch's forward and softmax
under ``torch.inference_mode``), the contenders take turns in three rounds,
the order rotating from round to round; in each turn a contender is called
``--warmup`` times and then ``--repeat`` times back to back, timed. The
tables give the medians of the timed calls, and the ratio of arrseg's median
to the faster PyTorch layout's (above 1: arrseg is slower). Calls are timed
back to back, as in a training loop, rather than alternating call by call:
PyTorch's OpenMP threads keep spinning for a while after each call, and on
this 2-core machine that slowed the next contender's call by about 15%.

Peak memory of intermediates (unless ``--no-memory``, Linux only): before
anything is timed, each contender, configuration and function runs in a
fresh process forked from this one (which has imported PyTorch but run
nothing). The child calls the function once on a tiny problem (thread
pools, code pages), creates the data, returns freed heap memory to the OS
(glibc's ``malloc_trim``) and resets its peak RSS to the current RSS
(``/proc/self/clear_refs``), calls the function once and reports its peak
RSS (``VmHWM``) minus the RSS just before the call: the memory the call
held at its peak beyond the inputs, its result included, as the kernel
counts it (resident pages that were touched).

Thread counts change the results and are printed in the header: PyTorch's
(``--threads``, else its default), arrseg's NumPy path (``ARRSEG_NUM_THREADS``,
else the CPU count), and the BLAS/OpenMP variables (``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``), which this script reads but
never sets or unsets: set them on the command line to compare settings.

Run from anywhere, with arrseg and PyTorch installed::

    python asv_benchmarks/side_by_side.py                 # every configuration
    python asv_benchmarks/side_by_side.py --configs seed,s=7 --repeat 15 --markdown
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks.common import (
    CONFIGS,
    MEMORY_FORMATS,
    SEED_CONFIG,
    TorchNetwork,
    make_problem,
    reset_peak_rss,
    torch,
)

import arrseg
import arrseg.network

#: Contender names, in table order; arrseg first.
CONTENDERS = ("arrseg",) + tuple(f"torch {fmt}" for fmt in MEMORY_FORMATS)
#: (method name, table title)
FUNCTIONS = (
    ("loss_and_grad", "fwd+bwd (loss_and_grad; PyTorch: cross_entropy + autograd.grad)"),
    ("predict_proba", "predict (predict_proba; PyTorch: forward + softmax under inference_mode)"),
)
ENV_VARIABLES = ("ARRSEG_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                 "MKL_NUM_THREADS")


class ArrsegNetwork:
    """arrseg on NumPy arrays: the same interface as ``TorchNetwork``."""

    def __init__(self, config, method):
        self.x, self.labels, self.theta = make_problem(np, config)
        self.method = method

    def predict_proba(self):
        return arrseg.predict_proba(self.x, self.theta, method=self.method)

    def loss_and_grad(self):
        return arrseg.loss_and_grad(self.x, self.labels, self.theta,
                                    method=self.method)


def make_contender(name, config, method):
    if name == "arrseg":
        return ArrsegNetwork(config, method)
    return TorchNetwork(config, name.removeprefix("torch "))


def parse_args(argv=None):
    methods = getattr(arrseg.network, "METHODS", ("auto",))
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Configurations: " + "; ".join(
            f"{name}: {config.describe()}" for name, config in CONFIGS.items()),
    )
    parser.add_argument(
        "--configs", default=",".join(CONFIGS),
        help=f"comma-separated configurations (default: all of {', '.join(CONFIGS)})")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed calls per turn; 3 turns each, the median of "
                             "all is reported (default 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls at the start of each turn (default 1)")
    parser.add_argument("--method", default="auto", choices=methods,
                        help="arrseg's method= (default auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: PyTorch's default)")
    parser.add_argument("--markdown", action="store_true",
                        help="print GitHub markdown tables (default: aligned text)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory measurement")
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or not args.configs:
        parser.error(f"--configs must name some of {', '.join(CONFIGS)}; got "
                     f"{', '.join(unknown) or 'none'}")
    if args.repeat < 1 or args.warmup < 0:
        parser.error(f"--repeat must be >= 1 and --warmup >= 0; got "
                     f"{args.repeat} and {args.warmup}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def progress(message):
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- memory

def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _memory_child(conn, name, config, function, method, threads):
    """In a forked process: bytes of peak RSS above the RSS before one call."""
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        getattr(make_contender(name, config._replace(n_images=1, size=16),
                               method), function)()
        contender = make_contender(name, config, method)
        gc.collect()
        # freed heap back to the OS; peak RSS := RSS
        if not reset_peak_rss():
            raise OSError("cannot reset the peak RSS (/proc/self/clear_refs)")
        before = _status_kib("VmRSS")
        result = getattr(contender, function)()
        peak = _status_kib("VmHWM")
        del result
        conn.send((peak - before) * 1024)
    except Exception as e:  # noqa: BLE001  (reported, not raised: the timings still run)
        conn.send(f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def measure_memory(args):
    """{(config, function, contender): bytes, or None where not measurable}."""
    if not sys.platform.startswith("linux"):
        progress("peak memory: needs Linux (/proc); skipped")
        return {}
    context = multiprocessing.get_context("fork")
    memory = {}
    for config_name in args.configs:
        for function, _ in FUNCTIONS:
            for name in CONTENDERS:
                receive, send = context.Pipe(duplex=False)
                child = context.Process(target=_memory_child, args=(
                    send, name, CONFIGS[config_name], function, args.method,
                    args.threads))
                child.start()
                send.close()
                try:
                    value = receive.recv()
                except EOFError:
                    value = None
                child.join()
                if value is None:
                    value = f"the child died (exit code {child.exitcode})"

                if isinstance(value, str):
                    progress(f"peak memory of {name} {function} {config_name}: {value}")
                    value = None
                memory[config_name, function, name] = value
        progress(f"peak memory: {config_name} done")
    return memory


# ---------------------------------------------------------------- timing

#: Turns each contender takes (see the module docstring).
ROUNDS = 3

def time_config(config, args):
    """{(function, contender): median seconds} for one configuration."""
    contenders = {name: make_contender(name, config, args.method)
                  for name in CONTENDERS}
    medians = {}
    for function, _ in FUNCTIONS:
        calls = {name: getattr(c, function) for name, c in contenders.items()}
        samples = {name: [] for name in calls}
        names = list(calls)
        for r in range(ROUNDS):
            for name in names[r % len(names):] + names[:r % len(names)]:
                for _ in range(args.warmup):
                    calls[name]()
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    calls[name]()
                    samples[name].append(time.perf_counter() - start)
        for name, s in samples.items():
            medians[function, name] = statistics.median(s)
    return medians


# ---------------------------------------------------------------- output

def format_table(header, rows, markdown):
    """Right-aligned columns but the first; GitHub markdown or plain text."""
    cells = [header] + rows
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        padded = [cell.ljust(w) if i == 0 else cell.rjust(w)
                  for i, (cell, w) in enumerate(zip(row, widths))]
        return ("| " + " | ".join(padded) + " |") if markdown else "  ".join(padded)

    rule = ("|" + "|".join("-" * (w + 1) + (":" if i else "-")
                           for i, w in enumerate(widths)) + "|"
            if markdown else "  ".join("-" * w for w in widths))
    return "\n".join([line(header), rule] + [line(row) for row in rows])


def timing_rows(timings, function):
    rows = []
    for config_name, medians in timings.items():
        ms = {name: 1e3 * medians[function, name] for name in CONTENDERS}
        torch_names = CONTENDERS[1:]
        faster = min(torch_names, key=ms.__getitem__)
        ratio = ms["arrseg"] / ms[faster]
        rows.append([config_name] + [f"{ms[name]:.1f}" for name in CONTENDERS]
                    + [f"{ratio:.2f} ({faster.removeprefix('torch ')})"])
    return rows


def memory_rows(memory, configs):
    rows = []
    for config_name in configs:
        for function, _ in FUNCTIONS:
            values = [memory.get((config_name, function, name)) for name in CONTENDERS]
            rows.append([config_name, function] + [
                "n/a" if v is None else f"{v / 2**20:.0f}" for v in values])
    return rows


def header_lines(args):
    env = ", ".join(f"{v}={os.environ.get(v, 'unset')}" for v in ENV_VARIABLES)
    return [
        (f"arrseg {arrseg.__version__} (NumPy {np.__version__}, "
         f"method={args.method!r}) vs PyTorch {torch.__version__} (CPU, eager, "
         f"{torch.get_num_threads()} threads, "
         f"{'--threads' if args.threads else 'default'})"),
        (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
         f"Python {platform.python_version()}; {env}"),
        (f"Medians of {ROUNDS} x {args.repeat} calls, back to back in "
         f"{ROUNDS} rotating turns per contender, {args.warmup} warm-up "
         f"call(s) per turn, one process. seed: {SEED_CONFIG.describe()}; the "
         f"others change one setting (k = width, s = kernel size)."),
    ]


def main(argv=None):
    args = parse_args(argv)
    if torch is None:
        sys.exit("side_by_side.py needs PyTorch (pip install torch)")
    started = time.perf_counter()
    # First, while this process has run no PyTorch or arrseg computation
    # (no thread pools to break by forking).
    memory = measure_memory(args) if args.memory else {}
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    timings = {}
    for config_name in args.configs:
        timings[config_name] = time_config(CONFIGS[config_name], args)
        progress(f"timings: {config_name} done "
                 f"({time.perf_counter() - started:.0f} s)")

    out = header_lines(args)
    for function, title in FUNCTIONS:
        out += ["", f"{title}, ms:", "", format_table(
            ["config"] + [f"{name} ms" for name in CONTENDERS]
            + ["arrseg / faster torch"],
            timing_rows(timings, function), args.markdown)]
    if memory:
        out += ["", ("Peak memory of the intermediates of one call (peak RSS "
                     "minus RSS before the call, inputs created first; each in "
                     "a fresh forked process), MiB:"), "", format_table(
                    ["config", "function"] + list(CONTENDERS),
                    memory_rows(memory, args.configs), args.markdown)]
    out += ["", f"Total {time.perf_counter() - started:.0f} s."]
    print("\n".join(out))


if __name__ == "__main__":
    main()
