"""arrseg.testing: its checks must fail when they should."""

import numpy as np
import pytest

from conftest import to_xp
from arrseg.testing import assert_close, check_derivative


def quadratic(A):
    return lambda x: (0.5 * x @ A @ x + np.sum(np.sin(x)), A @ x + np.cos(x))


def test_derivative_check_passes_and_fails(rng):
    A = rng.standard_normal((5, 5))
    A = A + A.T
    good = check_derivative(quadratic(A), rng.standard_normal(5))
    assert good.passed
    assert all(1.8 < o < 2.2 for o in good.orders[:4])
    f = quadratic(A)
    bad = check_derivative(lambda x: (f(x)[0], 1.05 * f(x)[1]), rng.standard_normal(5))
    assert not bad.passed
    assert "observed orders" in str(good)


def test_derivative_check_of_a_linear_function_passes():
    # the first-order error is zero: no order can be observed, yet it is right
    res = check_derivative(lambda x: (3.0 * np.sum(x), np.full_like(x, 3.0)),
                           np.ones(4))
    assert res.passed


def test_assert_close_checks_type_before_values(xp):
    a = to_xp(xp, np.array([1.0, 2.0]), "float32")
    assert_close(a, np.array([1.0, 2.0]), xp=xp, dtype="float32")
    with pytest.raises(AssertionError, match="dtype"):
        assert_close(a, np.array([1.0, 2.0]), dtype="float64")
    with pytest.raises(AssertionError, match="shape"):
        assert_close(a, np.array([1.0, 2.0, 3.0]))
    with pytest.raises(AssertionError):
        assert_close(a, np.array([1.0, 2.001]))
    import array_api_compat.numpy as xnp

    if xp is not xnp:
        with pytest.raises(AssertionError, match="namespace"):
            assert_close(a, np.array([1.0, 2.0]), xp=xnp)
