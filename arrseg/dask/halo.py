"""The halo that lets a convolutional network run on one chunk of an image.

An output pixel reads the input pixels within p of it (p is the network's
receptive halo, :func:`arrseg.numerics.residual.receptive_halo`). So each
chunk of H x W pixels is evaluated on its *haloed* block, the chunk grown by
p on every side from its neighbours (``dask.array.overlap.overlap``), and the
p-wide border of the result is trimmed, exactly as
:mod:`arrseg.tiling` does with tiles in memory::

    chunk            rows r0 .. r1,            columns c0 .. c1
    haloed block     rows r0 - p .. r1 + p,    columns c0 - p .. c1 + p
    evaluated        the network, boundary="zeros"
    kept             the chunk's own rows and columns

At the image's true edges the halo holds what the boundary condition puts
there:

* ``"zeros"``: nothing (Dask's ``boundary="none"``): the network's own zero
  padding around the haloed block is the image's boundary there, at every
  layer.
* ``"periodic"``: the wrapped-around pixels (Dask's ``boundary="periodic"``),
  so that zero padding beyond them reaches only the trimmed border.

Dask requires every chunk to be at least p wide to take its halo from its
neighbours; :func:`plan` merges smaller chunks first, and says which chunks
the blocks are, so that the labels (training) are cut the same way and the
probabilities (prediction) can be cut back to the input's chunks. A
periodic image narrower than p in H or W cannot be wrapped by Dask: it is
evaluated whole, as one block per image, with the network's own periodic
boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Halo", "extend", "plan", "sides", "trim"]


@dataclass(frozen=True)
class Halo:
    """How an (..., H, W) dask array is cut into haloed blocks.

    Attributes
    ----------
    width : int
        p, pixels of halo on each inner side of a block.
    periodic : bool
        The image wraps around (``boundary="periodic"``).
    chunks : tuple (chunks along H, chunks along W)
        The chunks the blocks are cut into (before the halo).
    whole : bool
        Periodic and narrower than p: one block per image, no halo,
        evaluated with boundary "periodic".
    """

    width: int
    periodic: bool
    chunks: tuple
    whole: bool = False

    @property
    def boundary(self):
        """The boundary each block is evaluated with."""
        return "periodic" if self.whole else "zeros"


def _at_least(chunks, width):
    """Merge neighbouring chunks until each is >= width (the last one may be
    merged back into its left neighbour)."""
    if width == 0 or min(chunks) >= width:
        return tuple(chunks)
    out, run = [], 0
    for c in chunks:
        run += c
        if run >= width:
            out.append(run)
            run = 0
    if run:
        if out:
            out[-1] += run
        else:
            out.append(run)
    return tuple(out)


def plan(chunks_hw, shape_hw, width, boundary):
    """The blocks of an image of ``shape_hw`` chunked as ``chunks_hw``.

    Parameters
    ----------
    chunks_hw : (tuple of int, tuple of int)
        The array's chunks along H and W.
    shape_hw : (int, int)
    width : int
        p >= 0, the network's receptive halo.
    boundary : {"zeros", "periodic"}

    Returns
    -------
    Halo
    """
    periodic = boundary == "periodic"
    H, W = shape_hw
    if periodic and width > 0 and (width > H or width > W):
        return Halo(0, True, ((H,), (W,)), whole=True)
    return Halo(width, periodic, tuple(_at_least(c, width) for c in chunks_hw))


def extend(x, halo):
    """The haloed blocks of ``x`` (..., H, W): x rechunked to ``halo.chunks``
    in its last two axes (its other axes kept), then overlapped by
    ``halo.width`` (not along an axis of one chunk with zeros: it has no
    neighbours, and :func:`sides` gives it none). A lazy dask array whose
    block (..., i, j) is chunk (i, j) with its halo."""
    import dask.array as da

    lead = x.chunks[:-2]
    x = x.rechunk(lead + tuple(halo.chunks))
    if halo.width == 0:
        return x
    # an axis of one chunk has no neighbours: with zeros it takes no halo
    # (Dask refuses a depth beyond the array, which plan allows there: an
    # image narrower than p); periodic, it wraps onto itself (>= p wide)
    axes = {x.ndim - 2 + a: (halo.width if halo.periodic or len(c) > 1 else 0)
            for a, c in enumerate(halo.chunks)}
    # no rechunking by Dask: the blocks must stay halo.chunks
    return da.overlap.overlap(x, depth=axes,
                              boundary="periodic" if halo.periodic else "none",
                              allow_rechunk=False)


def sides(halo, i, j):
    """Halo pixels ((top, bottom), (left, right)) around chunk (i, j)."""
    p = halo.width

    def along(index, count):
        if halo.periodic:
            return (p, p)
        return (0 if index == 0 else p, 0 if index == count - 1 else p)

    return along(i, len(halo.chunks[0])), along(j, len(halo.chunks[1]))


def trim(block, halo_sides):
    """The chunk's own pixels of a haloed ``block`` (..., H', W')."""
    (t, b), (l, r) = halo_sides
    H, W = block.shape[-2], block.shape[-1]
    return block[..., t:H - b, l:W - r]
