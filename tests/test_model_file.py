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
    return {"format": "arrseg-model", "format_version": model_file.FORMAT_VERSION,
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
    assert got_meta == {"format": "arrseg-model",
                        "format_version": model_file.FORMAT_VERSION,
                        "arrseg_version": arrseg.__version__, **meta}


@pytest.mark.parametrize("target", ["numpy", "array_api_strict", "torch"])
def test_a_file_loads_in_every_other_namespace(xp, tmp_path, target):
    # the target library first: a missing one is a skip, not an ImportError
    if target == "torch":
        pytest.importorskip("torch", reason="PyTorch is not installed")
        target_xp = importlib.import_module("array_api_compat.torch")
    elif target == "array_api_strict":
        target_xp = pytest.importorskip("array_api_strict",
                                        reason="array_api_strict is not installed")
    else:
        target_xp = importlib.import_module("array_api_compat.numpy")
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
    newer = model_file.FORMAT_VERSION + 1
    path = write_npz(tmp_path / "new.npz",
                     good_metadata(format_version=newer, arrseg_version="9.0.0"),
                     **good_arrays())
    with raises(ModelFileError, str(path), "saved by a newer arrseg (9.0.0)",
                f"format version {newer}", f"this arrseg ({arrseg.__version__})",
                f"up to {model_file.FORMAT_VERSION}", "upgrade arrseg"):
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
    assert model_file.FORMAT_VERSION == 2
    assert issubclass(ModelFileError, ValueError)


# --- the container's bounds: crafted zips and .npy headers ---------------------------

def _fuzz_tool():
    """tools/fuzz_model_file.py: the zip and .npy builders the fuzzer uses."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "fuzz_model_file.py"
    spec = importlib.util.spec_from_file_location("fuzz_model_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = _fuzz_tool()


def good_file(tmp_path, compress=True):
    save(tmp_path / "good.npz", random_params(None), {"k": 5}, compress=compress)
    return (tmp_path / "good.npz").read_bytes()


def with_member(data, name, raw=None, compress=True, **lies):
    """The zip ``data`` with member ``name`` replaced by ``raw`` (sizes and
    CRC true unless ``lies`` say otherwise)."""
    return fuzz.replace_members(data, {name: fuzz.member(name, raw, compress, **lies)})


def load_bytes(tmp_path, data):
    path = tmp_path / "crafted.npz"
    path.write_bytes(data)
    return load(path)


@pytest.mark.parametrize("shape, words", [
    ((2**40,), ["entry 'K' has shape (1099511627776,) of float64",
                "more than the bound of 1073741824"]),
    ((10**30, 10**30), ["entry 'K' has shape", "more than the bound"]),
    ((5, 3, 3, 3), ["entry 'K' declares 128 bytes in the zip directory",
                    "header describes 128 + 1080 (shape (5, 3, 3, 3), float64)"]),
    ((-1,), ["entry 'K' has an invalid shape (-1,)", "non-negative integers"]),
    ((True, 3), ["entry 'K' has an invalid shape (True, 3)"]),
])
def test_npy_header_shapes_beyond_the_data(tmp_path, shape, words):
    """The header's shape is checked against the bound and the zip
    directory's size before anything is allocated (no MemoryError)."""
    data = with_member(good_file(tmp_path), "K.npy",
                       fuzz.npy_bytes(fuzz.npy_header_text(shape)))
    with raises(ModelFileError, "crafted.npz", *words):
        load_bytes(tmp_path, data)


@pytest.mark.parametrize("header, version, length", [
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (3,", (1, 0), None),
    ("{", (2, 0), None),
    ("[1, 2, 3]", (1, 0), None),
    ("{'descr': '<f8'}", (1, 0), None),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (3L,), }", (1, 0), None),
    ("\x00\xff garbage", (1, 0), None),
    ("(" * 500 + ")" * 500, (3, 0), None),
    ("{'descr': 'nonsense', 'fortran_order': False, 'shape': (3,), }", (1, 0), None),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", (2, 0), 2**32 - 1),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", (4, 0), None),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }" + " " * 20_000,
     (2, 0), None),
], ids=["unterminated", "brace", "not-a-dict", "missing-keys", "python2-long",
        "garbage", "nested", "bad-descr", "huge-length", "version-4", "too-long"])
def test_invalid_npy_headers(tmp_path, header, version, length):
    """Whatever NumPy's header parser raises (tokenize.TokenError,
    SyntaxError, ValueError, its Python 2 warning) is a ModelFileError."""
    data = with_member(good_file(tmp_path), "K.npy",
                       fuzz.npy_bytes(header, b"\0" * 24, version, length))
    with raises(ModelFileError, "entry 'K' has no valid .npy header"):
        load_bytes(tmp_path, data)


