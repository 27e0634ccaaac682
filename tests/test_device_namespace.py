"""Tests of the transfer-counting device namespace (tests/device_namespace.py),
and smoke runs of arrseg's device path on it: results stay on the device, no
image data crosses, and a call validates with one read-back."""

from __future__ import annotations

import copy
import pickle

import array_api_compat
import numpy as np
import pytest
from device_namespace import (
    FAKE_GPU,
    DeviceArray,
    DeviceNamespace,
    FakeDevice,
    Transfer,
    make_namespace,
)

import arrseg
from arrseg._backend import to_numpy


@pytest.fixture
def dxp():
    return make_namespace()


def assert_device_array(a, dxp, shape=None, dtype=None):
    assert isinstance(a, DeviceArray), type(a)
    assert a.__array_namespace__() is dxp
    assert a.device == FAKE_GPU
    if shape is not None:
        assert a.shape == shape
    if dtype is not None:
        assert a.dtype == dtype


def host(a, dxp):
    """a's values on the host, without counting the read in the test's log."""
    values = a.get()
    dxp.transfers.events.pop()
    return values


# -- the wrapper itself ---------------------------------------------------------


def test_float_of_0d_float64_counts_one_read_of_8_bytes(dxp):
    a = dxp.sum(dxp.ones(5, dtype=dxp.float64))
    with dxp.counting() as log:
        value = float(a)
    assert value == 5.0
    assert log.events == [Transfer("to_host", 8, "__float__", log.events[0].stack)]
    assert log.counts() == {"to_device": 0, "to_host": 1}


@pytest.mark.parametrize(("convert", "what", "dtype", "expected"), [
    (int, "__int__", "int32", 3),
    (bool, "__bool__", "bool", True),
    (complex, "__complex__", "float32", 3 + 0j),
    (lambda a: [0, 1, 2, 3][a], "__index__", "int64", 3),
    (lambda a: a.item(), "item", "int16", 3),
])
def test_implicit_scalar_reads_count_the_arrays_nbytes(dxp, convert, what, dtype,
                                                       expected):
    a = dxp.astype(dxp.full((), 3), getattr(dxp, dtype))
    with dxp.counting() as log:
        assert convert(a) == expected
    assert [(e.kind, e.what, e.nbytes) for e in log.events] == [
        ("to_host", what, np.dtype(dtype).itemsize)]


def test_failed_scalar_conversion_is_not_counted(dxp):
    a = dxp.zeros((2, 3))
    with dxp.counting() as log, pytest.raises(TypeError):
        float(a)
    assert len(log) == 0


def test_asarray_of_numpy_counts_an_upload_of_its_nbytes(dxp):
    host_array = np.arange(12, dtype=np.float32).reshape(3, 4)
    with dxp.counting() as log:
        a = dxp.asarray(host_array)
    assert_device_array(a, dxp, (3, 4), dxp.float32)
    assert [(e.kind, e.nbytes, e.what) for e in log.events] == [
        ("to_device", 48, "asarray")]
    np.testing.assert_array_equal(host(a, dxp), host_array)


def test_asarray_counts_the_bytes_of_the_array_created(dxp):
    with dxp.counting() as log:
        dxp.asarray(np.ones(4), dtype=dxp.float32)  # cast on the host, then copied
        dxp.asarray(3.0)  # a Python scalar: like cupy.asarray(3.0)
        dxp.asarray([1, 2, 3], dtype=dxp.int8)
        dxp.to_device(np.zeros((2, 2), dtype=np.int16))
        dxp.from_dlpack(np.ones(3))
    assert [e.nbytes for e in log.to_device] == [16, 8, 3, 8, 24]
    assert log.counts(by="what") == {"asarray": 4, "from_dlpack": 1}


def test_asarray_of_device_arrays_is_free(dxp):
    a = dxp.arange(3.0)
    with dxp.counting() as log:
        b = dxp.asarray(a, dtype=dxp.float32)
        c = dxp.asarray([a[0], a[1]])
        d = dxp.from_dlpack(a)
    assert len(log) == 0
    assert_device_array(b, dxp, (3,), dxp.float32)
    assert_device_array(c, dxp, (2,))
    assert_device_array(d, dxp, (3,))


