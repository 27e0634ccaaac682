"""The Dask paths of :mod:`arrseg.dask` (issue 14) against the same work in memory.

The network is the Segmenter's default: an opening convolution C = 3 -> k = 8
(3 x 3, tanh), 3 residual layers (3 x 3, dilations 1, 2, 4: "doubling"),
n_c = 2 classes, float32, ``arrseg.init_params(..., seed=0)`` (the receptive
halo is 8 pixels). Two problems:

- **prediction** of one image 3 x 4096 x 4096 (uniform random values,
  ``dask.array.random.default_rng(0)``) in 1024 x 1024 chunks
  (:data:`PREDICT`): ``DaskPredict`` times

  - ``in-memory``: :func:`arrseg.predict_proba` on the NumPy array (the
    blocked, threaded NumPy path, every core);
  - ``dask-threads``: ``arrseg.dask.predict_proba(x, ...).compute()`` on the
    threaded scheduler with 2 threads, x the same NumPy array as
    ``dask.array.from_array``;
  - ``dask-2-processes``: the same on a ``LocalCluster`` of 2 worker
    processes of 1 thread each, the image made on the workers (its chunks
    persisted there in setup, never shipped from this process); the timed
    call brings the probabilities (2 x 4096 x 4096 float32, 128 MiB) back
    to this process, as ``.compute()`` does.

- **one full-batch gradient** over 16 images of 3 x 512 x 512 with dense
  labels in {0, 1} (``arrseg.data.make_shapes``, seed 0;
  :data:`GRADIENT`), one chunk per image: ``DaskGradient`` times

  - ``in-memory``: :func:`arrseg.loss_and_grad` on the NumPy arrays;
  - ``dask-2-processes``: :func:`arrseg.dask.loss_and_grad` on a 2-process
    ``LocalCluster``, each image and its labels scattered to a worker in
    setup (once, untimed); each call builds the haloed blocks
    anew on the workers;
  - ``problem-2-processes``: ``ChunkedProblem.loss_and_grad`` on the same
    cluster: the haloed blocks persisted on the workers, as
    ``Segmenter.fit`` holds them; per call the parameters are scattered
    and one vector of sums per block comes back. This is what one training
    step costs.

The issue's goals on a 2-core machine: ``dask-threads`` prediction within
1.3x of ``in-memory``; the 2-process gradient within 2x.
``DaskPredictMemory`` gives the peak memory (RSS of this process) of the
two single-process prediction paths. ``tools/dask_vs_memory.py`` times the
same contenders side by side in one process and prints the ratios.

Without dask[array] and distributed (or with an arrseg without
:mod:`arrseg.dask`), ``setup`` raises NotImplementedError (asv: skipped).
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import numpy as np

import arrseg

from .common import CHANNELS, AsvSettings, reset_peak_rss

__all__ = [
    "PredictConfig", "GradientConfig", "PREDICT", "GRADIENT", "QUICK_PREDICT",
    "QUICK_GRADIENT", "NETWORK_OPTIONS", "network_params", "require_dask", "Cluster",
    "PREDICT_PATHS", "GRADIENT_PATHS", "predict_contender", "gradient_contender",
]

#: k, n_c, s, depth of the network (the Segmenter's defaults; n_c = 2).
WIDTH, N_CLASSES, KERNEL_SIZE, DEPTH = 8, 2, 3, 3
#: The options of every call (the Segmenter's defaults).
NETWORK_OPTIONS = dict(activation="tanh", boundary="zeros", dilation="doubling")
#: Threads of the threaded scheduler, worker processes of the LocalCluster.
THREADS = WORKERS = 2


class PredictConfig(NamedTuple):
    """One image of CHANNELS x size x size in chunk x chunk chunks."""

    size: int
    chunk: int

    def describe(self):
        return (f"1 x {CHANNELS} x {self.size} x {self.size} in "
                f"{self.chunk} x {self.chunk} chunks")


class GradientConfig(NamedTuple):
    """n_images images of CHANNELS x size x size, one chunk each."""

    n_images: int
    size: int

    def describe(self):
        return (f"{self.n_images} x {CHANNELS} x {self.size} x {self.size}, "
                f"one chunk per image")


#: The issue's sizes.
PREDICT = PredictConfig(size=4096, chunk=1024)
GRADIENT = GradientConfig(n_images=16, size=512)
#: Smoke-run sizes (tools/dask_vs_memory.py --quick).
QUICK_PREDICT = PredictConfig(size=512, chunk=256)
QUICK_GRADIENT = GradientConfig(n_images=4, size=128)


def require_dask():
    """Raise NotImplementedError unless dask.array, distributed and
    arrseg.dask are importable (asv then skips the benchmark)."""
    try:
        import dask.array  # noqa: F401
        import distributed  # noqa: F401

        import arrseg.dask  # noqa: F401
    except ImportError as e:
        raise NotImplementedError(f"the Dask paths need dask[array] and "
                                  f"distributed: {e}") from None


def network_params():
    """The parameters of every benchmark: ResidualParams, float32, seed 0."""
    return arrseg.init_params(CHANNELS, WIDTH, N_CLASSES, KERNEL_SIZE, depth=DEPTH,
                              seed=0, dtype="float32")


def predict_image(config):
    """The image to predict, a lazy dask array (1, CHANNELS, size, size)
    float32 in (1, CHANNELS, chunk, chunk) chunks; each chunk is drawn where
    it is computed."""
    import dask.array as da

    shape = (1, CHANNELS, config.size, config.size)
    return da.random.default_rng(0).random(
        shape, chunks=(1, CHANNELS, config.chunk, config.chunk), dtype=np.float32)


def gradient_data(config):
    """NumPy images (N, CHANNELS, size, size) float32 and labels int64
    (N, size, size) in [0, N_CLASSES)."""
    return arrseg.data.make_shapes(n_images=config.n_images, size=config.size,
                                   n_classes=N_CLASSES, channels=CHANNELS, seed=0,
                                   dtype="float32")


class Cluster:
    """A ``LocalCluster`` of ``workers`` processes with 1 thread each, on
    loopback, no dashboard, and a Client of it.

    The workers are started by "spawn": a script that makes a Cluster needs
    ``if __name__ == "__main__":``. The Client is not the default one:
    calls that use "the current scheduler" run under
    ``client.as_current()``. Each worker imports arrseg.dask at start, and
    a tiny prediction runs on the cluster, so that no timed call pays for
    the imports."""

    def __init__(self, workers=WORKERS):
        from distributed import Client, LocalCluster

        import arrseg.dask

        # no dashboard; the scheduler's own HTTP server (health, metrics) on a
        # free port, not 8787: a cluster already there would make it warn
        self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1,
                                    processes=True, host="127.0.0.1",
                                    dashboard_address=None,
                                    scheduler_kwargs={"dashboard_address": ":0"})
        self.client = Client(self.cluster, set_as_default=False)
        # by reference to importable modules only: the workers cannot import
        # this one (asv's benchmark directory is not on their path)
        for module in ("arrseg.dask.prediction", "arrseg.dask.gradient",
                       "arrseg.dask.cluster"):
            self.client.run(importlib.import_module, module)
        tiny = predict_image(PredictConfig(size=64, chunk=32))
        P = arrseg.dask.predict_proba(tiny, network_params(), **NETWORK_OPTIONS)
        self.client.compute(P).result()

    def close(self):
        self.client.close()
        self.cluster.close()


# -- the contenders: each a callable (one timed call) with close() ------------------

#: asv parameter values of DaskPredict and DaskGradient.
PREDICT_PATHS = ("in-memory", "dask-threads", "dask-2-processes")
GRADIENT_PATHS = ("in-memory", "dask-2-processes", "problem-2-processes")


class _Contender:
    """One way of doing the work: ``c()`` does it once and returns the
    result as NumPy; ``c.close()`` frees what it holds (not the cluster)."""

    def close(self):
        pass


class InMemoryPredict(_Contender):
    def __init__(self, config, x=None):
        self.x = predict_image(config).compute(scheduler="threads") if x is None else x
        self.params = network_params()

    def __call__(self):
        return arrseg.predict_proba(self.x, self.params, **NETWORK_OPTIONS)


class ThreadedPredict(_Contender):
    """arrseg.dask.predict_proba(...).compute() on the threaded scheduler,
    of a NumPy array in memory (``dask.array.from_array``)."""

    def __init__(self, config, x=None, threads=THREADS):
        import dask.array as da

        if x is None:
            x = predict_image(config).compute(scheduler="threads")
        self.x = da.from_array(x, chunks=(1, CHANNELS, config.chunk, config.chunk))
        self.params, self.threads = network_params(), threads

    def __call__(self):
        import arrseg.dask

        P = arrseg.dask.predict_proba(self.x, self.params, **NETWORK_OPTIONS)
        return P.compute(scheduler="threads", num_workers=self.threads)


class ClusterPredict(_Contender):
    """arrseg.dask.predict_proba on the cluster, the image's chunks made and
    persisted on the workers; the result comes back to this process."""

    def __init__(self, config, client):
        self.client = client
        self.x = _persist(client, predict_image(config))
        self.params = network_params()

    def __call__(self):
        import arrseg.dask

        P = arrseg.dask.predict_proba(self.x, self.params, **NETWORK_OPTIONS)
        return self.client.compute(P).result()

    def close(self):
        del self.x


class InMemoryGradient(_Contender):
    def __init__(self, config, data=None):
        self.x, self.labels = gradient_data(config) if data is None else data
        self.params = network_params()

    def __call__(self):
        loss, grads = arrseg.loss_and_grad(self.x, self.labels, self.params,
                                           **NETWORK_OPTIONS)
        return float(loss), _flat(grads)


def _flat(grads):
    """The gradient's fields (NumPy) as one vector, in the flat layout
    (:mod:`arrseg.optim.flat`: K, b, W, c, K_layers, b_layers)."""
    return np.concatenate([np.ravel(a) for a in grads if a is not None])


def _on_workers(config, client, data):
    """The gradient problem's images and labels as dask arrays of one
    chunk per image, on the cluster: each image and its labels scattered
    to a worker once (untimed), not embedded in a graph."""
    x, labels = gradient_data(config) if data is None else data
    return _scattered(client, x), _scattered(client, labels)


def _scattered(client, array):
    """A NumPy array (N, ...) as a dask array of one chunk per image, each
    chunk scattered to a worker (round robin)."""
    import dask.array as da

    futures = client.scatter([array[n:n + 1] for n in range(array.shape[0])],
                             hash=False)    # new keys: not those of a released copy
    return da.concatenate([
        da.from_delayed(f, shape=(1,) + array.shape[1:], dtype=array.dtype,
                        meta=array[:0]) for f in futures])


def _persist(client, *arrays):
    """The dask arrays persisted on the client's cluster, once their chunks
    are there (one array, or a list of them)."""
    from distributed import futures_of, wait

    kept = client.persist(list(arrays))
    with client.as_current():
        wait(futures_of(kept))
    return kept[0] if len(arrays) == 1 else kept


class ClusterGradient(_Contender):
    """arrseg.dask.loss_and_grad with the cluster's Client current, the
    images and labels already on the workers."""

    def __init__(self, config, client, data=None):
        self.client = client
        self.x, self.labels = _on_workers(config, client, data)
        self.params = network_params()

    def __call__(self):
        import arrseg.dask

        with self.client.as_current():
            loss, grads = arrseg.dask.loss_and_grad(self.x, self.labels, self.params,
                                                    **NETWORK_OPTIONS)
        return float(loss), _flat(grads)

    def close(self):
        del self.x, self.labels


class ProblemGradient(_Contender):
    """ChunkedProblem.loss_and_grad: the haloed blocks persisted on the
    cluster (as Segmenter.fit holds them), the full batch."""

    def __init__(self, config, client, data=None):
        from arrseg._validation import check_options, fit_options
        from arrseg.dask.cluster import ChunkedProblem
        from arrseg.numerics.residual import receptive_halo

        x, labels = _on_workers(config, client, data)
        self.params = network_params()
        o = NETWORK_OPTIONS
        self.options = fit_options(check_options(o["activation"], o["boundary"], "auto",
                                                 o["dilation"], 1.0, "residual"), DEPTH)
        width = receptive_halo(KERNEL_SIZE, KERNEL_SIZE, self.options.dilation,
                               self.options.layer)
        self.problem = ChunkedProblem(x, labels, halo_width=width,
                                      ignore_index=arrseg.network.DEFAULT_IGNORE_INDEX,
                                      boundary=o["boundary"], client=client)

    def __call__(self):
        loss, grad, _ = self.problem.loss_and_grad(self.params, self.options, None)
        return float(loss), np.asarray(grad)

    def close(self):
        self.problem.close()


def predict_contender(path, config, cluster=None, x=None):
    """The contender of ``path`` (one of PREDICT_PATHS); ``cluster`` for
    "dask-2-processes"; ``x`` the NumPy image, if already made."""
    if path == "in-memory":
        return InMemoryPredict(config, x)
    if path == "dask-threads":
        return ThreadedPredict(config, x)
    if path == "dask-2-processes":
        return ClusterPredict(config, cluster.client)
    raise ValueError(f"path must be one of {PREDICT_PATHS}, got {path!r}")


def gradient_contender(path, config, cluster=None, data=None):
    """The contender of ``path`` (one of GRADIENT_PATHS)."""
    if path == "in-memory":
        return InMemoryGradient(config, data)
    if path == "dask-2-processes":
        return ClusterGradient(config, cluster.client, data)
    if path == "problem-2-processes":
        return ProblemGradient(config, cluster.client, data)
    raise ValueError(f"path must be one of {GRADIENT_PATHS}, got {path!r}")


# -- asv ----------------------------------------------------------------------------


class _DaskBenchmark(AsvSettings):
    """setup: skip without dask; a cluster for a "...-processes" path;
    the contender; the peak RSS reset. teardown closes both."""

    param_names = ("path",)

    def make(self, path, cluster):
        raise NotImplementedError

    def setup(self, path):
        require_dask()
        # thread pools and code pages, as the other benchmarks' tiny problem
        arrseg.predict_proba(np.zeros((1, CHANNELS, 16, 16), np.float32),
                             network_params(), **NETWORK_OPTIONS)
        self.cluster = Cluster() if path.endswith("-processes") else None
        self.contender = self.make(path, self.cluster)
        reset_peak_rss()

    def teardown(self, path):
        self.contender.close()
        if self.cluster is not None:
            self.cluster.close()


class DaskPredict(_DaskBenchmark):
    """Prediction of a 4096 x 4096 image in 1024 x 1024 chunks, in memory
    and through arrseg.dask (threads, 2 processes)."""

    params = (PREDICT_PATHS,)

    def make(self, path, cluster):
        return predict_contender(path, PREDICT, cluster)

    def time_predict_proba(self, path):
        self.contender()


class DaskPredictMemory(_DaskBenchmark):
    """Peak RSS of the single-process prediction paths (a 2-process
    cluster's memory is in its workers, not measured here)."""

    params = (PREDICT_PATHS[:2],)

    def make(self, path, cluster):
        return predict_contender(path, PREDICT, cluster)

    def peakmem_predict_proba(self, path):
        self.contender()


class DaskGradient(_DaskBenchmark):
    """One full-batch gradient over 16 images of 512 x 512, in memory and
    on a 2-process cluster (arrseg.dask.loss_and_grad; ChunkedProblem)."""

    params = (GRADIENT_PATHS,)

    def make(self, path, cluster):
        return gradient_contender(path, GRADIENT, cluster)

    def time_loss_and_grad(self, path):
        self.contender()