def test_npy_versions_and_fortran_order_load(tmp_path):
    p = random_params(None)
    data = good_file(tmp_path)
    K = np.asfortranarray(p.K)
    header = fuzz.npy_header_text(K.shape, "<f8", True)
    for version in [(1, 0), (2, 0), (3, 0)]:
        raw = fuzz.npy_bytes(header, K.tobytes(order="F"), version)
        got, _ = load_bytes(tmp_path, with_member(data, "K.npy", raw))
        np.testing.assert_array_equal(got.K, p.K)


@pytest.mark.parametrize("descr, words", [
    ("|O", ["entry 'K' is an object array", "refusing to unpickle"]),
    ([("a", "<f8"), ("b", "|O")], ["entry 'K' is an object array"]),
    ("<f2", ["params.K must be float32 or float64, got dtype float16"]),
    ("|V0", ["params.K must be float32 or float64"]),
    (("<f8", (2,)), ["params.K must be float32 or float64"]),
])
def test_npy_dtypes_other_than_float(tmp_path, descr, words):
    data = with_member(good_file(tmp_path), "K.npy",
                       fuzz.npy_bytes(fuzz.npy_header_text((2,), descr), b"\0" * 64))
    with raises(ModelFileError, *words):
        load_bytes(tmp_path, data)


@pytest.mark.parametrize("member", ["K.npy", "metadata.npy"])
@pytest.mark.parametrize("honest", [True, False], ids=["true-size", "lying-size"])
def test_deflate_bombs_are_not_inflated(tmp_path, member, honest):
    """64 KB inflating to 64 MiB: refused from the zip directory's sizes, or
    read no further than the (lying) declared size + 1 byte."""
    what = "metadata" if member == "metadata.npy" else "array"
    bomb = fuzz.bomb_member(member, 2**26, honest, what)
    data = fuzz.replace_members(good_file(tmp_path), {member: bomb})
    name = member[:-4]
    words = ([f"entry {name!r} declares 67108992 bytes inflated from",
              "MAX_INFLATION = 64 times"] if honest and name == "K" else
             [f"entry {name!r} declares 67108992 bytes, more than the bound of "
              "16777216 bytes"] if honest else
             [f"entry {name!r} is corrupt or truncated", "CRC-32"])
    import tracemalloc

    tracemalloc.start()
    try:
        with raises(ModelFileError, *words):
            load_bytes(tmp_path, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_a_lying_size_with_a_matching_crc_reads_only_what_is_declared(tmp_path):
    """A member whose data runs on past its declared size (and whose CRC is
    that of the declared part) is read up to the declared size."""
    p = random_params(None)
    raw = fuzz.npy_of(p.K)
    lie = fuzz.member("K.npy", raw + b"\0" * 2**22, True, size=len(raw),
                      crc=__import__("zlib").crc32(raw))
    data = fuzz.replace_members(good_file(tmp_path), {"K.npy": lie})
    got, _ = load_bytes(tmp_path, data)
    np.testing.assert_array_equal(got.K, p.K)


def test_zip_directory_bounds(tmp_path):
    data = good_file(tmp_path)
    members = fuzz.read_members(data)
    many = members + [fuzz.member(f"extra{i}.npy", b"") for i in range(64)]
    with raises(ModelFileError, "lists 69 entries, more than MAX_ENTRIES = 64"):
        load_bytes(tmp_path, fuzz.build_zip(many))
    twice = members + [members[0]]
    with raises(ModelFileError, "lists entries more than once", "'K.npy'"):
        load_bytes(tmp_path, fuzz.build_zip(twice))
    raw = fuzz.npy_of(random_params(None).K)
    for lies, words in [({"flags": 1}, ["entry 'K' uses a zip feature", "flags 0x1"]),
                        ({"method": 12}, ["compression method 12"]),
                        ({"csize": 2**40}, ["declares 1099511627776 compressed bytes",
                                            "more than the file's"])]:
        with raises(ModelFileError, *words):
            load_bytes(tmp_path, with_member(data, "K.npy", raw, **lies))


@pytest.mark.parametrize("text, words", [
    ("[" * 100_000, ["not UTF-8 JSON", "RecursionError"]),
    ("[" * 100_000 + "]" * 100_000, ["not UTF-8 JSON", "RecursionError"]),
    ('{"format": "arrseg-model", "format_version": 1, "x": 1' + "0" * 5000 + "}",
     ["not UTF-8 JSON", "4300"]),
    ('{"format": "arrseg-model", "format_version": 1e999}',
     ["'format_version' must be a positive integer, got inf"]),
    ('{"format": ' + "[" * 50 + "]" * 50 + "}", ["'format' is [[[[...]]]]"]),
    ('{"format": "' + "x" * 100_000 + '"}', ["'format' is 'xxxxxxx", "...",
                                            "expected 'arrseg-model'"]),
])
def test_hostile_metadata_json(tmp_path, text, words):
    data = fuzz.with_metadata_text(good_file(tmp_path), text)
    with raises(ModelFileError, *words):
        load_bytes(tmp_path, data)


# --- a Segmenter's file: every metadata field checked --------------------------------

@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory):
    """(params, metadata without the reserved keys) of a valid Segmenter file."""
    path = tmp_path_factory.mktemp("segmenter") / "s.npz"
    fuzz._fitted_segmenter().save(path)
    params, meta = load(path)
    return params, {k: v for k, v in meta.items() if k not in model_file.RESERVED_KEYS}


