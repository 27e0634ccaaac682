"""A test-only "device" array namespace that counts host <-> device transfers.

Its arrays behave like CuPy arrays on a GPU: their data lives on a device
(:data:`FAKE_GPU`), and every crossing between that device and the host is
explicit and recorded in the namespace's :class:`TransferLog`. Underneath,
each :class:`DeviceArray` is a NumPy array, computed on by
``array_api_compat.numpy``; nothing here needs a GPU. With it the tests show,
on any machine, that the library's device path keeps data on the device (no
image data crosses during a training step, one scalar read-back per
validation, ...).

What counts as a transfer
-------------------------
host -> device (``kind="to_device"``):
    ``xp.asarray(obj)`` / ``xp.from_dlpack(obj)`` / ``xp.to_device(obj)``
    where ``obj`` is not already a DeviceArray (a NumPy array, a list, a
    Python or NumPy scalar: ``cupy.asarray(3.0)`` is a tiny copy too), with
    the nbytes of the array created; a list used as an index or assigned
    with ``a[...] = [...]`` (CuPy uploads it).
device -> host (``kind="to_host"``), with the array's nbytes:
    ``float(a)``, ``int(a)``, ``operator.index(a)``, ``bool(a)``,
    ``complex(a)``, ``format(a, spec)`` with a non-empty spec (each a
    synchronisation on a GPU); ``a.get()``, ``a.item()``, ``a.tolist()``,
    ``a.to_device("cpu")``, ``xp.to_host(a)``; and ``a.__dlpack__()``,
    which is how ``np.from_dlpack(a)`` (and so ``arrseg._backend.to_numpy``)
    reads an array (``__dlpack_device__`` alone, a metadata query, is free).
Free (no transfer):
    creation functions (``zeros``, ``empty``, ``ones``, ``full``, ``arange``,
    ``linspace``, ``eye``, ``*_like``), every computation, indexing with
    Python ints, slices, ``None``, ``Ellipsis`` or DeviceArrays, ``repr``
    and ``str`` (so that failing tests can print arrays), ``len`` and
    iteration over rows.
Refused with TypeError, as CuPy refuses them:
    an implicit upload (a ``numpy.ndarray`` as an operand, a function
    argument other than ``asarray``'s, an index or an assigned value) and an
    implicit download (``np.asarray(a)``: ``__array__``; NumPy ufuncs).

The namespace's own names
-------------------------
``xp.transfers`` (the :class:`TransferLog`; ``xp.log`` stays the array
API's natural logarithm), ``xp.counting()``, ``xp.to_device``,
``xp.to_host``, ``xp.fake_device``. Every other name is
``array_api_compat.numpy``'s, wrapped.

Limits
------
- Namespaces from :func:`make_namespace` share one ``__name__``, and
  ``array_api_compat.array_namespace`` tells namespaces apart by name: it
  does not notice arrays of two of them mixed in one call.
- A 0-d DeviceArray passed where NumPy wants a Python int (a shape, an
  axis) is unwrapped without being counted; CuPy would synchronise.
- ``array_api_compat.is_lazy_array`` calls ``bool()`` on array types it does
  not know, so on these arrays it counts a read-back (on CuPy it does not).

Examples
--------
>>> import numpy as np
>>> xp = make_namespace()
>>> with xp.counting() as transfers:
...     x = xp.asarray(np.arange(4.0))      # upload: 32 bytes
...     y = xp.sum(x * 2.0)                 # stays on the device
...     value = float(y)                    # read-back: 8 bytes
>>> value, transfers.counts(), transfers.nbytes()
(12.0, {'to_device': 1, 'to_host': 1}, {'to_device': 32, 'to_host': 8})
>>> y
DeviceArray(shape=(), dtype=float64, device=fake_gpu:0)
"""

from __future__ import annotations

import contextlib
import operator
import os
import sys
import types
from typing import NamedTuple

import array_api_compat.numpy as _compat_numpy
import numpy as np

__all__ = [
    "FAKE_GPU",
    "DeviceArray",
    "DeviceNamespace",
    "FakeDevice",
    "Transfer",
    "TransferLog",
    "make_namespace",
]

