"""Writing result files whole or not at all.

Every writer here writes to a temporary file in the target's folder and
renames it to the target (:func:`os.replace`) once it is complete; on any
error or on Ctrl-C (``KeyboardInterrupt``) the temporary file is removed.
So a result file, when it exists, is complete, and an existing file is
replaced only by a complete one.

Formats::

    write_tiff   float32 or integer (pages, H, W): one page per plane
                 (tifffile; BigTIFF when it passes 4 GiB)
    write_npy    any array, NumPy's format
    write_png    uint8 or uint16 (H, W), uint8 (H, W, 3 or 4) (Pillow)
"""

from __future__ import annotations

import contextlib
import os
import secrets

import numpy as np

from .errors import FileFormatError, optional_import

__all__ = ["atomic_path", "check_folder", "write_npy", "write_png", "write_tiff"]


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside ``path``, renamed to ``path`` on success.

    Parameters
    ----------
    path : str or os.PathLike

    Yields
    ------
    str
        The temporary file's path (``.{name}.{random}.part`` in the same
        folder), for the writer to create.

    Raises
    ------
    arrseg.io.errors.FileFormatError
        When the file cannot be written (the message names ``path``).

    Examples
    --------
    >>> import os, pathlib, tempfile
    >>> from arrseg.io.writers import atomic_path
    >>> target = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> with atomic_path(target) as tmp:
    ...     with open(tmp, "w") as f:
    ...         _ = f.write("done")
    >>> pathlib.Path(target).read_text()
    'done'
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            reason = e.strerror or " ".join(str(e).split()) or type(e).__name__
            raise FileFormatError(f"{path}: cannot write ({reason})") from None
        raise


def check_folder(folder, *, create=True):
    """Make sure results can be written in ``folder``.

    Parameters
    ----------
    folder : str or os.PathLike
    create : bool, default True
        Create the folder (and its parents) when it does not exist.

    Raises
    ------
    arrseg.io.errors.FileFormatError
        When it is not a folder, cannot be created or cannot be written.
    """
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise FileFormatError(f"{folder}: the output folder is a file")
    try:
        if create:
            os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".arrseg-write-test.{secrets.token_hex(4)}")
        with open(probe, "xb"):
            pass
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise FileFormatError(f"{folder}: the output folder cannot be written "
                              f"({reason})") from None


def write_npy(path, a):
    """Write ``a`` in NumPy's .npy format, whole or not at all."""
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:
            np.save(f, np.asarray(a), allow_pickle=False)


def write_tiff(path, a, *, description=None):
    """Write a (pages, H, W) or (H, W) array as a (multi-page) TIFF.

    Parameters
    ----------
    path : str or os.PathLike
    a : ndarray
        Written in its dtype (float32 probabilities, integer labels), one
        page per plane; BigTIFF when the data passes 4 GiB - 32 MiB.
    description : str, optional
        The TIFF's ImageDescription.
    """
    tifffile = optional_import("tifffile", "writing TIFF files")
    a = np.asarray(a)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, a, bigtiff=a.nbytes > 2**32 - 2**25,
                         photometric="minisblack", description=description,
                         metadata=None)


def write_png(path, a):
    """Write uint8/uint16 grey (H, W) or uint8 RGB(A) (H, W, 3 or 4) as PNG."""
    Image = optional_import("PIL.Image", "writing PNG files")
    a = np.asarray(a)
    if a.dtype not in (np.uint8, np.uint16) or a.ndim not in (2, 3) or (
            a.ndim == 3 and (a.dtype != np.uint8 or a.shape[2] not in (3, 4))):
        raise FileFormatError(f"{path}: PNG holds uint8/uint16 grey or uint8 RGB(A) "
                              f"images, not {a.dtype} of shape {a.shape}")
    with atomic_path(path) as tmp:
        im = Image.fromarray(a)
        with open(tmp, "xb") as f:
            im.save(f, format="PNG")
