"""The arrseg command: help, version, info and demo; every exit tidy (a
status and at most one line on standard error, never a traceback), also
without the cli extra's libraries."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from arrseg.cli import _main, main
from arrseg.cli import demo as demo_command
from arrseg.cli import info as info_command

#: Seconds any command here may take; a hang fails instead of hanging CI.
TIMEOUT = 120
#: The cli extra's modules.
EXTRA = ("tifffile", "PIL", "PIL.Image", "tqdm", "matplotlib", "matplotlib.figure")


def _run_cli(*args, block=(), env=None, cwd=None):
    """``arrseg ARGS`` in a subprocess, with the modules ``block`` made
    unimportable (``sys.modules[name] = None``)."""
    code = ("import sys\n"
            f"for name in {tuple(block)!r}:\n    sys.modules[name] = None\n"
            "from arrseg.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=cwd,
                          env=None if env is None else {**os.environ, **env})


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(c in out for c in ("train", "predict", "info", "demo"))


def test_version(capsys):
    import arrseg

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"arrseg {arrseg.__version__}\n"


def test_module_and_console_script_run():
    done = subprocess.run([sys.executable, "-m", "arrseg", "--help"], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0 and "usage: arrseg" in done.stdout
    script = pathlib.Path(sys.executable).parent / "arrseg"
    if not script.exists():
        pytest.skip("the arrseg console script is not installed beside this Python")
    done = subprocess.run([str(script), "info"], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0 and done.stdout.startswith("arrseg ")


# -- info -------------------------------------------------------------------------


def test_info_lists_versions_backends_gpu_and_threads(capsys, monkeypatch):
    import numpy

    monkeypatch.setenv("ARRSEG_NUM_THREADS", "3")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"  numpy             {numpy.__version__}" in out
    assert "array backends found: NumPy" in out
    assert "CuPy sees a GPU: " in out
    assert "fused CUDA kernels compile: " in out
    assert out.rstrip().endswith("threads (NumPy fast path, ARRSEG_NUM_THREADS): 3")


def test_info_without_cupy_says_not_checked():
    done = _run_cli("info", block=("cupy", "cupy_backends"))
    assert done.returncode == 0, done.stderr
    assert "CuPy sees a GPU: not checked (CuPy is not installed)" in done.stdout
    assert "fused CUDA kernels compile: not checked (CuPy is not installed)" in done.stdout
    assert "CuPy" not in done.stdout.split("array backends found:")[1].splitlines()[0]


def test_info_reports_a_bad_thread_count_without_failing(capsys, monkeypatch):
    monkeypatch.setenv("ARRSEG_NUM_THREADS", "many")
    assert main(["info"]) == 0
    assert "invalid (ValueError: ARRSEG_NUM_THREADS must be a positive integer" in \
        capsys.readouterr().out


# -- demo -------------------------------------------------------------------------


def test_demo_writes_its_pictures(tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image", reason="the cli extra's Pillow")
    pytest.importorskip("matplotlib", reason="the cli extra's matplotlib")
    code = main(["demo", "--images", "3", "--size", "24", "--iterations", "4",
                 "--width", "4", "--depth", "1", "--out", str(tmp_path), "-q",
                 "--every", "2"])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 4]
    assert "held-out images: pixel accuracy" in out and "IoU dots" in out
    names = ["input.png", "ground_truth.png", "labels.png", "overlay.png",
             *(f"probability_{j}.png" for j in range(4)), "loss_curve.png", "panel.png"]
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    for name in names[:4]:
        with Image.open(tmp_path / name) as png:
            assert png.mode == "RGB" and png.size == (24, 24)
    for name in names[4:]:
        with Image.open(tmp_path / name) as png:
            assert png.format == "PNG" and min(png.size) > 100


def test_demo_default_run_segments_the_held_out_images():
    done = _run_cli("demo", "--quiet")
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("held-out images"))
    assert float(line.split("mean IoU")[1]) > 0.9


@pytest.mark.parametrize("args,message", [
    (["demo", "--size", "8"], "argument --size: must be >= 16, got 8"),
    (["demo", "--images", "2"], "argument --images: must be >= 3, got 2"),
    (["demo", "--iterations", "x"], "argument --iterations: must be an integer"),
    (["demo", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["train", "a.png", "--labels", "b.png", "-o", "m", "--activation", "softplus"],
     "argument --activation: invalid choice"),
    (["train", "a.png", "--labels", "b.png", "-o", "m", "--kernel-size", "4"],
     "argument --kernel-size: must be odd, got 4"),
    (["train", "a.png", "--labels", "b.png", "-o", "m", "--dilation", "0"],
     "argument --dilation: must be >= 1, got 0"),
    (["predict", "m.npz", "a.png", "-o", "d", "--output", "labels,masks"],
     "argument --output: must be a comma-separated list of probabilities"),
    (["predict", "m.npz", "a.png"], "the following arguments are required: -o"),
])
def test_bad_options_are_refused(capsys, args, message):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


# -- the exit path ----------------------------------------------------------------


@pytest.mark.parametrize("error,status,expected", [
    (ValueError("n_classes must be\n >= 2"), 2, "arrseg: error: n_classes must be >= 2"),
    (MemoryError("Unable to allocate 7 TiB"), 2,
     "arrseg: error: out of memory (Unable to allocate 7 TiB)"),
    (FloatingPointError("the loss is nan"), 2, "arrseg: error: the loss is nan"),
    (PermissionError(13, "Permission denied", "/x/m.npz"), 2,
     "arrseg: error: /x/m.npz: Permission denied"),
    (RuntimeError("oops"), 1, "arrseg: error: internal error, please report it: "
     "RuntimeError: oops (set ARRSEG_DEBUG=1 for the traceback)"),
])
def test_errors_are_one_line(monkeypatch, capsys, error, status, expected):
    def fail(args, out=None):
        raise error

    monkeypatch.setattr(demo_command, "run", fail)
    monkeypatch.delenv("ARRSEG_DEBUG", raising=False)
    assert main(["demo"]) == status
    assert capsys.readouterr().err == expected + "\n"


def test_debug_shows_the_traceback(monkeypatch):
    def fail(args, out=None):
        raise RuntimeError("oops")

    monkeypatch.setattr(info_command, "run", fail)
    monkeypatch.setenv("ARRSEG_DEBUG", "1")
    with pytest.raises(RuntimeError, match="oops"):
        main(["info"])


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args, out=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(info_command, "run", interrupted)
    assert main(["info"]) == 130
    assert capsys.readouterr().err.strip() == ""


def test_closed_pipe_exits_1_without_traceback():
    code = ("import sys\nfrom arrseg.cli import main, info\n"
            "def run(args, out=None):\n    raise BrokenPipeError\n"
            "info.run = run\nsys.exit(main(['info']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 1 and done.stderr == ""


def test_commands_are_the_modules():
    assert set(_main.COMMANDS) == {"train", "predict", "info", "demo"}


# -- without the cli extra --------------------------------------------------------


def test_without_the_extra_the_command_starts_and_says_what_to_install(tmp_path):
    done = _run_cli("--help", block=EXTRA)
    assert done.returncode == 0 and 'pip install "arrseg[cli]"' in done.stdout
    info = _run_cli("info", block=EXTRA)
    assert info.returncode == 0
    assert "tifffile" in info.stdout
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((3, 12, 12)))
    np.save(tmp_path / "y.npy", np.arange(144).reshape(12, 12) % 2)
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    cases = [
        (["demo", "--out", str(tmp_path / "d")], "demo --out needs the optional package "
         "matplotlib"),
        (["train", str(tmp_path / "a.png"), "--labels", str(tmp_path / "y.npy"), "-o",
          str(tmp_path / "m.npz")], "reading PNG and JPEG files needs the optional "
         "package Pillow"),
        (["train", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"), "-o",
          str(tmp_path / "m.npz"), "--plot", str(tmp_path / "l.png")],
         "--plot needs the optional package matplotlib"),
    ]
    for args, message in cases:
        done = _run_cli(*args, block=EXTRA)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr == (f"arrseg: error: {message}, which is not installed: "
                               'pip install "arrseg[cli]"\n')
    # .npy files need no extra; the progress bar falls back to the library's
    done = _run_cli("train", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                    "-o", str(tmp_path / "m.npz"), "--iterations", "2", "--width", "2",
                    block=EXTRA)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith('arrseg: note: progress bars need tqdm: pip install '
                                  '"arrseg[cli]"\n')
    assert "Segmenter.fit [" in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["a.png", "m.npz", "x.npy", "y.npy"]
