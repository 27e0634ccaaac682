"""Model files: a trained network's parameters and metadata in one ``.npz``.

Format (version 1)
------------------
A model file is a NumPy ``.npz`` archive (a zip file of ``.npy`` arrays,
written by :func:`numpy.savez_compressed`, or :func:`numpy.savez` with
``compress=False``) with these entries:

============  ==================  ==============================================
entry         dtype, shape        content
============  ==================  ==============================================
``K``         float32/64 (k, C,   convolution kernels theta (PyTorch's
              s, s)               ``conv2d`` weight), s odd
``b``         same dtype, (k,)    feature biases
``W``         same dtype,         classifier weights
              (k, n_c)
``c``         same dtype, (n_c,)  classifier bias; absent when ``params.c``
                                  is None
``metadata``  uint8, (n_bytes,)   a UTF-8 encoded JSON object (below)
============  ==================  ==============================================

The JSON object holds the three keys of the format and, beside them, the
caller's metadata (hyper-parameters, normalisation mean and standard
deviation, class names, ...)::

    {"format": "arrseg-model", "format_version": 1, "arrseg_version": "0.1.0",
     ...caller's keys...}

Non-finite numbers in the metadata (a loss curve that diverged) are written
as ``NaN``, ``Infinity`` and ``-Infinity``, the extension of JSON that
Python's :mod:`json` reads and writes.

Nothing in the file is pickled: it is read with ``allow_pickle=False``, so
loading a file cannot run code, and any ``.npz`` reader (NumPy, or a zip
library and a JSON parser in another language) can read it. The arrays are
stored as NumPy arrays, whatever namespace they came from, so a file saved
from PyTorch tensors loads as CuPy arrays and the other way round.

Compatibility: a reader of format version v reads every file of version
<= v. Entries it does not know are ignored, so later versions may add
entries; a change that an older reader would misread raises the version.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from ._backend import default_namespace, namespace_of, resolve_namespace, to_numpy
from ._validation import _as_params, _check_param_shapes
from ._version import __version__
from .params import Params

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "load", "save"]

#: Value of the ``"format"`` key of every arrseg model file.
FORMAT = "arrseg-model"
#: The format version this arrseg writes, and the newest it reads.
FORMAT_VERSION = 1
#: Keys of the metadata that arrseg itself writes.
RESERVED_KEYS = ("format", "format_version", "arrseg_version")


class ModelFileError(ValueError):
    """A file cannot be loaded as an arrseg model.

    The message names the file and what is wrong with it. A missing file
    raises the subclass :class:`ModelFileNotFoundError`, which is also a
    ``FileNotFoundError``.
    """


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """The model file does not exist."""


def _json_default(obj):
    """JSON form of NumPy scalars and arrays of any namespace in metadata."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array_namespace__") or hasattr(
            obj, "__dlpack__"):
        return to_numpy(obj).tolist()
    raise TypeError(f"{type(obj).__name__} {obj!r} is not JSON serialisable")


def _metadata_bytes(metadata):
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    for key in metadata:
        if not isinstance(key, str):
            raise TypeError(f"metadata keys must be strings, got {key!r}")
    clash = [k for k in RESERVED_KEYS if k in metadata]
    if clash:
        raise ValueError(
            f"metadata must not contain the key(s) {clash}: arrseg writes them"
        )
    record = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "arrseg_version": __version__, **metadata}
    try:
        text = json.dumps(record, default=_json_default)
    except (TypeError, ValueError) as e:
        # TypeError: an object JSON has no form for; ValueError: a cycle
        raise type(e)(
            f"metadata must be JSON serialisable (dicts with string keys, lists, "
            f"strings, numbers, bools, None, arrays): {e}"
        ) from None
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def save(path, params, metadata=None, *, compress=True):
    """Write parameters and metadata to a model file (see the module's format).

    The file is written to a temporary file beside ``path`` and renamed to
    ``path`` when complete, so an interrupted save never leaves a truncated
    model file; an existing file is replaced.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write. Written as given (no ``.npz`` is appended).
    params : Params
        In any namespace and on any device; stored as NumPy arrays.
    metadata : dict, optional
        JSON-serialisable information to store beside the parameters
        (hyper-parameters, normalisation, class names). NumPy scalars and
        arrays of any namespace are stored as numbers and lists; NaN and
        infinities as JSON's ``NaN`` and ``Infinity`` extension. The keys
        ``"format"``, ``"format_version"`` and ``"arrseg_version"`` are
        arrseg's.
    compress : bool, default True
        Deflate the arrays (``numpy.savez_compressed``).

    Raises
    ------
    TypeError, ValueError
        For bad parameters (as :func:`arrseg.predict_proba`) or metadata that
        JSON cannot represent; nothing is written.

    Examples
    --------
    >>> import os, tempfile, arrseg
    >>> from arrseg import model_file
    >>> params = arrseg.init_params(3, 8, 2, seed=0)
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = os.path.join(folder.name, "disks.arrseg")
    >>> model_file.save(path, params, {"classes": ["background", "disk"],
    ...                                "activation": "tanh", "mean": [0.5, 0.5, 0.5]})
    >>> loaded, meta = model_file.load(path)
    >>> loaded.K.shape, meta["classes"], meta["format_version"]
    ((8, 3, 3, 3), ['background', 'disk'], 1)
    >>> folder.cleanup()
    """
    p = _as_params(params)
    xp = namespace_of(**{f"params.{n}": a for n, a in zip(Params._fields, p)})
    _check_param_shapes(p, xp)
    entries = {name: np.ascontiguousarray(to_numpy(a))
               for name, a in zip(Params._fields, p) if a is not None}
    entries["metadata"] = _metadata_bytes(metadata)
    path = os.fspath(path)
    # beside the target, so that the rename stays on one file system; opened
    # with open() rather than mkstemp so that the file gets the umask's mode
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            (np.savez_compressed if compress else np.savez)(f, **entries)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _open_archive(f, fail):
    """The open file as an NpzFile (nothing is read or unpickled yet)."""
    try:
        archive = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        # NumPy takes anything without the .npy or zip signature for a pickle
        detail = "" if "pickle" in str(e) else f": {e}"
        raise fail("not an .npz archive (corrupt, truncated, or another kind of "
                   f"file){detail}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise fail(f"a single .npy array, not an .npz archive of a model "
                   f"({type(archive).__name__})")
    return archive


