"""Model files: a trained network's parameters and metadata in one ``.npz``.

Format (version 2)
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
``K_layers``  same dtype,         the residual layers' kernels (version 2;
              (depth, k, k,       absent at depth 0), depth >= 1, s_r odd
              s_r, s_r)
``b_layers``  same dtype,         the residual layers' biases (version 2;
              (depth, k)          present exactly when ``K_layers`` is)
``metadata``  uint8, (n_bytes,)   a UTF-8 encoded JSON object (below)
============  ==================  ==============================================

The file holds the arrays only: the residual layers' dilations, step and
layer type are options of the call (:func:`arrseg.predict_proba`), stored,
if at all, in the caller's metadata (:meth:`arrseg.Segmenter.save` stores
them with its hyper-parameters).

The JSON object holds the three keys of the format and, beside them, the
caller's metadata (hyper-parameters, normalisation mean and standard
deviation, class names, ...)::

    {"format": "arrseg-model", "format_version": 2, "arrseg_version": "0.1.0",
     ...caller's keys...}

Non-finite numbers in the metadata (a loss curve that diverged) are written
as ``NaN``, ``Infinity`` and ``-Infinity``, the extension of JSON that
Python's :mod:`json` reads and writes.

Nothing in the file is pickled: an object array is refused before any of
its data is read, so loading a file cannot run code, and any ``.npz`` reader
(NumPy, or a zip library and a JSON parser in another language) can read
it. The arrays are stored as NumPy arrays, whatever namespace they came
from, so a file saved from PyTorch tensors loads as CuPy arrays and the
other way round.

Compatibility: a reader of format version v reads every file of version
<= v, and refuses (:class:`ModelFileError`) a file of a newer version.
Entries it does not know are ignored (never read), so later versions may
add entries; a change that an older reader would misread raises the
version. Versions:

1. ``K``, ``b``, ``W``, ``c``: the one-layer network (arrseg up to 0.1).
2. ``K_layers``, ``b_layers`` added: the residual layers. A version-1
   reader would ignore them and load a deep model as the one-layer network
   it opens with, hence the new version. Every file is written in version
   2 (at depth 0 too); a version-1 file loads as the depth-0 network it
   holds (``K_layers`` entries in a version-1 file are not read).

Bounds and checks
-----------------
:func:`load` reads untrusted files: whatever a file holds, it returns or
raises :class:`ModelFileError`, and the memory it uses is bounded before any
data is inflated. It reads only the entries it needs (``metadata``, ``K``,
``b``, ``W``, ``c``, and from version 2 ``K_layers``, ``b_layers``) with
:mod:`zipfile`, not :func:`numpy.load`, and checks, in this order:

- the file starts with a zip signature (a single ``.npy`` is refused), its
  zip directory can be read and holds at most :data:`MAX_ENTRIES` entries,
  no two with the same name;
- each entry it reads is stored or deflated (no other compression method,
  no encryption), declares a compressed size no larger than the file, an
  uncompressed size of at most its bound (:data:`MAX_METADATA_BYTES` for
  ``metadata``, :data:`MAX_ARRAY_BYTES` for a parameter array, plus
  :data:`MAX_HEADER_BYTES` of ``.npy`` header) and, above
  :data:`MAX_INFLATION_FREE_BYTES`, at most :data:`MAX_INFLATION` times its
  compressed size (a deflate bomb is refused before it is inflated; real
  parameters and metadata compress by less than 5);
- its ``.npy`` header (versions 1.0, 2.0 and 3.0, at most
  :data:`MAX_HEADER_BYTES`) is parsed on at most that many bytes, with
  :func:`ast.literal_eval` as NumPy's format describes it (Python 2
  headers are refused); the dtype is not an object dtype (never unpickled), is
  ``uint8`` for ``metadata`` (1-d) and float32 or float64 (either byte
  order) for the parameters; the shape is non-negative integers; the bytes
  it describes fit the bound and equal the uncompressed size the zip
  directory declares;
- the data is read through a stream that stops after the declared size and
  one byte more, so an entry holding more (or less) data than it declares,
  or a wrong CRC-32, is refused;
- the metadata is UTF-8 JSON (nesting deeper than Python's recursion limit
  and integers of more than 4300 digits are refused) holding an object with
  the format's keys, and the parameter arrays have consistent shapes and
  one dtype (as :func:`arrseg.predict_proba` requires).

So loading a file of n bytes allocates at most about
``max(MAX_INFLATION_FREE_BYTES, MAX_INFLATION * n)`` bytes per entry and a
few times the metadata's size for its JSON objects. The checks of a
:class:`arrseg.Segmenter`'s metadata against these arrays are in
:mod:`arrseg.estimator.persistence`.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import reprlib
import secrets
import struct
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from ._backend import default_namespace, namespace_of, resolve_namespace, to_numpy
from ._validation import _as_params, _check_param_shapes
from ._version import __version__
from .params import params_like

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_ARRAY_BYTES", "MAX_ENTRIES",
           "MAX_HEADER_BYTES", "MAX_INFLATION", "MAX_INFLATION_FREE_BYTES",
           "MAX_METADATA_BYTES", "ModelFileError", "ModelFileNotFoundError",
           "load", "save"]

#: Value of the ``"format"`` key of every arrseg model file.
FORMAT = "arrseg-model"
#: The format version this arrseg writes, and the newest it reads.
FORMAT_VERSION = 2
#: Keys of the metadata that arrseg itself writes.
RESERVED_KEYS = ("format", "format_version", "arrseg_version")

#: Largest ``metadata`` entry read (its JSON text), in bytes: 16 MiB, room
#: for loss curves of a million iterations.
MAX_METADATA_BYTES = 16 * 2**20
#: Largest parameter array read, in bytes: 1 GiB (a float32 ``K`` of
#: 268 million weights; arrseg's networks hold thousands).
MAX_ARRAY_BYTES = 2**30
#: Largest ``.npy`` header read, in bytes (NumPy's own default bound).
MAX_HEADER_BYTES = 10_000
#: Most entries in the zip directory (a model file has at most seven).
MAX_ENTRIES = 64
#: Largest ratio of an entry's uncompressed to compressed size ...
MAX_INFLATION = 64
#: ... checked for entries larger than this many bytes (1 MiB).
MAX_INFLATION_FREE_BYTES = 2**20

_PARAMETER_ENTRIES = ("K", "b", "W", "c")
#: The entries of the residual layers, read from format version 2 on.
_LAYER_ENTRIES = ("K_layers", "b_layers")
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # a first entry, or an empty zip
#: What zipfile and zlib raise on a malformed archive or entry.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError,
               RuntimeError, struct.error, OverflowError, MemoryError)
_READ_CHUNK = 2**20


class ModelFileError(ValueError):
    """A file cannot be loaded as an arrseg model.

    The message names the file and what is wrong with it. A missing file
    raises the subclass :class:`ModelFileNotFoundError`, which is also a
    ``FileNotFoundError``.
    """


class ModelFileNotFoundError(ModelFileError, FileNotFoundError):
    """The model file does not exist."""


def _short_repr():
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict = 3, 8, 8, 8
    r.maxstring, r.maxother, r.maxlong = 60, 60, 40
    return r


_SHORT_REPR = _short_repr()


def _show(value):
    """A short repr of a value read from a file, for a message (however large
    or deeply nested the value is)."""
    return _SHORT_REPR.repr(value)


def _clip(text, n=200):
    """``text`` cut to ``n`` characters, for a message."""
    return text if len(text) <= n else text[:n] + "..."


def _show_text(value):
    """A string read from a file without its quotes, shortened; other values
    as :func:`_show`."""
    return _show(value)[1:-1] if isinstance(value, str) else _show(value)


# -- writing ---------------------------------------------------------------------

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
    data = text.encode("utf-8")
    if len(data) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must take at most MAX_METADATA_BYTES = "
                         f"{MAX_METADATA_BYTES} bytes as JSON (load refuses more), "
                         f"got {len(data)}")
    return np.frombuffer(data, dtype=np.uint8)


def _sync_folder(folder):
    """fsync a folder, so that a rename in it survives a power cut; skipped
    where the OS refuses to open a folder (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(path, params, metadata=None, *, compress=True):
    """Write parameters and metadata to a model file (see the module's format).

    The file is written to a temporary file beside ``path``, flushed to the
    disk (fsync), and renamed to ``path`` when complete; the folder is then
    flushed too. So an interrupted or failed save never leaves a truncated
    model file, and an existing file is replaced only by a complete one.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write. Written as given (no ``.npz`` is appended).
    params : Params or ResidualParams
        In any namespace and on any device; stored as NumPy arrays (with
        the residual layers' ``K_layers`` and ``b_layers`` at depth > 0).
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
        For bad parameters (as :func:`arrseg.predict_proba`), parameter
        arrays larger than :data:`MAX_ARRAY_BYTES`, or metadata that JSON
        cannot represent or that is larger than :data:`MAX_METADATA_BYTES`;
        nothing is written.
    OSError
        When writing fails (disk full, no permission, missing folder): the
        message and ``filename`` name ``path``, ``errno`` is the original's
        and the original is the ``__cause__``. The temporary file is
        removed and an existing file at ``path`` is left as it was.
        (``KeyboardInterrupt`` and other exceptions leave the files the same
        way and propagate unchanged.)

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
    ((8, 3, 3, 3), ['background', 'disk'], 2)
    >>> folder.cleanup()
    """
    p = _as_params(params)
    xp = namespace_of(**{f"params.{n}": a for n, a in zip(type(p)._fields, p)})
    _check_param_shapes(p, xp)
    entries = {name: np.ascontiguousarray(to_numpy(a))
               for name, a in zip(type(p)._fields, p) if a is not None}
    for name, a in entries.items():
        if a.nbytes > MAX_ARRAY_BYTES:
            raise ValueError(f"params.{name} must take at most MAX_ARRAY_BYTES = "
                             f"{MAX_ARRAY_BYTES} bytes (load refuses more), got "
                             f"{a.nbytes} (shape {a.shape}, {a.dtype})")
    entries["metadata"] = _metadata_bytes(metadata)
    path = os.fspath(path)
    # beside the target, so that the rename stays on one file system; opened
    # with open() rather than mkstemp so that the file gets the umask's mode
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            (np.savez_compressed if compress else np.savez)(f, **entries)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if not isinstance(e, OSError):
            raise
        reason = e.strerror or str(e) or type(e).__name__
        if e.errno is None:
            raise OSError(f"cannot save arrseg model file {path!r}: {reason}") from e
        raise OSError(e.errno, f"cannot save arrseg model file: {reason}", path) from e
    try:
        _sync_folder(os.path.dirname(os.path.abspath(path)))
    except OSError as e:
        raise OSError(e.errno, "saved arrseg model file, but its folder cannot be "
                      f"flushed to the disk: {e.strerror or e}", path) from e


# -- reading ---------------------------------------------------------------------

def _corrupt(name, e, fail):
    return fail(f"entry {name!r} is corrupt or truncated: {type(e).__name__}: "
                f"{_clip(str(e))}")


class _Prefix:
    """A reader of the first ``limit`` bytes of an entry's ``stream``,
    counting them: NumPy's header reader reads through it, so that a header
    length field claiming gigabytes reads no more than ``limit`` bytes. A
    corrupt stream raises ModelFileError, told apart from a bad header."""

    def __init__(self, stream, limit, name, fail):
        self.stream, self.left, self.count = stream, limit, 0
        self.name, self.fail = name, fail

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else min(n, self.left)
        try:
            data = self.stream.read(n) if n > 0 else b""
        except _ZIP_ERRORS as e:
            raise _corrupt(self.name, e, self.fail) from None
        self.left -= len(data)
        self.count += len(data)
        return data


def _open_zip(f, fail):
    """The open file as a ZipFile, with its entries' ZipInfo by entry name
    (``K.npy`` is entry ``K``; members not ending in ``.npy`` are ignored)."""
    first = f.read(6)
    if first.startswith(np.lib.format.MAGIC_PREFIX):
        raise fail("a single .npy array, not an .npz archive of a model")
    if first[:4] not in _ZIP_SIGNATURES:
        raise fail("not an .npz archive (corrupt, truncated, or another kind of "
                   "file): it does not start with a zip signature")
    try:
        f.seek(0)
        archive = zipfile.ZipFile(f)
        infos = archive.infolist()
    except _ZIP_ERRORS as e:
        raise fail("not an .npz archive (corrupt, truncated, or another kind of "
                   f"file): {type(e).__name__}: {e}") from None
    if len(infos) > MAX_ENTRIES:
        archive.close()
        raise fail(f"its zip directory lists {len(infos)} entries, more than "
                   f"MAX_ENTRIES = {MAX_ENTRIES}")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        archive.close()
        twice = sorted({_show(n) for n in names if names.count(n) > 1})
        raise fail(f"its zip directory lists entries more than once: "
                   f"{', '.join(twice)}")
    entries = {i.filename[:-4]: i for i in infos if i.filename.endswith(".npy")}
    return archive, entries


def _check_declared_sizes(info, name, bound, file_size, fail):
    """Refuse an entry whose zip directory sizes exceed the bounds, before
    any of it is read or inflated."""
    if info.flag_bits & 0x61 or info.compress_type not in (zipfile.ZIP_STORED,
                                                           zipfile.ZIP_DEFLATED):
        raise fail(f"entry {name!r} uses a zip feature NumPy never writes "
                   f"(compression method {info.compress_type}, flags "
                   f"{info.flag_bits:#x}; expected stored or deflated, unencrypted)")
    if info.compress_size > file_size:
        raise fail(f"entry {name!r} declares {info.compress_size} compressed "
                   f"bytes, more than the file's {file_size}")
    if info.file_size > bound + MAX_HEADER_BYTES:
        raise fail(f"entry {name!r} declares {info.file_size} bytes, more than "
                   f"the bound of {bound} bytes of data + {MAX_HEADER_BYTES} of "
                   "header")
    if (info.file_size > MAX_INFLATION_FREE_BYTES
            and info.file_size > MAX_INFLATION * info.compress_size):
        raise fail(f"entry {name!r} declares {info.file_size} bytes inflated from "
                   f"{info.compress_size}, more than MAX_INFLATION = "
                   f"{MAX_INFLATION} times (a deflate bomb?)")


def _read_header(stream, name, fail):
    """(shape, fortran_order, dtype, header bytes) of an entry's .npy header,
    read from at most MAX_HEADER_BYTES.

    Parsed here, as NumPy's format describes it (magic, version, header
    length, a Python dict literal read by :func:`ast.literal_eval`), rather
    than by NumPy's reader, which falls back to parsing Python 2 headers
    with a warning: arrseg never writes those, and refusing them by
    changing the warning filters would not be thread-safe.
    """
    head = _Prefix(stream, MAX_HEADER_BYTES, name, fail)
    try:
        magic = head.read(8)
        if len(magic) < 8 or magic[:6] != np.lib.format.MAGIC_PREFIX:
            raise ValueError("no .npy magic string")
        version = (magic[6], magic[7])
        if version == (1, 0):
            length_bytes, encoding = 2, "latin1"
        elif version in ((2, 0), (3, 0)):  # 3.0: the same, UTF-8 field names
            length_bytes, encoding = 4, "latin1" if version == (2, 0) else "utf8"
        else:
            raise ValueError(f"unknown .npy format version {version}")
        raw = head.read(length_bytes)
        if len(raw) < length_bytes:
            raise ValueError("the header length is truncated")
        length = int.from_bytes(raw, "little")
        text = head.read(length)
        if len(text) < length:
            raise ValueError(f"the header length is {length} bytes, {len(text)} are "
                             f"there (at most {MAX_HEADER_BYTES} are read)")
        d = ast.literal_eval(text.decode(encoding))
        if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
            raise ValueError("the header is not a dict of 'descr', 'fortran_order' "
                             "and 'shape'")
        shape, fortran_order = d["shape"], d["fortran_order"]
        if not isinstance(shape, tuple) or not isinstance(fortran_order, bool):
            raise ValueError("the header's shape is not a tuple or its "
                             "fortran_order not a bool")
        dtype = np.lib.format.descr_to_dtype(d["descr"])
    except ModelFileError:
        raise
    except Exception as e:  # noqa: BLE001 (whatever parsing hostile text raises)
        raise fail(f"entry {name!r} has no valid .npy header: {type(e).__name__}: "
                   f"{_clip(str(e))}") from None
    return shape, fortran_order, dtype, head.count


def _check_header(name, shape, dtype, fail):
    """The bytes of data an entry's header describes, or ModelFileError."""
    if dtype.hasobject:
        raise fail(f"entry {name!r} is an object array (pickled data), which arrseg "
                   "never writes; refusing to unpickle it (unpickling can run "
                   "arbitrary code)")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
               for n in shape):
        raise fail(f"entry {name!r} has an invalid shape {_show(shape)} in its .npy "
                   "header (expected non-negative integers)")
    if name == "metadata":
        if dtype != np.uint8 or len(shape) != 1:
            raise fail(f"the 'metadata' entry must be UTF-8 JSON bytes (uint8, 1-d), "
                       f"got dtype {dtype}, shape {_show(shape)}")
        bound = MAX_METADATA_BYTES
    else:
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise fail(f"params.{name} must be float32 or float64, got dtype {dtype}")
        bound = MAX_ARRAY_BYTES
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > bound:
        raise fail(f"entry {name!r} has shape {_show(shape)} of {dtype}: "
                   f"{nbytes} bytes, more than the bound of {bound}")
    return nbytes


