"""arrseg.segmenter.Segmenter: the scikit-learn style estimator."""

import io

import numpy as np
import pytest
from array_api_compat import array_namespace

import arrseg
from arrseg.model_file import ModelFileError
from arrseg.optim import NonFiniteLossError
from arrseg.segmenter import NotFittedError, Segmenter
from arrseg.testing import to_numpy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    """Six 32 x 32 images: four to train on, two held out."""
    x, y = arrseg.data.make_shapes(n_images=6, size=32, seed=0)
    return x[:4], y[:4], x[4:], y[4:]


# --- fitting and scoring -------------------------------------------------------

@pytest.mark.parametrize("optimizer, min_score", [("adam", 0.9), ("sgd", 0.9),
                                                  ("varpro", 0.95)])
def test_fit_reaches_a_good_mean_iou_on_held_out_images(data, optimizer, min_score):
    x, y, xt, yt = data
    # the one-layer network of earlier releases (depth 0, 200 iterations);
    # the deep defaults are tested in test_segmenter_residual.py
    model = Segmenter(width=8, kernel_size=5, optimizer=optimizer, depth=0,
                      max_iter=200).fit(x, y)
    assert model.score(x, y) > min_score
    assert model.score(xt, yt) > min_score
    assert 1 <= model.n_iter_ <= model.max_iter
    assert len(model.loss_curve_) == model.n_iter_
    assert model.loss_curve_[-1] < 0.2 * model.loss_curve_[0]
    assert model.n_classes_ == 3 and list(model.classes_) == [0, 1, 2]
    assert model.in_channels_ == 3 and model.fit_time_ > 0


def test_sparse_labels_give_a_full_probability_map():
    """Labels on one pixel in ten are enough for a map of every pixel."""
    x, y = arrseg.data.make_shapes(n_images=3, size=64, seed=0)
    rng = np.random.default_rng(0)
    sparse = np.where(rng.random(y.shape) < 0.1, y, -100)
    model = Segmenter(width=8, kernel_size=3).fit(x[:2], sparse[:2])
    P = model.predict_proba(x)
    assert P.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(P.sum(axis=1), 1, atol=1e-5)
    assert model.score(x[:2], y[:2]) > 0.85     # scored on every pixel
    assert model.score(x[2:], y[2:]) > 0.85


def test_crops_and_mini_batches(data):
    x, y, xt, yt = data
    model = Segmenter(width=8, kernel_size=5, crop_size=16, batch_size=2, depth=0,
                      optimizer="adam").fit(x, y)
    assert model.score(xt, yt) > 0.85


def test_each_backend_keeps_its_namespace(xp):
    x, y = arrseg.data.make_shapes(n_images=3, size=12, seed=0, xp=xp)
    for optimizer in ("adam", "varpro"):
        model = Segmenter(width=4, optimizer=optimizer, max_iter=3).fit(
            x[:2, ...], y[:2, ...])
        P = model.predict_proba(x[2:, ...])
        assert array_namespace(P) is array_namespace(x)
        assert P.dtype == xp.float32 and P.shape == (1, 3, 12, 12)
        labels = model.predict(x[2:, ...])
        assert array_namespace(labels) is array_namespace(x)
        assert labels.dtype == xp.int64
        assert 0 <= model.score(x[2:, ...], y[2:, ...]) <= 1


def test_predicts_in_another_namespace_than_it_was_fitted_in(data):
    xps = pytest.importorskip("array_api_strict")
    x, y, xt, _ = data
    model = Segmenter(width=4, max_iter=5).fit(x, y)
    P = model.predict_proba(xps.asarray(xt))
    assert array_namespace(P) is xps
    np.testing.assert_allclose(to_numpy(P), model.predict_proba(xt), atol=1e-6)


# --- input forms --------------------------------------------------------------------

def test_input_forms(data):
    x, y, xt, yt = data
    model = Segmenter(width=4, max_iter=20).fit(x, y)
    batch = model.predict_proba(xt)
    assert batch.shape == (2, 3, 32, 32)
    # one (C, H, W) image
    one = model.predict_proba(xt[0])
    assert one.shape == (3, 32, 32)
    np.testing.assert_allclose(one, batch[0], atol=1e-6)
    assert model.predict(xt[0]).shape == (32, 32)
    assert model.predict(xt).shape == (2, 32, 32)
    # a list of images of different sizes
    images = [xt[0], xt[1, :, :20, :24]]
    out = model.predict_proba(images)
    assert [a.shape for a in out] == [(3, 32, 32), (3, 20, 24)]
    assert [a.shape for a in model.predict(images)] == [(32, 32), (20, 24)]
    assert 0 <= model.score(images, [yt[0], yt[1, :20, :24]]) <= 1