#: Operands an operator takes as they are: scalars travel as kernel
#: arguments on CuPy, not as arrays.
_SCALARS = (bool, int, float, complex, np.generic)


class FakeDevice:
    """The device a :class:`DeviceArray`'s data lives on.

    >>> FakeDevice() == FAKE_GPU, FakeDevice(1) == FAKE_GPU, FAKE_GPU
    (True, False, fake_gpu:0)
    """

    __slots__ = ("ordinal",)

    def __init__(self, ordinal=0):
        self.ordinal = operator.index(ordinal)

    def __eq__(self, other):
        if not isinstance(other, FakeDevice):
            return NotImplemented
        return self.ordinal == other.ordinal

    def __hash__(self):
        return hash((FakeDevice, self.ordinal))

    def __repr__(self):
        return f"fake_gpu:{self.ordinal}"


#: The one device of every namespace made here.
FAKE_GPU = FakeDevice(0)


class Transfer(NamedTuple):
    """One crossing between host and device."""

    #: "to_device" (host -> device) or "to_host" (device -> host)
    kind: str
    #: bytes moved
    nbytes: int
    #: what caused it: "asarray", "__float__", "dlpack", "get", ...
    what: str
    #: the calling code, innermost first: "path:line in function" for each
    #: frame outside this module and outside installed packages
    stack: tuple = ()

    @property
    def origin(self):
        """The innermost calling frame (``stack[0]``), or ``"?"``."""
        return self.stack[0] if self.stack else "?"


def _calling_code(depth=8):
    """Up to ``depth`` frames of the code that caused a transfer."""
    frames = []
    frame = sys._getframe(1)
    while frame is not None and len(frames) < depth:
        path = frame.f_code.co_filename
        if path != __file__ and "site-packages" not in path and not path.startswith("<"):
            frames.append(f"{os.path.relpath(path)}:{frame.f_lineno} in "
                          f"{frame.f_code.co_name}")
        frame = frame.f_back
    return tuple(frames)


class TransferLog:
    """The transfers a namespace has made, in order.

    >>> log = TransferLog()
    >>> log.record("to_host", 8, "__float__")
    >>> log.counts(), log.counts(by="what"), log.nbytes("to_host")
    ({'to_device': 0, 'to_host': 1}, {'__float__': 1}, 8)
    """

    KINDS = ("to_device", "to_host")

    def __init__(self):
        #: every :class:`Transfer`, oldest first
        self.events = []
        #: array results that own new memory (not views): on a GPU each is
        #: a kernel launch or a memset, so this counts the device work the
        #: Python layer issues
        self.operations = 0

    def record(self, kind, nbytes, what):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.events.append(Transfer(kind, int(nbytes), what, _calling_code()))

    @property
    def to_device(self):
        """The host -> device transfers."""
        return [e for e in self.events if e.kind == "to_device"]

    @property
    def to_host(self):
        """The device -> host transfers."""
        return [e for e in self.events if e.kind == "to_host"]

    def reset(self):
        """Forget every transfer recorded so far, and the operations."""
        self.events.clear()
        self.operations = 0

    def counts(self, by="kind"):
        """Number of transfers per kind (both kinds always present), or per
        cause with ``by="what"``."""
        if by == "kind":
            out = dict.fromkeys(self.KINDS, 0)
        elif by == "what":
            out = {}
        else:
            raise ValueError(f"by must be 'kind' or 'what', got {by!r}")
        for e in self.events:
            key = getattr(e, by)
            out[key] = out.get(key, 0) + 1
        return out

    def nbytes(self, kind=None):
        """Bytes moved: a dict per kind, or the total of one ``kind``."""
        if kind is None:
            return {k: self.nbytes(k) for k in self.KINDS}
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        return sum(e.nbytes for e in self.events if e.kind == kind)

    def __len__(self):
        return len(self.events)

    def report(self):
        """One line per transfer: kind, bytes, cause and calling code."""
        return "\n".join(f"{e.kind} {e.nbytes} B by {e.what} at {e.origin}"
                         for e in self.events)

    def __repr__(self):
        return f"TransferLog({self.events!r})"


