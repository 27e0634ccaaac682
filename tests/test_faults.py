"""Faults injected into running work: concurrent calls from several
threads, and an interrupt in the middle of fit. (Fork: tests/test_fork.py;
disk full during save: tests/test_model_file.py.)"""

import threading

import numpy as np
import pytest

import arrseg
from arrseg import Segmenter, core


@pytest.fixture
def data():
    return arrseg.data.make_shapes(n_images=2, size=48, seed=3)


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_concurrent_calls_give_the_sequential_results_bitwise(data, method):
    x, y = data
    params = arrseg.init_params(3, 8, 3, seed=1)
    want_P = arrseg.predict_proba(x, params, method=method)
    want_loss, want_g = arrseg.loss_and_grad(x, y, params, method=method)
    results, errors = [], []
    start = threading.Barrier(4)

    def caller():
        try:
            start.wait()
            for _ in range(3):
                P = arrseg.predict_proba(x, params, method=method)
                loss, g = arrseg.loss_and_grad(x, y, params, method=method)
                results.append((P, loss, g))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 12
    for P, loss, g in results:
        np.testing.assert_array_equal(P, want_P)
        assert float(loss) == float(want_loss)
        for a, b in zip(g, want_g):
            np.testing.assert_array_equal(a, b)


def test_concurrent_segmenter_predictions(data):
    x, y = data
    model = Segmenter(width=6, max_iter=3).fit(x, y)
    want = model.predict(x)
    out = [None] * 4
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, model.predict(x)))
               for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for labels in out:
        np.testing.assert_array_equal(labels, want)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "varpro"])
def test_an_interrupt_during_fit_leaves_a_usable_model(data, monkeypatch, optimizer):
    x, y = data
    calls = {"n": 0}
    real = core.loss_and_grad

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(core, "loss_and_grad", interrupted)
    model = Segmenter(width=4, max_iter=50, optimizer=optimizer, batch_size=1)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y)
    monkeypatch.setattr(core, "loss_and_grad", real)
    # the fitted state of the last completed iteration: it predicts, scores,
    # and continues training
    assert model.n_iter_ == len(model.loss_curve_)
    P = model.predict_proba(x)
    assert np.isfinite(P).all() and np.allclose(P.sum(axis=1), 1, atol=1e-5)
    assert 0 <= model.score(x, y) <= 1
    model.set_params(max_iter=2).fit(x, y)
    assert model.n_iter_ == 2