def test_fit_on_one_single_channel_image():
    x, y = arrseg.data.make_shapes(n_images=1, size=24, channels=1, seed=0)
    model = Segmenter(width=4, max_iter=20).fit(x[0, 0], y[0])   # (H, W)
    assert model.in_channels_ == 1
    assert model.predict(x[0, 0]).shape == (24, 24)
    assert model.predict_proba(x[0, 0]).shape == (3, 24, 24)


def test_fit_on_a_list_of_images_of_different_sizes():
    xa, ya = arrseg.data.make_shapes(n_images=1, size=24, seed=0)
    xb, yb = arrseg.data.make_shapes(n_images=1, size=(20, 28), seed=0)
    for optimizer in ("adam", "varpro"):
        model = Segmenter(width=4, optimizer=optimizer, max_iter=5).fit(
            [xa[0], xb[0]], [ya[0], yb[0]])
        assert model.n_iter_ >= 1
        assert [a.shape for a in model.predict([xa[0], xb[0]])] == [(24, 24), (20, 28)]


def test_uint8_images_are_normalised(data):
    x, y, xt, yt = data
    lo, hi = x.min(), x.max()
    x8 = np.round((x - lo) / (hi - lo) * 255).astype(np.uint8)
    xt8 = np.round((np.clip(xt, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
    model = Segmenter(width=8, kernel_size=5).fit(x8, y)
    np.testing.assert_allclose(model.mean_, x8.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(model.std_, x8.std(axis=(0, 2, 3)), rtol=1e-10)
    assert model.predict_proba(xt8).dtype == np.float32
    assert model.score(xt8, yt) > 0.9
    # the same images as floats give the same model, up to round-off
    as_float = Segmenter(width=8, kernel_size=5).fit(x8.astype(np.float32), y)
    np.testing.assert_allclose(as_float.predict_proba(xt8), model.predict_proba(xt8),
                               atol=1e-3)


def test_class_weight_balanced(data):
    x, y, _, _ = data
    model = Segmenter(width=4, max_iter=2, class_weight="balanced").fit(x, y)
    counts = np.bincount(y.ravel(), minlength=3)
    np.testing.assert_allclose(model.class_weight_, y.size / (3 * counts))
    model = Segmenter(width=4, max_iter=2, class_weight=[1.0, 2.0, 3.0]).fit(x, y)
    np.testing.assert_array_equal(model.class_weight_, [1.0, 2.0, 3.0])


def test_tiled_prediction_equals_whole_image_prediction(data):
    x, y, xt, _ = data
    model = Segmenter(width=4, kernel_size=5, max_iter=10).fit(x, y)
    whole = model.predict_proba(xt)
    tiled = model.set_params(tile_size=10).predict_proba(xt)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


# --- scikit-learn protocol ---------------------------------------------------------

def test_get_and_set_params():
    model = Segmenter(width=8, optimizer="varpro")
    params = model.get_params()
    assert params["width"] == 8 and params["optimizer"] == "varpro"
    assert params["kernel_size"] == 3 and params["ignore_index"] == -100
    assert set(params) >= {"learning_rate", "max_iter", "batch_size", "crop_size",
                           "weight_decay", "smoothness", "class_weight",
                           "early_stopping", "validation_fraction",
                           "n_iter_no_change", "tol", "seed", "verbose"}
    clone = Segmenter(**params)
    assert clone.get_params() == params
    assert model.set_params(width=4, seed=1) is model
    assert model.width == 4 and model.seed == 1
    assert repr(model) == "Segmenter(seed=1, width=4)"   # varpro is the default
    with pytest.raises(ValueError, match="Invalid parameter 'n_layers'.*width"):
        model.set_params(n_layers=3)


def test_fitted_attributes_end_with_an_underscore(data):
    x, y, _, _ = data
    model = Segmenter(width=4, max_iter=2)
    before = set(vars(model))
    model.fit(x, y)
    public = {k for k in set(vars(model)) - before if not k.startswith("_")}
    assert public and all(k.endswith("_") for k in public)
    assert public >= {"params_", "n_iter_", "loss_curve_", "n_classes_", "mean_",
                      "std_", "validation_scores_", "validation_loss_curve_"}


# --- early stopping and validation ---------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adam", "varpro"])
def test_early_stopping_holds_out_pixels_and_keeps_the_best_model(data, optimizer):
    x, y, xt, yt = data
    model = Segmenter(width=8, kernel_size=5, optimizer=optimizer,
                      early_stopping=True, n_iter_no_change=5, tol=1e-3).fit(x, y)
    losses = model.validation_loss_curve_
    assert len(losses) == len(model.validation_scores_) == model.n_iter_ < 200
    best = int(np.argmin(losses))
    # stopped n_iter_no_change iterations after its best (within tol) ...
    assert model.n_iter_ - 1 - best <= 5
    # ... and returned the model of the lowest validation loss
    assert model.validation_score_ == model.validation_scores_[best] > 0.85
    assert model.score(xt, yt) > 0.85


def test_validation_set_is_scored_every_iteration(data):
    x, y, xt, yt = data
    model = Segmenter(width=4, max_iter=6, n_iter_no_change=100).fit(
        x, y, validation=(xt, yt))
    assert len(model.validation_scores_) == 6
    assert model.validation_scores_[-1] == pytest.approx(model.score(xt, yt))
    assert model.validation_score_ == model.validation_scores_[-1]
    normalised = ((xt - model.mean_[:, None, None]) / model.std_[:, None, None])
    loss, _ = arrseg.loss_and_grad(normalised.astype(np.float32), yt, model.params_,
                                   dilation=model.dilation, step=model.step,
                                   layer=model.layer)
    assert model.validation_loss_curve_[-1] == pytest.approx(float(loss), rel=1e-4)


def test_progress_bar_on_stderr(data, capsys):
    x, y, _, _ = data
    Segmenter(width=4, max_iter=3, verbose=True).fit(x, y)
    err = capsys.readouterr().err
    assert "Segmenter.fit [" in err and "3/3" in err and "loss" in err


# --- model files ----------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adam", "varpro"])
def test_save_and_load_give_identical_predictions(data, tmp_path, optimizer):
    x, y, xt, _ = data
    model = Segmenter(width=4, optimizer=optimizer, max_iter=5, seed=2,
                      class_weight="balanced").fit(x, y)
    path = tmp_path / "model.arrseg"
    model.save(path)
    loaded = Segmenter.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(xt), model.predict_proba(xt))
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.mean_, model.mean_)
    np.testing.assert_array_equal(loaded.class_weight_, model.class_weight_)
    assert loaded.loss_curve_ == model.loss_curve_ and loaded.n_iter_ == model.n_iter_


def test_load_into_another_namespace(data, tmp_path):
    xps = pytest.importorskip("array_api_strict")
    x, y, xt, _ = data
    model = Segmenter(width=4, max_iter=3).fit(x, y)
    model.save(tmp_path / "m.npz")
    loaded = Segmenter.load(tmp_path / "m.npz", xp=xps)
    assert array_namespace(loaded.params_.K) is xps
    P = loaded.predict_proba(xps.asarray(xt))
    np.testing.assert_allclose(to_numpy(P), model.predict_proba(xt), atol=1e-6)


def test_load_refuses_a_model_file_of_plain_parameters(tmp_path):
    from arrseg import model_file

    model_file.save(tmp_path / "p.npz", arrseg.init_params(3, 4, 2), {"width": 4})
    with pytest.raises(ModelFileError, match="not written by Segmenter.save"):
        Segmenter.load(tmp_path / "p.npz")


# --- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"width": 0}, ValueError, "width must be >= 1, got 0"),
    ({"width": 2.5}, TypeError, "width must be an integer"),
    ({"kernel_size": 4}, ValueError, "kernel_size must be odd.*got 4"),
    ({"activation": "softplus"}, ValueError, "activation must be one of.*'softplus'"),
    ({"boundary": "reflect"}, ValueError, "boundary must be one of"),
    ({"optimizer": "lbfgs"}, ValueError,
     "optimizer must be one of 'sgd', 'adam', 'varpro'; got 'lbfgs'"),
    ({"learning_rate": -1.0}, ValueError,
     r"learning_rate must be a finite number in \(0, inf\), got -1.0"),
    ({"learning_rate": "fast"}, TypeError, "learning_rate must be a number"),
    ({"momentum": 1.0}, ValueError, "momentum"),
    ({"max_iter": 0}, ValueError, "max_iter must be >= 1, got 0"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"crop_size": 2}, ValueError, "crop_size must be >= 17, got 2"),  # 2 halo + 1
    ({"weight_decay": -1e-3}, ValueError, "weight_decay"),
    ({"smoothness": float("inf")}, ValueError, "smoothness"),
    ({"class_weight": [1.0, 2.0]}, ValueError,
     r"class_weight must have one weight per class, shape \(3,\), got shape"),
    ({"class_weight": "auto"}, ValueError, "class_weight must be one of 'balanced'"),
    ({"class_weight": [1.0, -1.0, 1.0]}, ValueError, "class_weight"),
    ({"validation_fraction": 1.5}, ValueError, "validation_fraction"),
    ({"n_iter_no_change": 0}, ValueError, "n_iter_no_change"),
    ({"tol": -1}, ValueError, "tol"),
    ({"early_stopping": "yes"}, TypeError, "early_stopping must be True or False"),
    ({"n_classes": 1}, ValueError, "n_classes must be >= 2"),
    ({"tile_size": 0}, ValueError, "tile_size"),
])
def test_bad_hyper_parameters_raise_at_fit_time(data, kwargs, error, match):
    x, y, _, _ = data
    model = Segmenter(**kwargs)  # accepted as is, like scikit-learn
    with pytest.raises(error, match=match):
        model.fit(x, y)


