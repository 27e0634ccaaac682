"""``arrseg predict MODEL.npz IMAGE... -o DIR``.

For each image: read it (:mod:`arrseg.io`), compute the class
probabilities P (n_c, H, W) with :meth:`arrseg.Segmenter.predict_proba` --
in bands of rows for large images, each band grown by the network's
receptive halo so that the kept rows equal the whole image's -- and write
the outputs asked for::

    probabilities   P, float32, a TIFF of n_c pages (or .npy, (n_c, H, W))
    labels          argmax_j P_j, uint8 (uint16 past 256 classes), PNG or TIFF
    overlay         the image tinted by the labels' colours, RGB PNG
    uncertainty     the entropy -sum_j P_j log P_j, float32 TIFF (or .npy)

into the folder ``-o``, under names made from ``--name`` (fields
``{stem}``, ``{output}``, ``{ext}``, ``{index}``). A name is a file name
in that folder, never a path: separators, ``..`` and names that would
overwrite an input are refused before anything is computed. Each file is
written to a temporary name and renamed when complete.

``--zarr``: out of core, each image read and predicted chunk by chunk and
written to Zarr stores (:mod:`arrseg.cli.predict_zarr`).
"""

from __future__ import annotations

import os
import string
import sys

import numpy as np

from ..io import read_image
from ..io.readers import IMAGE_SUFFIXES
from ..io.render import entropy, label_image, overlay
from ..io.writers import check_folder, write_npy, write_png, write_tiff
from . import _options as opt
from . import predict_zarr
from ._errors import CommandError
from ._progress import bar

__all__ = ["OUTPUTS", "add_parser", "band_rows", "predict_bands", "run"]

#: The outputs of ``--output``, in the order they are written.
OUTPUTS = ("probabilities", "labels", "overlay", "uncertainty")
#: The fields of ``--name``.
NAME_FIELDS = ("stem", "output", "ext", "index")
#: A band of rows holds about this many pixels (H * W) by default.
BAND_PIXELS = 2**22


