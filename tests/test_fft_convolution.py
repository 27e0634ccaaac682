"""The FFT convolution against the loop reference and the direct method.

Tolerance. The FFT's round-off is spread over all outputs of a transform and
is relative to the transform's largest values, not to each entry: a small
entry next to large ones carries an absolute error of about eps * (the large
ones), so ``rtol * |ref|`` would fail on mixed magnitudes. Each output block
is therefore compared with ``atol = TOL_FACTOR * eps * scale``, where scale is
the Cauchy-Schwarz bound of that block's entries from the inputs' norms
(``|.|`` the 2-norm over the H x W pixels, or the s x s taps):

=================  ==============  ======================================
function           block           scale
=================  ==============  ======================================
conv2d, jvp        out[n, i]       sum_j |theta[i, j]| |Y[n, j]|
conv2d_adjoint     out[n, j]       sum_i |theta[i, j]| |Z[n, i]|
conv2d_theta_vjp   out[i, j]       sum_n |Z[n, i]| |Y[n, j]|
=================  ==============  ======================================

Measured over the cases below (float32 and float64, random and mixed
magnitudes) the error is at most about 2.3 eps * scale, and the direct
method's own float32 error is of the same size; TOL_FACTOR = 10 leaves a
margin of 4. ``test_tolerance_is_not_vacuous`` shows that the same check
rejects operators that are wrong by one pixel, by a flip of the kernel or by
wrapping around the border, by factors of more than 1e4.
"""

import numpy as np
import pytest
import reference
from conftest import to_xp

from arrseg import init_params
from arrseg.numerics import convolution as direct
from arrseg.numerics import fft_convolution as fftc
from arrseg.numerics import forward_backward
from arrseg.testing import assert_close, check_adjoint, to_numpy

BOUNDARIES = ["zeros", "periodic"]
DTYPES = ["float64", "float32"]
TOL_FACTOR = 10.0

# (N, C, H, W, k, s): s = 1..9, odd and even sizes, N = 1, and kernels wider
# than the image (s = 7 on 4 x 3, s = 9 on 3 x 5: the periodic kernel wraps
# around more than once)
CASES = [(1, 2, 5, 7, 3, 1), (2, 3, 7, 5, 2, 3), (1, 2, 9, 6, 3, 5),
         (2, 1, 6, 9, 2, 7), (1, 2, 4, 3, 3, 7), (1, 2, 3, 5, 2, 9)]


# --- independent float64 references (NumPy loops, no arrseg code) ---------

def ref_adjoint(Z, theta, boundary):
    """K^T Z through the dense matrix of the reference forward operator."""
    N, k, H, W = Z.shape
    C = theta.shape[1]
    basis = np.eye(C * H * W).reshape(C * H * W, C, H, W)
    KT = reference.conv2d(basis, theta, boundary).reshape(C * H * W, k * H * W)
    return (Z.reshape(N, -1) @ KT.T).reshape(N, C, H, W)


def ref_theta_vjp(Y, Z, s, boundary):
    """dtheta[i, j, a, b] = sum_{n, h, w} Z[n, i, h, w] Ypad[n, j, h+a, w+b]."""
    C, H, W = Y.shape[1:]
    p = s // 2
    Yp = np.pad(Y, ((0, 0), (0, 0), (p, p), (p, p)),
                mode=reference.PAD_MODE[boundary])
    out = np.zeros((Z.shape[1], C, s, s))
    for a in range(s):
        for b in range(s):
            out[:, :, a, b] = np.einsum("nihw,njhw->ij", Z, Yp[:, :, a:a + H, b:b + W])
    return out


# --- the tolerance ---------------------------------------------------------

def _norms(X):
    """2-norms of the trailing two axes: (A, B, ., .) -> (A, B)."""
    return np.sqrt(np.sum(np.asarray(X, dtype=np.float64) ** 2, axis=(2, 3)))


def scales(Y, Z, theta):
    """Block scales of conv2d, conv2d_adjoint and conv2d_theta_vjp."""
    nY, nZ, nT = _norms(Y), _norms(Z), _norms(theta)
    return {"conv2d": nY @ nT.T, "conv2d_adjoint": nZ @ nT,
            "conv2d_theta_vjp": nZ.T @ nY}