def test_data_errors(data):
    x, y, _, _ = data
    model = Segmenter(width=4, max_iter=1)
    with pytest.raises(ValueError, match=r"labels must .*\(4, 32, 32\).*\(3, 32, 32\)"):
        model.fit(x, y[:3])
    with pytest.raises(ValueError, match=r"labels must have shape \(N, H, W\)"):
        model.fit(x, y[0])
    with pytest.raises(ValueError, match=r"images\[:, None\]"):
        model.fit(x[:, 0], y)            # (N, H, W) is read as one (C, H, W)
    with pytest.raises(TypeError, match="labels must be an integer array"):
        model.fit(x, y.astype(np.float32))
    bad = y.copy()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\)"):
        model.set_params(n_classes=3).fit(x, bad)
    with pytest.raises(ValueError, match=r">= 0 or ignore_index = -100.*\[-5\]"):
        model.set_params(n_classes=None).fit(x, np.where(y == 1, -5, y))
    with pytest.raises(ValueError, match="only class 0"):
        model.fit(x, np.zeros_like(y))
    with pytest.raises(ValueError, match="no labelled pixel"):
        model.fit(x, np.full_like(y, -100))
    with pytest.raises(ValueError, match="ndim|shape"):
        model.fit(x[None], y)


def test_predict_before_fit_is_a_not_fitted_error(data):
    x = data[0]
    for method in ("predict", "predict_proba"):
        with pytest.raises(NotFittedError, match=f"not fitted yet.*before {method}"):
            getattr(Segmenter(), method)(x)
    with pytest.raises(NotFittedError):
        Segmenter().score(x, data[1])
    assert issubclass(NotFittedError, ValueError)
    assert issubclass(NotFittedError, AttributeError)


