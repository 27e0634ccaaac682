"""``arrseg train IMAGE... --labels LABEL... -o MODEL.npz``.

Reads the images and label images (:mod:`arrseg.io`), trains an
:class:`arrseg.Segmenter` with the hyper-parameters given as options (a
tqdm bar shows the iterations and the loss), prints the metrics of
:mod:`arrseg.metrics` on the validation images (or, without them, on the
training pixels), writes the model with :meth:`arrseg.Segmenter.save`
(whole or not at all) and, with ``--plot``, the loss curve as a PNG.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import numpy as np

from ..estimator.settings import (
    DEFAULT_DEPTH,
    DEFAULT_DILATION,
    DEFAULT_MAX_ITER,
    DEFAULT_OPTIMIZER,
    DEFAULT_TOL,
    DEFAULT_WIDTH,
    OPTIMIZERS,
)
from ..estimator.training import DivergenceWarning
from ..io.errors import optional_import
from ..methods import METHODS
from ..network import ACTIVATION_NAMES
from ..numerics.convolution import BOUNDARIES
from ..numerics.residual import LAYERS
from ..io.writers import check_folder
from ._errors import CommandError, report
from . import _options as opt
from ._inputs import read_pairs, to_device
from ._progress import fit_progress

__all__ = ["HYPER_PARAMETERS", "add_parser", "run"]

#: The Segmenter's hyper-parameters as options: (option, parameter, type,
#: help). Defaults are the Segmenter's (None: not passed).
HYPER_PARAMETERS = [
    ("--width", "width", opt.positive, f"k, feature channels (default {DEFAULT_WIDTH})"),
    ("--kernel-size", "kernel_size", opt.odd, "s, odd (default 3)"),
    ("--depth", "depth", opt.non_negative,
     f"residual layers after the first (default {DEFAULT_DEPTH})"),
    ("--dilation", "dilation", opt.dilation,
     "the residual layers' dilations: one integer, a list like 1,2,4 or "
     f"'doubling' (default {DEFAULT_DILATION})"),
    ("--step", "step", opt.positive_number, "h, the residual layers' step (default 1)"),
    ("--layer", "layer", LAYERS, "default residual"),
    ("--layer-kernel-size", "layer_kernel_size", opt.odd,
     "s_r, the residual layers' kernel size (default 3)"),
    ("--activation", "activation", ACTIVATION_NAMES, "default tanh"),
    ("--boundary", "boundary", BOUNDARIES, "default zeros"),
    ("--method", "method", METHODS, "how convolutions are computed (default auto)"),
    ("--optimizer", "optimizer", OPTIMIZERS, f"default {DEFAULT_OPTIMIZER}"),
    ("--iterations", "max_iter", opt.positive,
     f"iterations (epochs; VarPro's outer iterations; default {DEFAULT_MAX_ITER})"),
    ("--learning-rate", "learning_rate", opt.positive_number,
     "step length of sgd and adam (default 0.5 and 0.03)"),
    ("--momentum", "momentum", opt.number, "sgd's momentum (default 0.9)"),
    ("--nesterov", "nesterov", None, "Nesterov momentum for sgd"),
    ("--batch-size", "batch_size", opt.positive, "crops per mini-batch (default 4)"),
    ("--crop-size", "crop_size", opt.positive,
     "side of the random crops (default: whole images up to 512)"),
    ("--weight-decay", "weight_decay", opt.number, "Tikhonov weight (default 1e-4)"),
    ("--smoothness", "smoothness", opt.number, "kernel smoothness weight (default 0)"),
    ("--edge-smoothness", "edge_smoothness", opt.number,
     "edge-aware smoothness of the logits between neighbouring pixels (default "
     "'auto': 1)"),
    ("--class-weight", "class_weight", opt.class_weight,
     "'balanced' or one weight per class, like 1,3,1 (default: none)"),
    ("--classes", "n_classes", opt.positive,
     "number of classes (default: the largest label + 1)"),
    ("--early-stopping", "early_stopping", None,
     "stop when the validation loss stops falling (hold out --validation-fraction "
     "of the labelled pixels, or use --validation-images)"),
    ("--validation-fraction", "validation_fraction", opt.number, "default 0.1"),
    ("--n-iter-no-change", "n_iter_no_change", opt.positive, "default 10"),
    ("--tol", "tol", opt.number, f"default {DEFAULT_TOL:g}"),
    ("--tile-size", "tile_size", opt.positive, "tiles of prediction (default: as needed)"),
    ("--memory-budget", "memory_budget", opt.positive,
     "bytes of one forward pass before tiling (default 512 MiB)"),
    ("--seed", "seed", opt.non_negative, "seed of the initialisation and crops (default 0)"),
]


def _why_stopped(model, caught):
    """Why training ended before ``--iterations``: the divergence warned of
    in ``caught``, else convergence (the patience ran out, or VarPro found
    no lower point: either ends the loop)."""
    if any(issubclass(w.category, DivergenceWarning) for w in caught):
        return "stopped early: the training loss diverged (the warning above)"
    watched = "validation loss" if model.early_stopping else "training objective"
    why = (f"converged: the {watched} fell by less than --tol {model.tol:g} for "
           f"--n-iter-no-change {model.n_iter_no_change} iterations")
    if model.optimizer == "varpro":
        why += ", or VarPro found no step that lowers the training objective"
    return why


def add_parser(sub):
    """Add ``train`` to the subparsers ``sub``; returns its parser."""
    p = sub.add_parser(
        "train", help="train a model on image files and their label images",
        description="Train a Segmenter on images (PNG, TIFF, JPEG, .npy; grey, "
        "RGB or multi-channel) and label images of class indices, and save it.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="training images")
    p.add_argument("--labels", nargs="+", required=True, metavar="LABEL",
                   help="one label image per image, in the same order")
    p.add_argument("-o", "--output", required=True, metavar="MODEL.npz",
                   help="the model file to write")
    p.add_argument("--unlabelled", type=opt.integer, metavar="V",
                   help="the label value of unlabelled pixels (scribbles)")
    p.add_argument("--binary", action="store_true",
                   help="map every non-zero label to class 1 (instance masks)")
    p.add_argument("--validation-images", nargs="+", default=[], metavar="IMAGE")
    p.add_argument("--validation-labels", nargs="+", default=[], metavar="LABEL")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="train with NumPy (cpu, default) or CuPy (gpu)")
    p.add_argument("--plot", metavar="LOSS.png", help="write the loss curve as a PNG")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    group = p.add_argument_group("Segmenter hyper-parameters")
    for flag, name, kind, text in HYPER_PARAMETERS:
        if kind is None:
            group.add_argument(flag, dest=name, action="store_true", default=None,
                               help=text)
        elif isinstance(kind, tuple):
            group.add_argument(flag, dest=name, choices=kind, default=None, help=text)
        else:
            group.add_argument(flag, dest=name, type=kind, default=None, help=text)
    return p


def _hyper_parameters(args):
    return {name: getattr(args, name) for _, name, _, _ in HYPER_PARAMETERS
            if getattr(args, name) is not None}


def _check_output(path):
    if os.path.isdir(path):
        raise CommandError(f"{path}: -o names a folder; give the model file's name")
    check_folder(os.path.dirname(os.path.abspath(path)), create=False)


def _metrics(model, xs, ys, out):
    """Print mean IoU, per-class IoU and pixel accuracy of ``model`` on
    (xs, ys); returns them as a dict."""
    from ..metrics import iou, mean_iou, pixel_accuracy

    n_c, ignore = model.n_classes_, model.ignore_index
    pred = np.concatenate([np.asarray(_host(model.predict(x))).reshape(-1) for x in xs])
    true = np.concatenate([y.reshape(-1) for y in ys])
    scores = {"mean_iou": float(mean_iou(true, pred, n_c, ignore_index=ignore)),
              "iou": [float(v) for v in iou(true, pred, n_c, ignore_index=ignore)],
              "pixel_accuracy": float(pixel_accuracy(true, pred, ignore_index=ignore))}
    print(f"  pixel accuracy  {scores['pixel_accuracy']:.4f}", file=out)
    print(f"  mean IoU        {scores['mean_iou']:.4f}", file=out)
    for j, v in enumerate(scores["iou"]):
        shown = "  (absent)" if np.isnan(v) else f"{v:.4f}"
        print(f"  IoU class {j:<5} {shown}", file=out)
    return scores


def _host(a):
    from .._backend import to_numpy

    return to_numpy(a)


def run(args, out=None):
    """Run ``arrseg train``; returns the exit status."""
    from ..network import DEFAULT_IGNORE_INDEX
    from ..segmenter import Segmenter

    out = sys.stdout if out is None else out
    _check_output(args.output)
    if args.plot:
        optional_import("matplotlib", "--plot")
        check_folder(os.path.dirname(os.path.abspath(args.plot)), create=False)
    if bool(args.validation_images) != bool(args.validation_labels):
        raise CommandError("--validation-images and --validation-labels go together")
    ignore = DEFAULT_IGNORE_INDEX
    label_options = dict(unlabelled=args.unlabelled, binary=args.binary,
                         n_classes=args.n_classes, ignore=ignore)
    xs, ys = read_pairs(args.images, args.labels, **label_options)
    vxs, vys = read_pairs(args.validation_images, args.validation_labels,
                          what="validation ", **label_options)
    if vxs and vxs[0].shape[0] != xs[0].shape[0]:
        raise CommandError(f"{args.validation_images[0]}: has {vxs[0].shape[0]} "
                           f"channel(s) but the training images have {xs[0].shape[0]}")
    dxs, dvxs = to_device(xs, args.device), to_device(vxs, args.device)

    hyper = _hyper_parameters(args)
    model = Segmenter(**hyper)
    n_pixels = sum(int(np.count_nonzero(y != ignore)) for y in ys)
    print(f"arrseg train: {len(xs)} image(s) of {xs[0].shape[0]} channel(s), "
          f"{n_pixels} labelled pixels; {model!r}", file=out, flush=True)
    validation = (dvxs, vys) if vxs else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        model.fit(dxs, ys, validation=validation, progress=fit_progress(args.quiet))
        seconds = time.perf_counter() - start
    for w in caught:
        report(" ".join(str(w.message).split()), "warning")
    print(f"trained {model.n_iter_} iteration(s) in {seconds:.1f} s, final loss "
          f"{model.loss_curve_[-1]:.4g}, {model.n_classes_} classes", file=out)
    if model.n_iter_ < model.max_iter:
        print(f"({_why_stopped(model, caught)})", file=out)
    if vxs:
        print(f"validation ({len(vxs)} image(s)):", file=out)
        _metrics(model, dvxs, vys, out)
    else:
        print("training pixels (no --validation-images):", file=out)
        _metrics(model, dxs, ys, out)
    model.save(args.output)
    print(f"wrote {args.output}", file=out)
    if args.plot:
        from ..figures import loss_curve

        loss_curve(model, args.plot)
        print(f"wrote {args.plot}", file=out)
    return 0
