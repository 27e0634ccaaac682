"""Accuracy and fit time of arrseg's Segmenter against scikit-image's
TrainableSegmenter, on the same images and the same labelled pixels.

The reference is scikit-image's trainable segmentation with its defaults:
:func:`skimage.feature.multiscale_basic_features` (intensity, edges and
texture at 6 scales, sigma 0.5 to 16, per channel) and a
``RandomForestClassifier(n_estimators=100, n_jobs=-1)`` (``random_state=0``
for repeatable runs), trained with ``skimage.future.fit_segmenter`` and
applied with ``predict_segmenter``. Its fit time counts the features of the
training images, as ``TrainableSegmenter.fit`` does. Every method is fitted
on the same training images, once with every pixel labelled ("dense") and
once with the same 2% scribbles (:func:`arrseg.data.scribbles`), and scored
on held-out pixels against the dense reference: foreground IoU for two
classes, mean IoU otherwise (:mod:`arrseg.metrics`).

Data sets (nothing is downloaded; scikit-image's bundled images only):

- ``textures``: :func:`arrseg.data.make_textures`, one 256 x 512 training
  image, two test images (exact labels);
- ``coins``: ``skimage.data.coins()``, trained on the left half, scored on
  the right half. The reference is DERIVED, not hand-made: the watershed of
  the Sobel elevation map from markers (< 30 background, > 150 coin) with
  holes filled, as in scikit-image's tutorial "Comparing edge-based and
  region-based segmentation";
- ``horse``: grass (``skimage.data.grass()``) inside the hand-drawn horse
  silhouette of ``skimage.data.horse()``, gravel outside: two real textures
  of the same brightness with an exact mask; left half / right half;
- ``tiles``: :func:`arrseg.data.make_textures` as small tiles, two of
  128 x 128 to train on, four to test (exact labels): texture boundaries
  that no intensity edge marks, close together.

Usage::

    python tools/accuracy_benchmark.py            # the table (several minutes)
    python tools/accuracy_benchmark.py --quick    # CI smoke run, < 60 s
    python tools/accuracy_benchmark.py --search   # a grid of Segmenter settings
    python tools/accuracy_benchmark.py --seeds 0,1,2,3 [--smoothness 0.3]
                                                  # the spread over initialisations
    python tools/accuracy_benchmark.py --seeds 0,1,2,3 --set activation=relu --set step=0.5
                                                  # the same with other Segmenter settings
    python tools/accuracy_benchmark.py --seeds 0,1,2,3 --edge-beta 0.5 --set edge_smoothness=0.3
                                                  # another beta of the edge weights

Timings are wall-clock seconds of one fit on this machine's cores (the
forest uses all of them, n_jobs=-1; arrseg its NumPy threads); set
``--threads`` to hold both to a number of threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import NamedTuple

import numpy as np

# threads: set before NumPy's BLAS starts (see main)
if __name__ == "__main__" and "--threads" in sys.argv:
    _n = sys.argv[sys.argv.index("--threads") + 1]
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _n

import arrseg  # noqa: E402
from arrseg.data import make_textures, scribbles  # noqa: E402
from arrseg.metrics import iou, mean_iou  # noqa: E402

__all__ = ["Dataset", "DATASETS", "OTHER_CONFIGS", "LABELLED_FRACTION", "forest_fit",
           "forest_fit_predict", "load", "score", "segmenter_fit",
           "segmenter_fit_predict"]

#: The fraction of training pixels scribbled in the sparse runs.
LABELLED_FRACTION = 0.02
IGNORE = -100


class Dataset(NamedTuple):
    """Training and test images of one problem.

    ``x_train`` / ``x_test``: float32 (N, C, H, W); ``y_train`` (dense) /
    ``y_sparse`` (the scribbles) / ``y_test``: int64 (N, H, W).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    y_sparse: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    reference: str


