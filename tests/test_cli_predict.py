"""arrseg predict: the files written hold the library's predictions for the
same model and image (in their dtype, shape and page count); large images in
bands equal the whole image's; names never leave the output folder."""

import os
import subprocess
import sys

import numpy as np
import pytest

import arrseg
from arrseg.cli import main
from arrseg.cli import predict as predict_command
from arrseg.data import make_textures

tifffile = pytest.importorskip("tifffile", reason="the cli extra's tifffile")
Image = pytest.importorskip("PIL.Image", reason="the cli extra's Pillow")

TIMEOUT = 120


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A model saved by Segmenter.save (not by the CLI), and images as files."""
    folder = tmp_path_factory.mktemp("predict")
    x, y = make_textures(3, 32, 3, seed=4)
    images = np.clip((x + 1) / 3 * 255, 0, 255).astype(np.uint8)
    model = arrseg.Segmenter(width=6, depth=1, max_iter=5).fit(images[:2], y[:2])
    model.save(folder / "model.npz")
    Image.fromarray(np.moveaxis(images[2], 0, -1)).save(folder / "a.png")
    tifffile.imwrite(folder / "b.tif", x[1], photometric="minisblack")    # float32
    np.save(folder / "c.npy", x[0].astype(np.float64))
    Image.fromarray(images[2, 0]).save(folder / "grey.png")
    return {"folder": folder, "model": model, "images": images, "x": x}


def _predict(setup, out, *args):
    f = setup["folder"]
    return main(["predict", str(f / "model.npz"), *args, "-o", str(out), "-q"])


def _reference(setup, name):
    """The library's P for the image as the reader gives it."""
    from arrseg.io import read_image

    x = read_image(setup["folder"] / name)
    return x, np.asarray(setup["model"].predict_proba(x))


def test_default_outputs_hold_the_library_predictions(setup, tmp_path, capsys):
    f = setup["folder"]
    assert _predict(setup, tmp_path, str(f / "a.png"), str(f / "b.tif"),
                    str(f / "c.npy")) == 0
    assert "wrote 6 file(s)" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == [
        f"{s}_{o}" for s in "abc" for o in ("labels.png", "probabilities.tif")]
    for stem, name in (("a", "a.png"), ("b", "b.tif"), ("c", "c.npy")):
        x, P = _reference(setup, name)
        with tifffile.TiffFile(tmp_path / f"{stem}_probabilities.tif") as t:
            assert len(t.pages) == 3
            got = t.asarray()
        assert got.dtype == np.float32 and got.shape == (3, 32, 32)
        np.testing.assert_array_equal(got, P.astype(np.float32))
        with Image.open(tmp_path / f"{stem}_labels.png") as png:
            labels = np.asarray(png)
        assert labels.dtype == np.uint8 and labels.shape == (32, 32)
        np.testing.assert_array_equal(labels, setup["model"].predict(x))


def test_every_output_and_format(setup, tmp_path):
    f = setup["folder"]
    assert _predict(setup, tmp_path, str(f / "a.png"), "--output",
                    "probabilities,labels,overlay,uncertainty", "--format", "npy",
                    "--labels-format", "tiff", "--name", "{index:02d}-{output}.{ext}") == 0
    assert sorted(os.listdir(tmp_path)) == ["00-labels.tif", "00-overlay.png",
                                            "00-probabilities.npy", "00-uncertainty.npy"]
    x, P = _reference(setup, "a.png")
    got = np.load(tmp_path / "00-probabilities.npy")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, P.astype(np.float32))
    labels = tifffile.imread(tmp_path / "00-labels.tif")
    np.testing.assert_array_equal(labels, np.argmax(P, axis=0))
    u = np.load(tmp_path / "00-uncertainty.npy")
    P64 = P.astype(np.float64)
    want = -np.sum(np.where(P64 > 0, P64 * np.log(np.where(P64 > 0, P64, 1)), 0), axis=0)
    assert u.dtype == np.float32 and u.shape == (32, 32)
    np.testing.assert_allclose(u, want, rtol=1e-5, atol=1e-6)
    assert 0 <= u.min() and u.max() <= np.log(3) + 1e-6
    with Image.open(tmp_path / "00-overlay.png") as png:
        assert png.mode == "RGB" and png.size == (32, 32)


@pytest.mark.parametrize("boundary,depth", [("zeros", 0), ("zeros", 2), ("periodic", 2)])
def test_bands_equal_the_whole_image(tmp_path, boundary, depth):
    x, y = make_textures(2, 40, 3, seed=5)
    model = arrseg.Segmenter(width=4, kernel_size=5, depth=depth, dilation="doubling",
                             boundary=boundary, max_iter=2).fit(x[:1], y[:1])
    model.save(tmp_path / "m.npz")
    image = np.concatenate([x[1], x[0]], axis=1)     # 80 x 40
    np.save(tmp_path / "big.npy", image)
    assert main(["predict", str(tmp_path / "m.npz"), str(tmp_path / "big.npy"), "-o",
                 str(tmp_path / "out"), "--band-rows", "7", "--format", "npy", "-q"]) == 0
    halo, _ = predict_command.receptive_halo_of(arrseg.Segmenter.load(tmp_path / "m.npz"))
    assert halo == 2 + (3 if depth else 0)          # s // 2 + (1 + 2) (s_r // 2)
    got = np.load(tmp_path / "out" / "big_probabilities.npy")
    np.testing.assert_allclose(got, np.asarray(model.predict_proba(image)), atol=2e-6)


