"""Sphinx configuration of the arrseg documentation.

Build from the repository root with warnings as errors::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest

Sphinx only re-reads changed files, so warnings of unchanged pages are not
repeated by an incremental build: check with a clean ``docs/_build`` (or -E).

Nothing is downloaded at build time: the theme is the built-in alabaster and
there is no intersphinx. Maths is rendered by MathJax, which the browser
loads from its CDN when a page is viewed.
"""

import os
import sys

# Document the package of this checkout, installed or not.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from arrseg._version import __version__  # noqa: E402

project = "arrseg"
author = "The arrseg developers"
copyright = "the arrseg developers"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "numpydoc",
]

exclude_patterns = ["_build", "requirements.txt"]
templates_path = []

# -- autodoc ---------------------------------------------------------------
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # the numpydoc sections carry the types
autodoc_preserve_defaults = False

# -- numpydoc --------------------------------------------------------------
# Members are listed by the explicit autodoc directives in api.rst; numpydoc's
# own member tables would need autosummary and duplicate them.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# -- doctest ---------------------------------------------------------------
# ``-b doctest`` runs the ``.. doctest::`` blocks of the pages and the
# docstrings' Examples sections pulled in by autodoc. torch is optional: the
# blocks that use it are marked ``:skipif: torch is None``.
doctest_global_setup = """
import numpy as np
import arrseg
try:
    import torch
except ImportError:
    torch = None
"""

# -- HTML ------------------------------------------------------------------
html_theme = "alabaster"
html_theme_options = {
    "description": "CNN image segmentation on any array API backend",
    "fixed_sidebar": True,
}
html_static_path = []
html_show_sourcelink = False

