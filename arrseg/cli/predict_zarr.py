"""``arrseg predict --zarr``: images larger than memory, out of core.

Each IMAGE is a Zarr store or a TIFF file, read lazily in its chunks (or
``--chunk N`` pixels, a multiple of them) by :func:`arrseg.dask.open_image`;
the model predicts it chunk by chunk with Dask's threaded scheduler (each
chunk with its receptive halo, so the result equals the whole image's), and
the probabilities, labels and uncertainty are written as Zarr stores
(``.zarr``) whose chunks equal the dask chunks
(:func:`arrseg.dask.write_zarr`), all from one pass over the image. A bar
counts the tasks. Each store is written under a temporary name and renamed
when complete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil

import numpy as np

from ..io.render import entropy, label_image
from ._errors import CommandError
from ._progress import bar

__all__ = ["ZARR_OUTPUTS", "check_args", "check_stores", "predict_stores"]

#: The outputs written with ``--zarr`` (an overlay is a picture, not a store).
ZARR_OUTPUTS = ("probabilities", "labels", "uncertainty")



def check_args(args):
    other = [o for o in args.output if o not in ZARR_OUTPUTS]
    if other:
        raise CommandError(f"--output {other[0]}: not written with --zarr (an overlay "
                           "is a picture of the whole image); --zarr writes "
                           f"{', '.join(ZARR_OUTPUTS)}")
    if args.band_rows is not None:
        raise CommandError("--band-rows is for in-memory prediction; with --zarr the "
                           "image is predicted in chunks (--chunk)")


def check_stores(paths):
    from ..dask.storage import TIFF_SUFFIXES

    for p in paths:
        tiff = os.path.splitext(p.rstrip("/"))[1].lower() in TIFF_SUFFIXES
        if not os.path.exists(p):
            raise CommandError(f"{p}: no such file or Zarr store")
        if tiff and not os.path.isfile(p):
            raise CommandError(f"{p}: not a file")
        if not tiff and not os.path.isdir(p):
            raise CommandError(f"{p}: --zarr reads Zarr stores (folders) and TIFF "
                               f"files ({', '.join(TIFF_SUFFIXES)})")


def _entropy_blocks(P):
    """The entropy of each pixel of P chunks (n_c, h, w) or (n, n_c, h, w)."""
    if P.ndim == 3:
        return entropy(P)
    return np.stack([entropy(p) for p in P])


def _lazy_outputs(P, n_c, wanted):
    """{output: lazy array} of P (..., n_c, H, W), one chunk along classes."""
    import dask.array as da

    axis = P.ndim - 3
    P = P.rechunk({axis: -1})
    arrays = {}
    if "probabilities" in wanted:
        arrays["probabilities"] = P.astype(np.float32)
    if "labels" in wanted:
        dtype = label_image(np.zeros(0, np.int64), n_c).dtype    # uint8 or uint16
        arrays["labels"] = da.argmax(P, axis=axis).astype(dtype)
    if "uncertainty" in wanted:
        arrays["uncertainty"] = P.map_blocks(_entropy_blocks, drop_axis=axis,
                                             dtype=np.float32)
    return arrays


class _TaskBar:
    """A dask callback that drives a progress bar over the tasks of a compute."""

    def __init__(self, desc, quiet):
        from dask.callbacks import Callback

        self.desc, self.quiet, self.bar = desc, quiet, None
        outer = self

        class _Callback(Callback):
            def _start_state(self, dsk, state):
                total = sum(len(state[k]) for k in ("ready", "waiting", "running",
                                                    "finished"))
                outer.bar = bar(total, outer.desc, "task", outer.quiet, leave=False)

            def _posttask(self, key, result, dsk, state, worker_id):
                outer.bar.update(1)

        self.callback = _Callback()

    def __enter__(self):
        self.callback.__enter__()
        return self

    def __exit__(self, *exc):
        self.callback.__exit__(*exc)
        if self.bar is not None:
            self.bar.close()


def _compute(writes, desc, quiet):
    """Run the delayed writes of one image in one pass, with a task bar."""
    import dask

    with _TaskBar(desc, quiet):
        dask.compute(*writes, scheduler="threads")


@contextlib.contextmanager
def _stores(targets):
    """Temporary store paths beside ``targets``, renamed to them on success
    (replacing what was there); removed on any error or Ctrl-C."""
    tmps = []
    for t in targets:
        folder, name = os.path.split(t)
        tmps.append(os.path.join(folder, f".{name}.{secrets.token_hex(4)}.part"))
    try:
        yield tmps
        for tmp, target in zip(tmps, targets):
            old = None
            if os.path.lexists(target):
                old = f"{tmp[:-5]}.old"
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                (shutil.rmtree if os.path.isdir(old) else os.unlink)(old)
    except BaseException as e:
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            reason = e.strerror or " ".join(str(e).split()) or type(e).__name__
            raise CommandError(f"{targets[0]}: cannot write ({reason})") from None
        raise


def predict_stores(model, plan, args, xp):
    """--zarr: each image read lazily, predicted by chunks, written to Zarr;
    returns the number of stores written."""
    from .._backend import to_numpy
    from ..dask.storage import open_image, write_zarr

    n_c, C = model.n_classes_, model.in_channels_
    files = bar(len(plan), "predict", "file", args.quiet)
    written, done = 0, False
    try:
        for path, targets in plan:
            x = open_image(path, chunks=args.chunk)      # lazy, metadata only
            if x.ndim == 2:
                x = x[None]                              # (1, H, W)
            if x.shape[-3] != C:
                raise CommandError(f"{path}: has {x.shape[-3]} channel(s) but the "
                                   f"model {args.model} was trained on images with {C}")
            if xp is not None:                           # chunks onto the GPU
                x = x.map_blocks(xp.asarray, dtype=x.dtype,
                                 meta=xp.empty((0,) * x.ndim, dtype=x.dtype))
            P = model.predict_proba(x)                   # lazy, chunked like x
            arrays = _lazy_outputs(P, n_c, [o for o, _ in targets])
            if xp is not None:                           # back to host memory
                arrays = {k: a.map_blocks(to_numpy, dtype=a.dtype,
                                          meta=np.empty((0,) * a.ndim, a.dtype))
                          for k, a in arrays.items()}
            with _stores([t for _, t in targets]) as tmps:
                writes = [write_zarr(arrays[o], tmp, compute=False)
                          for (o, _), tmp in zip(targets, tmps)]
                _compute(writes, os.path.basename(path.rstrip("/")), args.quiet)
            written += len(targets)
            files.update(1)
        done = True
    finally:
        if not done:
            files.leave = False
        files.close()
    return written