def fft_error(got, want, scale, dtype):
    """max |got - want| in units of eps(dtype) * (the block's scale)."""
    eps = float(np.finfo(dtype).eps)
    diff = np.abs(to_numpy(got).astype(np.float64) - want)
    return float(np.max(diff / (eps * scale[:, :, None, None])))


def assert_fft_close(got, want, scale, *, xp, dtype, err_msg=""):
    # namespace, dtype and shape, and a global bound...
    atol = TOL_FACTOR * float(np.finfo(dtype).eps) * float(scale.max())
    assert_close(got, want, xp=xp, dtype=dtype, rtol=0, atol=atol, err_msg=err_msg)
    # ... then the bound block by block
    err = fft_error(got, want, scale, dtype)
    assert err <= TOL_FACTOR, f"error {err:.3g} eps*scale > {TOL_FACTOR}. {err_msg}"


def mixed(rng, shape):
    """Entries spanning 1e-3..1e3 by pixel, times 1e-3, 1 or 1e3 by channel."""
    X = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, size=shape)
    return X * 10.0 ** (3.0 * rng.integers(-1, 2, size=shape[:2] + (1, 1)))


def all_four(xp, Y, Z, theta, boundary):
    s = theta.shape[2]
    return {"conv2d": fftc.conv2d(Y, theta, boundary, xp),
            "conv2d_theta_jvp": fftc.conv2d_theta_jvp(Y, theta, boundary, xp),
            "conv2d_adjoint": fftc.conv2d_adjoint(Z, theta, boundary, xp),
            "conv2d_theta_vjp": fftc.conv2d_theta_vjp(Y, Z, s, boundary, xp)}


def check_all_four(xp, Y, Z, theta, boundary, dtype):
    """The four FFT products of (Y, Z, theta) rounded to dtype, against the
    float64 references of the rounded inputs."""
    Y, Z, theta = (a.astype(dtype).astype(np.float64) for a in (Y, Z, theta))
    want = {"conv2d": reference.conv2d(Y, theta, boundary),
            "conv2d_adjoint": ref_adjoint(Z, theta, boundary),
            "conv2d_theta_vjp": ref_theta_vjp(Y, Z, theta.shape[2], boundary)}
    want["conv2d_theta_jvp"] = want["conv2d"]
    scale = scales(Y, Z, theta)
    scale["conv2d_theta_jvp"] = scale["conv2d"]
    got = all_four(xp, to_xp(xp, Y, dtype), to_xp(xp, Z, dtype),
                   to_xp(xp, theta, dtype), boundary)
    for name, w in want.items():
        assert_fft_close(got[name], w, scale[name], xp=xp, dtype=dtype,
                         err_msg=f"{name}, {boundary}")


