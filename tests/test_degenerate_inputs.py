"""Inputs that used to pass silently or crash inside NumPy: absurd sizes,
degenerate training, wrapped and sentinel labels, masked arrays. Each gets
a named error (or a warning that says what to change) before anything
large is allocated."""

import tracemalloc
import warnings

import numpy as np
import pytest

import arrseg
from arrseg import DivergenceWarning, Segmenter
from arrseg._arguments import format_bytes, memory_bytes


@pytest.fixture
def data():
    return arrseg.data.make_shapes(n_images=2, size=16, seed=0)


def refused_without_allocating(call, *words):
    """call() raises ValueError naming words, and allocates < 64 MiB first."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as info:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for w in words:
        assert w in str(info.value)
    assert peak < 64 * 2**20
    return str(info.value)


# -- absurd sizes ---------------------------------------------------------------

def test_memory_is_known_here():
    assert memory_bytes() > 2**28
    assert format_bytes(3 * 2**40) == "3 TiB"
    assert format_bytes(1536) == "1.5 KiB"


def test_init_params_with_a_huge_width():
    msg = refused_without_allocating(lambda: arrseg.init_params(3, 10**12, 3),
                                     "init_params", "width=1000000000000")
    assert "more than this machine's" in msg


def test_confusion_matrix_over_many_classes(data):
    _, y = data
    refused_without_allocating(
        lambda: arrseg.metrics.confusion_matrix(y, y, n_classes=10**5),
        "confusion matrix of n_classes = 100000")
    # a plausible count still works
    assert arrseg.metrics.confusion_matrix(y, y, n_classes=300).shape == (300, 300)


def test_segmenter_n_classes_huge(data):
    x, y = data
    refused_without_allocating(lambda: Segmenter(max_iter=1, n_classes=10**12).fit(x, y),
                               "Segmenter:", "n_classes = 1000000000000")


def test_a_stray_label_is_named_with_the_fix(data):
    x, y = data
    y = y.copy()
    y[0, 0, 0] = 2**31 - 1
    refused_without_allocating(lambda: Segmenter(max_iter=1).fit(x, y),
                               "the largest 2147483647", "ignore_index=2147483647")


def test_predict_proba_with_a_huge_class_count():
    x = np.zeros((1, 1, 4, 4), np.float32)
    # a broadcast view: 10**11 classes of W without the memory
    W = np.broadcast_to(np.float32(0), (1, 10**11))
    params = arrseg.Params(np.zeros((1, 1, 1, 1), np.float32), np.zeros(1, np.float32),
                           W, None)
    refused_without_allocating(lambda: arrseg.predict_proba(x, params),
                               "the probabilities P", "100000000000 classes")


# -- degenerate training --------------------------------------------------------

def test_adam_divergence_keeps_the_best_parameters_and_warns(data):
    x, y = data
    with pytest.warns(DivergenceWarning, match=r"rose from .* learning_rate=1000 "
                                               r"diverged.*10 times smaller"):
        model = Segmenter(width=4, optimizer="adam", learning_rate=1e3,
                          max_iter=20, seed=0).fit(x, y)
    curve = model.loss_curve_
    best = int(np.argmin(curve)) + 1
    assert curve[-1] > 2 * min(curve)
    assert len(curve) < 20  # stopped once the loss passed 100 x its lowest
    # the kept parameters are those at the end of the best iteration: the
    # same fit stopped there (deterministic for a seed) has them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DivergenceWarning)
        ref = Segmenter(width=4, optimizer="adam", learning_rate=1e3, max_iter=best,
                        seed=0).fit(x, y)
    for a, b in zip(model.params_, ref.params_):
        np.testing.assert_array_equal(a, b)


def test_a_converging_fit_does_not_warn(data):
    x, y = data
    Segmenter(width=4, max_iter=5).fit(x, y)  # warnings are errors here


@pytest.mark.parametrize("weights", [[0, 0, 0], [0.0, 0.0, 0.0]])
def test_class_weight_all_zero(data, weights):
    x, y = data
    with pytest.raises(ValueError, match="class_weight gives weight 0 to every class "
                                         "with labelled pixels"):
        Segmenter(max_iter=2, class_weight=weights).fit(x, y)


def test_class_weight_only_on_absent_classes(data):
    x, y = data
    y = np.where(y == 2, 1, y)  # classes 0 and 1 only
    with pytest.raises(ValueError, match=r"classes \[0, 1\]"):
        Segmenter(max_iter=2, n_classes=3, class_weight=[0, 0, 1]).fit(x, y)


def test_uint8_labels_with_255_for_unlabelled(data):
    x, y = data
    y8 = np.where(y == 2, 255, y).astype(np.uint8)
    with pytest.raises(ValueError, match=r"largest 255, which would make 256 classes "
                                         r"of which 253 have no pixel.*"
                                         r"pass ignore_index=255.*n_classes=256"):
        Segmenter(max_iter=1).fit(x, y8)
    model = Segmenter(width=4, max_iter=1, ignore_index=255).fit(x, y8)
    assert model.n_classes_ == 2
    with pytest.raises(ValueError, match="pass ignore_index=255"):
        arrseg.loss_and_grad(x, y8, arrseg.init_params(3, 4, 3))
    # sparse but plausible labels are kept as they are
    assert Segmenter(width=4, max_iter=1).fit(x, y * 5).n_classes_ == 11


def test_uint64_labels_that_would_wrap_to_ignore_index(data):
    x, y = data
    y64 = y.astype(np.uint64)
    y64[0, 0, 0] = np.uint64(2**64 - 100)  # -100 once cast to int64
    params = arrseg.init_params(3, 4, 3)
    with pytest.raises(ValueError, match="18446744073709551516, beyond int64"):
        arrseg.loss_and_grad(x, y64, params)
    with pytest.raises(ValueError, match="beyond int64"):
        Segmenter(max_iter=1).fit(x, y64)


# -- masked arrays --------------------------------------------------------------

def test_masked_arrays_are_refused(data):
    x, y = data
    xm = np.ma.masked_invalid(np.where(x > 0.9, np.nan, x))
    params = arrseg.init_params(3, 4, 3)
    for call in (lambda: arrseg.predict_proba(xm, params),
                 lambda: arrseg.loss_and_grad(xm, y, params),
                 lambda: Segmenter(max_iter=1).fit(xm, y),
                 lambda: Segmenter(max_iter=1).fit([xm[0], xm[1]], [y[0], y[1]])):
        with pytest.raises(TypeError, match="masked array; arrseg does not honour "
                                            "masks"):
            call()
    ym = np.ma.masked_equal(y, 2)
    with pytest.raises(TypeError, match=r"labels is a numpy masked array.*"
                                        r"labels.filled\(ignore_index\)"):
        Segmenter(max_iter=1).fit(x, ym)
    with pytest.raises(TypeError, match="y_true is a numpy masked array"):
        arrseg.metrics.pixel_accuracy(ym, y)
    # filled as the message says: trains, ignoring the masked pixels
    model = Segmenter(width=4, max_iter=1, n_classes=3).fit(x, ym.filled(-100))
    assert model.n_classes_ == 3


def test_an_extreme_normalisation_is_blamed_not_the_images(data):
    x, y = data
    model = Segmenter(width=4, max_iter=1).fit(x, y)
    model.std_ = np.full(3, 1e-320)  # as a forged model file may hold
    with pytest.raises(ValueError, match=r"the images are finite but \(images - "
                                         r"mean_\) / std_ is not"):
        model.predict(x)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="images must be finite: x must be finite"):
        Segmenter(width=4, max_iter=1).fit(x, y).predict(bad)


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_bool_ignore_index_is_refused_on_every_path(data, method, value):
    # ignore_index=True used to reach the direct path raw (loss 0)
    x, y = data
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        arrseg.loss_and_grad(x, y, arrseg.init_params(3, 4, 3), ignore_index=value,
                             method=method)
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        Segmenter(max_iter=1, ignore_index=value, method=method).fit(x, y)
