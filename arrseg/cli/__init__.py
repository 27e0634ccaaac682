"""The command line: ``arrseg`` (and ``python -m arrseg``).

Subcommands, one module each::

    arrseg train IMAGE... --labels LABEL... -o MODEL.npz    (cli.train)
    arrseg predict MODEL.npz IMAGE... -o DIR                (cli.predict)
    arrseg info                                             (cli.info)
    arrseg demo [--out DIR]                                 (cli.demo)

Shared parts: the parser and the exit path (``_main``), the argument types
(``_options``), the errors and exit statuses (``_errors``), the training
files (``_inputs``) and the progress bars (``_progress``). Image files are
read and written by :mod:`arrseg.io`.

The optional libraries (the ``cli`` extra: tifffile, Pillow, tqdm,
matplotlib) are imported when a command needs them; without them the
command says what to install.
"""

from ._main import main

__all__ = ["main"]
