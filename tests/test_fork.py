"""Child processes work after the parent has used the thread pool.

The NumPy path keeps a pool of threads, a lock and a threadpoolctl
controller for the whole process (:mod:`arrseg.cpu.threads`), and the CUDA
path caches compiled modules (:mod:`arrseg.cuda.build`,
:mod:`arrseg.optim.flat`). A child made by ``fork`` inherits those caches
but not the pool's threads nor the parent's CUDA context; hooks registered
with :func:`os.register_at_fork` reset them. Here children made with each
start method (fork, spawn, forkserver) run ``predict`` and ``fit`` after the
parent has run the threaded path and must return what the parent computes;
every wait has a timeout, so that a hang fails the test instead of hanging
CI.

The children run arrseg's own bound methods (``model.predict``, pickled
with the model), so spawn and forkserver children need nothing of this
file; the fork-only tests run functions of this file, which fork does not
pickle.
"""

import multiprocessing as mp
import sys
import threading
import time
import types

import numpy as np
import pytest

import arrseg
from arrseg.cpu import threads
from arrseg.cuda import build
from arrseg.optim import flat

#: Seconds any child may take for one result; a hang fails after this.
TIMEOUT = 60
#: Children per start method, each running predict and fit.
CHILDREN = 2
START_METHODS = ["fork", "spawn", "forkserver"]

# Python >= 3.12 warns when a process with threads forks; the pool's idle
# threads are there on purpose here: that is the case under test.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning")


def _context(method):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"start method {method!r} is not available on {sys.platform} "
                    f"(available: {mp.get_all_start_methods()})")
    return mp.get_context(method)


def _segmenter():
    # one residual layer: the deep NumPy path's threads are exercised too
    return arrseg.Segmenter(width=8, depth=1, max_iter=2)


@pytest.fixture(scope="module")
def parent():
    """Data, a model fitted and used for predict by the parent on the threaded
    path, and the parent's results."""
    with pytest.MonkeyPatch.context() as mp_env:
        if threads.num_threads() < 2:  # a one-CPU machine: still use the pool
            mp_env.setenv("ARRSEG_NUM_THREADS", "2")
        x, y = arrseg.data.make_shapes(n_images=2, size=128, seed=0)
        model = _segmenter().fit(x, y)
        labels = model.predict(x)
        # the pool exists: the state a forked child inherits
        assert threads.num_threads() >= 2
        assert threads._pool.cache_info().currsize >= 1
        yield types.SimpleNamespace(x=x, y=y, model=model, labels=labels,
                                    blas_threads=threads.blas_threads())


def _assert_same_fit(fitted, expected):
    for name, a, b in zip(expected.params_._fields, fitted.params_, expected.params_):
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_array_equal(fitted.mean_, expected.mean_)
    np.testing.assert_array_equal(fitted.std_, expected.std_)


@pytest.mark.parametrize("method", START_METHODS)
def test_children_predict_and_fit_like_the_parent(parent, method):
    ctx = _context(method)
    start = time.perf_counter()
    # one single-process pool per child, so that every child runs both
    pools = [ctx.Pool(1) for _ in range(CHILDREN)]
    try:
        calls = [(pool.apply_async(parent.model.predict, (parent.x,)),
                  pool.apply_async(_segmenter().fit, (parent.x, parent.y)))
                 for pool in pools]
        for predicted, fitted in calls:
            np.testing.assert_array_equal(predicted.get(timeout=TIMEOUT), parent.labels)
            _assert_same_fit(fitted.get(timeout=TIMEOUT), parent.model)
    finally:
        for pool in pools:
            pool.terminate()  # kills a child that hangs
            pool.join()
    assert time.perf_counter() - start < TIMEOUT


def _child_report(connection):
    """In a forked child: run the threaded path and send what it found."""
    result = threads.parallel_map(lambda i: i * i, 8)
    connection.send({"result": result, "blas_threads": threads.blas_threads(),
                     "pool": threads._pool.cache_info().currsize})
    connection.close()


def _run_forked_child(ctx, target=_child_report, *, check_exit=True):
    """Fork a child that runs ``target(connection)``; what it sent."""
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=target, args=(sender,))
    child.start()
    sender.close()
    try:
        assert receiver.poll(TIMEOUT), "the forked child did not answer (hung)"
        report = receiver.recv()
        child.join(TIMEOUT)
        assert not child.is_alive(), "the forked child did not exit (hung)"
        assert child.exitcode == 0 or not check_exit
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    return report


def test_fork_while_another_thread_is_inside_parallel_map(parent):
    ctx = _context("fork")
    inside = threading.Event()

    def slow_square(i):
        inside.set()
        time.sleep(0.01)
        return i * i

    outcome = {}
    caller = threading.Thread(
        target=lambda: outcome.update(result=threads.parallel_map(slow_square, 40)))
    caller.start()
    try:
        assert inside.wait(TIMEOUT)
        # the other thread holds the call lock and the pool's threads work
        report = _run_forked_child(ctx)
    finally:
        caller.join(TIMEOUT)
    assert not caller.is_alive()
    assert outcome["result"] == [i * i for i in range(40)]
    assert report["result"] == [i * i for i in range(8)]
    # the fork waited for the call to end: BLAS is back at its own count
    assert report["blas_threads"] == parent.blas_threads
    assert threads.blas_threads() == parent.blas_threads


def test_fork_from_inside_a_work_item(parent):
    # the before-fork hook must not wait for the call it is part of
    ctx = _context("fork")

    # (a child forked from a pool thread exits with code 1 whatever it runs:
    # at exit, concurrent.futures joins its threads, the forking one among
    # them, and "cannot join current thread"; CPython 3.11)
    def work(i):
        return _run_forked_child(ctx, check_exit=False) if i == 0 else i

    reports = threads.parallel_map(work, 4)
    assert reports[1:] == [1, 2, 3]
    assert reports[0]["result"] == [i * i for i in range(8)]
    assert threads.blas_threads() == parent.blas_threads


def _child_cache_sizes(connection):
    connection.send({"pool": threads._pool.cache_info().currsize,
                     "blas_controller": threads._blas_controller.cache_info().currsize,
                     "cuda_modules": build._module.cache_info().currsize,
                     "cupy_fused": flat._cupy_fused.cache_info().currsize})
    connection.close()


class _DefinesNothing:
    def defines(self):
        return ()


def test_fork_drops_pools_and_compiled_kernels(parent, monkeypatch):
    # a stand-in for CuPy fills the caches of compiled kernels without a GPU
    fake_cupy = types.SimpleNamespace(RawModule=lambda **kwargs: object(),
                                      fuse=lambda function: function)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    ctx = _context("fork")
    modules, fused = (build._module.cache_info().currsize,
                      flat._cupy_fused.cache_info().currsize)
    try:
        build._module(0, _DefinesNothing(), "fused_forward.cu")
        flat._cupy_fused(lambda ns: None)
        assert _run_forked_child(ctx, _child_cache_sizes) == {
            "pool": 0, "blas_controller": 0, "cuda_modules": 0, "cupy_fused": 0}
        # the parent keeps its own
        assert threads._pool.cache_info().currsize >= 1
        assert threads._blas_controller.cache_info().currsize == 1
        assert build._module.cache_info().currsize == modules + 1
        assert flat._cupy_fused.cache_info().currsize == fused + 1
    finally:  # (a real entry dropped here is compiled again, from CuPy's disk cache)
        build._module.cache_clear()
        flat._cupy_fused.cache_clear()
