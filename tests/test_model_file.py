"""Model files: round trips on every backend and across backends, the format
as documented, and a clear ModelFileError for every kind of bad file."""

import importlib
import json
import os
import re

import numpy as np
import pytest
from array_api_compat import array_namespace

import arrseg
from arrseg import model_file
from arrseg.model_file import ModelFileError, ModelFileNotFoundError, load, save
from arrseg.testing import assert_close, to_numpy


def raises(exc, *words):
    """pytest.raises whose message must contain every word (in order)."""
    return pytest.raises(exc, match=".*".join(map(re.escape, words)))


def random_params(xp, dtype="float64", bias=True, seed=0):
    """Parameters with nonzero biases (init_params starts them at zero)."""
    p = arrseg.init_params(3, 5, 4, 3, seed=seed, dtype=dtype, bias=bias, xp=xp)
    return p._replace(b=p.b + 0.25, c=None if p.c is None else p.c - 0.5)


def assert_same_params(got, want, xp):
    for name, g, w in zip(arrseg.Params._fields, got, want):
        if w is None:
            assert g is None, name
        else:
            assert_close(g, to_numpy(w), xp=xp, dtype=to_numpy(w).dtype.name,
                         rtol=0, atol=0, err_msg=name)


def write_npz(path, metadata=None, **arrays):
    """An .npz of the model format's layout, with anything in it."""
    if metadata is not None:
        if not isinstance(metadata, np.ndarray):
            text = json.dumps(metadata).encode()
            metadata = np.frombuffer(text, dtype=np.uint8)
        arrays["metadata"] = metadata
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def good_metadata(**changes):
    return {"format": "arrseg-model", "format_version": 1,
            "arrseg_version": arrseg.__version__, **changes}


def good_arrays():
    p = random_params(None)
    return {"K": p.K, "b": p.b, "W": p.W, "c": p.c}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip(xp, tmp_path, dtype, bias):
    params = random_params(xp, dtype, bias)
    meta = {"width": 5, "activation": "tanh", "classes": ["a", "b", "c", "d"],
            "mean": [0.5, 0.25, 0.125], "nested": {"lr": 0.1, "steps": None}}
    path = tmp_path / "model.arrseg"
    save(path, params, meta)
    assert os.listdir(tmp_path) == ["model.arrseg"]   # as named, no temporary left
    got, got_meta = load(path, xp=xp)
    assert_same_params(got, params, xp)
    assert got_meta == {"format": "arrseg-model", "format_version": 1,
                        "arrseg_version": arrseg.__version__, **meta}


@pytest.mark.parametrize("target", ["numpy", "array_api_strict", "torch"])
def test_a_file_loads_in_every_other_namespace(xp, tmp_path, target):
    target_xp = importlib.import_module(
        "array_api_compat.numpy" if target == "numpy" else
        "array_api_compat.torch" if target == "torch" else "array_api_strict")
    if target == "torch":
        pytest.importorskip("torch")
    params = random_params(xp, "float32")
    save(tmp_path / "m.npz", params)
    got, _ = load(tmp_path / "m.npz", xp=target_xp)
    assert array_namespace(got.K) is target_xp
    assert_same_params(got, params, target_xp)


def test_load_onto_a_device(tmp_path):
    torch = pytest.importorskip("torch")
    save(tmp_path / "m.npz", random_params(None))
    got, _ = load(tmp_path / "m.npz", xp=torch, device="cpu")
    assert all(a.device == torch.device("cpu") for a in got)


def test_default_namespace_is_numpy_and_the_model_predicts(tmp_path):
    x, _ = arrseg.data.make_shapes(n_images=1, size=12, seed=0, dtype="float64")
    params = random_params(None)
    save(tmp_path / "m.npz", params)
    got, meta = load(tmp_path / "m.npz")
    assert isinstance(got.K, np.ndarray) and meta["format"] == "arrseg-model"
    np.testing.assert_array_equal(arrseg.predict_proba(x, got),
                                  arrseg.predict_proba(x, params))


@pytest.mark.parametrize("compress", [True, False])
def test_the_file_is_a_plain_npz_as_documented(tmp_path, compress):
    params = random_params(None, bias=False)
    save(tmp_path / "m.npz", params, {"k": 5}, compress=compress)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["K", "W", "b", "metadata"]
        assert f["metadata"].dtype == np.uint8 and f["metadata"].ndim == 1
        meta = json.loads(f["metadata"].tobytes().decode("utf-8"))
        np.testing.assert_array_equal(f["W"], params.W)
    assert meta == good_metadata(k=5)
    assert list(meta)[:3] == ["format", "format_version", "arrseg_version"]


