"""Images on disk as lazy dask arrays, and results written back chunk by chunk.

:func:`open_image`
    A Zarr array (format 2 or 3, or one array of a group) or a TIFF file,
    as a dask array whose chunks are the store's own chunks, or multiples
    of them: each dask task reads whole store chunks, and nothing but the
    metadata is read until the array is computed.
:func:`write_zarr`
    A dask array into a Zarr array whose chunks *equal* the dask chunks.

Why the chunks must line up when writing: a Zarr chunk is one compressed
object, rewritten whole. Two dask tasks writing different parts of the same
Zarr chunk at once each read it, change their part and write it back, and
one of the two changes is lost, silently. So the Zarr chunks written here
equal the dask chunks, and an existing Zarr array is written into only
when every dask chunk covers whole Zarr chunks (for a sharded array, whole
shards)::

    dask chunks along an axis   256 256 256 232       (regular: all equal
    Zarr chunks along it        256 256 256 232        but a smaller last)

TIFF files are read through tifffile's Zarr interface
(``tifffile.imread(path, aszarr=True)``): a tiled TIFF's tiles (or a
striped TIFF's strips) are its chunks. That store holds an open file and a
lock, which cannot be pickled; the dask array reads it through
:class:`TiffSource`, which opens the file again in each process that reads
it, so the array also works on a ``dask.distributed`` cluster.
"""

from __future__ import annotations

import os
import threading
import weakref

import numpy as np

from ..io.errors import FileFormatError, MissingDependencyError, optional_import

__all__ = ["TiffSource", "open_image", "store_chunks", "write_zarr"]

#: File extensions read as TIFF by :func:`open_image` (anything else is Zarr).
TIFF_SUFFIXES = (".tif", ".tiff")
#: How to install what this module needs besides tifffile.
DASK_EXTRA = 'pip install "arrseg[dask]"'


def _dask_array():
    try:
        import dask.array as da
    except ImportError:
        raise MissingDependencyError("reading and writing images in chunks needs the "
                                     "optional package dask, which is not installed: "
                                     f"{DASK_EXTRA}") from None
    return da


def _zarr():
    """zarr-python 3 (it reads and writes formats 2 and 3; tifffile's Zarr
    stores need it too)."""
    try:
        import zarr
    except ImportError:
        raise MissingDependencyError("Zarr stores need the optional package zarr, "
                                     f"which is not installed: {DASK_EXTRA}") from None
    if int(zarr.__version__.split(".")[0]) < 3:
        raise MissingDependencyError(f"arrseg needs zarr>=3, found zarr "
                                     f"{zarr.__version__}: {DASK_EXTRA}")
    return zarr


def _is_tiff(path):
    return os.path.splitext(os.fspath(path).rstrip("/\\"))[1].lower() in TIFF_SUFFIXES


def store_chunks(z):
    """The chunks of a Zarr array that a writer rewrites whole: its shards
    when it is sharded, else its chunks.

    Examples
    --------
    >>> import zarr
    >>> store_chunks(zarr.create_array({}, shape=(100, 60), chunks=(10, 30),
    ...                                dtype="f4"))
    (10, 30)
    """
    shards = getattr(z, "shards", None)
    return tuple(int(c) for c in (shards if shards is not None else z.chunks))


# -- reading ----------------------------------------------------------------------


class TiffSource:
    """One TIFF image as an array-like that dask can slice and pickle.

    Parameters
    ----------
    path : str
    series, level : int
        tifffile's image series and pyramid level (0: the first, full size).

    Attributes
    ----------
    shape, dtype, ndim, chunks
        Of the image as tifffile's Zarr store holds it, in the file's axis
        order (e.g. tifffile's ``"YX"``, ``"QYX"``, ``"YXS"``).

    Notes
    -----
    ``source[index]`` reads through ``tifffile.imread(path, aszarr=True)``
    opened once per process (and per unpickled copy), and closed when the
    source is garbage-collected; tifffile's store locks the file during
    each read, so threads may share it.
    """

    def __init__(self, path, series=0, level=0):
        self.path = os.fspath(path)
        self.series, self.level = int(series), int(level)
        self._local = None
        self._lock = threading.Lock()
        z = self._array()                      # metadata only
        self.shape, self.dtype, self.ndim = tuple(z.shape), z.dtype, z.ndim
        self.chunks = store_chunks(z)

    def _array(self):
        with self._lock:
            if self._local is None:
                zarr = _zarr()
                tifffile = optional_import("tifffile", "reading TIFF files")
                store = tifffile.imread(self.path, aszarr=True, series=self.series,
                                        level=self.level)
                try:
                    self._local = zarr.open(store, mode="r")
                except BaseException:
                    store.close()
                    raise
                # the file stays open while this source lives; closed with it
                weakref.finalize(self, store.close)
            return self._local

    def __getitem__(self, index):
        return self._array()[index]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_local"], state["_lock"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _tiff_axes(path, series):
    tifffile = optional_import("tifffile", "reading TIFF files")
    with tifffile.TiffFile(path) as tif:
        return tif.series[series].axes