def _halves(image, labels):
    """(C, H, W), (H, W) -> left half for training, right half for testing,
    each as a batch of one."""
    W = labels.shape[-1]
    return (image[None, :, :, :W // 2], labels[None, :, :W // 2],
            image[None, :, :, W // 2:], labels[None, :, W // 2:])


def _finish(name, x_tr, y_tr, x_te, y_te, n_classes, reference, seed):
    y_sparse = scribbles(y_tr, LABELLED_FRACTION, seed=seed)
    return Dataset(name, np.ascontiguousarray(x_tr, dtype=np.float32), y_tr, y_sparse,
                   np.ascontiguousarray(x_te, dtype=np.float32), y_te, n_classes,
                   reference)


def load_textures(quick=False):
    """The synthetic texture mosaics: train on one image, test on two."""
    size = (96, 192) if quick else (256, 512)
    x, y = make_textures(n_images=3, size=size, seed=0)
    return _finish("textures", x[:1], y[:1], x[1:], y[1:], 4,
                   "exact (synthetic)", seed=0)


def coins_reference(image):
    """The coins' mask (bool (H, W)) by scikit-image's tutorial: watershed of
    the Sobel elevation map from markers, holes filled. Derived, not drawn."""
    from scipy import ndimage
    from skimage import filters, segmentation

    markers = np.zeros_like(image, dtype=np.int32)
    markers[image < 30] = 1
    markers[image > 150] = 2
    regions = segmentation.watershed(filters.sobel(image), markers)
    return ndimage.binary_fill_holes(regions == 2)


def load_coins(quick=False):
    """skimage.data.coins(): left half / right half, derived reference."""
    from skimage import data

    image = data.coins()
    labels = coins_reference(image).astype(np.int64)
    if quick:
        image, labels = image[:152], labels[:152]
    x = image[None].astype(np.float32) / 255.0
    return _finish("coins", *_halves(x, labels), 2,
                   "DERIVED (watershed on Sobel, holes filled), not hand-made", seed=1)


def load_horse(quick=False):
    """Grass inside the horse silhouette, gravel outside; exact mask."""
    from skimage import data

    mask = ~data.horse()                                   # True on the horse
    H, W = mask.shape
    image = np.where(mask, data.grass()[:H, :W], data.gravel()[:H, :W])
    labels = mask.astype(np.int64)
    if quick:
        image, labels = image[::2, ::2], labels[::2, ::2]
    x = image[None].astype(np.float32) / 255.0
    return _finish("horse", *_halves(x, labels), 2,
                   "exact (horse silhouette; grass inside, gravel outside)", seed=2)


def load_tiles(quick=False):
    """Six 128 x 128 texture tiles (seed 1): train on two, test on four."""
    size = 64 if quick else 128
    x, y = make_textures(n_images=6, size=size, seed=1)
    return _finish("tiles", x[:2], y[:2], x[2:], y[2:], 4, "exact (synthetic)", seed=3)


DATASETS = {"textures": load_textures, "coins": load_coins, "horse": load_horse,
            "tiles": load_tiles}


def load(name, quick=False):
    """The :class:`Dataset` called ``name`` (a key of :data:`DATASETS`)."""
    return DATASETS[name](quick)


# --- the methods ---------------------------------------------------------------

def _features(x):
    """scikit-image's default features of each (C, H, W) image: (N, H, W, F)."""
    from skimage.feature import multiscale_basic_features

    return np.stack([multiscale_basic_features(np.moveaxis(im, 0, -1), channel_axis=-1)
                     for im in x])


def forest_fit(ds, labels, n_estimators=100):
    """scikit-image's TrainableSegmenter defaults, fitted: the classifier.

    The features of the training images are computed here, as
    ``TrainableSegmenter.fit`` does; ``fit_segmenter`` takes labels >= 1 as
    classes and 0 as unlabelled.
    """
    from sklearn.ensemble import RandomForestClassifier
    from skimage.future import fit_segmenter

    clf = RandomForestClassifier(n_estimators=n_estimators, n_jobs=-1, random_state=0)
    features = _features(ds.x_train)                       # (N, H, W, F)
    return fit_segmenter(np.where(labels == IGNORE, 0, labels + 1), features, clf)


def forest_fit_predict(ds, labels):
    """(fit seconds, int64 predictions (N, H, W) of the test images)."""
    from skimage.future import predict_segmenter

    start = time.perf_counter()
    clf = forest_fit(ds, labels)
    fit_s = time.perf_counter() - start
    pred = np.stack([predict_segmenter(f, clf) for f in _features(ds.x_test)]) - 1
    return fit_s, pred


#: ``--dask CHUNK``: fit on dask arrays in (CHUNK, CHUNK) chunks, one image
#: per chunk, instead of the NumPy arrays (None: in memory).
DASK_CHUNK = None


def segmenter_fit(ds, labels, params):
    """arrseg.Segmenter(**params), fitted on the training images (as dask
    arrays with :data:`DASK_CHUNK`)."""
    x = ds.x_train
    if DASK_CHUNK is not None:
        import dask.array as da

        c = DASK_CHUNK
        x = da.from_array(x, chunks=(1, x.shape[1], c, c))
        labels = da.from_array(labels, chunks=(1, c, c))
    return arrseg.Segmenter(**params).fit(x, labels)


def segmenter_fit_predict(ds, labels, params, with_iterations=False):
    """(fit seconds, int64 predictions (N, H, W) of the test images), and
    the iterations trained (``n_iter_``) third with ``with_iterations``."""
    start = time.perf_counter()
    model = segmenter_fit(ds, labels, params)
    fit_s = time.perf_counter() - start
    pred = np.asarray(model.predict(ds.x_test))
    return (fit_s, pred, model.n_iter_) if with_iterations else (fit_s, pred)


def score(ds, pred):
    """Foreground IoU for two classes, mean IoU otherwise."""
    if ds.n_classes == 2:
        return float(iou(ds.y_test, pred, 2)[1])
    return float(mean_iou(ds.y_test, pred, ds.n_classes))


def measure(ds, method, sparse):
    """(IoU, fit seconds) of ``method`` ("forest" or a dict of Segmenter
    keywords) trained on the dense or the scribbled labels."""
    labels = ds.y_sparse if sparse else ds.y_train
    if method == "forest":
        fit_s, pred = forest_fit_predict(ds, labels)
    else:
        fit_s, pred = segmenter_fit_predict(ds, labels, method)
    return score(ds, pred), fit_s


def measure_with_iterations(ds, params, sparse):
    """(IoU, fit seconds, iterations trained) of ``Segmenter(**params)``."""
    labels = ds.y_sparse if sparse else ds.y_train
    fit_s, pred, n_iter = segmenter_fit_predict(ds, labels, params, with_iterations=True)
    return score(ds, pred), fit_s, n_iter


# --- configurations ------------------------------------------------------------

#: Other Segmenter configurations of the table, by row name: the previous
#: defaults (the one-layer network with Adam; the deep network of 0.7 and
#: 0.8, without the edge-aware smoothness, with 60 iterations; 0.9's, with
#: tol 1e-4), the seed's single layer, and a wider, deeper variant of the
#: defaults.
OTHER_CONFIGS = {
    "depth 0, k=16, Adam 200 (defaults before 0.7)":
        dict(depth=0, width=16, optimizer="adam", max_iter=200, edge_smoothness=0.0,
             tol=1e-4),
    "depth 0, k=32, s=7, Adam 200 (the seed's single layer)":
        dict(depth=0, width=32, kernel_size=7, optimizer="adam", max_iter=200,
             edge_smoothness=0.0, tol=1e-4),
    "edge_smoothness=0, varpro 60, tol 1e-4 (defaults of 0.7 and 0.8)":
        dict(edge_smoothness=0.0, max_iter=60, tol=1e-4),
    "tol 1e-4 (defaults of 0.9.0)": dict(tol=1e-4),
    "depth 4, 'doubling', k=16": dict(depth=4, width=16),
}


def table_rows(quick):
    rows = {"skimage TrainableSegmenter (RF 100 trees)": "forest",
            "arrseg Segmenter() defaults (depth 3, 'doubling', k=8, varpro 100, "
            "tol 3e-5, edge_smoothness 'auto')": {}}
    rows.update({f"arrseg {k}": v for k, v in OTHER_CONFIGS.items()})
    if quick:   # the forest, the defaults and the previous defaults, shorter
        rows = dict(list(rows.items())[:3])
        for name, m in rows.items():
            if m != "forest":
                rows[name] = dict(m, max_iter=20)
    return rows


def search_grid():
    """Segmenter settings to try (dicts of keywords, every setting that
    matters named, so that the grid does not move with the defaults): the
    one-layer network with Adam first, then residual networks."""
    one_layer = dict(depth=0, optimizer="adam", max_iter=200, edge_smoothness=0.0)
    grid = [dict(one_layer, width=k, kernel_size=s) for k in (16, 32) for s in (3, 5, 7)]
    grid += [dict(one_layer, width=16, max_iter=400),
             dict(one_layer, width=16, learning_rate=0.01),
             dict(one_layer, width=16, learning_rate=0.1),
             dict(depth=0, width=16, optimizer="varpro", max_iter=30),
             dict(one_layer, width=16, crop_size=128, batch_size=8)]
    deep = dict(depth=3, dilation="doubling", width=8, optimizer="varpro", max_iter=60,
                edge_smoothness=0.0)
    grid += [dict(deep, depth=d, dilation=dil, width=k)
             for d in (2, 3, 4) for dil in (1, "doubling") for k in (8, 16)]
    grid += [dict(deep, layer="symmetric"), dict(deep, step=0.5),
             dict(deep, kernel_size=5), dict(deep, max_iter=30),
             dict(deep, max_iter=100), dict(deep, weight_decay=1e-3),
             dict(deep, optimizer="adam", max_iter=200),
             dict(deep, optimizer="adam", max_iter=200, learning_rate=0.01)]
    grid += [dict(deep, edge_smoothness=a) for a in (0.1, 0.3, 1.0, 3.0)]
    grid += [dict(deep, edge_smoothness=0.3, max_iter=30),
             dict(deep, edge_smoothness=0.3, depth=4, width=16)]
    return grid


# --- output --------------------------------------------------------------------

def _fmt(name, results, digits=3):
    (i_d, t_d), (i_s, t_s) = results
    return f"| {name} | {i_d:.{digits}f} | {i_s:.{digits}f} | {t_d:.1f} s | {t_s:.1f} s |"


def run_table(datasets, quick, digits=3):
    rows = table_rows(quick)
    for ds in datasets:
        print(f"\n### {ds.name}: train {ds.x_train.shape}, test {ds.x_test.shape}, "
              f"{ds.n_classes} classes, reference {ds.reference}; "
              f"{'foreground' if ds.n_classes == 2 else 'mean'} IoU on the test "
              f"pixels\n")
        print(f"| method | IoU dense | IoU {LABELLED_FRACTION:.0%} labelled | "
              f"fit time dense | fit time {LABELLED_FRACTION:.0%} |")
        print("|---|---|---|---|---|")
        for name, method in rows.items():
            results = [measure(ds, method, sparse) for sparse in (False, True)]
            print(_fmt(name, results, digits), flush=True)


def run_seeds(datasets, seeds, settings=None, digits=3):
    """The defaults' IoU and fit time for each seed (the same labels), with
    ``settings`` (Segmenter keywords) changed from the defaults; a mean row
    per dataset."""
    settings = settings or {}
    if settings:
        print(f"Segmenter defaults with {settings}")
    print("| dataset | seed | IoU dense | IoU 2% labelled | fit time dense | "
          "fit time 2% | iterations dense | iterations 2% |")
    print("|---|---|---|---|---|---|---|---|")
    for ds in datasets:
        rows = []
        for seed in seeds:
            (i_d, t_d, n_d), (i_s, t_s, n_s) = [
                measure_with_iterations(ds, dict(settings, seed=seed), sparse)
                for sparse in (False, True)]
            rows.append((i_d, i_s, t_d, t_s, n_d, n_s))
            print(f"| {ds.name} | {seed} | {i_d:.{digits}f} | {i_s:.{digits}f} | "
                  f"{t_d:.1f} s | {t_s:.1f} s | {n_d} | {n_s} |", flush=True)
        i_d, i_s, t_d, t_s, n_d, n_s = np.mean(rows, axis=0)
        print(f"| {ds.name} | mean | {i_d:.{digits}f} | {i_s:.{digits}f} | "
              f"{t_d:.1f} s | {t_s:.1f} s | {n_d:.0f} | {n_s:.0f} |", flush=True)


def parse_setting(text):
    """``KEY=VALUE`` -> (KEY, VALUE): the value read as a Python literal
    (``0.5``, ``1``, ``None``, ``(1, 2)``) or else kept as a string
    (``relu``)."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"--set takes KEY=VALUE with KEY a Segmenter keyword, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def run_search(datasets, sparse_only):
    grid = search_grid()
    modes = (True,) if sparse_only else (False, True)
    print("| dataset | labels | settings | IoU | fit time |")
    print("|---|---|---|---|---|")
    for ds in datasets:
        for sparse in modes:
            tag = f"{LABELLED_FRACTION:.0%}" if sparse else "dense"
            i, t = measure(ds, "forest", sparse)
            print(f"| {ds.name} | {tag} | skimage forest | {i:.3f} | {t:.1f} s |",
                  flush=True)
            for params in grid:
                try:
                    i, t = measure(ds, params, sparse)
                except Exception as e:  # a setting the estimator refuses
                    print(f"| {ds.name} | {tag} | {params} | error: "
                          f"{type(e).__name__}: {str(e)[:80]} | |", flush=True)
                    continue
                print(f"| {ds.name} | {tag} | {params} | {i:.3f} | {t:.1f} s |",
                      flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small images, short fits, 3 rows: a smoke run (< 60 s)")
    parser.add_argument("--search", action="store_true",
                        help="try a grid of Segmenter settings instead of the table")
    parser.add_argument("--sparse-only", action="store_true",
                        help="--search on the 2%% scribbles only")
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS),
                        default=None, help="default: all (textures and coins with --quick)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of NumPy's BLAS and of the forest")
    parser.add_argument("--seeds", default=None, metavar="S1,S2,...",
                        help="instead of the table: the Segmenter() defaults "
                        "with each of these seeds (the initialisation's spread)")
    parser.add_argument("--smoothness", type=float, default=None,
                        help="with --seeds: the Segmenter's smoothness regulariser "
                        "(default: the Segmenter's, 0)")
    parser.add_argument("--set", type=parse_setting, action="append", default=[],
                        metavar="KEY=VALUE",
                        help="with --seeds: a Segmenter keyword changed from the "
                        "defaults (repeatable), e.g. --set activation=relu")
    parser.add_argument("--edge-beta", type=float, default=None, metavar="BETA",
                        help="with --seeds: beta of edge_smoothness's weights "
                        "(arrseg.optim.edge_smoothness.BETA, default 20)")
    parser.add_argument("--dask", type=int, default=None, metavar="CHUNK",
                        help="with --seeds: fit on dask arrays in CHUNK x CHUNK "
                        "chunks (the threaded scheduler)")
    parser.add_argument("--digits", type=int, default=3, choices=range(1, 7),
                        metavar="D", help="decimals of the IoU (default 3)")
    args = parser.parse_args(argv)
    if (args.smoothness is not None or args.set or args.edge_beta is not None
            or args.dask is not None) and not args.seeds:
        parser.error("--smoothness, --set, --edge-beta and --dask go with --seeds")
    if args.dask is not None:
        global DASK_CHUNK
        DASK_CHUNK = args.dask
        print(f"fit on dask arrays in {args.dask} x {args.dask} chunks")
    if args.edge_beta is not None:
        from arrseg.optim import edge_smoothness

        edge_smoothness.BETA = args.edge_beta
        print(f"edge_smoothness's beta: {args.edge_beta}")
    settings = dict(args.set)
    if args.smoothness is not None:
        settings["smoothness"] = args.smoothness
    try:
        arrseg.Segmenter(**settings)
    except TypeError as e:
        parser.error(f"--set: {e}")
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    names = args.datasets or (["textures", "coins"] if args.quick else list(DATASETS))
    datasets = [load(n, args.quick) for n in names]
    print(f"arrseg {arrseg.__version__}, {os.cpu_count()} CPU(s)"
          + (f", {args.threads} thread(s)" if args.threads else ""))
    if args.search:
        run_search(datasets, args.sparse_only)
    elif args.seeds:
        run_seeds(datasets, [int(v) for v in args.seeds.split(",")], settings, args.digits)
    else:
        run_table(datasets, args.quick, args.digits)


if __name__ == "__main__":
    main()
