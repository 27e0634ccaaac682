"""Peak memory (tracemalloc) of store-to-store prediction as the image grows.

A 3 x H x 768 float32 Zarr store in 256 x 256 chunks is written to a
temporary folder; a small Segmenter (width 8, the default depth) predicts it
chunk by chunk (:mod:`arrseg.dask`) and the probabilities are written to a
second store (:func:`arrseg.dask.write_zarr`). The peak of Python and NumPy
allocations during the prediction and write is printed per height.
docs/dask.rst quotes::

    python tools/dask_memory_growth.py --heights 3072 6144 12288 --scheduler sync
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import tracemalloc

import numpy as np


def peak_mib(height, scheduler, folder):
    """Peak MiB of predicting a 3 x height x 768 store to another store."""
    import dask
    import zarr

    import arrseg
    from arrseg.dask import open_image, write_zarr

    source = os.path.join(folder, f"in-{height}.zarr")
    z = zarr.create_array(source, shape=(3, height, 768), chunks=(3, 256, 256),
                          dtype="f4")
    rng = np.random.default_rng(0)
    for r in range(0, height, 256):                 # written a row of chunks at a time
        z[:, r:r + 256] = rng.random((3, min(256, height - r), 768), dtype=np.float32)
    x, y = arrseg.data.make_shapes(n_images=1, size=64, seed=1)
    model = arrseg.Segmenter(width=8, max_iter=2, seed=0).fit(x[0], y[0])
    P = model.predict_proba(open_image(source))       # lazy
    tracemalloc.start()
    try:
        with dask.config.set(scheduler=scheduler):
            write_zarr(P.astype(np.float32), os.path.join(folder, f"out-{height}.zarr"))
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heights", type=int, nargs="+", default=[3072, 6144, 12288])
    parser.add_argument("--scheduler", choices=("sync", "threads"), default="sync")
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="arrseg-memory-")
    try:
        print(f"{'height':>8}  {'image MiB':>9}  {'peak MiB':>8}   ({args.scheduler})")
        for h in args.heights:
            print(f"{h:8d}  {3 * h * 768 * 4 / 2**20:9.0f}  "
                  f"{peak_mib(h, args.scheduler, folder):8.1f}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
