"""Threads for the blocked NumPy path, with BLAS held to one thread in each.

NumPy's ufunc loops and BLAS calls release the GIL, so Python threads that
each work through their own blocks of pixels run in parallel. BLAS is held
to one thread for the duration (threadpoolctl), or its own threads would
compete with ours for the same cores.

The number of threads is ``ARRSEG_NUM_THREADS`` if set, else the number of
CPUs this process may run on. Calls from several user threads run one after
the other (each already uses every core).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np

__all__ = ["num_threads", "parallel_map"]


def num_threads():
    """Threads the blocked path uses: ``ARRSEG_NUM_THREADS`` or the CPU count."""
    value = os.environ.get("ARRSEG_NUM_THREADS")
    if value is not None:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(
                f"ARRSEG_NUM_THREADS must be a positive integer, got {value!r}"
            )
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@cache
def _pool(n):
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="arrseg")


@cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


#: One blocked call at a time: each already uses every core, and
#: threadpoolctl's BLAS limit is process-wide, so overlapping calls from two
#: user threads would save each other's limit of 1 as "the original" and
#: could leave BLAS single-threaded for good.
_call_lock = threading.Lock()


def blas_threads():
    """The thread counts of the loaded BLAS libraries (for tests)."""
    return [info["num_threads"] for info in _blas_controller().info()
            if info["user_api"] == "blas"]


def parallel_map(work, n_tasks):
    """Run ``work(i)`` for every i in range(n_tasks) on the threads; return
    the results in task order.

    Tasks are handed out in order to whichever thread is free; each runs
    under the caller's ``np.errstate``. Exceptions propagate.
    """
    n = max(1, min(num_threads(), n_tasks))
    errstate = np.geterr()
    results = [None] * n_tasks
    tasks = iter(range(n_tasks))
    lock = threading.Lock()

    def worker():
        with np.errstate(**errstate):
            while True:
                with lock:
                    i = next(tasks, None)
                if i is None:
                    return
                results[i] = work(i)

    with _call_lock, _blas_controller().limit(limits=1, user_api="blas"):
        if n == 1:
            worker()
        else:
            for f in [_pool(n).submit(worker) for _ in range(n)]:
                f.result()
    return results
