"""The NumPy fast path (:mod:`arrseg.cpu.blocked`), behind ``method="direct"``
and ``method="auto"`` on NumPy arrays."""