def test_band_progress_bar(setup, tmp_path, capsys):
    f = setup["folder"]
    assert main(["predict", str(f / "model.npz"), str(f / "a.png"), "-o", str(tmp_path),
                 "--band-rows", "8"]) == 0
    err = capsys.readouterr().err
    assert "predict: 100%" in err and "1/1" in err and "a.png" in err


# -- names ------------------------------------------------------------------------


NAMES = [
    ("../{stem}_{output}.{ext}", "a name must be a file name inside the output folder"),
    ("/tmp/{stem}.{ext}", "a name must be a file name"),
    ("sub/{stem}.{ext}", "a name must be a file name"),
    ("..", "a name must be a file name"),
    (".{stem}", "a name must be a file name"),
    ("{stem.__class__}", "unknown field {stem.__class__}"),
    ("{stem[0]}", "unknown field {stem[0]}"),
    ("{path}", "unknown field {path}"),
    ("{stem!r}", "no conversions"),
    ("{stem", "--name '{stem'"),
]


@pytest.mark.parametrize("template,message", NAMES)
def test_names_never_leave_the_folder(setup, tmp_path, capsys, template, message):
    f = setup["folder"]
    out = tmp_path / "out"
    before = sorted(os.listdir(f))
    assert _predict(setup, out, str(f / "a.png"), "--name", template) == 2
    err = capsys.readouterr().err
    assert err.startswith("arrseg: error: --name") and err.count("\n") == 1
    assert message in err
    assert os.listdir(tmp_path) == []        # refused before the folder is made
    assert sorted(os.listdir(f)) == before


def test_names_that_collide_or_overwrite_an_input_are_refused(setup, tmp_path, capsys):
    f = setup["folder"]
    assert _predict(setup, tmp_path, str(f / "a.png"), str(f / "b.tif"),
                    "--name", "{output}.{ext}") == 2
    assert "gives 'probabilities.tif' both for" in capsys.readouterr().err
    assert main(["predict", str(f / "model.npz"), str(f / "a.png"), "-o", str(f),
                 "--output", "overlay", "--name", "{stem}.{ext}", "-q"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


# -- errors -----------------------------------------------------------------------


def test_errors_are_one_line(setup, tmp_path, capsys):
    f = setup["folder"]
    (tmp_path / "file").write_text("x")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    cases = [
        (["predict", str(tmp_path / "none.npz"), str(f / "a.png"), "-o", str(tmp_path)],
         "none.npz: no such model file"),
        (["predict", str(tmp_path / "junk.npz"), str(f / "a.png"), "-o",
          str(tmp_path / "o")], "junk.npz"),
        (["predict", str(f / "model.npz"), str(f / "grey.png"), "-o", str(tmp_path / "o")],
         "grey.png: has 1 channel(s) but the model"),
        (["predict", str(f / "model.npz"), str(f / "none.png"), "-o", str(tmp_path / "o")],
         "none.png: no such file"),
        (["predict", str(f / "model.npz"), str(f / "model.npz"), "-o", str(tmp_path / "o")],
         "model.npz: unsupported format"),
        (["predict", str(f / "model.npz"), str(f / "a.png"), "-o", str(tmp_path / "file")],
         "the output folder is a file"),
        (["predict", str(f / "model.npz"), str(f / "a.png"), "-o",
          str(tmp_path / "file" / "sub")], "the output folder cannot be written"),
        (["predict", str(f / "model.npz"), str(f / "a.png"), "-o", str(tmp_path / "o"),
          "--device", "gpu"], "--device gpu"),
    ]
    for args, message in cases:
        code = main([*args, "-q"])
        err = capsys.readouterr().err
        assert code == 2, args
        assert err.startswith("arrseg: error: ") and err.count("\n") == 1, err
        assert message in err
    # nothing but the empty folder made for the outputs
    assert sorted(os.listdir(tmp_path)) in (["file", "junk.npz"], ["file", "junk.npz", "o"])
    assert not (tmp_path / "o").exists() or os.listdir(tmp_path / "o") == []


def test_interrupted_prediction_exits_130_without_a_partial_file(setup, tmp_path,
                                                                 monkeypatch, capsys):
    f = setup["folder"]

    def interrupted(path, a, **kwargs):
        with open(path, "wb") as out:       # half a file, then Ctrl-C
            out.write(b"II*\x00")
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", interrupted)
    assert _predict(setup, tmp_path, str(f / "a.png"), str(f / "b.tif")) == 130
    assert capsys.readouterr().err.strip() == ""
    assert os.listdir(tmp_path) == []        # labels come after the probabilities


def test_predict_in_a_subprocess(setup, tmp_path):
    f = setup["folder"]
    done = subprocess.run([sys.executable, "-m", "arrseg", "predict", "model.npz", "a.png",
                           "-o", str(tmp_path), "--output", "labels"], cwd=f,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert os.listdir(tmp_path) == ["a_labels.png"]
    bad = subprocess.run([sys.executable, "-m", "arrseg", "predict", "model.npz",
                          "grey.png", "-o", str(tmp_path)], cwd=f, capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.splitlines()[-1].startswith("arrseg: error: grey.png: has 1 channel")