def _read_entry(archive, name, fail):
    """One entry as a NumPy array, refusing pickled (object) arrays."""
    try:
        return archive[name]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise fail(
                f"entry {name!r} is an object array (pickled data), which arrseg "
                "never writes; refusing to unpickle it (unpickling can run "
                "arbitrary code)") from None
        raise fail(f"entry {name!r} cannot be read: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise fail(f"entry {name!r} is corrupt or truncated: {e}") from None


def _read_metadata(archive, fail):
    if "metadata" not in archive.files:
        raise fail(f"not an arrseg model file: it has no 'metadata' entry (its "
                   f"entries: {sorted(archive.files)})")
    raw = _read_entry(archive, "metadata", fail)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise fail(f"the 'metadata' entry must be UTF-8 JSON bytes (uint8, 1-d), "
                   f"got dtype {raw.dtype}, shape {raw.shape}")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise fail(f"the 'metadata' entry is not UTF-8 JSON: {e}") from None
    if not isinstance(meta, dict):
        raise fail(f"the 'metadata' entry must be a JSON object, got "
                   f"{type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise fail(f"not an arrseg model file: metadata 'format' is "
                   f"{meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise fail(f"metadata 'format_version' must be a positive integer, got "
                   f"{version!r}")
    if version > FORMAT_VERSION:
        raise fail(
            f"saved by a newer arrseg ({meta.get('arrseg_version', 'unknown')}) in "
            f"format version {version}; this arrseg ({__version__}) reads format "
            f"versions up to {FORMAT_VERSION}: upgrade arrseg to load it")
    return meta


def _read_params(archive, fail):
    missing = [n for n in ("K", "b", "W") if n not in archive.files]
    if missing:
        raise fail(f"missing parameter array(s) {missing} (its entries: "
                   f"{sorted(archive.files)})")
    arrays = []
    for name in Params._fields:
        a = _read_entry(archive, name, fail) if name in archive.files else None
        if a is not None and a.dtype.kind == "f":
            a = a.astype(a.dtype.newbyteorder("="), copy=False)  # native order
        arrays.append(a)
    p = Params(*arrays)
    try:
        _check_param_shapes(p, default_namespace())
    except (TypeError, ValueError) as e:
        raise fail(f"inconsistent parameter arrays: {e}") from None
    return p


def load(path, *, xp=None, device=None):
    """Read a model file written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
    xp : namespace, optional
        Array namespace of the returned parameters (``numpy``, ``cupy``,
        ``torch``, ``array_api_strict``, ...). Default NumPy. Any namespace
        reads a file saved from any other.
    device : device, optional
        Device of the returned parameters, for namespaces with several.

    Returns
    -------
    params : Params
        With the dtype they were saved in; ``params.c`` is None if it was.
    metadata : dict
        The caller's metadata as saved, plus ``"format"``,
        ``"format_version"`` and ``"arrseg_version"`` (the version that wrote
        the file).

    Raises
    ------
    ModelFileError
        A ``ValueError`` that names the file and what is wrong: it does not
        exist (:class:`ModelFileNotFoundError`, also a ``FileNotFoundError``),
        is not an ``.npz`` archive (corrupt or truncated), holds pickled
        object arrays, is not an arrseg model, was written by a newer arrseg
        in a newer format version, or holds missing or inconsistent
        parameter arrays.

    Examples
    --------
    >>> import os, tempfile, arrseg
    >>> import array_api_strict as xps
    >>> from arrseg import model_file
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = os.path.join(folder.name, "model.npz")
    >>> model_file.save(path, arrseg.init_params(3, 4, 2, bias=False), {"width": 4})
    >>> params, meta = model_file.load(path, xp=xps)
    >>> type(params.W).__name__, params.c, meta["width"]
    ('Array', None, 4)
    >>> model_file.load(os.path.join(folder.name, "missing.npz"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    arrseg.model_file.ModelFileNotFoundError: arrseg model file '...missing.npz' does not exist
    >>> folder.cleanup()
    """
    path = os.fspath(path)

    def fail(reason):
        return ModelFileError(f"cannot load arrseg model file {path!r}: {reason}")

    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; np.load may leak its own)
    except FileNotFoundError:
        raise ModelFileNotFoundError(
            f"arrseg model file {path!r} does not exist") from None
    except IsADirectoryError:
        raise fail("is a directory, not a model file") from None
    with f, _open_archive(f, fail) as archive:
        meta = _read_metadata(archive, fail)
        p = _read_params(archive, fail)
    xp = resolve_namespace(xp)
    return Params(*(None if a is None else xp.asarray(np.ascontiguousarray(a),
                                                      device=device)
                    for a in p)), meta
