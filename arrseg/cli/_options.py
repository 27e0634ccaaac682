"""Argument types of the command line, shared by the subcommands.

Each turns the text of one option into a value or raises
:class:`argparse.ArgumentTypeError`, which argparse reports as
``arrseg SUBCOMMAND: error: argument --NAME: MESSAGE`` with exit status 2.
Ranges the :class:`arrseg.Segmenter` checks itself (and names) are left
to it.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["class_weight", "dilation", "integer", "number", "odd", "outputs",
           "positive", "positive_number"]


def integer(text, minimum=None):
    """An int (of at least ``minimum``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if minimum is not None and value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive(text):
    """An int >= 1."""
    return integer(text, 1)


def non_negative(text):
    """An int >= 0."""
    return integer(text, 0)


def odd(text):
    """A positive odd int (a kernel size)."""
    value = positive(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be odd, got {value}")
    return value


def number(text):
    """A finite float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_number(text):
    """A finite float > 0."""
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def dilation(text):
    """``doubling``, one int, or a comma-separated list of ints."""
    if text.strip() == "doubling":
        return "doubling"
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("must be 'doubling', an integer or a list "
                                         "like 1,2,4")
    values = [integer(p.strip(), 1) for p in parts]
    return values[0] if len(values) == 1 and "," not in text else values


def class_weight(text):
    """``balanced`` or a comma-separated list of non-negative weights."""
    if text.strip() == "balanced":
        return "balanced"
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'balanced' or weights like 1,2.5,1; got {text!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"weights must be finite and >= 0, got {text}")
    return values


def outputs(choices):
    """A type: a comma-separated subset of ``choices``, in the order given."""
    def parse(text):
        names = [p.strip() for p in text.split(",") if p.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"must be a comma-separated list of {', '.join(choices)}; got {text!r}")
        return list(dict.fromkeys(names))
    return parse
