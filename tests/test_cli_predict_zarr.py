"""arrseg predict --zarr: Zarr stores and TIFF files in, Zarr stores out,
chunked like the input; the stores hold the model's in-memory prediction of
the whole image; bad input gets one line; Ctrl-C leaves nothing behind."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")
tifffile = pytest.importorskip("tifffile", reason="the cli extra's tifffile")

import arrseg  # noqa: E402
from arrseg.cli import main  # noqa: E402
from arrseg.cli import predict_zarr  # noqa: E402
from arrseg.data import make_textures  # noqa: E402

TIMEOUT = 120
OUTS = "probabilities,labels,uncertainty"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A fitted model (halo 2 + 3) saved by Segmenter.save; one 3 x 400 x 330
    texture image as a tiled TIFF (128 x 128 tiles) and as a Zarr store
    (chunks 1 x 128 x 128); a grey Zarr image for the channel check."""
    folder = tmp_path_factory.mktemp("zarr-predict")
    x, y = make_textures(4, 64, 3, seed=6)
    model = arrseg.Segmenter(width=6, depth=1, kernel_size=5, max_iter=8).fit(x[:2], y[:2])
    model.save(folder / "model.npz")
    pair = np.concatenate([x[2], np.flip(x[3], axis=1)], axis=2)    # 64 x 128
    image = np.ascontiguousarray(np.tile(pair, (1, 7, 3))[:, :400, :330])
    tifffile.imwrite(folder / "a.tif", image, tile=(128, 128), photometric="minisblack")
    z = zarr.create_array(folder / "b.zarr", shape=image.shape, chunks=(1, 128, 128),
                          dtype=image.dtype)
    z[:] = image
    zarr.create_array(folder / "grey.zarr", shape=(64, 64), dtype="f4")[:] = 0
    return {"folder": folder, "model": model, "image": image}


def _run(setup, out, *args):
    f = setup["folder"]
    return main(["predict", str(f / "model.npz"), *args, "-o", str(out), "--zarr", "-q"])


