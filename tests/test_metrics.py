"""Metrics on every backend: hand-computed cases, a NumPy loop reference,
scikit-learn where installed, ignore_index, and errors naming the argument."""

import re

import numpy as np
import pytest
from array_api_compat import array_namespace
from conftest import to_xp

from arrseg import metrics
from arrseg.metrics import confusion_matrix, dice, iou, mean_iou, pixel_accuracy
from arrseg.testing import assert_close, to_numpy


def raises(exc, *words):
    """pytest.raises whose message must contain every word (in order)."""
    return pytest.raises(exc, match=".*".join(map(re.escape, words)))


def reference_confusion(y_true, y_pred, n_classes, ignore_index=-100):
    """Pixel by pixel, in NumPy."""
    M = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, p in zip(np.ravel(y_true), np.ravel(y_pred)):
        if t != ignore_index:
            M[t, p] += 1
    return M


# y_true / y_pred of the hand-computed cases: 2 images of 2 x 3 pixels
Y_TRUE = np.array([[[0, 0, 1], [1, 2, -100]],
                   [[2, 2, 2], [0, -100, -100]]])
Y_PRED = np.array([[[0, 1, 1], [1, 2, 0]],
                   [[2, 0, 2], [0, 1, 2]]])
# counted pixels (true, pred): (0,0) (0,1) (1,1) (1,1) (2,2) | (2,2) (2,0) (2,2) (0,0)
M_HAND = np.array([[2, 1, 0],
                   [0, 2, 0],
                   [1, 0, 3]])


def test_confusion_matrix_by_hand(xp):
    M = confusion_matrix(to_xp(xp, Y_TRUE), to_xp(xp, Y_PRED), 3)
    assert array_namespace(M) is xp
    assert_close(M, M_HAND, xp=xp, dtype="int64")


def test_scores_by_hand(xp):
    t, p = to_xp(xp, Y_TRUE), to_xp(xp, Y_PRED)
    # TP = (2, 2, 3); FP = (1, 1, 0); FN = (1, 0, 1)
    assert_close(pixel_accuracy(t, p), np.float64(7 / 9), xp=xp, dtype="float64")
    assert_close(iou(t, p, 3), np.array([2 / 4, 2 / 3, 3 / 4]), xp=xp,
                 dtype="float64")
    assert_close(dice(t, p, 3), np.array([4 / 6, 4 / 5, 6 / 7]), xp=xp,
                 dtype="float64")
    assert_close(mean_iou(t, p, 3), np.float64((1 / 2 + 2 / 3 + 3 / 4) / 3), xp=xp,
                 dtype="float64")


def test_absent_class_is_nan_and_left_out_of_the_mean(xp):
    t = to_xp(xp, np.array([[0, 0, 1, 1]]))
    p = to_xp(xp, np.array([[0, 1, 1, 1]]))
    assert_close(iou(t, p, 4), np.array([0.5, 2 / 3, np.nan, np.nan]), xp=xp, atol=0)
    assert_close(dice(t, p, 4), np.array([2 / 3, 0.8, np.nan, np.nan]), xp=xp, atol=0)
    assert_close(mean_iou(t, p, 4), np.float64((0.5 + 2 / 3) / 2), xp=xp)
    # a class only predicted counts, with IoU 0
    p2 = to_xp(xp, np.array([[0, 3, 1, 1]]))
    assert_close(iou(t, p2, 4), np.array([0.5, 1.0, np.nan, 0.0]), xp=xp, atol=0)
    assert_close(mean_iou(t, p2, 4), np.float64(0.5), xp=xp)


def test_nothing_counted_gives_nan_without_warning(xp):
    t = to_xp(xp, np.full((2, 3), -100))
    p = to_xp(xp, np.zeros((2, 3), dtype=np.int64))
    assert_close(confusion_matrix(t, p, 2), np.zeros((2, 2), dtype=np.int64), xp=xp)
    assert np.isnan(to_numpy(pixel_accuracy(t, p)))
    assert np.isnan(to_numpy(mean_iou(t, p, 2)))
    assert np.isnan(to_numpy(iou(t, p, 2))).all()


@pytest.mark.parametrize("shape", [(3, 17, 11), (16, 9), (50,), (1, 1, 1)])
def test_random_labels_match_the_loop_reference(xp, rng, shape):
    n_c = 5
    t = rng.integers(0, n_c, shape)
    t[rng.random(shape) < 0.2] = -100
    p = rng.integers(0, n_c, shape)
    want = reference_confusion(t, p, n_c)
    M = confusion_matrix(to_xp(xp, t), to_xp(xp, p), n_c)
    assert_close(M, want, xp=xp, dtype="int64")
    counted = want.sum()
    tp = np.diag(want)
    assert_close(pixel_accuracy(to_xp(xp, t), to_xp(xp, p)),
                 np.float64(tp.sum() / counted if counted else np.nan), xp=xp,
                 atol=0)
    union = want.sum(0) + want.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        want_iou = np.where(union > 0, tp / union, np.nan)
    assert_close(iou(to_xp(xp, t), to_xp(xp, p), n_c), want_iou, xp=xp, atol=0)
    d = to_numpy(dice(to_xp(xp, t), to_xp(xp, p), n_c))
    np.testing.assert_allclose(d, 2 * want_iou / (1 + want_iou), rtol=1e-12)


