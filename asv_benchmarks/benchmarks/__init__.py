"""asv benchmarks of arrseg (see ../README.md)."""
