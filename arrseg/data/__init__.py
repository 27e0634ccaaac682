"""Data sets: synthetic images with exact labels, for demos, tests and benchmarks.

:func:`make_shapes`
    Disks and striped squares on a background (colour and texture).
:func:`make_textures`
    Texture mosaics: flat, horizontal and vertical stripes of one colour,
    dots; with noise and an illumination ramp.
:func:`scribbles`
    Sparse labels: a fraction of each class's pixels, as brush strokes.
"""

from .scribbles import scribbles
from .synthetic import make_shapes
from .textures import TEXTURE_CLASSES, make_textures

__all__ = ["TEXTURE_CLASSES", "make_shapes", "make_textures", "scribbles"]
