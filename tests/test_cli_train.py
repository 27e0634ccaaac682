"""arrseg train: image files in, the model the library trains on the same
arrays out; every hyper-parameter reachable; bad input refused in one line."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import arrseg
from arrseg.cli import main
from arrseg.cli import train as train_command
from arrseg.data import make_textures, scribbles

tifffile = pytest.importorskip("tifffile", reason="the cli extra's tifffile")
Image = pytest.importorskip("PIL.Image", reason="the cli extra's Pillow")

TIMEOUT = 120


def _run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "arrseg", *args], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=cwd)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Three RGB PNG texture images, scribbles (0 = unlabelled, class + 1)
    and dense labels (class + 1), as files and arrays."""
    folder = tmp_path_factory.mktemp("train")
    x, y = make_textures(3, 40, 3, seed=2)
    images = np.clip((x + 1) / 3 * 255, 0, 255).astype(np.uint8)
    out = {"folder": folder, "images": images, "dense": y + 1, "scribbles": []}
    for i in range(3):
        Image.fromarray(np.moveaxis(images[i], 0, -1)).save(folder / f"img{i}.png")
        s = np.asarray(scribbles(y[i], 0.08, seed=i))
        s = np.where(s < 0, 0, s + 1).astype(np.uint8)
        out["scribbles"].append(s)
        Image.fromarray(s).save(folder / f"scrib{i}.png")
        Image.fromarray((y[i] + 1).astype(np.uint8)).save(folder / f"truth{i}.png")
    return out


def _paths(files, *names):
    return [str(files["folder"] / n) for n in names]