# --- tests -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}C{}H{}W{}k{}s{}".format(*c))
def test_matches_reference(xp, rng, case, boundary, dtype):
    N, C, H, W, k, s = case
    Y, Z = rng.standard_normal((N, C, H, W)), rng.standard_normal((N, k, H, W))
    theta = rng.standard_normal((k, C, s, s))
    check_all_four(xp, Y, Z, theta, boundary, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_mixed_magnitudes(xp, rng, boundary, dtype):
    N, C, H, W, k, s = 2, 3, 8, 7, 3, 5
    check_all_four(xp, mixed(rng, (N, C, H, W)), mixed(rng, (N, k, H, W)),
                   mixed(rng, (k, C, s, s)), boundary, dtype)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("shape", [(2, 3, 17, 12, 4, 5), (1, 2, 5, 4, 3, 11)])
def test_matches_direct_method(xp, rng, boundary, shape):
    N, C, H, W, k, s = shape
    Y, Z = rng.standard_normal((N, C, H, W)), rng.standard_normal((N, k, H, W))
    theta = rng.standard_normal((k, C, s, s))
    Yx, Zx, Tx = to_xp(xp, Y), to_xp(xp, Z), to_xp(xp, theta)
    got = all_four(xp, Yx, Zx, Tx, boundary)
    want = {"conv2d": direct.conv2d(Yx, Tx, boundary, xp),
            "conv2d_theta_jvp": direct.conv2d_theta_jvp(Yx, Tx, boundary, xp),
            "conv2d_adjoint": direct.conv2d_adjoint(Zx, Tx, boundary, xp),
            "conv2d_theta_vjp": direct.conv2d_theta_vjp(Yx, Zx, s, boundary, xp)}
    scale = scales(Y, Z, theta)
    scale["conv2d_theta_jvp"] = scale["conv2d"]
    for name, w in want.items():
        assert_fft_close(got[name], to_numpy(w), scale[name], xp=xp,
                         dtype="float64", err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_tolerance_is_not_vacuous(rng, boundary, dtype):
    import array_api_compat.numpy as xp

    N, C, H, W, k, s = 2, 3, 8, 7, 3, 5
    Y, Z = mixed(rng, (N, C, H, W)), mixed(rng, (N, k, H, W))
    theta = mixed(rng, (k, C, s, s))
    Y, Z, theta = (a.astype(dtype).astype(np.float64) for a in (Y, Z, theta))
    scale = scales(Y, Z, theta)
    Yd, Zd, Td = (a.astype(dtype) for a in (Y, Z, theta))

    want = reference.conv2d(Y, theta, boundary)
    got = fftc.conv2d(Yd, Td, boundary, xp)
    assert fft_error(got, want, scale["conv2d"], dtype) <= TOL_FACTOR
    wrong = {
        # off by one pixel
        "shifted": np.roll(got, 1, axis=3),
        # convolution instead of cross-correlation (a missing conjugate)
        "flipped kernel": fftc.conv2d(Yd, np.flip(Td, axis=(2, 3)), boundary, xp),
        # the other boundary: wrap-around where zeros belong, or the reverse
        "other boundary": fftc.conv2d(
            Yd, Td, "periodic" if boundary == "zeros" else "zeros", xp),
    }
    for name, Zw in wrong.items():
        err = fft_error(Zw, want, scale["conv2d"], dtype)
        assert err > 1e4 * TOL_FACTOR, f"{name}: {err:.3g}"

    want = ref_theta_vjp(Y, Z, s, boundary)
    got = fftc.conv2d_theta_vjp(Yd, Zd, s, boundary, xp)
    assert fft_error(got, want, scale["conv2d_theta_vjp"], dtype) <= TOL_FACTOR
    # lags off by one
    err = fft_error(np.roll(got, 1, axis=3), want, scale["conv2d_theta_vjp"], dtype)
    assert err > 1e4 * TOL_FACTOR


@pytest.mark.parametrize("case", [(5, 7, 3), (4, 3, 7), (9, 6, 5)])
def test_zero_padding_to_h_plus_p_is_enough(rng, monkeypatch, case):
    # the grid is normally rounded up to a fast size, which could hide a
    # padding one short: force the minimal grid H + p, then one less
    import array_api_compat.numpy as xp

    H, W, s = case
    p = s // 2
    Y, Z = rng.standard_normal((2, 2, H, W)), rng.standard_normal((2, 3, H, W))
    theta = rng.standard_normal((3, 2, s, s))
    scale = scales(Y, Z, theta)
    want_fwd = reference.conv2d(Y, theta, "zeros")
    want_vjp = ref_theta_vjp(Y, Z, s, "zeros")
    for extra, ok in [(p, True), (p - 1, False)]:
        monkeypatch.setattr(fftc, "fft_shape",
                            lambda H, W, s, b, e=extra: (H + e, W + e))
        err_fwd = fft_error(fftc.conv2d(Y, theta, "zeros", xp), want_fwd,
                            scale["conv2d"], "float64")
        err_vjp = fft_error(fftc.conv2d_theta_vjp(Y, Z, s, "zeros", xp), want_vjp,
                            scale["conv2d_theta_vjp"], "float64")
        assert (err_fwd <= TOL_FACTOR) is ok and (err_vjp <= TOL_FACTOR) is ok, (
            extra, err_fwd, err_vjp)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-13), ("float32", 1e-5)])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("s", [1, 3, 5, 9])
