"""Checks of scalar arguments: the one place where their messages are written.

Every public function and the estimator state their argument checks with
these helpers, so that a message reads the same everywhere::

    {where}{name} must be an integer, got float 2.5
    {where}{name} must be >= 1, got 0
    {where}{name} must be a finite number in [0, 1), got 1.5
    {where}{name} must be one of 'a', 'b'; got 'c'
    {where}{name} must be True or False, got 'yes'

``where`` is a prefix naming the owner (``"Segmenter: "``), empty for the
functions. ``bool`` is refused where an integer or a number is meant:
``True`` is an int to Python but never a width or a learning rate.
The array-valued checks (shapes, dtypes, values) are in
:mod:`arrseg._validation`.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

__all__ = ["check_bool", "check_bytes", "check_choice", "check_float", "check_int",
           "format_bytes", "memory_bytes"]


def check_int(name, value, minimum=None, *, allow_none=False, where=""):
    """``value`` as a Python int, checked.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : object
    minimum : int, optional
        The smallest value accepted.
    allow_none : bool, default False
        Accept None (returned as is).
    where : str, default ""
        Prefix of the messages, e.g. ``"Segmenter: "``.

    Returns
    -------
    int or None

    Raises
    ------
    TypeError
        If value is not an integer (bool is refused).
    ValueError
        If value is below ``minimum``.

    Examples
    --------
    >>> from arrseg._arguments import check_int
    >>> check_int("width", 8, 1)
    8
    >>> check_int("width", True, 1)
    Traceback (most recent call last):
    ...
    TypeError: width must be an integer, got bool True
    """
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}{name} must be an integer"
                        + (" or None" if allow_none else "")
                        + f", got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}{name} must be >= {minimum}, got {value}")
    return value


def check_float(name, value, *, low=0.0, low_open=False, high=None, high_open=True,
                allow_none=False, where=""):
    """``value`` as a finite Python float in an interval, checked.

    The interval is ``[low, high)`` by default; ``low_open`` / ``high_open``
    choose the ends, ``high=None`` means no upper bound.

    Returns
    -------
    float or None

    Raises
    ------
    TypeError
        If value is not a real number (bool is refused).
    ValueError
        If value is not finite or outside the interval.

    Examples
    --------
    >>> from arrseg._arguments import check_float
    >>> check_float("momentum", 0.9, high=1.0)
    0.9
    >>> check_float("momentum", 1.0, high=1.0)
    Traceback (most recent call last):
    ...
    ValueError: momentum must be a finite number in [0, 1), got 1.0
    """
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}{name} must be a number"
                        + (" or None" if allow_none else "")
                        + f", got {type(value).__name__} {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        interval = (("(" if low_open else "[") + f"{low:g}, "
                    + ("inf)" if high is None
                       else f"{high:g}" + (")" if high_open else "]")))
        raise ValueError(f"{where}{name} must be a finite number in {interval}, "
                         f"got {value!r}")
    return v


def check_choice(name, value, choices, *, where=""):
    """``value`` if it is one of the strings ``choices``.

    Raises
    ------
    ValueError
        Naming the argument, the choices and the value.

    Examples
    --------
    >>> from arrseg._arguments import check_choice
    >>> check_choice("boundary", "wrap", ("zeros", "periodic"))
    Traceback (most recent call last):
    ...
    ValueError: boundary must be one of 'zeros', 'periodic'; got 'wrap'
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{where}{name} must be one of "
                         f"{', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_bool(name, value, *, where=""):
    """``value`` as a Python bool; TypeError unless it is True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}{name} must be True or False, got {value!r}")
    return bool(value)


def memory_bytes():
    """This machine's physical memory in bytes, or None where unknown.

    The bound of :func:`check_bytes`: no array larger than it can be
    allocated here (a GPU's memory is smaller still).
    """
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX, or unknown
        return None


def format_bytes(n):
    """``n`` bytes as a short string: ``"512 B"``, ``"1.5 GiB"``, ``"196 TiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(n)} B"
            return f"{n:.3g} {unit}" if n < 1000 else f"{n:,.0f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def check_bytes(what, n_bytes, hint="", *, where=""):
    """Refuse an allocation larger than this machine's memory, before making it.

    Parameters
    ----------
    what : str
        The array and the sizes it comes from, for the message, e.g.
        ``"the confusion matrix (n_classes = 100000)"``.
    n_bytes : int
        Its size in bytes (Python ints: no overflow).
    hint : str, optional
        What to change, appended to the message.
    where : str, optional
        Prefix of the message, e.g. ``"Segmenter: "``.

    Raises
    ------
    ValueError
        If ``n_bytes`` exceeds :func:`memory_bytes`, instead of NumPy's
        MemoryError (or a machine that swaps for minutes).

    Examples
    --------
    >>> from arrseg._arguments import check_bytes
    >>> check_bytes("the parameters (n_classes = 10**15)", 8 * 10**15)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the parameters (n_classes = 10**15) would need 7,276 TiB, more ...
    """
    limit = memory_bytes()
    if limit is not None and n_bytes > limit:
        raise ValueError(f"{where}{what} would need {format_bytes(n_bytes)}, more "
                         f"than this machine's {format_bytes(limit)} of memory"
                         + (f"; {hint}" if hint else ""))