def test_train_gives_the_library_model(files, tmp_path, capsys):
    model_path = tmp_path / "m.npz"
    code = main(["train", *_paths(files, "img0.png", "img1.png"), "--labels",
                 *_paths(files, "scrib0.png", "scrib1.png"), "--unlabelled", "0",
                 "--validation-images", *_paths(files, "img2.png"),
                 "--validation-labels", *_paths(files, "truth2.png"),
                 "--width", "6", "--kernel-size", "3", "--depth", "1",
                 "--iterations", "4", "--seed", "3", "-o", str(model_path),
                 "--plot", str(tmp_path / "loss.png"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    got = arrseg.Segmenter.load(model_path)
    # the library on the same arrays: labels 1..3, 0 unlabelled -> ignore_index
    ys = [np.where(s == 0, -100, s.astype(np.int64)) for s in files["scribbles"][:2]]
    vy = files["dense"][2]
    want = arrseg.Segmenter(width=6, kernel_size=3, depth=1, max_iter=4, seed=3).fit(
        list(files["images"][:2]), ys, validation=([files["images"][2]], [vy]))
    for a, b in zip(got.params_, want.params_):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the printed validation metrics are arrseg.metrics' on the validation image
    pred = want.predict(files["images"][2])
    miou = float(arrseg.metrics.mean_iou(vy, pred, 4))
    acc = float(arrseg.metrics.pixel_accuracy(vy, pred))
    assert f"mean IoU        {miou:.4f}" in out
    assert f"pixel accuracy  {acc:.4f}" in out
    for j, v in enumerate(arrseg.metrics.iou(vy, pred, 4)):
        assert f"IoU class {j:<5} " + ("  (absent)" if np.isnan(v) else f"{v:.4f}") in out
    with Image.open(tmp_path / "loss.png") as png:
        assert png.format == "PNG" and png.size[0] > 100
    assert sorted(os.listdir(tmp_path)) == ["loss.png", "m.npz"]


@pytest.mark.parametrize("options, reason", [
    # Adam at a rate 10^4 times its default: the loss leaves its lowest value
    # by more than DIVERGENCE_STOP_FACTOR within a few epochs
    (["--optimizer", "adam", "--learning-rate", "300"],
     "(stopped early: the training loss diverged (the warning above))"),
    (["--optimizer", "adam", "--tol", "1e9", "--n-iter-no-change", "2"],
     "(converged: the training objective fell by less than --tol 1e+09 for "
     "--n-iter-no-change 2 iterations)"),
    (["--tol", "1e9", "--n-iter-no-change", "2"],
     "(converged: the training objective fell by less than --tol 1e+09 for "
     "--n-iter-no-change 2 iterations, or VarPro found no step that lowers the "
     "training objective)"),
])
def test_an_early_stop_says_why(files, tmp_path, capsys, options, reason):
    code = main(["train", *_paths(files, "img0.png"), "--labels",
                 *_paths(files, "truth0.png"), "--width", "4", "--depth", "1",
                 "--iterations", "50", "-o", str(tmp_path / "m.npz"), "--quiet",
                 *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    iterations = int(captured.out.split("trained ")[1].split(" ")[0])
    assert iterations < 50
    assert reason in captured.out
    assert ("diverged" in reason) == ("diverged" in captured.err)


def test_every_hyper_parameter_is_an_option():
    names = set(arrseg.Segmenter._get_param_names()) - {"verbose", "ignore_index"}
    assert {name for _, name, _, _ in train_command.HYPER_PARAMETERS} == names


def test_hyper_parameters_reach_the_model(files, tmp_path):
    model_path = tmp_path / "m.npz"
    code = main(["train", *_paths(files, "img0.png"), "--labels",
                 *_paths(files, "truth0.png"), "-o", str(model_path), "--quiet",
                 "--width", "5", "--kernel-size", "5", "--depth", "2",
                 "--dilation", "1,3", "--step", "0.5", "--layer", "symmetric",
                 "--layer-kernel-size", "3", "--activation", "relu",
                 "--boundary", "periodic", "--optimizer", "sgd", "--iterations", "2",
                 "--learning-rate", "0.01", "--momentum", "0.5", "--nesterov",
                 "--batch-size", "2", "--crop-size", "39", "--weight-decay", "0.001",
                 "--smoothness", "0.01", "--edge-smoothness", "0.2",
                 "--class-weight", "balanced",
                 "--classes", "5", "--tol", "0.001", "--seed", "7"])
    assert code == 0
    p = arrseg.Segmenter.load(model_path).get_params()
    expected = dict(width=5, kernel_size=5, depth=2, dilation=[1, 3], step=0.5,
                    layer="symmetric", layer_kernel_size=3, activation="relu",
                    boundary="periodic", optimizer="sgd", max_iter=2,
                    learning_rate=0.01, momentum=0.5, nesterov=True, batch_size=2,
                    crop_size=39, weight_decay=0.001, smoothness=0.01,
                    edge_smoothness=0.2, class_weight="balanced", n_classes=5, tol=0.001, seed=7)
    for name, value in expected.items():
        got = p[name]
        got = list(got) if isinstance(got, (tuple, np.ndarray)) else got
        assert got == value, name


def test_binary_maps_non_zero_to_one(files, tmp_path):
    model_path = tmp_path / "m.npz"
    assert main(["train", *_paths(files, "img0.png"), "--labels",
                 *_paths(files, "truth0.png"), "--binary", "--iterations", "2",
                 "--width", "4", "-o", str(model_path), "-q"]) == 0
    assert arrseg.Segmenter.load(model_path).n_classes_ == 2


def test_train_on_npy_and_tiff_files(tmp_path):
    x, y = make_textures(2, 24, 2, channels=5, seed=0)
    tifffile.imwrite(tmp_path / "a.tif", x[0], photometric="minisblack")
    np.save(tmp_path / "b.npy", x[1])
    tifffile.imwrite(tmp_path / "a_labels.tif", y[0].astype(np.uint16))
    np.save(tmp_path / "b_labels.npy", y[1])
    assert main(["train", str(tmp_path / "a.tif"), str(tmp_path / "b.npy"),
                 "--labels", str(tmp_path / "a_labels.tif"), str(tmp_path / "b_labels.npy"),
                 "--iterations", "2", "--width", "4", "-q", "-o",
                 str(tmp_path / "m.npz")]) == 0
    model = arrseg.Segmenter.load(tmp_path / "m.npz")
    want = arrseg.Segmenter(width=4, max_iter=2).fit(list(x), list(y))
    assert model.in_channels_ == 5
    np.testing.assert_array_equal(model.params_.K, want.params_.K)


def test_progress_bar_shows_the_loss(files, tmp_path, capsys):
    assert main(["train", *_paths(files, "img0.png"), "--labels",
                 *_paths(files, "truth0.png"), "--iterations", "3", "--width", "4",
                 "-o", str(tmp_path / "m.npz")]) == 0
    err = capsys.readouterr().err
    assert "train: 100%" in err and "3/3" in err and "loss=" in err
    # the saved model does not carry the bar: verbose stays off
    assert arrseg.Segmenter.load(tmp_path / "m.npz").verbose is False


# -- errors: one line, status 2, nothing written --------------------------------


def _bad_files(folder):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (folder / "a.gif").write_bytes(b"GIF89a")
    Image.fromarray(np.zeros((7, 7), np.uint8)).save(folder / "small.png")
    np.save(folder / "neg.npy", np.full((40, 40), -1))
    Image.fromarray(np.full((40, 40), 9, np.uint8)).save(folder / "nine.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(folder / "grey.png")


ERRORS = [
    (["img0.png", "--labels", "missing.png"], "missing.png: no such file"),
    (["missing.png", "--labels", "truth0.png"], "missing.png: no such file"),
    (["a.gif", "--labels", "truth0.png"], "a.gif: unsupported format (.gif)"),
    (["broken.png", "--labels", "truth0.png"], "broken.png: not a readable image"),
    (["img0.png", "--labels", "small.png"],
     "small.png: the label image is 7 x 7 pixels but its image"),
    (["img0.png", "--labels", "neg.npy"],
     "neg.npy: label values must be class indices >= 0, got [-1, -1, -1] (name the "
     "value of unlabelled pixels with --unlabelled)"),
    (["img0.png", "--labels", "nine.png", "--classes", "4"],
     "nine.png: label values must be below --classes 4, got [9]"),
    (["img0.png", "img1.png", "--labels", "truth0.png"],
     "2 image(s) but 1 label image(s)"),
    (["img0.png", "grey.png", "--labels", "truth0.png", "truth1.png"],
     "grey.png: has 1 channel(s) but"),
    (["img0.png", "--labels", "truth0.png", "--validation-images", "grey.png",
      "--validation-labels", "truth1.png"], "grey.png: has 1 channel(s) but the "
     "training images have 3"),
    (["img0.png", "--labels", "truth0.png", "--validation-images", "img1.png"],
     "--validation-images and --validation-labels go together"),
]


@pytest.mark.parametrize("args,message", ERRORS)
def test_bad_input_is_one_line(files, tmp_path, capsys, args, message):
    _bad_files(files["folder"])
    args = [a if a.startswith("-") or a.isdigit() else str(files["folder"] / a)
            for a in args]
    code = main(["train", *args, "-o", str(tmp_path / "m.npz"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("arrseg: error: ")
    assert message in err
    assert os.listdir(tmp_path) == []


def test_unwritable_output_and_gpu_without_gpu(files, tmp_path, capsys):
    base = ["train", *_paths(files, "img0.png"), "--labels", *_paths(files, "truth0.png"),
            "-q", "--iterations", "1"]
    assert main([*base, "-o", str(tmp_path / "no" / "m.npz")]) == 2
    assert "the output folder cannot be written" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path)]) == 2
    assert "-o names a folder" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "m.npz"), "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arrseg: error: --device gpu") and err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_library_errors_are_one_line(files, tmp_path, capsys):
    code = main(["train", *_paths(files, "img0.png"), "--labels",
                 *_paths(files, "truth0.png"), "-o", str(tmp_path / "m.npz"), "-q",
                 "--class-weight", "1,2"])
    assert code == 2
    assert capsys.readouterr().err == ("arrseg: error: Segmenter: class_weight must have "
                                       "one weight per class, shape (4,), got shape "
                                       "(2,)\n")


def test_train_in_a_subprocess(files, tmp_path):
    done = _run_cli("train", "img0.png", "--labels", "scrib0.png", "--unlabelled", "0",
                    "--iterations", "3", "--width", "4", "-o", str(tmp_path / "m.npz"),
                    cwd=files["folder"])
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "train: 100%" in done.stderr
    assert arrseg.Segmenter.load(tmp_path / "m.npz").n_iter_ == 3
    bad = _run_cli("train", "img0.png", "--labels", "nothing.png", "-o",
                   str(tmp_path / "n.npz"), cwd=files["folder"])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr == "arrseg: error: nothing.png: no such file\n"


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT (POSIX)")
def test_interrupted_training_exits_130_and_writes_nothing(files, tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-m", "arrseg", "train", "img0.png", "--labels", "truth0.png",
         "--iterations", "100000", "--width", "4", "-o", str(tmp_path / "m.npz"),
         # Adam with this patience trains for seconds (to a divergence at
         # about 4500 epochs); VarPro converges on this image in under one
         "--optimizer", "adam", "--n-iter-no-change", "100000"],
        cwd=files["folder"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell's background job (pytest ... &) starts with SIGINT ignored,
        # which the child would inherit, and Python then installs no
        # KeyboardInterrupt handler: give the child the default disposition
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert child.stdout.readline().startswith("arrseg train:")
        # the bar has begun: training runs
        seen = ""
        while "loss=" not in seen:
            seen += child.stderr.read(1)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert os.listdir(tmp_path) == []