def _open_zarr(path, component):
    """The zarr.Array at ``path`` (and ``component``), metadata only."""
    zarr = _zarr()
    if hasattr(path, "chunks") and hasattr(path, "shape"):    # already an array
        return path
    p = os.fspath(path)
    if not os.path.exists(p) and "://" not in p:
        raise FileFormatError(f"{p}: no such file or Zarr store")
    try:
        node = zarr.open(p, mode="r", path=component) if component else \
            zarr.open(p, mode="r")
    except (FileNotFoundError, zarr.errors.BaseZarrError, KeyError, ValueError) as e:
        what = f"{p} (component {component!r})" if component else p
        raise FileFormatError(f"{what}: not a readable Zarr array "
                              f"({' '.join(str(e).split())[:160]})") from None
    if not hasattr(node, "chunks"):
        arrays = sorted(node.array_keys())
        raise FileFormatError(f"{p}: is a Zarr group, not an array; name one of its "
                              f"arrays with component= (or its path, {p}/NAME); "
                              f"its arrays: {', '.join(arrays) or 'none'}")
    return node


def _spatial_chunks(chunks, shape, store, what):
    """The dask chunk sizes along H and W (the last two axes): ``chunks``
    (int, or (h, w); -1 for a whole axis) checked against the store's
    chunks, or the store's own."""
    H, W = shape[-2:]
    sh, sw = store[-2:]
    if chunks is None:
        return sh, sw
    pair = (chunks, chunks) if isinstance(chunks, (int, np.integer)) else tuple(chunks)
    if len(pair) != 2 or not all(isinstance(c, (int, np.integer)) for c in pair):
        raise ValueError(f"chunks must be an int or a pair (rows, columns) of ints, "
                         f"got {chunks!r}")
    out = []
    for c, n, s, axis in zip(pair, (H, W), (sh, sw), ("rows", "columns")):
        c = n if c == -1 else int(c)
        if c < 1:
            raise ValueError(f"chunks must be positive (or -1 for a whole axis), got "
                             f"{chunks!r}")
        if c % s and c < n:
            raise ValueError(
                f"chunks {chunks!r}: {c} {axis} is not a multiple of the chunks of "
                f"{what} ({s} {axis}); a dask chunk must cover whole stored chunks "
                f"(use a multiple of {s}, or -1 for the whole axis)")
        out.append(min(c, n))
    return tuple(out)


