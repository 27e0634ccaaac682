"""Progress bars (tqdm) on standard error.

Training: :class:`arrseg.Segmenter` with ``verbose=True`` reports each
iteration to a progress object made by
``arrseg.estimator.training.Progress(total)`` (methods ``update(it, loss,
score=None)`` and ``close()``). :func:`fit_progress` puts a tqdm bar of the
same interface in its place for the duration of one ``fit``.

Without tqdm (the ``cli`` extra) training shows the library's own one-line
bar and prediction none; a note says what to install.
"""

from __future__ import annotations

import contextlib
import sys

from ..io.errors import CLI_EXTRA, MissingDependencyError, optional_import

__all__ = ["FitBar", "bar", "fit_progress"]


def _tqdm(quiet):
    """tqdm's class, or None (quiet, or tqdm missing: then say so once)."""
    if quiet:
        return None
    try:
        return optional_import("tqdm", "progress bars").tqdm
    except MissingDependencyError:
        print(f"arrseg: note: progress bars need tqdm: {CLI_EXTRA}", file=sys.stderr)
        return None


class FitBar:
    """A tqdm bar with the interface of ``arrseg.estimator.training.Progress``.

    Parameters
    ----------
    tqdm : class
    total : int
        The iterations (``max_iter``).
    """

    def __init__(self, tqdm, total, stream=None, **_):
        self.bar = tqdm(total=total, desc="train", unit="it", file=sys.stderr,
                        dynamic_ncols=True, leave=True)

    def update(self, it, loss, score=None):
        """Iteration ``it`` done, with its training loss (and validation mIoU)."""
        post = {"loss": f"{loss:.4g}"}
        if score is not None:
            post["val mIoU"] = f"{score:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(it - self.bar.n)

    def close(self):
        """Close the bar (the line stays)."""
        self.bar.close()


@contextlib.contextmanager
def fit_progress(quiet):
    """Show a tqdm bar during a ``Segmenter.fit`` run inside the block.

    Yields
    ------
    bool
        Whether to fit with ``verbose=True`` (False when ``quiet``).
    """
    if quiet:
        yield False
        return
    tqdm = _tqdm(quiet)
    if tqdm is None:
        yield True                  # the library's own bar
        return
    from ..estimator import training

    original = training.Progress
    training.Progress = lambda total, *a, **k: FitBar(tqdm, total)
    try:
        yield True
    finally:
        training.Progress = original


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, text, refresh=True):
        pass

    def close(self):
        pass


def bar(total, desc, unit, quiet, *, leave=True):
    """A tqdm bar (or a stand-in that shows nothing) of ``total`` steps;
    ``leave=False`` erases it when closed (a bar inside another)."""
    tqdm = _tqdm(quiet)
    if tqdm is None:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                leave=leave)
