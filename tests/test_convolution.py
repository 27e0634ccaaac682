"""The convolution operator K(theta): forward, adjoint and theta-Jacobians."""

import numpy as np
import pytest

import reference
from conftest import to_xp
from arrseg.numerics.convolution import (
    conv2d,
    conv2d_adjoint,
    conv2d_theta_jvp,
    conv2d_theta_vjp,
    pad,
)
from arrseg.testing import assert_close, check_adjoint

BOUNDARIES = ["zeros", "periodic"]


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("shape,s", [((1, 1, 5, 7), 3), ((2, 3, 6, 5), 5),
                                     ((2, 2, 4, 3), 7), ((1, 4, 8, 8), 1)])
def test_conv2d_matches_loop_reference(xp, rng, boundary, shape, s):
    # s = 7 on a 4 x 3 image: the halo is wider than the image
    Y = rng.standard_normal(shape)
    theta = rng.standard_normal((3, shape[1], s, s))
    Z = conv2d(to_xp(xp, Y), to_xp(xp, theta), boundary, xp)
    assert_close(Z, reference.conv2d(Y, theta, boundary), xp=xp, dtype="float64")


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("p", [1, 3, 6])
def test_pad_matches_numpy_pad(xp, rng, boundary, p):
    Y = rng.standard_normal((2, 3, 4, 5))
    want = np.pad(Y, ((0, 0), (0, 0), (p, p), (p, p)),
                  mode=reference.PAD_MODE[boundary])
    assert_close(pad(to_xp(xp, Y), p, boundary, xp), want, xp=xp, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-13), ("float32", 1e-5)])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("s", [1, 3, 5, 7])
def test_adjoint_identity(xp, rng, boundary, s, dtype, tol):
    N, C, H, W, k = 2, 3, 7, 6, 4
    theta = to_xp(xp, rng.standard_normal((k, C, s, s)), dtype)
    Y = to_xp(xp, rng.standard_normal((N, C, H, W)), dtype)
    Z = to_xp(xp, rng.standard_normal((N, k, H, W)), dtype)
    err = check_adjoint(lambda v: conv2d(v, theta, boundary, xp),
                        lambda z: conv2d_adjoint(z, theta, boundary, xp), Y, Z)
    assert err < tol
    # the theta-Jacobian and its transpose are adjoint too
    err = check_adjoint(lambda v: conv2d_theta_jvp(Y, v, boundary, xp),
                        lambda z: conv2d_theta_vjp(Y, z, s, boundary, xp), theta, Z)
    assert err < tol


def test_adjoint_check_detects_a_wrong_adjoint(rng):
    import array_api_compat.numpy as xp

    theta = rng.standard_normal((2, 2, 3, 3))
    Y, Z = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((1, 2, 5, 5))
    # the forward operator itself is not its own adjoint (kernel not flipped)
    err = check_adjoint(lambda v: conv2d(v, theta, "zeros", xp),
                        lambda z: conv2d(z, np.transpose(theta, (1, 0, 2, 3)),
                                         "zeros", xp), Y, Z)
    assert err > 1e-3


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_theta_vjp_matches_reference_gradient(xp, rng, boundary):
    # d/dtheta of <K(theta) Y, Z> computed entry by entry with the reference
    N, C, H, W, k, s = 2, 2, 5, 4, 3, 3
    Y, Z = rng.standard_normal((N, C, H, W)), rng.standard_normal((N, k, H, W))
    want = np.zeros((k, C, s, s))
    for idx in np.ndindex(want.shape):
        E = np.zeros(want.shape)
        E[idx] = 1.0
        want[idx] = np.sum(reference.conv2d(Y, E, boundary) * Z)
    got = conv2d_theta_vjp(to_xp(xp, Y), to_xp(xp, Z), s, boundary, xp)
    assert_close(got, want, xp=xp, dtype="float64")


@pytest.mark.parametrize("shift", [(1, 0), (0, -2), (3, 5)])
def test_periodic_convolution_is_translation_equivariant(xp, rng, shift):
    Y = to_xp(xp, rng.standard_normal((2, 3, 8, 7)))
    theta = to_xp(xp, rng.standard_normal((4, 3, 5, 5)))
    rolled_then_conv = conv2d(xp.roll(Y, shift, axis=(2, 3)), theta, "periodic", xp)
    conv_then_rolled = xp.roll(conv2d(Y, theta, "periodic", xp), shift, axis=(2, 3))
    assert_close(rolled_then_conv, conv_then_rolled, xp=xp)
