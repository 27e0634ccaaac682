"""Data sets: synthetic images with exact labels, for demos, tests and benchmarks."""

from .synthetic import make_shapes

__all__ = ["make_shapes"]