def _read_entry(archive, info, name, file_size, fail):
    """One entry as a NumPy array: sizes, header and data checked, the data
    read through a stream that stops one byte after the declared size."""
    bound = MAX_METADATA_BYTES if name == "metadata" else MAX_ARRAY_BYTES
    _check_declared_sizes(info, name, bound, file_size, fail)
    try:
        with archive.open(info) as stream:
            shape, fortran_order, dtype, header_bytes = _read_header(stream, name, fail)
            nbytes = _check_header(name, shape, dtype, fail)
            if header_bytes + nbytes != info.file_size:
                raise fail(
                    f"entry {name!r} declares {info.file_size} bytes in the zip "
                    f"directory, but its .npy header describes {header_bytes} + "
                    f"{nbytes} (shape {_show(shape)}, {dtype})")
            a = np.empty(math.prod(shape), dtype=dtype)
            data = a.view(np.uint8)
            done = 0
            while done <= nbytes:       # up to one byte more than declared
                chunk = stream.read(min(_READ_CHUNK, nbytes + 1 - done))
                if not chunk:
                    break
                if done + len(chunk) > nbytes:
                    raise fail(f"entry {name!r} holds more data than its header "
                               f"and zip directory declare ({nbytes} bytes)")
                data[done:done + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                done += len(chunk)
    except _ZIP_ERRORS as e:
        if isinstance(e, ModelFileError):
            raise
        raise _corrupt(name, e, fail) from None
    if done != nbytes:
        raise fail(f"entry {name!r} is corrupt or truncated: {done} of its {nbytes} "
                   "bytes of data")
    if fortran_order:
        return a.reshape(shape[::-1]).transpose()
    return a.reshape(shape)


def _read_metadata(archive, entries, file_size, fail):
    if "metadata" not in entries:
        raise fail(f"not an arrseg model file: it has no 'metadata' entry (its "
                   f"entries: {_show(sorted(entries))})")
    raw = _read_entry(archive, entries["metadata"], "metadata", file_size, fail)
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError, MemoryError) as e:
        # ValueError: JSONDecodeError, or an integer of more than 4300 digits
        raise fail(f"the 'metadata' entry is not UTF-8 JSON: {type(e).__name__}: "
                   f"{_clip(str(e))}") from None
    if not isinstance(meta, dict):
        raise fail(f"the 'metadata' entry must be a JSON object, got "
                   f"{type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise fail(f"not an arrseg model file: metadata 'format' is "
                   f"{_show(meta.get('format'))}, expected {FORMAT!r}")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise fail(f"metadata 'format_version' must be a positive integer, got "
                   f"{_show(version)}")
    if version > FORMAT_VERSION:
        raise fail(
            f"saved by a newer arrseg ({_show_text(meta.get('arrseg_version', 'unknown'))}) in "
            f"format version {version}; this arrseg ({__version__}) reads "
            f"format versions up to {FORMAT_VERSION}: upgrade arrseg to load it")
    return meta


