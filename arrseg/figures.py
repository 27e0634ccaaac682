"""Figures of a trained model as PNG files (matplotlib, imported when used).

:func:`loss_curve`
    The training objective per iteration (and the validation loss, when
    there is one), on a log scale.
:func:`probability_map`
    One class's probability P_j as a colour map with a colour bar.

Both write with matplotlib's Agg backend (no display needed), to a
temporary file renamed into place when complete
(:func:`arrseg.io.writers.atomic_path`). The pictures of images, labels
and overlays need no figure: :mod:`arrseg.io.render` makes their pixels.
"""

from __future__ import annotations

import os

from .io.errors import optional_import
from .io.writers import atomic_path

__all__ = ["loss_curve", "probability_map"]


def _pyplot():
    matplotlib = optional_import("matplotlib", "writing figures")
    from matplotlib.figure import Figure    # no pyplot state, no GUI backend

    return matplotlib, Figure


def _save(fig, path, dpi):
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:
            fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")


def loss_curve(model, path, *, dpi=100):
    """Write the loss curve of a fitted :class:`arrseg.Segmenter` as a PNG.

    Parameters
    ----------
    model : Segmenter
        Fitted (``loss_curve_``, and ``validation_loss_curve_`` if any).
    path : str or os.PathLike
    dpi : int, default 100
    """
    _, Figure = _pyplot()
    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    its = range(1, len(model.loss_curve_) + 1)
    ax.plot(its, model.loss_curve_, label="training objective")
    val = getattr(model, "validation_loss_curve_", [])
    if val:
        ax.plot(range(1, len(val) + 1), val, label="validation loss")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"{model.optimizer}, {len(model.loss_curve_)} iterations")
    _save(fig, os.fspath(path), dpi)


def probability_map(P_j, path, *, title=None, dpi=100):
    """Write one class's probabilities (H, W), values in [0, 1], as a PNG
    colour map with a colour bar.

    Parameters
    ----------
    P_j : array, (H, W)
    path : str or os.PathLike
    title : str, optional
    dpi : int, default 100
    """
    import numpy as np

    _, Figure = _pyplot()
    H, W = np.shape(P_j)
    fig = Figure(figsize=(4 * W / max(H, W) + 1, 4 * H / max(H, W)))
    ax = fig.add_subplot()
    im = ax.imshow(np.asarray(P_j), vmin=0, vmax=1, cmap="viridis",
                   interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    _save(fig, os.fspath(path), dpi)
