"""Model file format version 2: the residual layers' arrays and
hyper-parameters, version-1 files of the previous release, and the schema's
new checks.

The version-1 files in ``tests/data`` were written by the release before
the residual layers (commit 13d9cfd, ``tests/data/make_v1_fixtures.py``),
with its predictions beside them.
"""

import io
import json
import pathlib

import numpy as np
import pytest

import arrseg
from arrseg import model_file
from arrseg.model_file import ModelFileError
from arrseg.segmenter import Segmenter
from test_model_file import raises, write_npz

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def images():
    return np.load(DATA / "v1_images.npy")


# --- the previous release's files --------------------------------------------------------

@pytest.mark.parametrize("name", ["adam", "varpro"])
def test_version_1_segmenter_loads_and_predicts_its_bits(images, name):
    path = DATA / f"v1_segmenter_{name}.npz"
    assert path.stat().st_size < 50_000
    _, meta = model_file.load(path)
    assert meta["format_version"] == 1
    assert "depth" not in meta["hyper_parameters"]
    model = Segmenter.load(path)
    assert type(model.params_) is arrseg.Params and model.params_.depth == 0
    assert (model.depth, model.dilation, model.step, model.layer,
            model.layer_kernel_size) == (0, 1, 1.0, "residual", 3)
    assert np.array_equal(model.predict_proba(images),
                          np.load(DATA / f"v1_segmenter_{name}_proba.npy"))


def test_version_1_files_mean_depth_0_whatever_the_defaults(images, monkeypatch):
    # the lead may change the constructor's defaults: a version-1 file still
    # holds the one-layer network
    monkeypatch.setitem(Segmenter.__init__.__kwdefaults__, "depth", 3)
    monkeypatch.setitem(Segmenter.__init__.__kwdefaults__, "dilation", "doubling")
    monkeypatch.setitem(Segmenter.__init__.__kwdefaults__, "layer_kernel_size", 5)
    assert Segmenter().depth == 3
    model = Segmenter.load(DATA / "v1_segmenter_adam.npz")
    assert model.depth == 0 and model.params_.depth == 0
    assert np.array_equal(model.predict_proba(images),
                          np.load(DATA / "v1_segmenter_adam_proba.npy"))


def test_version_1_params_file_loads_to_the_same_predictions(images):
    params, meta = model_file.load(DATA / "v1_params.npz")
    assert meta == {"format": "arrseg-model", "format_version": 1,
                    "arrseg_version": meta["arrseg_version"], "note": "v1"}
    assert type(params) is arrseg.Params
    P = arrseg.predict_proba(images, params, activation="relu")
    assert np.array_equal(P, np.load(DATA / "v1_params_proba.npy"))


def test_a_version_1_file_never_reads_layer_entries(tmp_path):
    """Entries a version does not define are ignored, as a version-1
    reader ignored them."""
    p = arrseg.init_params(3, 4, 2, depth=2, seed=0)
    meta = {"format": "arrseg-model", "format_version": 1, "arrseg_version": "0.6.0"}
    path = write_npz(tmp_path / "v1.npz", meta, K=p.K, b=p.b, W=p.W, c=p.c,
                     K_layers=p.K_layers, b_layers=np.zeros(1))
    params, _ = model_file.load(path)
    assert type(params) is arrseg.Params
    path = write_npz(tmp_path / "v2.npz", {**meta, "format_version": 2}, K=p.K,
                     b=p.b, W=p.W, c=p.c, K_layers=p.K_layers, b_layers=np.zeros(1))
    with raises(ModelFileError, "inconsistent parameter arrays", "params.b_layers"):
        model_file.load(path)


