"""Reading images and label images from files, as the library's arrays.

An image becomes a (C, H, W) NumPy array in its file's dtype (uint8,
uint16, float32, ...; the :class:`arrseg.Segmenter` normalises it); a label
image becomes an int64 (H, W) array. The format follows the file's
extension::

    .png              Pillow: grey (L, I;16), grey + alpha, RGB, RGBA,
                      palette (indices for labels, colours for images)
    .jpg .jpeg        Pillow: grey or RGB
    .tif .tiff        tifffile: 8/16/32-bit integers, float, BigTIFF; the
                      axes other than Y and X (pages, samples, ...) become
                      the channels
    .npy              NumPy (no pickle): (H, W) or (C, H, W)

Pillow and tifffile are imported when a file needs them (the ``cli``
extra, :data:`arrseg.io.errors.CLI_EXTRA`).
"""

from __future__ import annotations

import os

import numpy as np

from .errors import FileFormatError, optional_import

__all__ = ["IMAGE_SUFFIXES", "read_image", "read_labels"]

#: File extensions read by :func:`read_image` and :func:`read_labels`.
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy")

#: Images larger than this many pixels (H * W) are refused before reading
#: them whole (a corrupt header, or a file that is not an image).
MAX_PIXELS = 2**34


def _suffix(path):
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in IMAGE_SUFFIXES:
        shown = suffix or "no extension"
        raise FileFormatError(f"{path}: unsupported format ({shown}); arrseg reads "
                              f"{', '.join(IMAGE_SUFFIXES)}")
    return suffix


def _open_check(path):
    """Refuse a missing, unreadable or non-regular file in one clear line."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileFormatError(f"{p}: no such file")
    if os.path.isdir(p):
        raise FileFormatError(f"{p}: is a folder, not an image file")
    if not os.access(p, os.R_OK):
        raise FileFormatError(f"{p}: permission denied")


def _read_npy(path):
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise FileFormatError(f"{path}: not a readable .npy file ({_short(e)})") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
        raise FileFormatError(f"{path}: .npy must hold a numeric array, got dtype "
                              f"{getattr(a, 'dtype', type(a).__name__)}")
    return a, "CYX"[-a.ndim:] if a.ndim in (2, 3) else None


def _png_header(path):
    """(bit depth, colour type) of a PNG file, read from its IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return head[24], head[25]


def _read_pillow(path, labels):
    Image = optional_import("PIL.Image", "reading PNG and JPEG files")
    header = _png_header(path) if path.lower().endswith(".png") else None
    if header is not None and header[0] == 16 and header[1] in (2, 6):
        raise FileFormatError(
            f"{path}: a 16-bit colour PNG, which Pillow reads as 8-bit (it would "
            "lose the low 8 bits); save it as a 16-bit TIFF instead")
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode == "P" and not labels:      # palette colours for an image
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode == "P":                   # palette indices for labels
                pass
            elif mode == "CMYK" or mode.startswith("YCbCr") or mode == "LAB":
                im = im.convert("RGB")
            elif mode == "1":
                im = im.convert("L")
            elif mode == "PA":
                im = im.convert("RGBA")
            a = np.array(im)
    except (OSError, ValueError, SyntaxError) as e:   # Pillow's decoding errors
        raise FileFormatError(f"{path}: not a readable image ({_short(e)})") from None
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    return a, "YX" if a.ndim == 2 else "YXS"


def _read_tiff(path):
    tifffile = optional_import("tifffile", "reading TIFF files")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            shape = series.shape
            pixels = int(np.prod([n for n, ax in zip(shape, axes) if ax in "YX"],
                                 dtype=np.float64))
            if pixels > MAX_PIXELS:
                raise FileFormatError(f"{path}: {shape} pixels is more than arrseg "
                                      f"reads ({MAX_PIXELS})")
            a = series.asarray()
    except FileFormatError:
        raise
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as e:
        raise FileFormatError(f"{path}: not a readable TIFF file ({_short(e)})") from None
    return a, axes