@pytest.mark.parametrize("make", [
    lambda xp: xp.zeros((2, 3)),
    lambda xp: xp.empty((2, 3), dtype=xp.float32),
    lambda xp: xp.ones(4, device=FAKE_GPU),
    lambda xp: xp.full((2,), 7.0),
    lambda xp: xp.arange(10),
    lambda xp: xp.linspace(0.0, 1.0, 5),
    lambda xp: xp.eye(3),
    lambda xp: xp.zeros_like(xp.ones(3)),
    lambda xp: xp.ones_like(xp.ones(3)),
    lambda xp: xp.full_like(xp.ones(3), 2),
    lambda xp: xp.empty_like(xp.ones(3)),
], ids=["zeros", "empty", "ones", "full", "arange", "linspace", "eye",
        "zeros_like", "ones_like", "full_like", "empty_like"])
def test_creation_functions_do_not_count(dxp, make):
    with dxp.counting() as log:
        a = make(dxp)
    assert_device_array(a, dxp)
    assert len(log) == 0


def test_device_argument_accepts_only_the_fake_device(dxp):
    assert dxp.zeros(2, device=FakeDevice(0)).device == FAKE_GPU
    with pytest.raises(ValueError, match="fake_gpu:0"):
        dxp.zeros(2, device="cpu")
    info = dxp.__array_namespace_info__()
    assert info.devices() == [FAKE_GPU]
    assert info.default_device() == FAKE_GPU
    assert info.default_dtypes(device=FAKE_GPU)["real floating"] == np.float64


@pytest.mark.parametrize("op", [
    lambda a, h: a + h,
    lambda a, h: h + a,
    lambda a, h: a * h,
    lambda a, h: h @ a,
    lambda a, h: a == h,
    lambda a, h: a < h,
    lambda a, h: np.add(h, a),
], ids=["add", "radd", "mul", "rmatmul", "eq", "lt", "np.add"])
def test_operators_refuse_numpy_arrays(dxp, op):
    a = dxp.ones(3)
    with dxp.counting() as log, pytest.raises(TypeError):
        op(a, np.ones(3))
    assert len(log) == 0


def test_inplace_operator_refuses_numpy_arrays(dxp):
    a = dxp.ones(3)
    with pytest.raises(TypeError):
        a += np.ones(3)


@pytest.mark.parametrize("convert", [np.asarray, np.array, np.sum,
                                     lambda a: np.concatenate([a])],
                         ids=["asarray", "array", "sum", "concatenate"])
def test_implicit_conversion_to_numpy_is_refused(dxp, convert):
    a = dxp.arange(3.0)
    with dxp.counting() as log, pytest.raises(TypeError):
        convert(a)
    assert len(log) == 0


def test_from_dlpack_counts_a_download_and_returns_a_copy(dxp):
    a = dxp.asarray(np.arange(6.0).reshape(2, 3))
    with dxp.counting() as log:
        h = np.from_dlpack(a)
    assert [(e.kind, e.nbytes, e.what) for e in log.events] == [("to_host", 48, "dlpack")]
    np.testing.assert_array_equal(h, np.arange(6.0).reshape(2, 3))
    h[...] = -1
    assert float(a[0, 0]) == 0.0


def test_arrseg_to_numpy_reads_through_dlpack_and_counts(dxp):
    a = dxp.asarray(np.arange(4, dtype=np.int8))
    with dxp.counting() as log:
        h = to_numpy(a)
    assert isinstance(h, np.ndarray)
    np.testing.assert_array_equal(h, np.arange(4))
    assert [(e.kind, e.nbytes, e.what) for e in log.events] == [("to_host", 4, "dlpack")]


