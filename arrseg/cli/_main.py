"""The ``arrseg`` command: its parser, and one exit path for every outcome.

Each subcommand is a module with ``add_parser(subparsers)`` and
``run(args) -> status``; :func:`main` parses, runs, and turns every
exception into a status and at most one line on standard error (see
:mod:`arrseg.cli._errors` for the statuses).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..io.errors import FileFormatError, MissingDependencyError
from . import demo, info, predict, train
from ._errors import (EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED, CommandError,
                      one_line, report)

__all__ = ["COMMANDS", "main", "parser"]

#: The subcommands, by name.
COMMANDS = {"train": train, "predict": predict, "info": info, "demo": demo}

#: Errors that are the user's input or environment: one line, status 2.
_EXPECTED = (CommandError, FileFormatError, MissingDependencyError, ValueError,
             TypeError, MemoryError, OSError, ArithmeticError)


def parser():
    """The argument parser of ``arrseg`` (and ``python -m arrseg``)."""
    from .. import __version__

    p = argparse.ArgumentParser(
        prog="arrseg",
        description="CNN image segmentation: train on image files, predict image "
        "files, show the installation, run a demo.",
        epilog='Reading and writing image files, progress bars and figures need the '
        'cli extra: pip install "arrseg[cli]"')
    p.add_argument("--version", action="version", version=f"arrseg {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return p


def main(argv=None):
    """Entry point of the ``arrseg`` script and ``python -m arrseg``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 done, 2 an error of the input (one line
        ``arrseg: error: ...`` on standard error), 1 an internal error or a
        closed standard output, 130 interrupted (Ctrl-C). Invalid options
        exit through argparse (``SystemExit`` with status 2).
    """
    try:
        args = parser().parse_args(argv)
        if args.command is None:
            parser().print_help()
            return EXIT_ERROR
        status = COMMANDS[args.command].run(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except BrokenPipeError:
        # the reader went away (arrseg info | head -1): as the Python docs
        # advise (signal module, note on SIGPIPE), point stdout at /dev/null
        # so that the flush at exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end a progress bar's line
        return EXIT_INTERRUPTED
    except _EXPECTED as error:
        report(one_line(error))
        return EXIT_ERROR
    except Exception as error:  # a bug: still one line, unless asked for more
        if os.environ.get("ARRSEG_DEBUG"):
            raise
        report(f"internal error, please report it: {type(error).__name__}: "
               f"{one_line(error)} (set ARRSEG_DEBUG=1 for the traceback)")
        return EXIT_INTERNAL
