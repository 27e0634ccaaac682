"""Segmenter.fit on dask arrays against the in-memory fit of the same data.

The reference is ``Segmenter.fit`` on the NumPy arrays (tested against
PyTorch and finite differences elsewhere): the dask fit computes the same
objective from per-block sums, so from the same initial parameters the same
full-batch iteration gives the same model up to round-off.
"""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import arrseg  # noqa: E402
from arrseg import Segmenter  # noqa: E402


def _data(n=2, size=24, seed=0, sparse=False):
    x, y = arrseg.data.make_shapes(n_images=n, size=size, seed=seed)
    x = np.asarray(x, dtype=np.float64) * 40.0 + 7.0      # normalisation matters
    y = np.asarray(y, dtype=np.int64)
    if sparse:
        rng = np.random.default_rng(seed)
        y = np.where(rng.random(y.shape) < 0.3, y, -100)
    return x, y


def _params(est):
    return [None if a is None else np.asarray(a) for a in est.params_]


def _close(a, b, rtol):
    for p, q in zip(_params(a), _params(b)):
        if p is None:
            assert q is None
            continue
        np.testing.assert_allclose(p, q, rtol=rtol, atol=rtol * np.abs(q).max())


@pytest.mark.parametrize("depth", [0, 1])
def test_varpro_equals_in_memory(depth):
    x, y = _data(sparse=True)
    kw = dict(width=4, depth=depth, max_iter=4, seed=3)
    # edge_smoothness "auto": 1 on both (VarPro), the labels sparse
    ref = Segmenter(**kw).fit(x, y)
    xd = da.from_array(x, chunks=(1, 3, 10, 13))
    with dask.config.set(scheduler="threads"):
        est = Segmenter(**kw).fit(xd, da.from_array(y, chunks=(1, 10, 13)))
    np.testing.assert_allclose(est.mean_, ref.mean_, rtol=1e-13)
    np.testing.assert_allclose(est.std_, ref.std_, rtol=1e-13)
    assert est.n_iter_ == ref.n_iter_ and est.n_classes_ == ref.n_classes_
    np.testing.assert_allclose(est.loss_curve_, ref.loss_curve_, rtol=1e-7)
    _close(est, ref, 1e-6)


def test_adam_full_batch_equals_in_memory_whole_images():
    # in memory: whole images (crop_size >= the image), every image per step
    x, y = _data(n=3)
    kw = dict(width=4, depth=0, optimizer="adam", max_iter=5, seed=1, batch_size=8,
              crop_size=32, class_weight="balanced")
    ref = Segmenter(**kw).fit(x, y)
    xd = da.from_array(x, chunks=(2, 3, 12, 24))
    with dask.config.set(scheduler="sync"):
        est = Segmenter(**kw).fit(xd, y)                # NumPy labels are taken too
    np.testing.assert_allclose(est.class_weight_, ref.class_weight_, rtol=1e-13)
    np.testing.assert_allclose(est.loss_curve_, ref.loss_curve_, rtol=1e-9)
    _close(est, ref, 1e-8)


def test_mini_batches_are_reproducible_for_a_seed():
    x, y = _data(n=2, size=32)
    xd = da.from_array(x, chunks=(1, 3, 16, 16))        # 8 blocks
    yd = da.from_array(y, chunks=(1, 16, 16))
    kw = dict(width=4, depth=1, optimizer="sgd", max_iter=3, batch_size=3)
    with dask.config.set(scheduler="threads"):
        a = Segmenter(seed=5, **kw).fit(xd, yd)
        b = Segmenter(seed=5, **kw).fit(xd, yd)
        c = Segmenter(seed=6, **kw).fit(xd, yd)
    for p, q in zip(_params(a), _params(b)):
        np.testing.assert_array_equal(p, q)
    assert a.n_iter_ == 3 and len(a.loss_curve_) == 3
    assert not np.array_equal(_params(a)[0], _params(c)[0])