def _check_stores(setup, out, stem, chunk):
    model, image = setup["model"], setup["image"]
    P = np.asarray(model.predict_proba(image))          # the whole image, in memory
    p = zarr.open(out / f"{stem}_probabilities.zarr", mode="r")
    assert p.shape == (3, 400, 330) and p.dtype == np.float32
    assert p.chunks == (3, chunk, chunk)
    np.testing.assert_allclose(p[:], P, rtol=0, atol=2e-6)
    labels = zarr.open(out / f"{stem}_labels.zarr", mode="r")
    assert labels.dtype == np.uint8 and labels.chunks == (chunk, chunk)
    want = np.asarray(model.predict(image))
    top2 = np.sort(P, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-5                     # no near-tie between classes
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(labels[:][clear], want[clear])
    u = zarr.open(out / f"{stem}_uncertainty.zarr", mode="r")
    assert u.dtype == np.float32 and u.chunks == (chunk, chunk)
    P64 = P.astype(np.float64)
    ref = -np.sum(np.where(P64 > 0, P64 * np.log(np.where(P64 > 0, P64, 1)), 0), axis=0)
    np.testing.assert_allclose(u[:], ref, rtol=1e-5, atol=1e-5)


def test_tiff_and_zarr_in_zarr_out_hold_the_in_memory_prediction(setup, tmp_path,
                                                                 capsys):
    f = setup["folder"]
    assert _run(setup, tmp_path, str(f / "a.tif"), str(f / "b.zarr"), "--output",
                OUTS) == 0
    assert "wrote 6 Zarr store(s)" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == [f"{s}_{o}.zarr" for s in "ab"
                                            for o in ("labels", "probabilities",
                                                      "uncertainty")]
    for stem in "ab":
        _check_stores(setup, tmp_path, stem, 128)


def test_chunk_option_and_default_outputs(setup, tmp_path):
    f = setup["folder"]
    assert _run(setup, tmp_path, str(f / "b.zarr"), "--chunk", "256") == 0
    assert sorted(os.listdir(tmp_path)) == ["b_labels.zarr", "b_probabilities.zarr"]
    assert zarr.open(tmp_path / "b_probabilities.zarr").chunks == (3, 256, 256)
    (tmp_path / "b_uncertainty.zarr").mkdir()      # an old result, replaced whole
    (tmp_path / "b_uncertainty.zarr" / "stale").write_text("x")
    assert _run(setup, tmp_path, str(f / "b.zarr"), "--chunk", "256", "--output",
                OUTS) == 0
    assert sorted(os.listdir(tmp_path)) == ["b_labels.zarr", "b_probabilities.zarr",
                                            "b_uncertainty.zarr"]
    assert not (tmp_path / "b_uncertainty.zarr" / "stale").exists()
    _check_stores(setup, tmp_path, "b", 256)


def test_task_progress_bar(setup, tmp_path, capsys):
    f = setup["folder"]
    assert main(["predict", str(f / "model.npz"), str(f / "a.tif"), "-o", str(tmp_path),
                 "--zarr"]) == 0
    err = capsys.readouterr().err
    assert "predict: 100%" in err and "a.tif" in err and "task" in err


def test_subprocess(setup, tmp_path):
    f = setup["folder"]
    r = subprocess.run([sys.executable, "-m", "arrseg", "predict", str(f / "model.npz"),
                        str(f / "a.tif"), "-o", str(tmp_path), "--zarr", "-q",
                        "--output", OUTS],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    _check_stores(setup, tmp_path, "a", 128)


def test_errors_are_one_line(setup, tmp_path, capsys):
    f = setup["folder"]
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG")
    zarr.open_group(tmp_path / "g.zarr", mode="w").create_array("0", shape=(3, 8, 8),
                                                                dtype="f4")
    out = tmp_path / "o"
    cases = [
        ([str(f / "a.tif"), "--output", "labels,overlay"], "--output overlay: not "
         "written with --zarr"),
        ([str(f / "a.tif"), "--band-rows", "8"], "--band-rows is for in-memory"),
        ([str(f / "a.tif"), "--chunk", "100"], "chunks 100: 100 rows is not a multiple "
         "of the chunks of"),
        ([str(f / "none.zarr")], "none.zarr: no such file or Zarr store"),
        ([str(png)], "x.png: --zarr reads Zarr stores (folders) and TIFF files"),
        ([str(f / "grey.zarr")], "grey.zarr: has 1 channel(s) but the model"),
        ([str(tmp_path / "g.zarr")], "g.zarr: is a Zarr group, not an array"),
    ]
    for args, message in cases:
        code = _run(setup, out, *args)
        err = capsys.readouterr().err
        assert code == 2, args
        assert err.startswith("arrseg: error: ") and err.count("\n") == 1, err
        assert message in err, err
    assert not out.exists() or os.listdir(out) == []
    code = main(["predict", str(f / "model.npz"), str(f / "a.tif"), "-o", str(out),
                 "--chunk", "256", "-q"])
    assert code == 2 and "--chunk is the chunk size of --zarr" in capsys.readouterr().err


def test_group_array_by_its_path(setup, tmp_path):
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    g.create_array("0", shape=setup["image"].shape, chunks=(3, 128, 128),
                   dtype=setup["image"].dtype)[:] = setup["image"]
    assert _run(setup, tmp_path / "o", str(tmp_path / "g.zarr" / "0"), "--output",
                OUTS) == 0
    _check_stores(setup, tmp_path / "o", "0", 128)


def test_interrupted_prediction_exits_130_without_a_partial_store(setup, tmp_path,
                                                                  monkeypatch):
    import dask

    f = setup["folder"]

    def interrupted(writes, desc, quiet):
        dask.compute(writes[0], scheduler="sync")     # one store complete, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_zarr, "_compute", interrupted)
    assert _run(setup, tmp_path, str(f / "a.tif"), "--output", OUTS) == 130
    assert os.listdir(tmp_path) == []