def add_parser(sub):
    """Add ``predict`` to the subparsers ``sub``; returns its parser."""
    p = sub.add_parser(
        "predict", help="segment image files with a trained model",
        description="Segment images with a model written by 'arrseg train' or "
        "Segmenter.save, and write probabilities, labels, overlays or "
        "uncertainty maps into a folder.")
    p.add_argument("model", metavar="MODEL.npz")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output-dir", required=True, metavar="DIR",
                   help="the folder of the results (created if missing)")
    p.add_argument("--output", type=opt.outputs(OUTPUTS),
                   default=["labels", "probabilities"], metavar="LIST",
                   help="comma-separated: probabilities, labels, overlay, uncertainty "
                   "(default labels,probabilities)")
    p.add_argument("--name", default="{stem}_{output}.{ext}", metavar="TEMPLATE",
                   help="file names, from {stem} (the image's name without "
                   "extension), {output}, {ext} and {index} (default "
                   "'{stem}_{output}.{ext}')")
    p.add_argument("--format", choices=("tiff", "npy"), default="tiff",
                   help="of the probabilities and uncertainty (default tiff)")
    p.add_argument("--labels-format", choices=("png", "tiff"), default="png",
                   help="of the label images (default png)")
    p.add_argument("--band-rows", type=opt.positive, metavar="N",
                   help="rows of an image predicted at once (default: bands of "
                   f"about {BAND_PIXELS} pixels)")
    p.add_argument("--zarr", action="store_true",
                   help="out of core: read each IMAGE (a Zarr store, or a TIFF file) "
                   "lazily in chunks, predict it chunk by chunk with Dask and write "
                   "probabilities, labels and uncertainty as Zarr stores (.zarr) "
                   "chunked alike")
    p.add_argument("--chunk", type=opt.positive, metavar="N",
                   help="with --zarr: chunks of N x N pixels, a multiple of the "
                   "input's chunks (default: the input's chunks)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _extension(output, args):
    if getattr(args, "zarr", False):
        return "zarr"
    if output in ("probabilities", "uncertainty"):
        return "tif" if args.format == "tiff" else "npy"
    if output == "labels":
        return "tif" if args.labels_format == "tiff" else "png"
    return "png"


def check_template(template):
    """Refuse a ``--name`` template with unknown fields or conversions."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise CommandError(f"--name {template!r}: {e}") from None
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in NAME_FIELDS:
            raise CommandError(f"--name {template!r}: unknown field {{{field}}}; the "
                               f"fields are {', '.join('{' + f + '}' for f in NAME_FIELDS)}")
        if conversion:
            raise CommandError(f"--name {template!r}: no conversions (!{conversion})")
        if "{" in (spec or ""):
            raise CommandError(f"--name {template!r}: no nested fields")


def output_name(template, **fields):
    """The file name of one output; a CommandError unless it is a plain file
    name (no folder part, not '.' or '..', no NUL, not hidden)."""
    try:
        name = template.format(**fields)
    except (ValueError, KeyError, IndexError) as e:
        raise CommandError(f"--name {template!r}: {e}") from None
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    if (not name or name in (".", "..") or any(s in name for s in seps)
            or "\0" in name or name.startswith(".")):
        raise CommandError(f"--name {template!r} gives {name!r} for "
                           f"{fields['stem']!r}: a name must be a file name inside "
                           "the output folder (no '/', not hidden, not '..')")
    return name


def _plan(args):
    """[(image path, [(output, file path), ...]), ...], checked."""
    check_template(args.name)
    folder = os.path.abspath(args.output_dir)
    protected = {os.path.realpath(p): p for p in [args.model, *args.images]}
    plan, seen = [], {}
    for i, path in enumerate(args.images):
        stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
        files = []
        for output in OUTPUTS:
            if output not in args.output:
                continue
            name = output_name(args.name, stem=stem, output=output,
                               ext=_extension(output, args), index=i)
            target = os.path.join(folder, name)
            real = os.path.realpath(target)
            if real in protected:
                raise CommandError(f"--name {args.name!r} would overwrite the input "
                                   f"{protected[real]}")
            if real in seen:
                raise CommandError(f"--name {args.name!r} gives {name!r} both for "
                                   f"{seen[real]} and for {path}; put {{stem}} or "
                                   "{index}, and {output}, in the template")
            seen[real] = path
            files.append((output, target))
        plan.append((path, files))
    return plan


def _check_inputs(paths):
    for p in paths:
        if not os.path.isfile(p):
            raise CommandError(f"{p}: no such file" if not os.path.exists(p)
                               else f"{p}: not a file")
        if os.path.splitext(p)[1].lower() not in IMAGE_SUFFIXES:
            raise CommandError(f"{p}: unsupported format; arrseg reads "
                               f"{', '.join(IMAGE_SUFFIXES)}")


def receptive_halo_of(model):
    """The fitted model's receptive halo p, in pixels."""
    from ..estimator.settings import check_predict_settings
    from ..numerics.residual import receptive_halo

    params = model.params_
    options = check_predict_settings(model, params.depth).options
    s_r = params.K_layers.shape[-1] if params.depth else 1
    return receptive_halo(int(params.K.shape[-1]), int(s_r), options.dilation,
                          options.layer), options.boundary


def band_rows(H, W, halo, rows=None):
    """Rows per band: ``rows``, or bands of about BAND_PIXELS pixels (at
    least 4 halos high, so that the recomputed halo stays a small part)."""
    if rows is None:
        rows = max(BAND_PIXELS // max(W, 1), 4 * halo, 16)
    return min(rows, H)


def predict_bands(model, x, rows, halo, boundary, to_device, on_band=None):
    """P (n_c, H, W) of one image (C, H, W), ``rows`` rows at a time.

    Each band is grown by ``halo`` rows on both sides (wrapped around for
    the periodic boundary; clipped at the image's edge for zeros, where the
    network's zero padding is the image's own) and only its middle rows
    are kept, so the result equals the whole image's prediction (within
    round-off). ``on_band(rows)`` is called after each band.
    """
    from .._backend import to_numpy

    H = x.shape[1]
    if rows >= H:
        P = to_numpy(model.predict_proba(to_device(x)))
        if on_band is not None:
            on_band(H)
        return P
    P = None
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        if boundary == "periodic":
            band = x[:, np.arange(r0 - halo, r1 + halo) % H]
            top = halo
        else:
            a, b = max(0, r0 - halo), min(H, r1 + halo)
            band, top = x[:, a:b], r0 - a
        Pb = to_numpy(model.predict_proba(to_device(band)))
        if P is None:
            P = np.empty((Pb.shape[0],) + x.shape[1:], dtype=Pb.dtype)
        P[:, r0:r1] = Pb[:, top:top + (r1 - r0)]
        if on_band is not None:
            on_band(r1 - r0)
    return P


def _write(output, path, x, P, n_c, fmt):
    if output == "probabilities":
        P32 = P.astype(np.float32, copy=False)
        if path.endswith(".npy"):
            write_npy(path, P32)
        else:
            write_tiff(path, P32, description="arrseg class probabilities, one page "
                       "per class")
    elif output == "labels":
        labels = label_image(np.argmax(P, axis=0), n_c)
        (write_tiff if path.endswith(".tif") else write_png)(path, labels)
    elif output == "overlay":
        write_png(path, overlay(x, np.argmax(P, axis=0), n_c))
    else:
        u = entropy(P)
        if path.endswith(".npy"):
            write_npy(path, u)
        else:
            write_tiff(path, u, description="arrseg uncertainty: entropy of the class "
                       "probabilities, in nats")


def run(args, out=None):
    """Run ``arrseg predict``; returns the exit status."""
    from ..segmenter import Segmenter
    from ._inputs import to_device

    out = sys.stdout if out is None else out
    if not os.path.isfile(args.model):
        raise CommandError(f"{args.model}: no such model file" if not
                           os.path.exists(args.model) else f"{args.model}: not a file")
    if args.zarr:
        predict_zarr.check_args(args)
        predict_zarr.check_stores(args.images)
    else:
        if args.chunk is not None:
            raise CommandError("--chunk is the chunk size of --zarr; without --zarr "
                               "large images are predicted in bands (--band-rows)")
        _check_inputs(args.images)
    plan = _plan(args)
    check_folder(args.output_dir)
    xp = None
    if args.device == "gpu":
        from ._inputs import gpu_namespace

        xp = gpu_namespace()
    model = Segmenter.load(args.model, xp=xp)
    if args.zarr:
        written = predict_zarr.predict_stores(model, plan, args, xp)
        print(f"wrote {written} Zarr store(s) to {args.output_dir}", file=out)
        return 0
    halo, boundary = receptive_halo_of(model)
    n_c, C = model.n_classes_, model.in_channels_
    files = bar(len(plan), "predict", "file", args.quiet)
    written, done = 0, False
    try:
        for path, targets in plan:
            x = read_image(path)
            if x.shape[0] != C:
                raise CommandError(f"{path}: has {x.shape[0]} channel(s) but the model "
                                   f"{args.model} was trained on images with {C}")
            rows = band_rows(x.shape[1], x.shape[2], halo, args.band_rows)
            bands = None
            if rows < x.shape[1] and not args.quiet:
                bands = bar(x.shape[1], os.path.basename(path), "row", args.quiet,
                            leave=False)
            P = predict_bands(model, x, rows, halo, boundary,
                              lambda a: to_device([a], args.device)[0],
                              None if bands is None else bands.update)
            if bands is not None:
                bands.close()
            for output, target in targets:
                _write(output, target, x, P, n_c, args.format)
                written += 1
            files.update(1)
        done = True
    finally:
        if not done:
            files.leave = False     # an error's one line, without a bar above it
        files.close()
    print(f"wrote {written} file(s) to {args.output_dir}", file=out)
    return 0
