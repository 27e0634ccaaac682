"""Progress bars (tqdm) on standard error.

Training: :meth:`arrseg.Segmenter.fit` reports each iteration to the object
its ``progress(total)`` argument makes (methods ``update(it, loss,
score=None)`` and ``close()``); :func:`fit_progress` gives a factory of
tqdm bars (:class:`FitBar`) for it.

Without tqdm (the ``cli`` extra) training shows the library's own one-line
bar and prediction none; a note says what to install.
"""

from __future__ import annotations

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


def fit_progress(quiet):
    """The ``progress`` argument of ``Segmenter.fit``: a factory of tqdm
    bars; the library's own one-line bar when tqdm is missing; None (no
    bar) when ``quiet``."""
    if quiet:
        return None
    tqdm = _tqdm(quiet)
    if tqdm is None:
        from ..estimator.training import Progress

        return Progress                 # the library's own bar
    return lambda total: FitBar(tqdm, total)


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
