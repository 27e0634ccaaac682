"""Exit statuses and the one-line error report of the command line.

    0    done
    1    an unexpected internal error (reported in one line; set
         ARRSEG_DEBUG=1 for the traceback), or standard output closed
         early (``| head``)
    2    an invalid option, unusable input, an error of the library
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import sys

__all__ = ["CommandError", "EXIT_ERROR", "EXIT_INTERNAL", "EXIT_INTERRUPTED",
           "one_line", "report"]

EXIT_INTERNAL = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A refusal of the command line's own, with a message for a person."""


def one_line(error):
    """The message of ``error`` as one line (never empty)."""
    text = " ".join(str(error).split())
    if isinstance(error, MemoryError):
        return f"out of memory ({text})" if text else "out of memory"
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return text or type(error).__name__


def report(message, kind="error"):
    """Print ``arrseg: KIND: MESSAGE`` on standard error."""
    print(f"arrseg: {kind}: {message}", file=sys.stderr, flush=True)