def open_image(path, *, chunks=None, component=None):
    """An image in a Zarr store or a TIFF file, as a lazy dask array.

    Parameters
    ----------
    path : str, os.PathLike or zarr.Array
        A ``.tif``/``.tiff`` file (tifffile's first series, full size), or
        anything else: a Zarr store (format 2 or 3) holding an array, or a
        group with ``component``.
    chunks : int or (int, int), optional
        The dask chunks along H and W (-1: the whole axis). Each must be a
        multiple of the store's chunks (its shards, when sharded) along
        that axis, or cover the axis, so that every task reads whole
        stored chunks. Default: the store's chunks.
    component : str, optional
        The array's path inside a Zarr group.

    Returns
    -------
    dask.array.Array
        A Zarr array as it is stored, (H, W), (C, H, W) or (N, C, H, W); a
        TIFF as (C, H, W), like :func:`arrseg.io.read_image` (every axis but
        Y and X, e.g. pages or samples, becomes a channel). The channel
        axis is one chunk (the network reads every channel of a pixel);
        the other leading axes keep the store's chunks. Nothing but
        metadata is read until it is computed.

    Raises
    ------
    arrseg.io.FileFormatError
        A missing or unreadable store or file, a group without
        ``component``, or an array of other than 2 to 4 axes.
    ValueError
        ``chunks`` that are not multiples of the store's chunks.
    arrseg.io.MissingDependencyError
        dask or zarr (>= 3) missing (the ``dask`` extra), or tifffile (the
        ``cli`` extra) for a TIFF.

    Examples
    --------
    >>> import os, tempfile, numpy as np, zarr
    >>> from arrseg.dask import open_image
    >>> path = os.path.join(tempfile.mkdtemp(), "image.zarr")
    >>> z = zarr.create_array(path, shape=(3, 500, 600), chunks=(1, 128, 128),
    ...                       dtype="f4")
    >>> z[:] = 1
    >>> x = open_image(path)
    >>> x.shape, x.chunksize
    ((3, 500, 600), (3, 128, 128))
    >>> open_image(path, chunks=256).chunks[1:]
    ((256, 244), (256, 256, 88))
    >>> open_image(path, chunks=200)
    Traceback (most recent call last):
    ...
    ValueError: chunks 200: 200 rows is not a multiple of the chunks of ...
    """
    da = _dask_array()
    if not hasattr(path, "chunks") and _is_tiff(path):
        return _open_tiff(da, os.fspath(path), chunks, component)
    z = _open_zarr(path, component)
    what = os.fspath(path) if not hasattr(path, "chunks") else "the Zarr array"
    if not 2 <= z.ndim <= 4:
        raise FileFormatError(f"{what}: arrseg reads (H, W), (C, H, W) and (N, C, H, W) "
                              f"arrays, this one has shape {z.shape}")
    store = store_chunks(z)
    h, w = _spatial_chunks(chunks, z.shape, store, what)
    lead = list(store[:-2])                 # N: as stored; C: whole
    if z.ndim >= 3:
        lead[-1] = z.shape[-3]
    return da.from_zarr(z, chunks=tuple(lead) + (h, w))


def _open_tiff(da, path, chunks, component):
    if component is not None:
        raise ValueError(f"component is for Zarr groups, not TIFF files ({path})")
    if not os.path.isfile(path):
        raise FileFormatError(f"{path}: no such file" if not os.path.exists(path)
                              else f"{path}: not a file")
    tifffile = optional_import("tifffile", "reading TIFF files")
    try:
        axes = _tiff_axes(path, 0)
        source = TiffSource(path)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as e:
        raise FileFormatError(f"{path}: not a readable TIFF file "
                              f"({' '.join(str(e).split())[:160]})") from None
    if len(axes) != source.ndim or "Y" not in axes or "X" not in axes:
        raise FileFormatError(f"{path}: cannot tell the image's rows and columns in "
                              f"a TIFF of axes {axes!r} and shape {source.shape}")
    y, x = axes.index("Y"), axes.index("X")
    others = [i for i in range(source.ndim) if i not in (y, x)]
    # chunks in the file's axis order: the other axes whole, Y and X as asked
    h, w = _spatial_chunks(chunks, (source.shape[y], source.shape[x]),
                           (source.chunks[y], source.chunks[x]), path)
    file_chunks = [source.shape[i] for i in range(source.ndim)]
    file_chunks[y], file_chunks[x] = h, w
    a = da.from_array(source, chunks=tuple(file_chunks), lock=False, asarray=True,
                      meta=np.empty((0,) * source.ndim, dtype=source.dtype),
                      name=f"tiff-{tokenize_path(path)}")
    a = a.transpose(others + [y, x])         # (..., H, W)
    return a.reshape((-1,) + a.shape[-2:])   # (C, H, W); the leading axes are one chunk


def tokenize_path(path):
    """A token of a file's path, size and modification time (a new token
    when the file changes, so dask never reuses stale results)."""
    from dask.base import tokenize

    st = os.stat(path)
    return tokenize(os.path.abspath(path), st.st_size, st.st_mtime_ns)


# -- writing ----------------------------------------------------------------------