def _refuse_host_array(where):
    raise TypeError(
        f"{where}: a numpy.ndarray here would be an implicit host -> device "
        "transfer (CuPy refuses it); upload it with xp.asarray first"
    )


def _device_operand(other, where):
    """An operator's other operand as NumPy data, or NotImplemented."""
    if isinstance(other, DeviceArray):
        return other._data
    if isinstance(other, np.ndarray):
        _refuse_host_array(where)
    if isinstance(other, _SCALARS):
        return other
    return NotImplemented


def _binary(name):
    op = getattr(operator, f"__{name}__")

    def method(self, other):
        o = _device_operand(other, f"DeviceArray.__{name}__")
        if o is NotImplemented:
            return NotImplemented
        return self._wrap(op(self._data, o))

    method.__name__ = f"__{name}__"
    return method


def _reflected(name):
    op = getattr(operator, f"__{name}__")

    def method(self, other):
        o = _device_operand(other, f"DeviceArray.__r{name}__")
        if o is NotImplemented:
            return NotImplemented
        return self._wrap(op(o, self._data))

    method.__name__ = f"__r{name}__"
    return method


def _inplace(name):
    op = getattr(operator, f"__i{name}__")

    def method(self, other):
        o = _device_operand(other, f"DeviceArray.__i{name}__")
        if o is NotImplemented:
            return NotImplemented
        self._data = op(self._data, o)
        return self

    method.__name__ = f"__i{name}__"
    return method


def _unary(name):
    op = getattr(operator, f"__{name}__")

    def method(self):
        return self._wrap(op(self._data))

    method.__name__ = f"__{name}__"
    return method


def _read_back(convert, what):
    def method(self):
        value = convert(self._data)  # raises (uncounted) where CuPy would
        self._xp.transfers.record("to_host", self._data.nbytes, what)
        return value

    method.__name__ = what
    return method