def _short(e):
    text = " ".join(str(e).split())
    return text[:160] or type(e).__name__


def _as_chw(a, axes, path):
    """(C, H, W) from an array and its axes' letters (Y, X and any others)."""
    if axes is None or "Y" not in axes or "X" not in axes or a.ndim != len(axes):
        raise FileFormatError(f"{path}: cannot tell the image's rows and columns "
                              f"in an array of shape {a.shape}; arrseg reads "
                              "(H, W) and (C, H, W) arrays")
    y, x = axes.index("Y"), axes.index("X")
    others = [i for i in range(a.ndim) if i not in (y, x)]
    a = np.transpose(a, others + [y, x])            # (..., H, W)
    H, W = a.shape[-2:]
    return np.ascontiguousarray(a.reshape(-1, H, W))


def _read(path, labels):
    _open_check(path)
    suffix = _suffix(path)
    p = os.fspath(path)
    try:
        if suffix == ".npy":
            a, axes = _read_npy(p)
        elif suffix in (".tif", ".tiff"):
            a, axes = _read_tiff(p)
        else:
            a, axes = _read_pillow(p, labels)
    except PermissionError:
        raise FileFormatError(f"{p}: permission denied") from None
    except MemoryError:
        raise FileFormatError(f"{p}: too large to read into memory") from None
    if a.dtype.kind not in "biuf":
        raise FileFormatError(f"{p}: unsupported pixel type {a.dtype}")
    chw = _as_chw(a, axes, p)
    if 0 in chw.shape:
        raise FileFormatError(f"{p}: the image is empty (shape {a.shape})")
    return chw


def read_image(path):
    """An image file as a (C, H, W) array.

    Parameters
    ----------
    path : str or os.PathLike
        A .png, .tif/.tiff, .jpg/.jpeg or .npy file (see the module
        docstring).

    Returns
    -------
    ndarray, shape (C, H, W)
        In the file's dtype (bool becomes uint8). C is 1 for a grey image,
        3 for RGB, 4 for RGBA, the number of pages (or samples) of a
        multi-page TIFF.

    Raises
    ------
    arrseg.io.errors.FileFormatError
        Missing or unreadable file, unsupported format; the message names
        the file.
    arrseg.io.errors.MissingDependencyError
        Pillow (PNG, JPEG) or tifffile (TIFF) not installed.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from arrseg.io import read_image
    >>> folder = tempfile.mkdtemp()
    >>> np.save(os.path.join(folder, "a.npy"), np.zeros((5, 7), np.uint16))
    >>> read_image(os.path.join(folder, "a.npy")).shape
    (1, 5, 7)
    """
    a = _read(path, labels=False)
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    return a


def read_labels(path):
    """A label image file as an int64 (H, W) array of class indices.

    Parameters
    ----------
    path : str or os.PathLike
        One channel of integers (a palette PNG gives its indices); a float
        file is accepted when every value is a whole number.

    Returns
    -------
    ndarray, int64, shape (H, W)

    Raises
    ------
    arrseg.io.errors.FileFormatError
        As :func:`read_image`, and for a label image of several channels
        or of non-integer values.
    """
    a = _read(path, labels=True)
    p = os.fspath(path)
    if a.shape[0] != 1:
        raise FileFormatError(f"{p}: a label image must have one channel of class "
                              f"indices, this one has {a.shape[0]} (shape "
                              f"{a.shape}); an RGB label image must be converted "
                              "to indices first")
    a = a[0]
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all() or np.any(a != np.round(a)) or np.any(np.abs(a) > 2**53):
            raise FileFormatError(f"{p}: label images must hold whole numbers (class "
                                  f"indices), this one holds {a.dtype} values such as "
                                  f"{a[(a != np.round(a)) | ~finite][:3].tolist()}")
    elif a.dtype == np.uint64 and a.size and int(a.max()) > np.iinfo(np.int64).max:
        raise FileFormatError(f"{p}: label values above 2**63 - 1")
    return a.astype(np.int64)