def test_metadata_arrays_and_scalars_become_lists_and_numbers(xp, tmp_path):
    meta = {"mean": xp.asarray([0.5, 0.25]), "std": np.float32(0.5),
            "n": np.int64(3), "host": np.arange(3)}
    save(tmp_path / "m.npz", random_params(xp), meta)
    _, got = load(tmp_path / "m.npz")
    assert (got["mean"], got["std"], got["n"], got["host"]) == (
        [0.5, 0.25], 0.5, 3, [0, 1, 2])


def test_non_finite_metadata_round_trips(tmp_path):
    save(tmp_path / "m.npz", random_params(None),
         {"loss_curve": [1.0, float("inf"), float("nan")], "best": -np.inf})
    _, meta = load(tmp_path / "m.npz")
    assert meta["loss_curve"][:2] == [1.0, float("inf")]
    assert np.isnan(meta["loss_curve"][2]) and meta["best"] == -np.inf


def test_save_replaces_an_existing_file(tmp_path):
    save(tmp_path / "m.npz", random_params(None, seed=1), {"run": 1})
    save(tmp_path / "m.npz", random_params(None, seed=2), {"run": 2})
    got, meta = load(tmp_path / "m.npz")
    assert meta["run"] == 2
    assert_same_params(got, random_params(None, seed=2), None)
    assert os.listdir(tmp_path) == ["m.npz"]


def test_save_errors_write_nothing(tmp_path):
    p = random_params(None)
    path = tmp_path / "m.npz"
    with raises(ValueError, "params.b must have shape (k,) = (5,)", "(4,)"):
        save(path, p._replace(b=np.zeros(4)))
    with raises(TypeError, "params must be an arrseg.Params"):
        save(path, {"K": p.K})
    with raises(TypeError, "metadata must be a dict", "list"):
        save(path, p, [1, 2])
    with raises(TypeError, "metadata must be JSON serialisable", "object"):
        save(path, p, {"f": object()})
    cycle = []
    cycle.append(cycle)
    with raises(ValueError, "metadata must be JSON serialisable", "Circular"):
        save(path, p, {"f": cycle})
    with raises(TypeError, "metadata keys must be strings", "1"):
        save(path, p, {1: "one"})
    with raises(ValueError, "metadata must not contain the key(s) ['format_version']"):
        save(path, p, {"format_version": 7})
    assert os.listdir(tmp_path) == []


# --- bad files -----------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with raises(ModelFileNotFoundError, str(path), "does not exist") as info:
        load(path)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, FileNotFoundError)


def test_a_directory(tmp_path):
    with raises(ModelFileError, str(tmp_path), "is a directory"):
        load(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, b"weights = [1, 2, 3]\n",
                                     np.random.default_rng(0).bytes(300)],
                         ids=["empty", "zeros", "text", "random"])