def test_adjoint_identities(xp, rng, boundary, s, dtype, tol):
    # s = 9 on 5 x 4: the kernel is wider than the image
    N, C, H, W, k = 2, 3, 5, 4, 4
    theta = to_xp(xp, rng.standard_normal((k, C, s, s)), dtype)
    Y = to_xp(xp, rng.standard_normal((N, C, H, W)), dtype)
    Z = to_xp(xp, rng.standard_normal((N, k, H, W)), dtype)
    err = check_adjoint(lambda v: fftc.conv2d(v, theta, boundary, xp),
                        lambda z: fftc.conv2d_adjoint(z, theta, boundary, xp), Y, Z)
    assert err < tol
    err = check_adjoint(lambda v: fftc.conv2d_theta_jvp(Y, v, boundary, xp),
                        lambda z: fftc.conv2d_theta_vjp(Y, z, s, boundary, xp),
                        theta, Z)
    assert err < tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_dtype_is_preserved(xp, rng, boundary, dtype):
    Y = to_xp(xp, rng.standard_normal((1, 2, 6, 5)), dtype)
    Z = to_xp(xp, rng.standard_normal((1, 3, 6, 5)), dtype)
    theta = to_xp(xp, rng.standard_normal((3, 2, 3, 3)), dtype)
    for name, out in all_four(xp, Y, Z, theta, boundary).items():
        assert out.dtype == getattr(xp, dtype), (name, out.dtype)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_forward_backward_matches_direct(xp, rng, boundary):
    N, C, H, W, k, n_c, s = 2, 3, 9, 8, 4, 3, 5
    params = init_params(C, k, n_c, s, dtype="float64", xp=xp)
    params = params._replace(b=to_xp(xp, rng.standard_normal(k)))
    x = to_xp(xp, rng.standard_normal((N, C, H, W)))
    labels = rng.integers(0, n_c, (N, H, W))
    labels[rng.random((N, H, W)) < 0.2] = -100
    labels = to_xp(xp, labels)

    P = forward_backward.forward(x, params, "tanh", boundary, xp, conv=fftc)
    assert_close(P, forward_backward.forward(x, params, "tanh", boundary, xp),
                 xp=xp, dtype="float64")
    loss, grads = forward_backward.loss_and_grad(
        x, labels, params, "tanh", boundary, None, -100, xp, conv=fftc)
    want_loss, want = forward_backward.loss_and_grad(
        x, labels, params, "tanh", boundary, None, -100, xp)
    assert_close(loss, to_numpy(want_loss), xp=xp, dtype="float64")
    for name, g, w in zip(params._fields, grads, want):
        assert_close(g, to_numpy(w), xp=xp, dtype="float64", err_msg=name)


class _NoFFT:
    """NumPy's namespace without the fft extension."""

    __name__ = "no_fft_namespace"

    def __getattr__(self, name):
        if name == "fft":
            raise AttributeError(name)
        import array_api_compat.numpy as xp

        return getattr(xp, name)


@pytest.mark.parametrize("name", ["conv2d", "conv2d_adjoint", "conv2d_theta_jvp",
                                  "conv2d_theta_vjp"])
def test_namespace_without_fft_raises(rng, name):
    Y = rng.standard_normal((1, 2, 5, 5))
    theta = rng.standard_normal((2, 2, 3, 3))
    args = {"conv2d": (Y, theta), "conv2d_adjoint": (Y, theta),
            "conv2d_theta_jvp": (Y, theta), "conv2d_theta_vjp": (Y, Y, 3)}[name]
    with pytest.raises(TypeError, match="no_fft_namespace has none") as info:
        getattr(fftc, name)(*args, "zeros", _NoFFT())
    assert "fft extension" in str(info.value)


def test_next_fast_len_is_the_next_235_smooth_size():
    def smooth(m):
        for q in (2, 3, 5):
            while m % q == 0:
                m //= q
        return m == 1

    for n in range(1, 600):
        want = next(m for m in range(n, 2 * n + 1) if smooth(m))
        assert fftc.next_fast_len(n) == want, n


def test_boundaries_are_the_direct_methods():
    assert fftc.BOUNDARIES is direct.BOUNDARIES
