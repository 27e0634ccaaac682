"""Namespace, device and dtype resolution shared by every public function.

Public functions resolve the array namespace once with :func:`namespace_of`
and pass ``xp`` explicitly to the private helpers below them (the
array-api-extra convention). Nothing here imports CuPy or PyTorch: the
namespaces are discovered from the arrays a user passes in.
"""

from __future__ import annotations

import sys

import numpy as np
from array_api_compat import (
    array_namespace,
    device,
    is_cupy_array,
    is_numpy_array,
    is_torch_array,
)

__all__ = ["is_dask_array", "namespace_of", "refuse_masked", "resolve_namespace",
           "default_namespace", "to_numpy", "device", "float_dtype", "float_name",
           "image_float_dtype"]


def default_namespace():
    """The namespace used when no array fixes one: NumPy via array-api-compat."""
    import array_api_compat.numpy as xp_numpy

    return xp_numpy


def is_dask_array(obj):
    """True for a ``dask.array.Array``; never imports Dask (an array of a
    Dask that is not imported cannot exist)."""
    module = sys.modules.get("dask.array")
    array_type = getattr(module, "Array", None)
    return array_type is not None and isinstance(obj, array_type)


def resolve_namespace(xp):
    """The array-api-compat namespace for a user's ``xp=`` argument.

    ``None`` gives NumPy; a library module (``numpy``, ``torch``, ``cupy``)
    gives its compat wrapper, so that ``asarray(..., device=...)`` and the
    other standard signatures work on it.
    """
    if xp is None:
        return default_namespace()
    try:
        return array_namespace(xp.empty(0))
    except (AttributeError, TypeError):
        raise TypeError(
            f"xp must be an array namespace (numpy, cupy, torch, "
            f"array_api_strict, ...), got {xp!r}"
        ) from None


def refuse_masked(name, a):
    """TypeError for a NumPy masked array: arrseg does not honour masks.

    A masked array's data under the mask (NaN, fill values) would be used
    as if it were valid, so it is refused rather than silently unmasked.
    """
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a numpy masked array; arrseg does not honour masks (the "
            f"values under the mask would be used as data). Pass {name}.filled(v) "
            "with a fill value v, or, for labels, labels.filled(ignore_index) so "
            "that masked pixels do not count")


def namespace_of(**arrays):
    """Resolve the one namespace that all named arrays share.

    Parameters
    ----------
    **arrays
        Argument name -> array (``None`` values are skipped). The names are
        used in error messages only.

    Returns
    -------
    xp : module
        The array-api-compat namespace of the arrays.

    Raises
    ------
    TypeError
        If an argument is not an array, or if two arguments come from
        different namespaces (for example a NumPy image with PyTorch
        parameters). The message names both arguments.
    ValueError
        If two arguments live on different devices.
    """
    first_name = first_xp = first_device = None
    for name, a in arrays.items():
        if a is None:
            continue
        refuse_masked(name, a)
        try:
            xp = array_namespace(a)
        except TypeError:
            raise TypeError(
                f"{name} must be an array (NumPy, CuPy, PyTorch or another "
                f"array API namespace), got {type(a).__name__}"
            ) from None
        if first_xp is None:
            first_name, first_xp, first_device = name, xp, device(a)
            continue
        if xp is not first_xp:
            raise TypeError(
                f"{name} is a {_library(a)} array but {first_name} is a "
                f"{_library(arrays[first_name])} array: all arrays in one call "
                "must come from the same namespace (convert one of them first)"
            )
        if device(a) != first_device:
            raise ValueError(
                f"{name} is on device {device(a)!r} but {first_name} is on "
                f"device {first_device!r}; move them to the same device"
            )
    if first_xp is None:
        return default_namespace()
    return first_xp


def _library(a):
    """Short library name of an array's type, for error messages."""
    module = type(a).__module__.split(".")[0]
    return {"builtins": "Python", "numpy": "NumPy", "torch": "PyTorch",
            "cupy": "CuPy"}.get(module, module)


def to_numpy(a):
    """Copy an array of any supported namespace to a NumPy array on the host.

    Parameters
    ----------
    a : array
        A NumPy, CuPy, PyTorch or other DLPack-capable array (for example
        ``array_api_strict``).

    Returns
    -------
    numpy.ndarray

    Examples
    --------
    >>> import array_api_strict as xps
    >>> from arrseg.testing import to_numpy
    >>> to_numpy(xps.asarray([1.0, 2.0]))
    array([1., 2.])
    """
    if is_numpy_array(a):
        return np.asarray(a)
    if is_cupy_array(a):
        return a.get()
    if is_torch_array(a):
        return a.detach().cpu().numpy()
    try:
        return np.from_dlpack(a)
    except (TypeError, AttributeError, BufferError, RuntimeError):
        return np.asarray(a)


def float_dtype(xp, dtype):
    """Resolve ``dtype`` (a dtype object of ``xp``, a NumPy dtype or a name).

    Returns ``xp.float32`` or ``xp.float64``; anything else raises
    ``TypeError`` naming the argument ``dtype``.
    """
    if dtype is None:
        return xp.float32
    name = dtype if isinstance(dtype, str) else None
    if name is None:
        for candidate in ("float32", "float64", "float16"):
            if dtype == getattr(xp, candidate, None):
                name = candidate
                break
        else:
            try:
                name = np.dtype(dtype).name
            except TypeError:
                name = str(dtype)
    if name == "float32":
        return xp.float32
    if name == "float64":
        return xp.float64
    raise TypeError(
        f"dtype must be float32 or float64, got {dtype!r}"
        + (" (float16 is not supported: its range overflows the softmax and "
           "the gradient sums)" if name == "float16" else "")
    )


def float_name(xp, dtype):
    """"float32" or "float64" for those dtypes of ``xp``, else None.

    The one test of "is this one of the two float dtypes arrseg computes
    in", used by every check of images and parameters.
    """
    for name in ("float32", "float64"):
        if dtype == getattr(xp, name):
            return name
    return None


def image_float_dtype(xp, dtype, name="images"):
    """The float dtype images of ``dtype`` are computed in.

    float32 and float64 are kept; integer and bool images (uint8, uint16,
    masks) give float32. Any other dtype raises TypeError naming ``name``.
    """
    if xp.isdtype(dtype, "real floating"):
        kept = float_name(xp, dtype)
        if kept is None:
            raise TypeError(f"{name} must be float32, float64 or integer, got dtype "
                            f"{dtype}")
        return getattr(xp, kept)
    if xp.isdtype(dtype, ("integral", "bool")):
        return xp.float32
    raise TypeError(f"{name} must be real (float, integer or bool), got dtype {dtype}")
