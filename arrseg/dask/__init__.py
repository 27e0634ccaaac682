"""arrseg on Dask arrays: images larger than memory, and data-parallel training.

Imported only on request (``import arrseg.dask``); needs ``dask[array]``,
and ``distributed`` for a cluster, ``zarr`` for stores on disk.

Public names
------------
predict_proba, predict
    The network on a dask array (N, C, H, W), chunk by chunk with the
    receptive field's halo: a lazy dask array chunked like the input in H
    and W (:mod:`arrseg.dask.prediction`).
loss_and_grad
    The mean cross-entropy and its gradient over a dask array, from each
    chunk's un-normalised partial sums combined in a fixed-order tree
    (:mod:`arrseg.dask.gradient`).
ChunkedProblem
    Training data held on a ``dask.distributed`` cluster, with the loss and
    gradient of any parameters over all or some of its blocks
    (:mod:`arrseg.dask.cluster`); ``Segmenter.fit`` on dask arrays trains on
    one (:mod:`arrseg.dask.training`).
open_image, write_zarr
    Lazy reading of Zarr stores and TIFF files (tifffile's ``aszarr``), and
    writing to Zarr with the store's chunks aligned to the dask chunks
    (:mod:`arrseg.dask.storage`).
"""

from __future__ import annotations

import importlib

__all__ = ["ChunkedProblem", "loss_and_grad", "open_image", "predict", "predict_proba",
           "write_zarr"]

# name -> submodule; imported on first use, so that `import arrseg.dask`
# costs nothing and each part needs only what it uses
_WHERE = {
    "predict_proba": "prediction",
    "predict": "prediction",
    "loss_and_grad": "gradient",
    "ChunkedProblem": "cluster",
    "open_image": "storage",
    "write_zarr": "storage",
}


def __getattr__(name):
    if name in _WHERE:
        module = importlib.import_module(f".{_WHERE[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'arrseg.dask' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