# --- version 2 -------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_deep_params_round_trip_bitwise(tmp_path, xp, dtype, bias):
    p = arrseg.init_params(3, 4, 2, 3, depth=3, layer_kernel_size=5, seed=0,
                           dtype=dtype, bias=bias, xp=xp)
    path = tmp_path / "deep.npz"
    model_file.save(path, p, {"dilation": [1, 2, 4]})
    with np.load(path) as f:
        assert set(f.files) == {"K", "b", "W", "K_layers", "b_layers", "metadata"} | (
            {"c"} if bias else set())
    got, meta = model_file.load(path)
    assert type(got) is arrseg.ResidualParams and got.layer_kernel_size == 5
    assert meta["format_version"] == 2 and meta["dilation"] == [1, 2, 4]
    for a, b in zip(got, p):
        assert (a is None) == (b is None)
        if a is not None:
            b = np.asarray(arrseg.testing.to_numpy(b))
            assert a.dtype == b.dtype and np.array_equal(a, b)


def test_a_depth_0_file_is_version_2_and_loads_as_params(tmp_path):
    path = tmp_path / "flat.npz"
    model_file.save(path, arrseg.init_params(3, 4, 2), {})
    params, meta = model_file.load(path)
    assert meta["format_version"] == 2 and type(params) is arrseg.Params


def test_version_3_is_refused(tmp_path):
    p = arrseg.init_params(3, 4, 2, depth=1)
    path = write_npz(tmp_path / "v3.npz",
                     {"format": "arrseg-model", "format_version": 3,
                      "arrseg_version": "9.0.0"},
                     **{n: a for n, a in zip(p._fields, p)})
    with raises(ModelFileError, str(path), "saved by a newer arrseg (9.0.0)",
                "format version 3", "reads format versions up to 2", "upgrade"):
        model_file.load(path)
    with raises(ModelFileError, "format version 3"):
        Segmenter.load(path)


@pytest.mark.parametrize("arrays, words", [
    ({"K_layers": np.zeros((2, 4, 4, 3, 3), np.float32)},
     ["params.b_layers must be an array when params.K_layers is one"]),
    ({"b_layers": np.zeros((2, 4), np.float32)},
     ["params.K_layers must be an array when params.b_layers is one"]),
    ({"K_layers": np.zeros((2, 4, 5, 3, 3), np.float32),
      "b_layers": np.zeros((2, 4), np.float32)}, ["params.K_layers must have shape"]),
    ({"K_layers": np.zeros((2, 4, 4, 2, 2), np.float32),
      "b_layers": np.zeros((2, 4), np.float32)}, ["s_r odd"]),
    ({"K_layers": np.zeros((0, 4, 4, 3, 3), np.float32),
      "b_layers": np.zeros((0, 4), np.float32)}, ["depth >= 1"]),
    ({"K_layers": np.zeros((2, 4, 4, 3, 3), np.float32),
      "b_layers": np.zeros((3, 4), np.float32)}, ["params.b_layers must have shape"]),
    ({"K_layers": np.zeros((2, 4, 4, 3, 3), np.float64),
      "b_layers": np.zeros((2, 4), np.float64)}, ["share one dtype"]),
])
def test_inconsistent_layer_arrays_are_refused(tmp_path, arrays, words):
    p = arrseg.init_params(3, 4, 2, seed=0)
    path = write_npz(tmp_path / "m.npz",
                     {"format": "arrseg-model", "format_version": 2,
                      "arrseg_version": "0.7.0"},
                     K=p.K, b=p.b, W=p.W, c=p.c, **arrays)
    with raises(ModelFileError, "inconsistent parameter arrays", *words):
        model_file.load(path)


# --- a Segmenter's schema at version 2 ------------------------------------------------------

@pytest.fixture(scope="module")
def deep_file(tmp_path_factory, images):
    """A deep Segmenter's file: (path, params, metadata without the
    format's keys)."""
    y = np.load(DATA / "v1_labels.npy")
    model = Segmenter(width=4, depth=2, dilation="doubling", layer_kernel_size=3,
                      max_iter=2).fit(images[:2], y[:2])
    path = tmp_path_factory.mktemp("deep") / "deep.npz"
    model.save(path)
    params, meta = model_file.load(path)
    meta = {k: v for k, v in meta.items() if k not in model_file.RESERVED_KEYS}
    return path, params, meta