def resave(tmp_path, segmenter_file, edit=None, params=None):
    """A Segmenter file with ``edit(metadata)`` applied (on a copy)."""
    import copy

    p, meta = segmenter_file
    meta = copy.deepcopy(meta)
    if edit is not None:
        edit(meta)
    path = tmp_path / "s.npz"
    save(path, p if params is None else params, meta)
    return path


def setting(key, value):
    def edit(meta):
        meta[key] = value
    return edit


def hyper(key, value):
    def edit(meta):
        meta["hyper_parameters"][key] = value
    return edit


def delete(*keys):
    def edit(meta):
        for k in keys:
            meta.pop(k)
    return edit


def test_a_valid_segmenter_file_loads_and_predicts_as_saved(tmp_path, segmenter_file):
    est = fuzz._fitted_segmenter()
    est.save(tmp_path / "s.npz")
    loaded = arrseg.Segmenter.load(tmp_path / "s.npz")
    x = np.random.default_rng(0).random((2, 9, 7))
    np.testing.assert_array_equal(loaded.predict_proba(x), est.predict_proba(x))
    assert loaded.get_params() == est.get_params()
    assert loaded.loss_curve_[:2] == est.loss_curve_[:2]
    np.testing.assert_array_equal(loaded.class_weight_, est.class_weight_)
    assert (loaded.n_iter_, loaded.validation_score_) == (3, 0.75)


