"""The GPU path keeps the device busy, shown without a GPU.

The arrays of :mod:`device_namespace` live on a pretend device and count
every host <-> device crossing, as CuPy's would cost a copy or a
synchronisation. On them the whole library runs through the same layer
above the kernels as on CuPy (the checked edge, the dispatcher, the crop
sampler, the training loop, tiling), and these tests count:

- a public call checks its values with one read-back and moves no data;
- one ``Segmenter.fit`` iteration reads back one number (two with
  validation data) and makes no host -> device copy at all, whatever the
  number of steps, crops and image groups;
- ``Segmenter.predict_proba`` checks once per call, whether or not it tiles.

The kernel launches are counted in tests/test_cuda_launches.py.
"""

from typing import NamedTuple

import numpy as np
import pytest
from device_namespace import make_namespace

import arrseg
from arrseg.segmenter import Segmenter

IMAGE_BYTES = 16 * 16 * 4   # the smallest crop of these tests, in float32


@pytest.fixture
def xp():
    return make_namespace()


def shapes(xp, n_images=3, size=48, seed=0):
    x, y = arrseg.data.make_shapes(n_images=n_images, size=size, seed=seed)
    return xp.asarray(x), xp.asarray(y)


def counts(log):
    return len(log.to_device), len(log.to_host)


@pytest.mark.parametrize("boundary", ["zeros", "periodic"])
@pytest.mark.parametrize("method", ["auto", "direct", "fft"])
def test_public_calls_read_back_once_and_move_no_data(xp, boundary, method):
    x, y = shapes(xp, n_images=2, size=24)
    params = arrseg.init_params(3, 8, 3, xp=xp)
    with xp.counting() as log:
        P = arrseg.predict_proba(x, params, boundary=boundary, method=method)
        assert counts(log) == (0, 1)          # the value checks' flags
        loss, grads = arrseg.loss_and_grad(x, y, params, boundary=boundary,
                                           method=method)
        assert counts(log) == (0, 2)
    assert all(e.nbytes <= 8 * 7 for e in log.to_host)
    assert type(P).__name__ == type(loss).__name__ == "DeviceArray"


def fit_transfers(xp, x, y, max_iter, validation=None, **kwargs):
    """(uploads, read-backs) of one fit, and the fitted model."""
    # the one-layer network with Adam (the fused path's fit; the defaults
    # are deep, with VarPro's line searches)
    kwargs = {"depth": 0, "optimizer": "adam", **kwargs}
    model = Segmenter(width=4, kernel_size=3, max_iter=max_iter,
                      n_iter_no_change=max_iter + 1, tol=0.0, **kwargs)
    with xp.counting() as log:
        model.fit(x, y, validation=validation)
    assert model.n_iter_ == max_iter
    return Counted(list(log.to_device), list(log.to_host), log.report()), model


class Counted(NamedTuple):
    """A snapshot of a TransferLog (the namespace reuses its log)."""

    to_device: list
    to_host: list
    text: str

    def report(self):
        return self.text


@pytest.mark.parametrize("kwargs", [
    {"optimizer": "adam"},                                   # whole images, 1 step
    {"optimizer": "sgd", "batch_size": 2},                   # whole images, 2 steps
    {"optimizer": "adam", "crop_size": 16, "batch_size": 3},  # crops, 9 steps
    {"optimizer": "adam", "crop_size": 16, "boundary": "periodic",
     "class_weight": "balanced", "weight_decay": 1e-3, "smoothness": 1e-3},
], ids=["adam-whole", "sgd-batches", "adam-crops", "adam-crops-periodic-weights"])
def test_each_fit_iteration_reads_back_one_number_and_uploads_nothing(xp, kwargs):
    x, y = shapes(xp)
    one, _ = fit_transfers(xp, x, y, 1, **kwargs)
    four, model = fit_transfers(xp, x, y, 4, **kwargs)
    # everything beyond the first iteration: three more iterations
    extra_up = len(four.to_device) - len(one.to_device)
    extra_down = len(four.to_host) - len(one.to_host)
    assert extra_up == 0, four.report()
    assert extra_down == 3, four.report()
    # the set-up moved the labels once and small tables, never an image back
    assert all(e.nbytes < x.nbytes for e in four.to_host)
    assert len(model.loss_curve_) == 4


def test_fit_on_a_list_of_image_sizes_keeps_one_read_back_per_iteration(xp):
    xa, ya = shapes(xp, n_images=1, size=40, seed=1)
    xb, yb = shapes(xp, n_images=1, size=48, seed=2)
    images, labels = [xa[0], xb[0]], [ya[0], yb[0]]
    one, _ = fit_transfers(xp, images, labels, 1, crop_size=16, batch_size=4)
    three, _ = fit_transfers(xp, images, labels, 3, crop_size=16, batch_size=4)
    assert len(three.to_device) == len(one.to_device)
    assert len(three.to_host) - len(one.to_host) == 2


def test_validation_adds_one_read_back_per_iteration(xp):
    x, y = shapes(xp, n_images=4)
    val = (x[3:], y[3:])
    one, _ = fit_transfers(xp, x[:3], y[:3], 1, validation=val)
    three, model = fit_transfers(xp, x[:3], y[:3], 3, validation=val)
    assert len(three.to_device) == len(one.to_device)
    assert len(three.to_host) - len(one.to_host) == 2 * 2
    assert len(model.validation_scores_) == 3


def test_the_crops_are_gathered_on_the_device(xp, monkeypatch):
    # no step sees a host array: the sampler's batches are device arrays
    from arrseg.estimator import crops

    seen = []
    batch = crops.CropSampler.batch

    def recording(self):
        xb, yb = batch(self)
        seen.append((type(xb).__name__, type(yb).__name__, tuple(xb.shape)))
        return xb, yb

    monkeypatch.setattr(crops.CropSampler, "batch", recording)
    x, y = shapes(xp)
    fit_transfers(xp, x, y, 2, crop_size=16, batch_size=3)
    assert seen and {s[:2] for s in seen} == {("DeviceArray", "DeviceArray")}
    assert {s[2] for s in seen} == {(3, 3, 16, 16)}


@pytest.mark.parametrize("tile_size", [None, 16])
def test_predict_proba_checks_once_per_call(xp, tile_size):
    x, y = shapes(xp, n_images=2, size=40)
    model = Segmenter(width=4, max_iter=2, tile_size=tile_size, depth=0,
                      optimizer="adam").fit(x, y)
    with xp.counting() as log:
        P = model.predict_proba(x)
    # one read-back: the value checks of the whole call, not one per tile
    assert len(log.to_host) == 1, log.report()
    # uploads: only the normalisation's 2 C numbers
    assert sum(e.nbytes for e in log.to_device) <= 2 * 3 * 4, log.report()
    assert P.shape == (2, 3, 40, 40)
    with xp.counting() as log:
        model.predict(x[0])
    assert len(log.to_host) == 1


def test_the_device_results_equal_numpy_results(xp):
    x, y = arrseg.data.make_shapes(n_images=3, size=32, seed=0)
    kwargs = dict(width=4, max_iter=3, crop_size=16, batch_size=2, depth=0,
                  optimizer="adam")
    on_numpy = Segmenter(**kwargs).fit(x, y)
    on_device = Segmenter(**kwargs).fit(xp.asarray(x), xp.asarray(y))
    np.testing.assert_allclose(on_device.loss_curve_, on_numpy.loss_curve_,
                               rtol=1e-5)
    np.testing.assert_allclose(xp.to_host(on_device.predict_proba(xp.asarray(x))),
                               on_numpy.predict_proba(x), atol=1e-5)
