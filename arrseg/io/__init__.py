"""Image files in and result files out, for the command line (and you).

:func:`read_image`, :func:`read_labels`
    PNG, TIFF, JPEG and .npy files as (C, H, W) images and int64 (H, W)
    label images (:mod:`arrseg.io.readers`).
:mod:`arrseg.io.writers`
    TIFF, .npy and PNG files written whole or not at all.
:mod:`arrseg.io.render`
    Class colours, overlays and the entropy of the probabilities.

The file formats need the ``cli`` extra (tifffile, Pillow), imported when a
file needs them; without it a :class:`MissingDependencyError` says what to
install. Importing :mod:`arrseg.io` imports neither.
"""

from .errors import CLI_EXTRA, FileFormatError, MissingDependencyError
from .readers import IMAGE_SUFFIXES, read_image, read_labels

__all__ = ["CLI_EXTRA", "FileFormatError", "IMAGE_SUFFIXES", "MissingDependencyError",
           "read_image", "read_labels"]