SCHEMA_CASES = [
    (delete("std"), ["lacks the field(s) ['std']"]),
    (delete("mean", "n_iter"), ["lacks the field(s) ['mean', 'n_iter']"]),
    (setting("std", [0.2, -0.1]), ["metadata 'std' is [0.2, -0.1]",
                                   "a list of 2 finite numbers > 0",
                                   "(in_channels = K.shape[1] = 2)"]),
    (setting("std", [0.2, 0.0]), ["metadata 'std' is [0.2, 0.0]"]),
    (setting("std", [0.2, float("nan")]), ["metadata 'std' is [0.2, nan]"]),
    (setting("std", [0.2, float("inf")]), ["metadata 'std' is [0.2, inf]"]),
    (setting("std", [0.2]), ["metadata 'std' is [0.2]", "a list of 2"]),
    (setting("std", 0.2), ["metadata 'std' is 0.2"]),
    (setting("std", [0.2, "0.1"]), ["metadata 'std' is [0.2, '0.1']"]),
    (setting("std", [0.2, True]), ["metadata 'std' is [0.2, True]"]),
    (setting("std", [0.2, [0.1]]), ["metadata 'std' is [0.2, [0.1]]"]),
    (setting("mean", [0.5, 0.25, 0.0]), ["metadata 'mean' is [0.5, 0.25, 0.0]",
                                         "a list of 2 finite numbers"]),
    (setting("mean", {"a": 1}), ["metadata 'mean' is {'a': 1}"]),
    (setting("mean", [1e308 * 10, 0]), ["metadata 'mean' is [inf, 0]"]),
    (setting("in_channels", 3), ["metadata 'in_channels' is 3",
                                 "the integer 2 (K.shape[1])"]),
    (setting("in_channels", True), ["metadata 'in_channels' is True"]),
    (setting("in_channels", 2.0), ["metadata 'in_channels' is 2.0"]),
    (setting("n_classes", 4), ["metadata 'n_classes' is 4",
                               "the integer 3 (W.shape[1])"]),
    (setting("n_classes", "3"), ["metadata 'n_classes' is '3'"]),
    (setting("class_weight", [1.0, 2.0]), ["metadata 'class_weight' is [1.0, 2.0]",
                                           "a list of 3 finite numbers >= 0",
                                           "(n_classes = 3), or null"]),
    (setting("class_weight", [1.0, -2.0, 1.0]), ["metadata 'class_weight'"]),
    (setting("class_weight", "balanced"), ["metadata 'class_weight' is 'balanced'"]),
    (setting("n_iter", -1), ["metadata 'n_iter' is -1", "an integer >= 0"]),
    (setting("n_iter", 3.0), ["metadata 'n_iter' is 3.0"]),
    (setting("n_iter", False), ["metadata 'n_iter' is False"]),
    (setting("loss_curve", [1.0, "x"]), ["metadata 'loss_curve' is [1.0, 'x']",
                                         "a list of numbers (NaN and infinities"]),
    (setting("validation_scores", None), ["metadata 'validation_scores' is None"]),
    (setting("validation_loss_curve", [[1.0]]), ["'validation_loss_curve'"]),
    (setting("validation_score", "0.5"), ["metadata 'validation_score' is '0.5'",
                                          "a number or null"]),
    (setting("validation_score", [0.5]), ["metadata 'validation_score' is [0.5]"]),
    (setting("hyper_parameters", [1, 2]), ["metadata 'hyper_parameters' is [1, 2]",
                                           "a JSON object"]),
    (hyper("width", 8), ["metadata 'hyper_parameters.width' is 8",
                         "expected 4 (K.shape[0])"]),
    (hyper("kernel_size", 5), ["'hyper_parameters.kernel_size' is 5",
                               "expected 3 (K.shape[2])"]),
    (hyper("n_classes", 2), ["'hyper_parameters.n_classes' is 2",
                             "null or 3 (W.shape[1])"]),
    (hyper("class_weight", [1, 2]), ["'hyper_parameters.class_weight' is [1, 2]",
                                     "a list of 3 weights"]),
    (hyper("width", True), ["holds a value that Segmenter refuses",
                            "width must be an integer, got bool True"]),
    (hyper("width", "4"), ["width must be an integer, got str '4'"]),
    (hyper("kernel_size", 4), ["kernel_size must be odd"]),
    (hyper("activation", "softmax"), ["activation must be one of"]),
    (hyper("boundary", False), ["boundary must be one of", "got False"]),
    (hyper("method", None), ["method must be one of"]),
    (hyper("memory_budget", False), ["memory_budget must be an integer or None"]),
    (hyper("tile_size", 0), ["tile_size must be >= 1, got 0"]),
    (hyper("learning_rate", float("nan")), ["learning_rate must be a finite number"]),
    (hyper("momentum", 10**400), ["metadata 'hyper_parameters' holds a value",
                                  "int too large"]),
    (hyper("class_weight", {"a": 1}), ["class_weight must be None, 'balanced'"]),
    (hyper("class_weight", [[1, 2, 3]]), ["class_weight must be a 1-d sequence"]),
    (hyper("max_iter", 0), ["max_iter must be >= 1, got 0"]),
]


@pytest.mark.parametrize("edit, words", SCHEMA_CASES)
def test_segmenter_metadata_schema(tmp_path, segmenter_file, edit, words):
    path = resave(tmp_path, segmenter_file, edit)
    with raises(ModelFileError, f"cannot load {str(path)!r} as a Segmenter", *words):
        arrseg.Segmenter.load(path)
    load(path)      # the generic reader reads it: only the Segmenter's schema fails


def test_hyper_parameters_absent_take_their_defaults(tmp_path, segmenter_file):
    def drop(meta):
        for name in ("tol", "seed", "a_name_from_the_future"):
            meta["hyper_parameters"].pop(name, None)
        meta["hyper_parameters"]["a_name_from_the_future"] = [1]
    est = arrseg.Segmenter.load(resave(tmp_path, segmenter_file, drop))
    defaults = arrseg.Segmenter()
    assert (est.tol, est.seed) == (defaults.tol, defaults.seed) == (3e-5, 0)
    with raises(ModelFileError, "'hyper_parameters.width' is 8",
                "expected 4 (K.shape[0]) (absent: the default)"):
        arrseg.Segmenter.load(resave(
            tmp_path, segmenter_file, lambda m: m["hyper_parameters"].pop("width")))


