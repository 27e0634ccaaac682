"""The exceptions of :mod:`arrseg.io`.

Both carry a message meant for a person, in one line: the command line
prints it as is (``arrseg: error: MESSAGE``).
"""

from __future__ import annotations

__all__ = ["CLI_EXTRA", "FileFormatError", "MissingDependencyError", "optional_import"]

#: How to install the optional libraries of :mod:`arrseg.io` and the command line.
CLI_EXTRA = 'pip install "arrseg[cli]"'


class FileFormatError(ValueError):
    """A file cannot be read or written as asked: missing, unreadable, of an
    unsupported format, or holding what the caller cannot use (a float
    label image, a 16-bit colour PNG). The message names the file."""


class MissingDependencyError(RuntimeError):
    """An optional library (tifffile, Pillow, tqdm, matplotlib) is needed for
    what was asked and is not installed; the message says what to install."""


def optional_import(name, purpose):
    """Import the optional module ``name`` (at first use, never at import).

    Parameters
    ----------
    name : str
        The module, e.g. ``"tifffile"`` or ``"PIL.Image"``.
    purpose : str
        What it is needed for, for the message ("reading TIFF files").

    Returns
    -------
    module

    Raises
    ------
    MissingDependencyError
        When the module cannot be imported, saying which extra to install.

    Examples
    --------
    >>> optional_import("json", "reading JSON").dumps([1])
    '[1]'
    """
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        package = {"PIL": "Pillow"}.get(name.split(".")[0], name.split(".")[0])
        raise MissingDependencyError(
            f"{purpose} needs the optional package {package}, which is not "
            f"installed: {CLI_EXTRA}") from None