def test_not_an_archive(tmp_path, content):
    path = tmp_path / "m.npz"
    path.write_bytes(content)
    with raises(ModelFileError, str(path), "not an .npz archive"):
        load(path)


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_file(tmp_path, compress):
    save(tmp_path / "good.npz", random_params(None), compress=compress)
    data = (tmp_path / "good.npz").read_bytes()
    path = tmp_path / "half.npz"
    path.write_bytes(data[: len(data) // 2])
    with raises(ModelFileError, str(path), "not an .npz archive", "truncated"):
        load(path)


def test_corrupt_entry(tmp_path):
    save(tmp_path / "good.npz", random_params(None), compress=False)
    data = bytearray((tmp_path / "good.npz").read_bytes())
    start = data.index(b"K.npy") + 200          # inside K's array data
    data[start : start + 64] = bytes(64)
    path = tmp_path / "bad.npz"
    path.write_bytes(bytes(data))
    with raises(ModelFileError, str(path), "entry 'K' is corrupt or truncated"):
        load(path)


def test_a_single_npy_array(tmp_path):
    path = tmp_path / "m.npy"
    np.save(path, np.zeros(3))
    with raises(ModelFileError, "a single .npy array, not an .npz archive"):
        load(path)


def test_foreign_npz(tmp_path):
    path = write_npz(tmp_path / "other.npz", x=np.zeros(3), y=np.ones(2))
    with raises(ModelFileError, str(path), "not an arrseg model file",
                "no 'metadata' entry", "['x', 'y']"):
        load(path)
    path = write_npz(tmp_path / "other2.npz", {"format": "something-else"},
                     **good_arrays())
    with raises(ModelFileError, "not an arrseg model file", "'something-else'"):
        load(path)
    path = write_npz(tmp_path / "other3.npz", np.arange(4.0), **good_arrays())
    with raises(ModelFileError, "'metadata' entry must be UTF-8 JSON bytes",
                "float64"):
        load(path)
    path = write_npz(tmp_path / "other4.npz", np.frombuffer(b"{not json",
                                                            dtype=np.uint8))
    with raises(ModelFileError, "'metadata' entry is not UTF-8 JSON"):
        load(path)
    path = write_npz(tmp_path / "other5.npz", [1, 2])
    with raises(ModelFileError, "'metadata' entry must be a JSON object", "list"):
        load(path)


def test_newer_format_version(tmp_path):
    path = write_npz(tmp_path / "new.npz",
                     good_metadata(format_version=2, arrseg_version="9.0.0"),
                     **good_arrays())
    with raises(ModelFileError, str(path), "saved by a newer arrseg (9.0.0)",
                "format version 2", f"this arrseg ({arrseg.__version__})",
                "up to 1", "upgrade arrseg"):
        load(path)


@pytest.mark.parametrize("version", [0, "1", None, True, 1.0])
def test_invalid_format_version(tmp_path, version):
    path = write_npz(tmp_path / "m.npz", good_metadata(format_version=version),
                     **good_arrays())
    with raises(ModelFileError, "'format_version' must be a positive integer"):
        load(path)


def test_missing_or_inconsistent_arrays(tmp_path):
    arrays = good_arrays()
    del arrays["W"]
    path = write_npz(tmp_path / "m1.npz", good_metadata(), **arrays)
    with raises(ModelFileError, str(path), "missing parameter array(s) ['W']"):
        load(path)
    bad = {**good_arrays(), "b": np.zeros(4)}
    path = write_npz(tmp_path / "m2.npz", good_metadata(), **bad)
    with raises(ModelFileError, str(path), "inconsistent parameter arrays",
                "params.b must have shape (k,) = (5,)", "(4,)"):
        load(path)
    bad = {**good_arrays(), "c": np.zeros(3)}
    path = write_npz(tmp_path / "m3.npz", good_metadata(), **bad)
    with raises(ModelFileError, "params.c must have shape (n_c,) = (4,)"):
        load(path)
    bad = {**good_arrays(), "K": np.zeros((5, 3, 2, 2))}
    path = write_npz(tmp_path / "m4.npz", good_metadata(), **bad)
    with raises(ModelFileError, "params.K's kernel size must be odd"):
        load(path)
    bad = {**good_arrays(), "W": np.zeros((5, 4), dtype=np.int64)}
    path = write_npz(tmp_path / "m5.npz", good_metadata(), **bad)
    with raises(ModelFileError, "params.W must be float32 or float64", "int64"):
        load(path)


def test_object_arrays_are_never_unpickled(tmp_path, monkeypatch):
    import pickle

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the loader unpickled data")

    bad = {**good_arrays(), "K": np.array([{"evil": 1}, None], dtype=object)}
    path = write_npz(tmp_path / "m.npz", good_metadata(), **bad)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    with raises(ModelFileError, str(path), "entry 'K' is an object array",
                "refusing to unpickle"):
        load(path)
    # an object array in metadata's place
    path = write_npz(tmp_path / "m2.npz", np.array(["{}"], dtype=object),
                     **good_arrays())
    with raises(ModelFileError, "entry 'metadata' is an object array"):
        load(path)


def test_unknown_entries_are_ignored_unread(tmp_path):
    extra = {**good_arrays(), "future": np.array([None], dtype=object)}
    path = write_npz(tmp_path / "m.npz", good_metadata(extra=1), **extra)
    params, meta = load(path)
    assert meta["extra"] == 1
    assert_same_params(params, random_params(None), None)


def test_big_endian_arrays_load_in_native_order(tmp_path):
    torch = pytest.importorskip("torch")
    arrays = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in good_arrays().items()}
    path = write_npz(tmp_path / "m.npz", good_metadata(), **arrays)
    got, _ = load(path, xp=torch)
    assert_same_params(got, random_params(None), None)


def test_public_constants():
    assert model_file.FORMAT == "arrseg-model"
    assert model_file.FORMAT_VERSION == 1
    assert issubclass(ModelFileError, ValueError)