def _read_params(archive, entries, file_size, fail, version):
    """The parameter arrays of a file of format ``version``: a Params, or a
    ResidualParams when (from version 2) the layers' entries are there."""
    missing = [n for n in ("K", "b", "W") if n not in entries]
    if missing:
        raise fail(f"missing parameter array(s) {missing} (its entries: "
                   f"{_show(sorted(entries))})")
    names = _PARAMETER_ENTRIES
    if version >= 2 and any(n in entries for n in _LAYER_ENTRIES):
        names = names + _LAYER_ENTRIES
    arrays = []
    for name in names:
        a = None
        if name in entries:
            a = _read_entry(archive, entries[name], name, file_size, fail)
            a = a.astype(a.dtype.newbyteorder("="), copy=False)  # native order
        arrays.append(a)
    p = _as_params(tuple(arrays))
    try:
        _check_param_shapes(p, default_namespace())
    except (TypeError, ValueError) as e:
        raise fail(f"inconsistent parameter arrays: {e}") from None
    return p


def _in_namespace(params, xp, device):
    """NumPy parameters as arrays of the resolved namespace ``xp``."""
    return params_like(params, (None if a is None
                                else xp.asarray(np.ascontiguousarray(a), device=device)
                                for a in params))


def load(path, *, xp=None, device=None):
    """Read a model file written by :func:`save`.

    Any file content is safe to load: see the module's "Bounds and checks"
    for what is refused, and the memory a file can make this use.

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
    params : Params or ResidualParams
        With the dtype they were saved in; ``params.c`` is None if it was.
        A :class:`arrseg.ResidualParams` when the file holds residual layers
        (format version 2), else a :class:`arrseg.Params` (every version-1
        file).
    metadata : dict
        The caller's metadata as saved, plus ``"format"``,
        ``"format_version"`` and ``"arrseg_version"`` (the version that wrote
        the file).

    Raises
    ------
    ModelFileError
        A ``ValueError`` that names the file and what is wrong: it does not
        exist (:class:`ModelFileNotFoundError`, also a ``FileNotFoundError``),
        is not an ``.npz`` archive (corrupt or truncated), holds an entry
        beyond the bounds of the module's "Bounds and checks" (too many
        entries, too large, a deflate bomb, an invalid ``.npy`` header, a
        size that disagrees with the zip directory, pickled object arrays),
        is not an arrseg model, was written by a newer arrseg in a newer
        format version, or holds missing or inconsistent parameter arrays.
        No other exception comes from the file's content.
    TypeError
        If ``xp`` is not an array namespace (checked before the file is read).
    OSError
        If the file exists but cannot be opened (no permission).

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
    xp = resolve_namespace(xp)

    def fail(reason):
        return ModelFileError(f"cannot load arrseg model file {path!r}: {reason}")

    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except FileNotFoundError:
        raise ModelFileNotFoundError(
            f"arrseg model file {path!r} does not exist") from None
    except IsADirectoryError:
        raise fail("is a directory, not a model file") from None
    with f:
        try:
            file_size = os.fstat(f.fileno()).st_size
        except OSError as e:
            raise fail(f"cannot be read: {e}") from None
        archive, entries = _open_zip(f, fail)
        with archive:
            meta = _read_metadata(archive, entries, file_size, fail)
            params = _read_params(archive, entries, file_size, fail,
                                  meta["format_version"])
    return _in_namespace(params, xp, device), meta
