"""One test body for every installed array namespace (SciPy's ``xp`` fixture).

``xp`` runs a test on NumPy, array_api_strict (the proof that the generic
code uses only the standard), PyTorch's CPU namespace through
array-api-compat, and CuPy where a GPU is present. A missing library is a
skip. ``@pytest.mark.skip_xp_backends("torch", reason=...)`` excludes a
backend from one test, with the reason shown in the report.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the property tests skip themselves
    settings = None

if settings is not None:
    # "ci": the bounded, reproducible run of `pytest` and .ci/run;
    # "long": HYPOTHESIS_PROFILE=long for a long search (docs/reliability.rst).
    settings.register_profile(
        "ci", max_examples=30, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile(
        "long", max_examples=2000, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _cupy_usable():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device
        return False


def _namespace(name):
    if name == "numpy":
        import array_api_compat.numpy as xp

        return xp
    if name == "array_api_strict":
        return pytest.importorskip("array_api_strict")
    if name == "torch":
        pytest.importorskip("torch")
        return importlib.import_module("array_api_compat.torch")
    if name == "cupy":
        if not _cupy_usable():
            pytest.skip("cupy with a GPU is not available")
        return importlib.import_module("array_api_compat.cupy")
    raise AssertionError(name)


BACKENDS = ["numpy", "array_api_strict", "torch", "cupy"]


@pytest.fixture(params=[pytest.param(b, id=b) for b in BACKENDS])
def xp(request):
    marker = request.node.get_closest_marker("skip_xp_backends")
    if marker is not None and request.param in marker.args:
        pytest.skip(marker.kwargs.get("reason", f"skipped on {request.param}"))
    return _namespace(request.param)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "skip_xp_backends(*names, reason): skip the xp-parametrised test on "
        "these backends",
    )


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


@pytest.fixture
def one_torch_thread():
    """Run PyTorch on one intra-op thread: the training tests' problems are
    tiny, and on a busy 2-core machine torch's spinning worker threads make
    them many times slower. The previous setting is restored after each
    test."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def to_xp(xp, a, dtype=None):
    """NumPy array -> xp array (default: keep the NumPy dtype)."""
    a = np.ascontiguousarray(a)
    if dtype is None:
        return xp.asarray(a)
    return xp.asarray(a, dtype=getattr(xp, dtype) if isinstance(dtype, str) else dtype)
