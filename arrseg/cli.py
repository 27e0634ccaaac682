"""The command line: ``python -m arrseg demo``.

``demo`` trains the network on synthetic images by plain gradient descent and
prints the loss falling, with the pixel accuracy of the current model.

Exit status: 0 if the loss fell, 1 if it did not (or if standard output was
closed early, as by ``| head``), 2 for a missing command, an invalid option
or an error of the library (one line ``arrseg: error: ...`` on standard
error, no traceback), 130 on Ctrl-C. Sizes whose arrays would need more than
:data:`DEMO_MEMORY_LIMIT` are refused as invalid options.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from . import __version__
from .data import make_shapes
from .network import ACTIVATION_NAMES, loss_and_grad, predict_proba
from .numerics.convolution import BOUNDARIES
from .params import Params, init_params, params_like

__all__ = ["DEMO_MEMORY_LIMIT", "main"]

#: Bytes the demo's arrays may take, counted at 8 bytes an entry (see
#: :func:`_demo_bytes`); larger sizes are refused as invalid options, before
#: any array is made.
DEMO_MEMORY_LIMIT = 2**30
#: C of the demo's images (RGB).
_CHANNELS = 3


def _parser():
    """The parser of ``python -m arrseg`` and, by command, its subparsers."""
    parser = argparse.ArgumentParser(
        prog="python -m arrseg",
        description="CNN image segmentation on any array API backend.",
    )
    parser.add_argument("--version", action="version", version=f"arrseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="train on synthetic images by gradient descent, print the loss",
        description="Train the one-layer network on synthetic disks and "
        "striped squares by plain gradient descent and print the loss falling.",
    )
    demo.add_argument("--images", type=_positive, default=4, help="N (default 4)")
    demo.add_argument("--size", type=_positive, default=48, help="H = W (default 48)")
    demo.add_argument("--classes", type=_at_least_two, default=3, help="n_c (default 3)")
    demo.add_argument("--width", type=_positive, default=8, help="k (default 8)")
    demo.add_argument("--kernel-size", type=_odd, default=5, help="s, odd (default 5)")
    demo.add_argument("--activation", choices=ACTIVATION_NAMES, default="tanh")
    demo.add_argument("--boundary", choices=BOUNDARIES, default="zeros")
    demo.add_argument("--iterations", type=_positive, default=150,
                      help="gradient steps (default 150)")
    demo.add_argument("--learning-rate", type=_positive_float, default=1.0,
                      help="step length (default 1.0)")
    demo.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    demo.add_argument("--seed", type=_non_negative, default=0)
    demo.add_argument("--every", type=_positive, default=10,
                      help="print every this many iterations (default 10)")
    return parser, {"demo": demo}


def _non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _at_least_two(text):
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2, got {value}")
    return value


def _odd(text):
    value = _positive(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be odd, got {value}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _demo_bytes(images, size, width, classes, kernel_size):
    """Bytes of the demo's arrays, at 8 bytes an entry.

    The arrays: images x (N, C, H, W), labels (N, H, W), features
    (N, k, H, W), probabilities (N, n_c, H, W), kernels (k, C, s, s) and
    classifier (k, n_c). An upper estimate of the peak, which is lower where
    the blocked NumPy path keeps the features in blocks: measured peaks were
    0.2 to 1.0 times this count (plus the interpreter's ~35 MiB). Python
    ints: no overflow.
    """
    N, H, k, n_c, s = images, size, width, classes, kernel_size
    return 8 * (N * H * H * (_CHANNELS + 1 + k + n_c) + k * _CHANNELS * s * s + k * n_c)


#: The options of the demo's sizes, as named on the command line.
_SIZE_OPTIONS = {"images": "--images", "size": "--size", "width": "--width",
                 "classes": "--classes", "kernel_size": "--kernel-size"}


def _gib(n_bytes):
    value = n_bytes / 2**30
    return f"{value:.2g} GiB" if value < 10 else f"{value:,.0f} GiB"


def _check_demo_sizes(parser, args):
    """Refuse (parser.error: exit status 2) sizes whose arrays do not fit."""
    if args.kernel_size > 2 * args.size - 1:
        parser.error(f"argument --kernel-size: must be <= 2 * --size - 1 = "
                     f"{2 * args.size - 1} (a larger kernel's outer taps never "
                     f"meet the image), got {args.kernel_size}")
    sizes = {name: getattr(args, name) for name in _SIZE_OPTIONS}
    n_bytes = _demo_bytes(**sizes)
    if n_bytes > DEMO_MEMORY_LIMIT:
        # name the option whose default would save the most
        defaults = {name: parser.get_default(name) for name in _SIZE_OPTIONS}
        culprit = min(sizes, key=lambda name: _demo_bytes(
            **{**sizes, name: min(sizes[name], defaults[name])}))
        given = ", ".join(f"{option} {sizes[name]}" for name, option in _SIZE_OPTIONS.items())
        parser.error(f"argument {_SIZE_OPTIONS[culprit]}: the demo's arrays ({given}) "
                     f"would need {_gib(n_bytes)}, more than its limit of "
                     f"{_gib(DEMO_MEMORY_LIMIT)}")


def run_demo(args, out=None):
    """Train by gradient descent; return (first loss, last loss)."""
    out = sys.stdout if out is None else out
    x, y = make_shapes(args.images, args.size, args.classes, seed=args.seed,
                       dtype=args.dtype)
    params = init_params(x.shape[1], args.width, args.classes, args.kernel_size,
                         seed=args.seed, dtype=args.dtype)
    opts = dict(activation=args.activation, boundary=args.boundary)
    print(f"arrseg {__version__} demo: N={args.images} C={x.shape[1]} "
          f"H=W={args.size} k={args.width} s={args.kernel_size} "
          f"n_c={args.classes} {args.activation} {args.boundary} {args.dtype}, "
          f"{args.iterations} gradient steps of length {args.learning_rate:g}",
          file=out)
    print(f"{'iter':>6} {'loss':>10} {'accuracy':>9} {'time':>7}", file=out)
    start = time.perf_counter()
    first = last = None
    for it in range(args.iterations + 1):
        loss, grads = loss_and_grad(x, y, params, **opts)
        last = float(loss)
        first = last if first is None else first
        if not np.isfinite(last):
            print(f"loss became {last} at iteration {it}; try a smaller "
                  "--learning-rate", file=out)
            return first, last
        if it % args.every == 0 or it == args.iterations:
            labels = np.argmax(predict_proba(x, params, **opts), axis=1)
            accuracy = float(np.mean(labels == y))
            print(f"{it:>6} {last:>10.4f} {accuracy:>9.3f} "
                  f"{time.perf_counter() - start:>6.1f}s", file=out, flush=True)
        if it < args.iterations:
            params = params_like(params, (None if p is None else p - args.learning_rate * g
                              for p, g in zip(params, grads)))
            if not all(np.all(np.isfinite(p)) for p in params if p is not None):
                print(f"parameters overflowed at iteration {it + 1}; try a "
                      "smaller --learning-rate", file=out)
                return first, float("inf")
    print(f"loss fell from {first:.4f} to {last:.4f}" if last < first
          else f"loss did not fall: {first:.4f} -> {last:.4f}", file=out)
    return first, last


def main(argv=None):
    """Entry point of ``python -m arrseg`` and the ``arrseg`` script.

    Returns the exit status (see the module docstring); invalid options exit
    through argparse (SystemExit with status 2).
    """
    try:
        status = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except BrokenPipeError:
        # the reader went away (python -m arrseg demo | head -1): as the
        # Python docs advise (signal module, note on SIGPIPE), point stdout
        # at /dev/null so that the flush at exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130  # 128 + SIGINT, as a shell reports it; no traceback
    except (ValueError, TypeError, MemoryError) as error:
        print(f"arrseg: error: {_one_line(error)}", file=sys.stderr)
        return 2


def _one_line(error):
    text = " ".join(str(error).split())
    if isinstance(error, MemoryError):
        return f"out of memory ({text})" if text else "out of memory"
    return text or type(error).__name__


def _run(argv):
    parser, commands = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "demo":
        _check_demo_sizes(commands["demo"], args)
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported
            first, last = run_demo(args)
        return 0 if last < first else 1
    return 2  # pragma: no cover - argparse refuses unknown commands