def test_segmenter_parameters_must_be_finite(tmp_path, segmenter_file):
    p, _ = segmenter_file
    K = p.K.copy()
    K[0, 0, 0, 0] = np.nan
    path = resave(tmp_path, segmenter_file, params=p._replace(K=K))
    with raises(ModelFileError, "params.K holds non-finite values"):
        arrseg.Segmenter.load(path)


def test_segmenter_file_with_one_class(tmp_path, segmenter_file):
    p, _ = segmenter_file
    params = p._replace(W=p.W[:, :1], c=p.c[:1])
    path = resave(tmp_path, segmenter_file, setting("n_classes", 1), params)
    with raises(ModelFileError, "metadata 'n_classes' is 1",
                "an integer >= 2, equal to (W.shape[1] = 1)"):
        arrseg.Segmenter.load(path)


def test_segmenter_load_into_a_namespace(tmp_path, segmenter_file):
    xps = pytest.importorskip("array_api_strict")
    est = arrseg.Segmenter.load(resave(tmp_path, segmenter_file), xp=xps)
    assert array_namespace(est.params_.K) is xps
    with raises(TypeError, "xp must be an array namespace"):
        arrseg.Segmenter.load(resave(tmp_path, segmenter_file), xp="numpy")


# --- saving: durable, and failures name the target -----------------------------------

class _FailingFile(__import__("io").FileIO):
    """A file whose writes fail with ``error`` once ``limit`` bytes are
    written (the disk fills up part-way)."""

    limit = 1000
    error = OSError(28, "No space left on device")

    def write(self, b):
        if self.tell() + len(b) > self.limit:
            room = max(0, self.limit - self.tell())
            super().write(bytes(b)[:room])
            raise self.error
        return super().write(b)


def _failing_open(error, limit=1000):
    def fake_open(path, mode="r", *args, **kwargs):
        f = _FailingFile(path, mode)
        f.error, f.limit = error, limit
        return f
    return fake_open


@pytest.mark.parametrize("compress", [True, False])
def test_disk_full_during_save(tmp_path, monkeypatch, compress):
    import errno

    path = tmp_path / "m.npz"
    save(path, random_params(None, seed=1), {"run": 1})
    before = path.read_bytes()
    monkeypatch.setattr(model_file, "open", _failing_open(
        OSError(errno.ENOSPC, "No space left on device")), raising=False)
    with raises(OSError, "cannot save arrseg model file", "No space left on device",
                str(path)) as info:
        save(path, random_params(None, seed=2), {"run": 2}, compress=compress)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert ".tmp" not in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]
    monkeypatch.undo()
    assert load(path)[1]["run"] == 1


def test_keyboard_interrupt_during_save(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    save(path, random_params(None, seed=1), {"run": 1})
    before = path.read_bytes()
    monkeypatch.setattr(model_file, "open", _failing_open(KeyboardInterrupt(), 500),
                        raising=False)
    with pytest.raises(KeyboardInterrupt):
        save(path, random_params(None, seed=2), {"run": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]


def test_save_errors_name_the_target(tmp_path):
    path = tmp_path / "no-such-folder" / "m.npz"
    with raises(FileNotFoundError, "cannot save arrseg model file", str(path)) as info:
        save(path, random_params(None))
    assert ".tmp" not in str(info.value) and info.value.filename == str(path)
    (tmp_path / "a-folder").mkdir()
    with raises(OSError, "cannot save arrseg model file", "a-folder"):
        save(tmp_path / "a-folder", random_params(None))
    assert os.listdir(tmp_path) == ["a-folder"]


def test_save_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path,
                                                                    monkeypatch):
    import stat

    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(f"fsync {kind}")
        fsync(fd)

    def recording_replace(src, dst):
        events.append("replace")
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    save(tmp_path / "m.npz", random_params(None))
    assert events == ["fsync file", "replace", "fsync folder"]

    # where the OS cannot open a folder (Windows), the folder is not synced
    real_open = os.open

    def no_folders(path, flags, *args):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)

    events.clear()
    monkeypatch.setattr(os, "open", no_folders)
    save(tmp_path / "m.npz", random_params(None))
    assert events == ["fsync file", "replace"]
    assert load(tmp_path / "m.npz")[0].K.shape == (5, 3, 3, 3)


def test_save_refuses_what_load_would_refuse(tmp_path):
    with raises(ValueError, "metadata must take at most MAX_METADATA_BYTES"):
        save(tmp_path / "m.npz", random_params(None), {"x": "a" * (16 * 2**20)})
    assert os.listdir(tmp_path) == []