def test_bincount_fast_path_matches_the_array_api_reference(xp, rng):
    codes = to_xp(xp, rng.integers(0, 26, 1000))
    fast = metrics._bincount(codes, 25, xp)
    ref = metrics._bincount_reference(codes, 25, xp)
    assert_close(fast, to_numpy(ref), xp=xp, dtype="int64")
    assert_close(ref, np.bincount(to_numpy(codes), minlength=26)[:25], xp=xp)


def test_against_scikit_learn(rng):
    sk = pytest.importorskip("sklearn.metrics")
    t = rng.integers(0, 4, (2, 20, 30))
    p = rng.integers(0, 4, (2, 20, 30))
    np.testing.assert_array_equal(confusion_matrix(t, p, 4),
                                  sk.confusion_matrix(t.ravel(), p.ravel(),
                                                      labels=range(4)))
    np.testing.assert_allclose(iou(t, p, 4),
                               sk.jaccard_score(t.ravel(), p.ravel(), average=None))
    np.testing.assert_allclose(dice(t, p, 4),
                               sk.f1_score(t.ravel(), p.ravel(), average=None))
    np.testing.assert_allclose(pixel_accuracy(t, p),
                               sk.accuracy_score(t.ravel(), p.ravel()))


def test_ignore_index_is_respected(xp, rng):
    t = rng.integers(0, 3, (4, 6))
    p = rng.integers(0, 3, (4, 6))
    ignored = rng.random((4, 6)) < 0.5
    # predictions at ignored pixels are not looked at, even out of range
    t_ign = np.where(ignored, 255, t)
    p_wild = np.where(ignored, 99, p)
    M = confusion_matrix(to_xp(xp, t_ign), to_xp(xp, p_wild), 3, ignore_index=255)
    assert_close(M, reference_confusion(t[~ignored], p[~ignored], 3), xp=xp)
    # uint8 labels with ignore 255, as many image label files store them
    M8 = confusion_matrix(to_xp(xp, t_ign, "uint8"), to_xp(xp, p, "uint8"), 3,
                          ignore_index=255)
    assert_close(M8, reference_confusion(t[~ignored], p[~ignored], 3), xp=xp)
    acc = pixel_accuracy(to_xp(xp, t_ign), to_xp(xp, p_wild), ignore_index=255)
    assert_close(acc, np.float64(np.mean(t[~ignored] == p[~ignored])), xp=xp)
    # ignore_index may be a class: ignoring the background
    M0 = confusion_matrix(to_xp(xp, t), to_xp(xp, p), 3, ignore_index=0)
    assert_close(M0, reference_confusion(t, p, 3, ignore_index=0), xp=xp)


def test_bool_labels_are_0_and_1(xp):
    t = to_xp(xp, np.array([True, False, True, True]))
    p = to_xp(xp, np.array([True, True, False, True]))
    assert_close(confusion_matrix(t, p, 2), np.array([[0, 1], [1, 2]]), xp=xp)


def test_errors_name_the_argument(xp):
    t = to_xp(xp, Y_TRUE)
    p = to_xp(xp, Y_PRED)
    with raises(ValueError, "y_pred must have the shape of y_true, (2, 2, 3)",
                "(2, 3)"):
        confusion_matrix(t, p[0, ...], 3)
    with raises(ValueError, "y_pred must have the shape"):
        pixel_accuracy(t, p[0, ...])
    probs = to_xp(xp, np.zeros((2, 3, 2, 3)), "float32")   # P (N, n_c, H, W)
    with raises(TypeError, "y_pred must be an integer", "float32", "argmax(P, axis=1)"):
        iou(t, probs, 3)
    with raises(TypeError, "y_true must be an integer", "float32"):
        mean_iou(probs[:, 0, ...], p, 3)
    with raises(ValueError, "y_true must hold class labels in [0, 2)",
                "ignore_index = -100", "4 other value(s), e.g. [2]"):
        confusion_matrix(t, p, 2)
    with raises(ValueError, "y_pred must hold class labels in [0, 3)", "e.g. [7]"):
        dice(t, to_xp(xp, np.where(Y_PRED == 1, 7, Y_PRED)), 3)
    with raises(ValueError, "n_classes must be >= 1, got 0"):
        confusion_matrix(t, p, 0)
    with raises(TypeError, "n_classes must be an integer", "3.0"):
        confusion_matrix(t, p, 3.0)
    with raises(TypeError, "ignore_index must be an integer", "None"):
        confusion_matrix(t, p, 3, ignore_index=None)
    with raises(TypeError, "y_pred must be an array", "list"):
        confusion_matrix(t, [[0]], 3)


def test_mixed_namespaces_are_refused():
    torch = pytest.importorskip("torch")
    with raises(TypeError, "y_pred is a PyTorch array but y_true is a NumPy array"):
        confusion_matrix(Y_TRUE, torch.asarray(Y_PRED), 3)