class DeviceArray:
    """An array whose data lives on :data:`FAKE_GPU` (a NumPy array inside).

    Made by the functions of a :class:`DeviceNamespace`, never directly.
    """

    __slots__ = ("_data", "_xp")
    # NumPy's operators and ufuncs defer to ours (which refuse host arrays)
    # instead of converting this array
    __array_ufunc__ = None

    def __init__(self, data, namespace):
        if not isinstance(data, np.ndarray):
            raise TypeError(f"data must be a numpy.ndarray, got {type(data).__name__}")
        self._data = data
        self._xp = namespace

    def _wrap(self, result):
        return self._xp._wrap(result)

    # -- attributes of the standard ------------------------------------
    @property
    def shape(self):
        return self._data.shape

    @property
    def ndim(self):
        return self._data.ndim

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def size(self):
        return self._data.size

    @property
    def nbytes(self):
        return self._data.nbytes

    @property
    def itemsize(self):
        return self._data.itemsize

    @property
    def device(self):
        return self._xp.fake_device

    @property
    def T(self):
        return self._wrap(self._data.T)

    @property
    def mT(self):
        return self._wrap(np.swapaxes(self._data, -1, -2))

    def __array_namespace__(self, /, *, api_version=None):
        return self._xp

    def to_device(self, device, /, *, stream=None):
        """Same device: the array itself; ``"cpu"``: a NumPy copy (counted),
        as ``array_api_compat.to_device`` does for CuPy."""
        if device == self.device:
            return self
        if device == "cpu":
            return self._copy_to_host("to_device('cpu')")
        raise ValueError(f"device must be {self.device!r} or 'cpu', got {device!r}")

    # -- explicit reads to the host (counted) ---------------------------
    def _copy_to_host(self, what):
        self._xp.transfers.record("to_host", self._data.nbytes, what)
        return self._data.copy()

    def get(self, stream=None):
        """A NumPy copy on the host (CuPy's ``ndarray.get``)."""
        return self._copy_to_host("get")

    item = _read_back(np.ndarray.item, "item")
    tolist = _read_back(np.ndarray.tolist, "tolist")
    __float__ = _read_back(float, "__float__")
    __int__ = _read_back(int, "__int__")
    __index__ = _read_back(operator.index, "__index__")
    __bool__ = _read_back(bool, "__bool__")
    __complex__ = _read_back(complex, "__complex__")

    def __dlpack__(self, /, *, stream=None, max_version=None, dl_device=None,
                   copy=None):
        """Exports a host copy (counted): the fake's stand-in for a GPU
        capsule, so that ``np.from_dlpack`` reads the array."""
        kwargs = {} if max_version is None else {"max_version": max_version}
        capsule = self._data.copy().__dlpack__(**kwargs)
        self._xp.transfers.record("to_host", self._data.nbytes, "dlpack")
        return capsule

    def __dlpack_device__(self):
        # kDLCPU: NumPy imports only host capsules, and __dlpack__ hands one
        return (1, 0)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed (a hidden "
            "device -> host transfer). Use .get() to construct a NumPy array "
            "explicitly."
        )

    # -- printing (never a transfer) ------------------------------------
    def __repr__(self):
        return (f"DeviceArray(shape={self.shape}, dtype={self.dtype}, "
                f"device={self.device!r})")

    __str__ = __repr__

    def __format__(self, spec):
        if not spec:
            return repr(self)
        text = format(self._data, spec)
        self._xp.transfers.record("to_host", self._data.nbytes, "__format__")
        return text

    # -- containers ------------------------------------------------------
    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d DeviceArray")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d DeviceArray")
        return (self[i] for i in range(self.shape[0]))

    def _index(self, key, where):
        if isinstance(key, tuple):
            return tuple(self._index(k, where) for k in key)
        if isinstance(key, DeviceArray):
            return key._data
        if isinstance(key, np.ndarray):
            _refuse_host_array(where)
        if isinstance(key, list):
            return self._xp._upload_host_data(key, f"{where}(list)")
        return key

    def __getitem__(self, key):
        return self._wrap(self._data[self._index(key, "DeviceArray.__getitem__")])

    def __setitem__(self, key, value):
        where = "DeviceArray.__setitem__"
        key = self._index(key, where)
        if isinstance(value, DeviceArray):
            value = value._data
        elif isinstance(value, np.ndarray):
            _refuse_host_array(where)
        elif isinstance(value, (list, tuple)):
            value = self._xp._upload_host_data(value, f"{where}(list)")
        self._data[key] = value

    # -- copies ------------------------------------------------------------
    def __copy__(self):
        return DeviceArray(self._data.copy(), self._xp)

    def __deepcopy__(self, memo):
        return self.__copy__()

    def __reduce__(self):
        raise TypeError("a DeviceArray cannot be pickled; copy it to the host "
                        "with .get() first")

    # -- operators ---------------------------------------------------------
    __neg__ = _unary("neg")
    __pos__ = _unary("pos")
    __abs__ = _unary("abs")
    __invert__ = _unary("invert")
    __lt__ = _binary("lt")
    __le__ = _binary("le")
    __gt__ = _binary("gt")
    __ge__ = _binary("ge")
    __eq__ = _binary("eq")  # type: ignore[assignment]
    __ne__ = _binary("ne")  # type: ignore[assignment]
    __hash__ = None  # type: ignore[assignment]

    __add__, __radd__, __iadd__ = _binary("add"), _reflected("add"), _inplace("add")
    __sub__, __rsub__, __isub__ = _binary("sub"), _reflected("sub"), _inplace("sub")
    __mul__, __rmul__, __imul__ = _binary("mul"), _reflected("mul"), _inplace("mul")
    __truediv__, __rtruediv__, __itruediv__ = (
        _binary("truediv"), _reflected("truediv"), _inplace("truediv"))
    __floordiv__, __rfloordiv__, __ifloordiv__ = (
        _binary("floordiv"), _reflected("floordiv"), _inplace("floordiv"))
    __mod__, __rmod__, __imod__ = _binary("mod"), _reflected("mod"), _inplace("mod")
    __pow__, __rpow__, __ipow__ = _binary("pow"), _reflected("pow"), _inplace("pow")
    __matmul__, __rmatmul__, __imatmul__ = (
        _binary("matmul"), _reflected("matmul"), _inplace("matmul"))
    __and__, __rand__, __iand__ = _binary("and"), _reflected("and"), _inplace("and")
    __or__, __ror__, __ior__ = _binary("or"), _reflected("or"), _inplace("or")
    __xor__, __rxor__, __ixor__ = _binary("xor"), _reflected("xor"), _inplace("xor")
    __lshift__, __rlshift__, __ilshift__ = (
        _binary("lshift"), _reflected("lshift"), _inplace("lshift"))
    __rshift__, __rrshift__, __irshift__ = (
        _binary("rshift"), _reflected("rshift"), _inplace("rshift"))


