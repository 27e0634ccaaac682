"""``python -m arrseg``: the command line (see :mod:`arrseg.cli`)."""

from .cli import main

raise SystemExit(main())