def rewrite(tmp_path, deep_file, params=None, **hyper):
    _, p, meta = deep_file
    meta = json.loads(json.dumps(meta))
    meta["hyper_parameters"].update(hyper)
    for k, v in hyper.items():
        if v is KeyError:
            del meta["hyper_parameters"][k]
    path = tmp_path / "m.npz"
    model_file.save(path, p if params is None else params, meta)
    return path


@pytest.mark.parametrize("hyper, words", [
    ({"depth": 3}, ["'hyper_parameters.depth' is 3, expected 2 (K_layers.shape[0])"]),
    ({"depth": KeyError}, ["'hyper_parameters.depth' is 3, expected 2",
                           "(absent: the default)"]),
    ({"layer_kernel_size": 5},
     ["'hyper_parameters.layer_kernel_size' is 5, expected 3 (K_layers.shape[3])"]),
    ({"layer_kernel_size": 4}, ["layer_kernel_size must be odd"]),
    ({"dilation": [1, 2, 4]}, ["dilation must have one entry per residual layer"]),
    ({"dilation": [1, 0]}, ["dilation[1] must be >= 1"]),
    ({"dilation": 2.0}, ["dilation must be an integer >= 1"]),
    ({"dilation": "tripling"}, ["got 'tripling'"]),
    ({"step": 0}, ["step must be a finite number in (0, inf)"]),
    ({"step": True}, ["step must be a number"]),
    ({"layer": "skew"}, ["layer must be one of 'residual', 'symmetric'"]),
])
def test_the_layers_hyper_parameters_are_checked(tmp_path, deep_file, hyper, words):
    path = rewrite(tmp_path, deep_file, **hyper)
    with raises(ModelFileError, f"cannot load {str(path)!r} as a Segmenter", *words):
        Segmenter.load(path)


def test_a_flat_file_claiming_layers_is_refused(tmp_path, deep_file):
    _, p, _ = deep_file
    flat = arrseg.Params(p.K, p.b, p.W, p.c)
    with raises(ModelFileError, "'hyper_parameters.depth' is 2, expected 0 (the file "
                "has no K_layers)"):
        Segmenter.load(rewrite(tmp_path, deep_file, params=flat))


def test_non_finite_layer_parameters_are_refused(tmp_path, deep_file):
    _, p, _ = deep_file
    K_layers = p.K_layers.copy()
    K_layers[1, 0, 0, 1, 1] = np.nan
    with raises(ModelFileError, "params.K_layers holds non-finite values"):
        Segmenter.load(rewrite(tmp_path, deep_file, params=p._replace(
            K_layers=K_layers)))


def test_a_deep_file_loads_with_its_settings(deep_file, images):
    path, p, _ = deep_file
    model = Segmenter.load(path)
    assert (model.depth, model.dilation, model.layer_kernel_size) == (2, "doubling", 3)
    assert type(model.params_) is arrseg.ResidualParams
    P = arrseg.predict_proba(
        (images - model.mean_[:, None, None].astype(np.float32))
        / model.std_[:, None, None].astype(np.float32), p, dilation=(1, 2))
    np.testing.assert_allclose(model.predict_proba(images), P, atol=1e-6)


def test_an_extreme_mean_loads_and_prediction_names_it(tmp_path, deep_file, images):
    """A finite mean of 1e308 loads (float64 images may need one); float32
    images then overflow in the normalisation, and predict says so."""
    _, p, meta = deep_file
    meta = {**meta, "mean": [1e308, 0.0, 0.0]}
    path = tmp_path / "extreme.npz"
    model_file.save(path, p, meta)
    model = Segmenter.load(path)
    with raises(ValueError, "mean_", "std_"):
        model.predict(images)


def test_a_deep_segmenter_file_is_a_plain_npz(deep_file):
    path, p, _ = deep_file
    with np.load(path) as f:
        meta = json.load(io.BytesIO(f["metadata"].tobytes()))
        assert np.array_equal(f["K_layers"], p.K_layers)
    assert meta["format_version"] == 2
    assert meta["hyper_parameters"]["depth"] == 2
    assert meta["hyper_parameters"]["dilation"] == "doubling"
