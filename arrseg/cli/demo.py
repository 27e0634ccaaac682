"""``arrseg demo [--out DIR]``: train on the embedded texture mosaics.

Makes images with :func:`arrseg.data.make_textures` (flat background,
horizontal and vertical stripes of one colour, dots; noise and an
illumination ramp), trains an :class:`arrseg.Segmenter` with two residual
layers on all but the last two, and prints the metrics of
:mod:`arrseg.metrics` on those two held-out images. With ``--out`` it writes
PNGs of the first held-out image::

    input.png            the image
    ground_truth.png     its true classes, in the class colours
    probability_J.png    P_J, one per class, with a colour bar
    labels.png           the predicted classes, in the class colours
    overlay.png          the image tinted by the predicted classes
    loss_curve.png       the training loss per iteration
    panel.png            input, ground truth, prediction and overlay side by side

Nothing is downloaded; the default run takes a few seconds on two cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from ..network import ACTIVATION_NAMES
from ..numerics.convolution import BOUNDARIES
from . import _options as opt
from ._progress import fit_progress

__all__ = ["add_parser", "run"]

#: Images held out of training.
HELD_OUT = 2


def _bounded(low, high):
    def parse(text):
        value = opt.integer(text, low)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value
    return parse


def add_parser(sub):
    """Add ``demo`` to the subparsers ``sub``; returns its parser."""
    p = sub.add_parser(
        "demo", help="train on built-in texture images, print held-out metrics",
        description="Train a Segmenter on synthetic texture mosaics (classes that "
        "differ by texture and orientation, not colour), print the metrics on "
        "held-out images and, with --out, write PNGs of the results.")
    p.add_argument("--out", metavar="DIR", help="write the PNGs into this folder")
    p.add_argument("--images", type=_bounded(HELD_OUT + 1, 64), default=6,
                   help=f"images made, the last {HELD_OUT} held out (default 6)")
    p.add_argument("--size", type=_bounded(16, 1024), default=96,
                   help="H = W (default 96)")
    p.add_argument("--iterations", type=_bounded(1, 100000), default=60,
                   help="training iterations (default 60)")
    p.add_argument("--width", type=_bounded(1, 256), default=12, help="k (default 12)")
    p.add_argument("--depth", type=_bounded(0, 12), default=2,
                   help="residual layers, dilations 1, 2, 4, ... (default 2)")
    p.add_argument("--classes", type=_bounded(2, 4), default=4,
                   help="n_c, the first of background, horizontal stripes, vertical "
                   "stripes, dots (default 4)")
    p.add_argument("--kernel-size", type=opt.odd, default=5, help="s, odd (default 5)")
    p.add_argument("--activation", choices=ACTIVATION_NAMES, default="tanh")
    p.add_argument("--boundary", choices=BOUNDARIES, default="zeros")
    p.add_argument("--optimizer", choices=("varpro", "adam", "sgd"), default="varpro",
                   help="the Segmenter's optimizer (default varpro)")
    p.add_argument("--learning-rate", type=opt.positive_number, default=None,
                   help="Adam's or SGD's step length (default: the Segmenter's; "
                   "VarPro needs none)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--seed", type=opt.non_negative, default=0)
    p.add_argument("--every", type=opt.positive, metavar="N",
                   help="print the loss of every N-th iteration")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _write_pictures(folder, x, y, P, model, n_c, names, out):
    from ..figures import loss_curve, probability_map
    from ..io.render import class_colours, display_rgb, overlay
    from ..io.writers import write_png

    colours = class_colours(n_c)
    labels = np.argmax(P, axis=0)
    files = {"input.png": display_rgb(x), "ground_truth.png": colours[y],
             "labels.png": colours[labels], "overlay.png": overlay(x, labels, n_c)}
    for name, picture in files.items():
        write_png(os.path.join(folder, name), picture)
    for j in range(n_c):
        probability_map(P[j], os.path.join(folder, f"probability_{j}.png"),
                        title=f"P_{j}: {names[j]}")
    loss_curve(model, os.path.join(folder, "loss_curve.png"))
    _panel(os.path.join(folder, "panel.png"), files, names, colours)
    written = [*files, *(f"probability_{j}.png" for j in range(n_c)), "loss_curve.png",
               "panel.png"]
    print(f"wrote {len(written)} PNG files to {folder}: {', '.join(written)}", file=out)


def _panel(path, files, names, colours):
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from ..figures import _save

    fig = Figure(figsize=(12, 3.4))
    titles = {"input.png": "input", "ground_truth.png": "ground truth",
              "labels.png": "prediction", "overlay.png": "overlay"}
    for i, (name, title) in enumerate(titles.items()):
        ax = fig.add_subplot(1, 4, i + 1)
        ax.imshow(files[name], interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    fig.legend(handles=[Patch(color=c / 255, label=n) for c, n in zip(colours, names)],
               loc="lower center", ncol=len(names), frameon=False)
    _save(fig, path, 100)


def run(args, out=None):
    """Run ``arrseg demo``; returns the exit status."""
    from ..data import TEXTURE_CLASSES, make_textures
    from ..io.errors import optional_import
    from ..io.writers import check_folder
    from ..metrics import iou, mean_iou, pixel_accuracy
    from ..segmenter import Segmenter

    out = sys.stdout if out is None else out
    if args.out is not None:
        optional_import("matplotlib", "demo --out")
        optional_import("PIL.Image", "demo --out")
        check_folder(args.out)
    n_c = args.classes
    names = TEXTURE_CLASSES[:n_c]
    x, y = make_textures(args.images, args.size, n_c, seed=args.seed, dtype=args.dtype)
    n_train = args.images - HELD_OUT
    model = Segmenter(width=args.width, kernel_size=args.kernel_size, depth=args.depth,
                      dilation="doubling", activation=args.activation,
                      boundary=args.boundary, max_iter=args.iterations,
                      optimizer=args.optimizer, learning_rate=args.learning_rate,
                      seed=args.seed)
    print(f"arrseg demo: {args.images} texture mosaics of {args.size} x {args.size} "
          f"pixels ({n_train} for training, {HELD_OUT} held out), classes: "
          f"{', '.join(names)}; {model!r}", file=out, flush=True)
    start = time.perf_counter()
    model.fit(x[:n_train], y[:n_train], progress=fit_progress(args.quiet))
    seconds = time.perf_counter() - start
    P = np.asarray(model.predict_proba(x[n_train:]))
    pred, true = np.argmax(P, axis=1), y[n_train:]
    if args.every:
        print(f"{'iter':>6} {'loss':>10}", file=out)
        for it, loss in enumerate(model.loss_curve_, start=1):
            if it % args.every == 0 or it in (1, model.n_iter_):
                print(f"{it:>6} {loss:>10.4f}", file=out)
    print(f"trained {model.n_iter_} iterations in {seconds:.1f} s; loss "
          f"{model.loss_curve_[0]:.4f} -> {model.loss_curve_[-1]:.4f}", file=out)
    print(f"held-out images: pixel accuracy {float(pixel_accuracy(true, pred)):.3f}, "
          f"mean IoU {float(mean_iou(true, pred, n_c)):.3f}", file=out)
    for name, v in zip(names, iou(true, pred, n_c)):
        print(f"  IoU {name:<20} {float(v):.3f}", file=out)
    if args.out is not None:
        _write_pictures(args.out, x[n_train], true[0], P[0], model, n_c, names, out)
    return 0