def test_wrong_channel_count_in_predict(data):
    x, y, xt, _ = data
    model = Segmenter(width=4, max_iter=1).fit(x, y)
    with pytest.raises(ValueError, match="2 channel.*fitted on images with 3"):
        model.predict(xt[:, :2])
    with pytest.raises(ValueError, match="1 channel.*fitted on images with 3"):
        model.predict(xt[0, 0])


def test_divergence_keeps_the_last_good_model():
    xps = pytest.importorskip("array_api_strict")
    x, y = arrseg.data.make_shapes(n_images=2, size=12, seed=0, xp=xps)
    model = Segmenter(width=4, optimizer="adam", learning_rate=1e38, max_iter=20)
    with pytest.raises(NonFiniteLossError, match="iteration") as info:
        model.fit(x, y)
    assert model.params_ is info.value.params
    assert model.n_iter_ == info.value.iteration - 1
    out = io.StringIO()
    print(info.value, file=out)
    assert "learning_rate=1e+38" in out.getvalue()


def test_fit_reports_each_iteration_to_a_progress_object(data):
    x, y, xt, yt = data
    seen = []

    class Recorder:
        def __init__(self, total):
            seen.append(("total", total))

        def update(self, it, loss, score=None):
            seen.append((it, loss, score))

        def close(self):
            seen.append("closed")

    model = Segmenter(width=4, max_iter=3, n_iter_no_change=10, tol=0.0).fit(
        x, y, validation=(xt, yt), progress=Recorder)
    assert seen[0] == ("total", 3) and seen[-1] == "closed"
    updates = seen[1:-1]
    assert [u[0] for u in updates] == [1, 2, 3]
    assert [u[1] for u in updates] == pytest.approx(model.loss_curve_)
    assert [u[2] for u in updates] == pytest.approx(model.validation_scores_)
