"""ChunkedProblem and arrseg.dask.loss_and_grad on a dask.distributed cluster.

A LocalCluster of worker processes on loopback, against the in-memory
arrseg.loss_and_grad on the whole arrays (the reference), and against
itself across worker counts: the blocks' sums are added in a fixed-order
tree, so 1 and 2 workers give the same bits, and so does a computation
during which a worker is killed (Dask recomputes the lost blocks and sums).
Every wait has a timeout, with spawned (the module's cluster) and forked
(one test's) workers.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import arrseg  # noqa: E402
import arrseg.dask  # noqa: E402
from arrseg._validation import check_options, fit_options  # noqa: E402
from arrseg.dask.cluster import ChunkedProblem  # noqa: E402
from arrseg.optim.flat import flatten  # noqa: E402

TIMEOUT = 60
N, C, H, W, N_C = 2, 2, 32, 30, 3
CHUNKS = (1, 2, 16, 15)                   # 8 blocks
NET = dict(dilation="doubling", layer="symmetric")
HALO = 7                                  # 1 + 2 (1 + 2): depth 2, dilations 1, 2
CLASS_WEIGHT = np.array([1.0, 2.5, 0.5])


def _cluster(n_workers, method):
    # no dashboard; the scheduler's HTTP server (it has one without the
    # dashboard) on a free loopback port, not on 8787: a second cluster, or
    # one of another process, would take 8787 and the next one warn
    with dask.config.set({"distributed.worker.multiprocessing-method": method}):
        return distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True,
            host="127.0.0.1", dashboard_address=None,
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})


@pytest.fixture(scope="module")
def client():
    with _cluster(2, "spawn") as cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=TIMEOUT)
        yield c


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W))
    y = rng.integers(0, N_C, (N, H, W))
    y[rng.random(y.shape) >= 0.3] = -100
    params = arrseg.init_params(C, 4, N_C, depth=2, dtype="float64", seed=1)
    options = fit_options(check_options("tanh", "zeros", "auto", "doubling", 1.0,
                                        "symmetric"), 2)
    # the reference, in memory (before any fork: the pool's threads exist)
    ref_loss, ref_grads = arrseg.loss_and_grad(x, y, params, class_weight=CLASS_WEIGHT,
                                               **NET)
    return x, y, params, options, float(ref_loss), flatten(ref_grads, np)


def _result(problem, params, options):
    return problem.submit(params, options, CLASS_WEIGHT).result(timeout=TIMEOUT)


def _assert_reference(loss, grad, data):
    *_, ref_loss, ref_grad = data
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12,
                               atol=1e-12 * np.abs(ref_grad).max())


def test_problem_and_function_equal_in_memory(client, data):
    x, y, params, options, *_ = data
    xd = da.from_array(x, chunks=CHUNKS)
    with ChunkedProblem(xd, y, halo_width=HALO) as problem:   # the active Client
        assert problem.client is client
        loss, grad, D = _result(problem, params, options)
        # the blocks are kept on the workers
        holders = client.who_has(problem._blocks)
        assert len(holders) == problem.n_blocks == 8 and all(holders.values())
    _assert_reference(loss, grad, data)
    assert D == pytest.approx(CLASS_WEIGHT[y[y != -100]].sum(), rel=1e-14)
    # the eager function, computed on the cluster by dask.compute
    loss, grads = arrseg.dask.loss_and_grad(xd, y, params, class_weight=CLASS_WEIGHT,
                                            **NET)
    _assert_reference(float(loss), flatten(grads, np), data)


def test_one_forked_worker_gives_the_bits_of_two_spawned_ones(client, data):
    x, y, params, options, *_ = data
    xd = da.from_array(x, chunks=CHUNKS)
    with ChunkedProblem(xd, y, halo_width=HALO, client=client) as problem:
        two = _result(problem, params, options)
        some = problem.submit(params, options, CLASS_WEIGHT, blocks=[1, 4, 6])
        two_some = some.result(timeout=TIMEOUT)
    with _cluster(1, "fork") as cluster, distributed.Client(
            cluster, set_as_default=False) as one_client:
        # forked: the worker holds the modules this process had (pytest)
        forked = one_client.run(eval, "'_pytest' in __import__('sys').modules")
        assert list(forked.values()) == [True]
        with ChunkedProblem(xd, y, halo_width=HALO, client=one_client) as problem:
            one = _result(problem, params, options)
            one_some = problem.submit(params, options, CLASS_WEIGHT,
                                      blocks=[6, 1, 4]).result(timeout=TIMEOUT)
    spawned = client.run(eval, "'_pytest' in __import__('sys').modules")
    assert not any(spawned.values())
    for a, b in [(one, two), (one_some, two_some)]:
        assert a[0] == b[0] and a[2] == b[2]
        np.testing.assert_array_equal(a[1], b[1])
    _assert_reference(*two[:2], data)


def test_a_worker_killed_mid_computation_changes_nothing(client, data):
    x, y, params, options, *_ = data
    xd = da.from_array(x, chunks=CHUNKS)
    with ChunkedProblem(xd, y, halo_width=HALO, client=client) as problem:
        before = _result(problem, params, options)
        pending = problem.submit(params, options, CLASS_WEIGHT)
        # the blocks' sums are done, the tree not started: kill a worker that
        # holds some of them (and blocks), so that they are lost
        distributed.wait(pending.blocks, timeout=TIMEOUT)
        holders = client.who_has(pending.blocks)
        victim = next(iter(holders.values()))[0]
        # usually some of the sums; all of them when the scheduler put every
        # block on one worker (then all are recomputed on the other)
        assert sum(victim in ws for ws in holders.values()) > 0
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        # once the scheduler knows (else the other worker may spend
        # distributed's 30 s connect timeout on the dead one's address)
        deadline = time.monotonic() + TIMEOUT
        while victim in client.scheduler_info(n_workers=-1)["workers"]:
            assert time.monotonic() < deadline, "the killed worker was not removed"
            time.sleep(0.02)
        during = pending.result(timeout=TIMEOUT)
        # the nanny restarts the worker; the lost blocks are recomputed
        client.wait_for_workers(2, timeout=TIMEOUT)
        after = _result(problem, params, options)
    assert pid not in client.run(os.getpid).values()      # the worker was replaced
    for other in (during, after):
        assert other[0] == before[0] and other[2] == before[2]
        np.testing.assert_array_equal(other[1], before[1])
    _assert_reference(*before[:2], data)


def _fit_data():
    x, y = arrseg.data.make_shapes(n_images=2, size=24, seed=2)
    x = np.asarray(x, dtype=np.float64) * 30.0 + 5.0
    y = np.where(np.random.default_rng(2).random(y.shape) < 0.2, y, -100)
    return x, y


def test_segmenter_fit_on_the_cluster_equals_in_memory_and_any_worker_count(client):
    # full batch (VarPro): the same model as in memory up to round-off, and
    # to the last bit on 1 or 2 workers (the sums' tree is fixed)
    x, y = _fit_data()
    kw = dict(width=4, depth=1, max_iter=3, seed=0)
    # edge_smoothness "auto": 1 on both (VarPro), the labels sparse: the
    # term's Gram matrices and gradient sums come from the workers too
    ref = arrseg.Segmenter(**kw).fit(x, y)
    xd = da.from_array(x, chunks=(1, 3, 12, 24))
    two = arrseg.Segmenter(**kw).fit(xd, y)             # the active Client
    np.testing.assert_allclose(two.loss_curve_, ref.loss_curve_, rtol=1e-8)
    for a, b in zip(two.params_, ref.params_):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())
    with _cluster(1, "spawn") as cluster, distributed.Client(
            cluster, set_as_default=False) as one_client, one_client.as_current():
        assert distributed.default_client() is one_client
        one = arrseg.Segmenter(**kw).fit(xd, y)
    assert one.loss_curve_ == two.loss_curve_
    for a, b in zip(one.params_, two.params_):
        np.testing.assert_array_equal(a, b)


def test_mini_batch_fit_on_the_cluster_is_reproducible_for_a_seed(client):
    # Adam on 2 of the 4 blocks per step: the same seed and workers give the
    # same model; another seed draws other blocks
    x, y = _fit_data()
    xd = da.from_array(x, chunks=(1, 3, 12, 24))
    kw = dict(width=4, depth=1, optimizer="adam", batch_size=2, max_iter=2)
    a = arrseg.Segmenter(seed=4, **kw).fit(xd, y)
    b = arrseg.Segmenter(seed=4, **kw).fit(xd, y)
    c = arrseg.Segmenter(seed=5, **kw).fit(xd, y)
    assert a.n_iter_ == 2 and a.loss_curve_ == b.loss_curve_
    for p, q in zip(a.params_, b.params_):
        np.testing.assert_array_equal(p, q)
    assert a.loss_curve_ != c.loss_curve_