def test_progress_is_reported_and_prediction_is_lazy():
    x, y = _data()
    seen = []

    class Recorder:
        def __init__(self, total):
            seen.append(("total", total))

        def update(self, it, loss, score=None):
            seen.append((it, loss))

        def close(self):
            seen.append("closed")

    xd = da.from_array(x, chunks=(1, 3, 12, 12))
    with dask.config.set(scheduler="threads"):
        est = Segmenter(width=4, depth=1, max_iter=3, seed=0).fit(
            xd, da.from_array(y, chunks=(1, 12, 12)), progress=Recorder)
    assert seen[0] == ("total", 3) and seen[-1] == "closed"
    assert [s[0] for s in seen[1:-1]] == list(range(1, est.n_iter_ + 1))
    assert [s[1] for s in seen[1:-1]] == est.loss_curve_
    P = est.predict_proba(xd)
    assert isinstance(P, da.Array)
    np.testing.assert_allclose(P.compute(), est.predict_proba(x), rtol=1e-10, atol=1e-12)


def test_errors_name_the_argument():
    x, y = _data()
    xd = da.from_array(x, chunks=(1, 3, 12, 12))
    with pytest.raises(ValueError, match="labels must have shape"):
        Segmenter(max_iter=1).fit(xd, y[:, :-1])
    with pytest.raises(TypeError, match="labels must be an integer array"):
        Segmenter(max_iter=1).fit(xd, y.astype(np.float32))
    with pytest.raises(ValueError, match="early_stopping with dask arrays needs "
                       "validation"):
        Segmenter(max_iter=1, early_stopping=True).fit(xd, y)
    with pytest.raises(TypeError, match="validation=.* must be in memory"):
        Segmenter(max_iter=1).fit(xd, y, validation=(xd, y))
    with pytest.raises(TypeError, match="validation must be a pair"):
        Segmenter(max_iter=1).fit(xd, y, validation=(x,))
    with pytest.raises(ValueError, match="labelled pixel"):
        Segmenter(max_iter=1).fit(xd, np.full_like(y, -100))


def test_score_on_dask_arrays_equals_in_memory_score():
    x, y = _data(sparse=True)
    est = Segmenter(width=4, depth=1, max_iter=2, seed=0).fit(x, y)
    xd = da.from_array(x, chunks=(1, 3, 10, 24))
    with dask.config.set(scheduler="threads"):
        got = est.score(xd, da.from_array(y, chunks=(2, 7, 7)))
        got_one = est.score(xd[1], y[1])                 # one image, NumPy labels
    assert got == pytest.approx(est.score(x, y), rel=1e-12)
    assert got_one == pytest.approx(est.score(x[1], y[1]), rel=1e-12)
    bad = y.copy()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        est.score(xd, bad)
    with pytest.raises(ValueError, match="labels must have shape"):
        est.score(xd, y[0])


@pytest.mark.parametrize("early_stopping", [False, True])
def test_validation_data_as_in_memory(early_stopping):
    # the validation images are scored on this process every iteration, as
    # in memory; with early stopping the best iteration's model is kept
    x, y = _data(n=3)
    xv, yv = x[2:], y[2:]
    kw = dict(width=4, depth=1, max_iter=6, seed=2, early_stopping=early_stopping,
              n_iter_no_change=2)
    ref = Segmenter(**kw).fit(x[:2], y[:2], validation=(xv, yv))
    with dask.config.set(scheduler="threads"):
        est = Segmenter(**kw).fit(da.from_array(x[:2], chunks=(1, 3, 12, 24)), y[:2],
                                  validation=(xv, yv))
    assert est.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(est.validation_loss_curve_, ref.validation_loss_curve_,
                               rtol=1e-6)
    np.testing.assert_allclose(est.validation_scores_, ref.validation_scores_,
                               rtol=1e-6)
    assert est.validation_score_ == pytest.approx(ref.validation_score_, rel=1e-6)
    _close(est, ref, 1e-6)