def test_explicit_reads_count(dxp):
    a = dxp.arange(4, dtype=dxp.int32)
    with dxp.counting() as log:
        assert isinstance(a.get(), np.ndarray)
        assert a.tolist() == [0, 1, 2, 3]
        assert isinstance(dxp.to_host(a), np.ndarray)
        assert isinstance(a.to_device("cpu"), np.ndarray)
        assert a.to_device(FAKE_GPU) is a
        assert f"{dxp.sum(a):d}" == "6"
    assert log.counts(by="what") == {"get": 2, "tolist": 1, "to_device('cpu')": 1,
                                     "__format__": 1}
    # four reads of the int32 array, and one of its sum (int64, the default)
    assert log.nbytes() == {"to_device": 0, "to_host": 4 * 16 + 8}


def test_printing_does_not_count(dxp):
    a = dxp.ones((2, 3), dtype=dxp.float32)
    with dxp.counting() as log:
        text = [repr(a), str(a), f"{a}", f"{a!r}"]
    assert len(log) == 0
    assert text[0] == "DeviceArray(shape=(2, 3), dtype=float32, device=fake_gpu:0)"
    assert len(set(text)) == 1


def test_arithmetic_results_stay_on_the_device(dxp):
    a_h = np.arange(1, 7, dtype=np.int64).reshape(2, 3)
    a = dxp.asarray(a_h)
    f = dxp.astype(a, dxp.float64)
    f_h = a_h.astype(np.float64)
    m_h = np.arange(9.0).reshape(3, 3)
    m = dxp.asarray(m_h)
    cases = [
        (a + 1, a_h + 1), (2 - a, 2 - a_h), (a * a, a_h * a_h), (f / 2, f_h / 2),
        (7 // a, 7 // a_h), (a % 4, a_h % 4), (f ** 2, f_h ** 2), (2.0 ** f, 2.0 ** f_h),
        (f @ m, f_h @ m_h), (a & 3, a_h & 3), (1 | a, 1 | a_h), (a ^ a, a_h ^ a_h),
        (a << 1, a_h << 1), (a >> 1, a_h >> 1), (-a, -a_h), (+a, a_h),
        (abs(-f), f_h), (~a, ~a_h), (a < 3, a_h < 3), (3 <= a, 3 <= a_h),
        (a > f, a_h > f_h), (a >= 2, a_h >= 2), (a == 2, a_h == 2), (a != 2, a_h != 2),
        (np.float32(2) * f, 2 * f_h), (f.T, f_h.T), (f.mT, f_h.T),
    ]
    dxp.transfers.reset()
    for result, expected in cases:
        assert_device_array(result, dxp, expected.shape, expected.dtype)
    assert len(dxp.transfers) == 0
    for result, expected in cases:
        np.testing.assert_array_equal(host(result, dxp), expected)


def test_inplace_operators_update_the_array_itself(dxp):
    a = dxp.arange(4.0)
    b = a
    with dxp.counting() as log:
        a += 1
        a *= dxp.full((4,), 2.0)
        a -= 1
        a /= 2
        a **= 2
    assert a is b
    assert len(log) == 0
    np.testing.assert_allclose(host(a, dxp), ((np.arange(4.0) + 1) * 2 - 1) ** 2 / 4)
    k = dxp.arange(8)
    k //= 3
    k %= 2
    k &= 1
    k |= 2
    k ^= 1
    k <<= 1
    k >>= 1
    np.testing.assert_array_equal(host(k, dxp), (((np.arange(8) // 3) % 2 & 1) | 2) ^ 1)


def test_functions_keep_device_arrays(dxp):
    x_h = np.arange(12.0).reshape(3, 4)
    x = dxp.asarray(x_h)
    idx = dxp.asarray(np.array([2, 0]))
    dxp.transfers.reset()
    cases = [
        (dxp.take(x, idx, axis=0), x_h[[2, 0]]),
        (dxp.concat([x, x], axis=1), np.concatenate([x_h, x_h], axis=1)),
        (dxp.where(x > 5, x, 0.0), np.where(x_h > 5, x_h, 0.0)),
        (dxp.matmul(x, dxp.matrix_transpose(x)), x_h @ x_h.T),
        (dxp.sum(x, axis=1), x_h.sum(axis=1)),
        (dxp.sum(x), np.asarray(x_h.sum())),
        (dxp.astype(x, dxp.float32), x_h.astype(np.float32)),
        (dxp.stack([x, x]), np.stack([x_h, x_h])),
        (dxp.reshape(x, (4, 3)), x_h.reshape(4, 3)),
        (dxp.max(x, axis=0), x_h.max(axis=0)),
        (dxp.argmax(x, axis=1), x_h.argmax(axis=1)),
        (dxp.linalg.vector_norm(x), np.asarray(np.linalg.norm(x_h))),
        (dxp.fft.irfft(dxp.fft.rfft(x), n=4), x_h),
        (dxp.log(x + 1), np.log(x_h + 1)),  # xp.log is the logarithm, not the log
        (dxp.allclose(x, x), np.asarray(True)),  # CuPy: a 0-d array, not a bool
    ]
    assert len(dxp.transfers) == 0
    for result, expected in cases:
        assert_device_array(result, dxp, expected.shape)
        np.testing.assert_allclose(host(result, dxp), expected, atol=1e-12)


def test_functions_refuse_numpy_array_arguments(dxp):
    with pytest.raises(TypeError, match="implicit host -> device"):
        dxp.where(dxp.ones(2) > 0, np.ones(2), dxp.zeros(2))
    with pytest.raises(TypeError, match="implicit host -> device"):
        dxp.concat([dxp.ones(2), np.ones(2)])


def test_tuple_results_are_wrapped(dxp):
    q, r = dxp.linalg.qr(dxp.eye(3))
    assert_device_array(q, dxp, (3, 3))
    assert_device_array(r, dxp, (3, 3))
    u = dxp.unique_counts(dxp.asarray(np.array([1, 1, 2])))
    assert type(u).__name__ == "UniqueCountsResult"
    assert_device_array(u.counts, dxp, (2,))


def test_indexing(dxp):
    a = dxp.arange(6.0)
    with dxp.counting() as log:
        a[1:3] = 0
        a[dxp.asarray(a > 4)] = dxp.full((), -1.0)
        a[..., None][0, 0] = 7
        row = dxp.reshape(a, (2, 3))[1]
        element = a[2]
        picked = a[dxp.asarray(a == 0)]
    assert len(log.to_host) == 0 and len(log.to_device) == 0
    np.testing.assert_array_equal(host(a, dxp), [7.0, 0.0, 0.0, 3.0, 4.0, -1.0])
    assert_device_array(row, dxp, (3,))
    assert_device_array(element, dxp, ())
    assert_device_array(picked, dxp, (2,))


def test_indexing_with_host_data(dxp):
    a = dxp.arange(4.0)
    with pytest.raises(TypeError):
        a[np.array([0, 1])]
    with pytest.raises(TypeError):
        a[np.array([0, 1])] = 1.0
    with pytest.raises(TypeError):
        a[:2] = np.ones(2)
    with dxp.counting() as log:
        picked = a[[3, 0]]  # CuPy uploads the list
        a[:2] = [5.0, 6.0]
    assert [(e.kind, e.nbytes) for e in log.events] == [("to_device", 16),
                                                        ("to_device", 16)]
    np.testing.assert_array_equal(host(picked, dxp), [3.0, 0.0])
    np.testing.assert_array_equal(host(a, dxp), [5.0, 6.0, 2.0, 3.0])


def test_len_and_iteration_are_free(dxp):
    a = dxp.ones((3, 2))
    with dxp.counting() as log:
        rows = list(a)
        assert len(a) == 3
    assert len(log) == 0
    assert [r.shape for r in rows] == [(2,)] * 3
    with pytest.raises(TypeError):
        len(dxp.ones(()))
    with pytest.raises(TypeError):
        iter(dxp.ones(()))


def test_array_attributes(dxp):
    a = dxp.zeros((2, 3, 4), dtype=dxp.int16)
    assert (a.shape, a.ndim, a.size, a.nbytes, a.itemsize) == ((2, 3, 4), 3, 24, 48, 2)
    assert a.dtype == np.int16 and a.dtype == dxp.int16
    assert a.device == FAKE_GPU and a.device == FakeDevice(0) and a.device != FakeDevice(1)
    assert repr(a.device) == "fake_gpu:0"
    assert a.mT.shape == (2, 4, 3)


def test_array_api_compat_recognises_the_namespace(dxp):
    a = dxp.ones(3)
    assert array_api_compat.array_namespace(a) is dxp
    assert array_api_compat.array_namespace(a, 1.0, a) is dxp
    assert array_api_compat.device(a) == FAKE_GPU
    assert not array_api_compat.is_numpy_array(a)
    assert not array_api_compat.is_cupy_array(a)
    assert not array_api_compat.is_torch_array(a)
    assert array_api_compat.is_array_api_obj(a)
    assert array_api_compat.is_writeable_array(a)
    assert not array_api_compat.is_numpy_namespace(dxp)
    assert not array_api_compat.is_cupy_namespace(dxp)
    assert array_api_compat.to_device(a, FAKE_GPU) is a


def test_dtypes_constants_and_dtype_functions_pass_through(dxp):
    a = dxp.ones(2, dtype=dxp.float32)
    with dxp.counting() as log:
        assert dxp.float32 is np.float32 and dxp.int64 is np.int64
        assert dxp.pi == np.pi and dxp.e == np.e and dxp.newaxis is None
        assert dxp.isdtype(a.dtype, "real floating") is True
        assert dxp.isdtype(a.dtype, ("integral", "bool")) is False
        assert dxp.result_type(a, dxp.float64) == np.float64
        assert dxp.result_type(a.dtype, dxp.int8) == np.float32
        assert dxp.can_cast(dxp.float32, dxp.float64)
        assert dxp.finfo(a).eps == np.finfo(np.float32).eps
        assert dxp.finfo(dxp.float64).bits == 64
        assert dxp.iinfo(dxp.astype(a, dxp.int16)).max == 32767
    assert len(log) == 0
    assert dxp.__name__ == "device_namespace"
    assert dxp.linalg.__name__ == "device_namespace.linalg"


def test_counting_resets_and_reports(dxp):
    dxp.asarray(1.0)
    with dxp.counting() as log:
        assert log is dxp.transfers and len(log) == 0
        x = dxp.asarray(np.ones(3))
        float(dxp.sum(x))
    assert log.counts() == {"to_device": 1, "to_host": 1}
    assert log.nbytes() == {"to_device": 24, "to_host": 8}
    assert log.nbytes("to_host") == 8
    assert [e.what for e in log.to_device] == ["asarray"]
    assert [e.what for e in log.to_host] == ["__float__"]
    assert "test_device_namespace.py" in log.events[0].origin
    assert log.report().splitlines()[1].startswith("to_host 8 B by __float__ at ")
    log.reset()
    assert log.events == [] and log.counts() == {"to_device": 0, "to_host": 0}


def test_each_namespace_has_its_own_log():
    xp1, xp2 = make_namespace(), make_namespace()
    assert isinstance(xp1, DeviceNamespace)
    xp1.asarray(1.0)
    assert len(xp1.transfers) == 1 and len(xp2.transfers) == 0
    assert xp1.linalg.transfers is xp1.transfers


def test_copies_stay_on_the_device_and_pickling_is_refused(dxp):
    a = dxp.arange(3.0)
    for b in (copy.copy(a), copy.deepcopy(a)):
        assert_device_array(b, dxp, (3,))
        b[0] = 9
    assert float(a[0]) == 0.0
    assert copy.deepcopy(dxp) is dxp
    with pytest.raises(TypeError, match="get"):
        pickle.dumps(a)


# -- smoke runs of arrseg's device path ------------------------------------------


@pytest.fixture
def problem(dxp, rng):
    """Images x (2, 3, 12, 12), labels (2, 12, 12) and Params on the device,
    with their NumPy twins."""
    x_h = rng.random((2, 3, 12, 12), dtype=np.float32)
    y_h = rng.integers(0, 4, (2, 12, 12))
    y_h[0, :3] = -100  # some unlabelled pixels
    params_h = arrseg.init_params(3, 8, 4, seed=1)
    x, y = dxp.asarray(x_h), dxp.asarray(y_h)
    params = arrseg.init_params(3, 8, 4, seed=1, xp=dxp)
    dxp.transfers.reset()
    return x, y, params, x_h, y_h, params_h


def assert_no_image_data_crossed(log, x):
    """No transfer as large as one image: only scalars, flags, small index
    arrays."""
    one_image = x.nbytes // x.shape[0]
    big = [e for e in log.events if e.nbytes >= one_image]
    assert not big, "image-sized transfers:\n" + "\n".join(
        f"{e.kind} {e.nbytes} B by {e.what} at {' <- '.join(e.stack[:3])}" for e in big)


def test_init_params_uploads_each_parameter_once(dxp):
    with dxp.counting() as log:
        params = arrseg.init_params(3, 8, 4, xp=dxp)
    assert isinstance(params, arrseg.Params)
    for a in params:
        assert_device_array(a, dxp, dtype=dxp.float32)
    assert [e.nbytes for e in log.to_device] == [a.nbytes for a in params]
    assert log.to_host == []


@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
@pytest.mark.parametrize("method", ["auto", "direct", "fft"])
def test_predict_proba_stays_on_the_device_and_validates_once(dxp, problem, method,
                                                              boundary):
    x, _, params, x_h, _, params_h = problem
    with dxp.counting() as log:
        P = arrseg.predict_proba(x, params, method=method, boundary=boundary)
    assert_device_array(P, dxp, (2, 4, 12, 12), dxp.float32)
    assert len(log.to_host) == 1, log.report()  # the one validation read-back
    assert_no_image_data_crossed(log, x)
    if boundary == "zeros":
        assert log.to_device == [], log.report()
    expected = arrseg.predict_proba(x_h, params_h, method=method, boundary=boundary)
    np.testing.assert_allclose(host(P, dxp), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
@pytest.mark.parametrize("method", ["auto", "direct", "fft"])
def test_loss_and_grad_stays_on_the_device_and_validates_once(dxp, problem, method,
                                                              boundary):
    x, y, params, x_h, y_h, params_h = problem
    with dxp.counting() as log:
        loss, grads = arrseg.loss_and_grad(x, y, params, method=method,
                                           boundary=boundary)
    assert_device_array(loss, dxp, (), dxp.float32)
    assert isinstance(grads, arrseg.Params)
    for g, p in zip(grads, params):
        assert_device_array(g, dxp, p.shape, p.dtype)
    assert len(log.to_host) == 1, log.report()
    assert_no_image_data_crossed(log, x)
    if method != "fft" and boundary == "zeros":
        assert log.to_device == [], log.report()
    loss_h, grads_h = arrseg.loss_and_grad(x_h, y_h, params_h, method=method,
                                           boundary=boundary)
    np.testing.assert_allclose(host(loss, dxp), loss_h, rtol=1e-5)
    for g, g_h in zip(grads, grads_h):
        np.testing.assert_allclose(host(g, dxp), g_h, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("optimizer", [arrseg.optim.SGD(0.1, 0.9), arrseg.optim.Adam(0.01)],
                         ids=["sgd", "adam"])
def test_one_training_step_reads_back_one_scalar(dxp, problem, optimizer):
    x, y, params, *_ = problem
    with dxp.counting() as log:
        _, grads = arrseg.loss_and_grad(x, y, params, method="direct")
        new = optimizer.step(params, grads)
    for a in new:
        assert_device_array(a, dxp)
    assert log.counts() == {"to_device": 0, "to_host": 1}, log.report()