#: Functions that create from host data: counted uploads.
_UPLOADS = frozenset({"asarray", "from_dlpack"})
#: Functions about dtypes whose results are host metadata, not arrays.
_METADATA = frozenset({"isdtype", "result_type", "can_cast", "finfo", "iinfo"})
#: Functions that NumPy answers with a Python bool and CuPy with a 0-d array.
_DEVICE_BOOLS = frozenset({"allclose", "array_equal", "array_equiv"})


class _NamespaceInfo:
    """``__array_namespace_info__()`` of a DeviceNamespace: NumPy's answers,
    with :data:`FAKE_GPU` as the one device."""

    def __init__(self, xp):
        self._xp = xp
        self._numpy_info = _compat_numpy.__array_namespace_info__()

    def capabilities(self):
        return self._numpy_info.capabilities()

    def default_device(self):
        return self._xp.fake_device

    def devices(self):
        return [self._xp.fake_device]

    def default_dtypes(self, *, device=None):
        self._xp._check_device(device)
        return self._numpy_info.default_dtypes()

    def dtypes(self, *, device=None, kind=None):
        self._xp._check_device(device)
        return self._numpy_info.dtypes(kind=kind)


class DeviceNamespace:
    """The array namespace of :class:`DeviceArray`: ``array_api_compat.numpy``
    with its arguments unwrapped, its array results wrapped and its transfers
    counted (see the module docstring).

    Use :func:`make_namespace` for a fresh one.
    """

    __array_api_version__ = _compat_numpy.__array_api_version__

    def __init__(self, *, _wrapped=_compat_numpy, _name="device_namespace",
                 _root=None):
        root = self if _root is None else _root
        self.__name__ = _name
        self._wrapped = _wrapped
        self._root = root
        #: the :class:`TransferLog`, shared with the sub-namespaces
        self.transfers = TransferLog() if _root is None else root.transfers
        #: the device of every array of this namespace
        self.fake_device = FAKE_GPU
        if _root is None:
            self.linalg = DeviceNamespace(_wrapped=_wrapped.linalg,
                                          _name=f"{_name}.linalg", _root=root)
            self.fft = DeviceNamespace(_wrapped=_wrapped.fft,
                                       _name=f"{_name}.fft", _root=root)

    def __repr__(self):
        return f"<array namespace {self.__name__!r} on {self.fake_device!r}>"

    def __copy__(self):
        return self  # a namespace is module-like: one of it

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        raise TypeError("a DeviceNamespace cannot be pickled")

    # -- the counting API --------------------------------------------------
    @contextlib.contextmanager
    def counting(self):
        """Reset the transfer log, and yield it."""
        self.transfers.reset()
        yield self.transfers

    def to_device(self, a, /, *, dtype=None):
        """Upload host data (counted): ``xp.asarray(a, dtype=dtype)``."""
        return self.asarray(a, dtype=dtype)

    def to_host(self, a, /):
        """Download an array (counted): ``a.get()``."""
        if not isinstance(a, DeviceArray):
            raise TypeError(f"a must be a DeviceArray, got {type(a).__name__}")
        return a.get()

    def __array_namespace_info__(self):
        return _NamespaceInfo(self._root)

    # -- wrapping ------------------------------------------------------------
    def _check_device(self, device):
        if device is not None and device != self.fake_device:
            raise ValueError(
                f"device must be {self.fake_device!r} or None, got {device!r}"
            )

    def _wrap(self, result):
        root = self._root
        if isinstance(result, np.ndarray):
            if result.base is None:
                root.transfers.operations += 1
            return DeviceArray(result, root)
        if isinstance(result, np.generic):
            root.transfers.operations += 1
            return DeviceArray(np.asarray(result), root)
        if isinstance(result, tuple):
            items = [self._wrap(r) for r in result]
            return type(result)(*items) if hasattr(result, "_fields") else tuple(items)
        if isinstance(result, list):
            return [self._wrap(r) for r in result]
        return result

    def _unwrap(self, obj, where):
        if isinstance(obj, DeviceArray):
            return obj._data
        if isinstance(obj, np.ndarray):
            _refuse_host_array(where)
        if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
            return type(obj)(self._unwrap(o, where) for o in obj)
        return obj

    @staticmethod
    def _has_host_data(obj):
        if isinstance(obj, DeviceArray):
            return False
        if isinstance(obj, (list, tuple)):
            return any(DeviceNamespace._has_host_data(o) for o in obj)
        return True

    @staticmethod
    def _device_data(obj):
        if isinstance(obj, DeviceArray):
            return obj._data
        if isinstance(obj, (list, tuple)):
            return type(obj)(DeviceNamespace._device_data(o) for o in obj)
        return obj

    def _upload_host_data(self, obj, what, dtype=None):
        """Host data (list, scalar, NumPy array) as NumPy data "on the
        device", counted."""
        data = np.asarray(self._device_data(obj), dtype=dtype)
        self.transfers.record("to_device", data.nbytes, what)
        return data

    def _call(self, name, func, args, kwargs):
        where = f"{self.__name__}.{name}"
        if "device" in kwargs:
            self._check_device(kwargs["device"])
            kwargs["device"] = None
        if name in ("finfo", "iinfo") and args and isinstance(args[0], DeviceArray):
            args = (args[0].dtype,) + tuple(args[1:])
        if name in _UPLOADS:
            return self._call_upload(name, func, args, kwargs, where)
        args = self._unwrap(tuple(args), where)
        kwargs = {k: self._unwrap(v, where) for k, v in kwargs.items()}
        result = func(*args, **kwargs)
        if name in _METADATA:
            return result
        if name in _DEVICE_BOOLS:
            return DeviceArray(np.asarray(result), self._root)
        return self._wrap(result)

    def _call_upload(self, name, func, args, kwargs, where):
        if args:
            obj, rest = args[0], tuple(args[1:])
        else:
            key = "x" if name == "from_dlpack" else "obj"
            kwargs = dict(kwargs)
            obj, rest = kwargs.pop(key), ()
        rest = self._unwrap(rest, where)
        kwargs = {k: self._unwrap(v, where) for k, v in kwargs.items()}
        if not self._has_host_data(obj):
            if name == "from_dlpack":  # device to device: a view, or a copy
                data = obj._data.copy() if kwargs.get("copy") else obj._data
                return DeviceArray(data, self._root)
            return self._wrap(func(self._device_data(obj), *rest, **kwargs))
        result = self._wrap(func(self._device_data(obj), *rest, **kwargs))
        self.transfers.record("to_device", result.nbytes, name)
        return result

    def __getattr__(self, name):
        # only called for names not set above: array_api_compat.numpy's
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        attr = getattr(self._wrapped, name)
        if isinstance(attr, types.ModuleType):
            raise AttributeError(
                f"{self.__name__} has no sub-namespace {name!r} (only linalg "
                "and fft are wrapped)"
            )
        if isinstance(attr, type) or not callable(attr):
            return attr  # dtypes, constants (e, pi, inf, nan, newaxis)

        def function(*args, **kwargs):
            return self._call(name, attr, args, kwargs)

        function.__name__ = function.__qualname__ = name
        function.__doc__ = getattr(attr, "__doc__", None)
        self.__dict__[name] = function  # found without __getattr__ next time
        return function

    def __dir__(self):
        return sorted(set(dir(self._wrapped)) | set(super().__dir__()))


def make_namespace():
    """A fresh :class:`DeviceNamespace`, with an empty transfer log.

    >>> xp = make_namespace()
    >>> xp.__name__, len(xp.transfers)
    ('device_namespace', 0)
    """
    return DeviceNamespace()
