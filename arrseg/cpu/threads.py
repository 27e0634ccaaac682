"""Threads for the blocked NumPy path, with BLAS held to one thread in each.

NumPy's ufunc loops and BLAS calls release the GIL, so Python threads that
each work through their own blocks of pixels run in parallel. BLAS is held
to one thread for the duration (threadpoolctl), or its own threads would
compete with ours for the same cores.

The number of threads is ``ARRSEG_NUM_THREADS`` if set, else the number of
CPUs this process may run on. Calls from several user threads run one after
the other (each already uses every core).

Fork safety: a child made by ``fork`` has only the thread that forked, but
inherits the parent's memory, so a cached pool whose threads are gone would
take work and never run it, and a lock held by another parent thread would
stay held. Hooks registered with :func:`os.register_at_fork` keep this
module usable in such a child:

- before the fork, the forking thread waits for the running call (if any) to
  end, by taking the call lock (not when it is itself inside a call: a work
  item that forks would wait for itself); after it, the parent releases it;
- in the child, the pool and the threadpoolctl controller are dropped (made
  anew on first use) and the call lock is a new, free lock.

A fork from inside a call (a work item that forks) leaves the child's BLAS
at one thread: the limit is restored by the calling thread, which the child
does not have.
"""

from __future__ import annotations

import contextlib
import os
import threading
# Imported before the fork hooks below are registered, so that its own
# before-fork hook (which takes concurrent.futures' global shutdown lock, also
# taken by submit) runs after ours: hooks run in reverse order of
# registration, and ours may wait for a call that is still submitting.
from concurrent.futures import ThreadPoolExecutor, wait
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

#: ``in_call``: this thread runs a call of parallel_map (as the caller or as
#: one of the pool's threads); ``holds_for_fork``: the before-fork hook took
#: the call lock in this thread.
_this_thread = threading.local()


@contextlib.contextmanager
def _in_call():
    """Mark this thread as inside a call while the block runs."""
    outer = getattr(_this_thread, "in_call", False)
    _this_thread.in_call = True
    try:
        yield
    finally:
        _this_thread.in_call = outer


def _before_fork():
    # wait for a running call to end, so that the child starts with the lock
    # free and BLAS back at its own thread count
    take = not getattr(_this_thread, "in_call", False)
    if take:
        _call_lock.acquire()
    _this_thread.holds_for_fork = take


def _after_fork_in_parent():
    if getattr(_this_thread, "holds_for_fork", False):
        _this_thread.holds_for_fork = False
        _call_lock.release()


def _after_fork_in_child():
    # the pool's threads and any holder of the lock stayed in the parent
    global _call_lock
    _call_lock = threading.Lock()
    _this_thread.holds_for_fork = False
    _pool.cache_clear()
    _blas_controller.cache_clear()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def blas_threads():
    """The thread counts of the loaded BLAS libraries (for tests)."""
    return [info["num_threads"] for info in _blas_controller().info()
            if info["user_api"] == "blas"]


def parallel_map(work, n_tasks):
    """Run ``work(i)`` for every i in range(n_tasks) on the threads; return
    the results in task order.

    Tasks are handed out in order to whichever thread is free; each runs
    under the caller's ``np.errstate``. Exceptions propagate; after one (in
    a task, or a KeyboardInterrupt in the caller) no further task starts,
    and the call returns once the tasks already running have ended, so
    that no work of a failed call outlives it.
    """
    n = max(1, min(num_threads(), n_tasks))
    errstate = np.geterr()
    results = [None] * n_tasks
    tasks = iter(range(n_tasks))
    lock = threading.Lock()  # guards tasks

    def stop():
        with lock:
            for _ in tasks:  # exhaust: every thread's next() gives None
                pass

    def worker():
        with _in_call(), np.errstate(**errstate):
            while True:
                with lock:
                    i = next(tasks, None)
                if i is None:
                    return
                try:
                    results[i] = work(i)
                except BaseException:
                    stop()
                    raise

    with _call_lock, _in_call(), _blas_controller().limit(limits=1, user_api="blas"):
        if n == 1:
            worker()
        else:
            futures = [_pool(n).submit(worker) for _ in range(n)]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                stop()
                wait(futures)
                raise
    return results