def _regular(chunks):
    """Every chunk of each axis equal, but a smaller last one."""
    return all(all(c == axis[0] for c in axis[:-1]) and axis[-1] <= axis[0]
               for axis in chunks if axis)


def _check_aligned(array_chunks, z):
    """Each dask chunk covers whole chunks (shards) of the Zarr array ``z``."""
    zc = store_chunks(z)
    for axis, (dask_axis, size) in enumerate(zip(array_chunks, zc)):
        edges = np.cumsum(dask_axis)[:-1]          # inner boundaries
        bad = edges[edges % size != 0]
        if bad.size:
            raise ValueError(
                f"the dask chunks {tuple(map(tuple, array_chunks))} are not aligned "
                f"to the Zarr array's chunks {zc} (axis {axis}: a boundary at "
                f"{int(bad[0])}); misaligned chunks silently corrupt concurrent "
                "writes: rechunk the dask array to multiples of the Zarr chunks "
                "(array.rechunk(...))")


def write_zarr(array, path, *, overwrite=False, compute=True):
    """Write a dask array to Zarr, each dask chunk into its own Zarr chunk.

    Parameters
    ----------
    array : dask.array.Array
        With regular chunks: along each axis all chunks equal but a smaller
        last one (``array.chunksize`` is then the Zarr chunk shape). Rechunk
        others first, e.g. ``array.rechunk(array.chunksize)``.
    path : str, os.PathLike or zarr.Array
        A new Zarr store (format 3, the default compression), created with
        ``chunks == array.chunksize``; or an existing ``zarr.Array`` of the
        same shape to write into, whose chunks (its shards, when sharded)
        every dask chunk must cover whole.
    overwrite : bool, default False
        Replace an existing store at ``path``; without it an existing path
        is refused.
    compute : bool, default True
        Write now; else return the delayed write, for one ``dask.compute``
        together with other writes of the same graph.

    Returns
    -------
    zarr.Array or dask.delayed.Delayed
        The written array, or the delayed write.

    Raises
    ------
    TypeError
        ``array`` is not a dask array.
    ValueError
        Irregular chunks; an existing Zarr array of another shape or with
        chunks not aligned to the dask chunks.
    FileExistsError
        ``path`` exists and ``overwrite`` is False.

    Examples
    --------
    >>> import os, tempfile, numpy as np, dask.array as da
    >>> from arrseg.dask import write_zarr
    >>> x = da.from_array(np.arange(12.0).reshape(3, 4), chunks=(2, 3))
    >>> z = write_zarr(x, os.path.join(tempfile.mkdtemp(), "out.zarr"))
    >>> z.chunks, bool((z[:] == np.arange(12.0).reshape(3, 4)).all())
    ((2, 3), True)
    >>> write_zarr(x.rechunk(((1, 2), (3, 1))), os.path.join(tempfile.mkdtemp(), "o"))
    Traceback (most recent call last):
    ...
    ValueError: write_zarr needs regular chunks ...
    """
    da = _dask_array()
    zarr = _zarr()
    if not isinstance(array, da.Array):
        raise TypeError(f"array must be a dask array, got {type(array).__name__}")
    if not _regular(array.chunks):
        raise ValueError(
            f"write_zarr needs regular chunks (along each axis all equal but a smaller "
            f"last one), got {tuple(map(tuple, array.chunks))}; rechunk first, e.g. "
            f"array.rechunk({array.chunksize})")
    if hasattr(path, "chunks") and hasattr(path, "shape"):      # an existing array
        z = path
        if tuple(z.shape) != tuple(array.shape):
            raise ValueError(f"the Zarr array has shape {tuple(z.shape)} but the dask "
                             f"array {tuple(array.shape)}")
        _check_aligned(array.chunks, z)
    else:
        p = os.fspath(path)
        if os.path.exists(p) and not overwrite:
            raise FileExistsError(f"{p}: exists; pass overwrite=True to replace it")
        z = zarr.create_array(p, shape=array.shape, chunks=array.chunksize,
                              dtype=array.dtype, overwrite=overwrite)
    # chunk i of the dask array -> chunk i of z: no two tasks share a Zarr
    # chunk, so no lock
    stored = da.store(array, z, lock=False, compute=compute)
    return z if compute else stored
