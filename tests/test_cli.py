"""python -m arrseg: the demo trains and the loss falls; bad options are refused;
every exit is tidy (a status and at most one line of error, no traceback)."""

import os
import shutil
import signal
import subprocess
import sys

import pytest

from arrseg import cli
from arrseg.cli import main

#: Seconds any command here may take; a hang fails instead of hanging CI.
TIMEOUT = 60


def _run_cli(*args, env=None):
    """``python -m arrseg ARGS`` in a subprocess, its output captured."""
    return subprocess.run([sys.executable, "-m", "arrseg", *args], capture_output=True,
                          text=True, timeout=TIMEOUT,
                          env=None if env is None else {**os.environ, **env})


def test_demo_loss_falls(capsys):
    code = main(["demo", "--iterations", "20", "--size", "20", "--images", "2",
                 "--every", "5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "loss fell from" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    losses = [float(r[1]) for r in rows]
    assert [int(r[0]) for r in rows] == [0, 5, 10, 15, 20]
    assert losses[-1] < losses[0]


def test_demo_reports_divergence(capsys):
    code = main(["demo", "--iterations", "30", "--size", "16", "--images", "1",
                 "--learning-rate", "1e6", "--every", "10"])
    out = capsys.readouterr().out
    assert code == 1
    assert "did not fall" in out or "loss became" in out


#: Options refused by argparse, and a part of the message.
REFUSED = [
    (["demo", "--kernel-size", "4"], "must be odd"),
    (["demo", "--classes", "1"], "must be >= 2"),
    (["demo", "--learning-rate", "-1"], "must be a positive number"),
    (["demo", "--activation", "softplus"], "invalid choice"),
    (["demo", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["demo", "--classes", str(10**9)], "argument --classes: the demo's arrays"),
    (["demo", "--classes", "9" * 40], "argument --classes: the demo's arrays"),
    (["demo", "--images", str(10**7)], "argument --images: the demo's arrays"),
    (["demo", "--size", str(10**6)], "argument --size: the demo's arrays"),
    (["demo", "--width", str(10**9)], "argument --width: the demo's arrays"),
    (["demo", "--size", "12", "--kernel-size", "25"],
     "argument --kernel-size: must be <= 2 * --size - 1 = 23"),
    (["demo", "--images", "200", "--size", "300"], "more than its limit of 1 GiB"),
]


@pytest.mark.parametrize("args,message", REFUSED)
def test_bad_options_are_refused(capsys, args, message):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "arrseg", "demo", "--iterations", "3",
                          "--size", "12", "--images", "1", "--every", "1"],
                         capture_output=True, text=True, check=True).stdout
    assert "loss fell from" in out or "loss did not fall" in out
    assert out.count("\n") >= 6


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_memory_bound_is_the_documented_formula():
    # N H W (C + 1 + k + n_c) + k C s^2 + k n_c entries of 8 bytes
    assert cli._demo_bytes(4, 48, 8, 3, 5) == 8 * (4 * 48 * 48 * 15 + 8 * 3 * 25 + 24)
    assert cli.DEMO_MEMORY_LIMIT == 2**30
    # images of 1024 x 1024 with the other defaults are accepted
    assert cli._demo_bytes(4, 1024, 8, 3, 5) < cli.DEMO_MEMORY_LIMIT


# -- the real command, in a subprocess -----------------------------------------


@pytest.mark.parametrize("args,message", [REFUSED[i] for i in (4, 5, 6, 10)])
def test_command_refuses_options_without_traceback(args, message):
    done = _run_cli(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("python -m arrseg demo: error: ")
    assert message in done.stderr
    assert done.stdout == ""


def test_command_reports_a_library_error_in_one_line():
    # the blocked NumPy path refuses this when it counts its threads
    done = _run_cli("demo", "--iterations", "2", "--size", "16", "--images", "1",
                    env={"ARRSEG_NUM_THREADS": "many"})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr == ("arrseg: error: ARRSEG_NUM_THREADS must be a positive "
                           "integer, got 'many'\n")


@pytest.mark.parametrize("error,expected", [
    (ValueError("n_classes must be\n >= 2"), "arrseg: error: n_classes must be >= 2"),
    (TypeError("width must be an integer"), "arrseg: error: width must be an integer"),
    (MemoryError("Unable to allocate 7 TiB"),
     "arrseg: error: out of memory (Unable to allocate 7 TiB)"),
    (MemoryError(), "arrseg: error: out of memory"),
])
def test_library_errors_are_one_line_and_status_2(monkeypatch, capsys, error, expected):
    def fail(args, out=None):
        raise error

    monkeypatch.setattr(cli, "run_demo", fail)
    assert main(["demo"]) == 2
    assert capsys.readouterr().err == expected + "\n"


def test_keyboard_interrupt_exits_130_quietly(monkeypatch, capsys):
    def interrupted(args, out=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_demo", interrupted)
    assert main(["demo"]) == 130
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32",
                    reason="sends SIGINT to a child process (POSIX)")
def test_command_interrupted_exits_130_without_traceback():
    child = subprocess.Popen([sys.executable, "-m", "arrseg", "demo", "--size", "16",
                              "--images", "1", "--iterations", "1000000", "--every", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().startswith("arrseg ")
        child.stdout.readline()              # the table's header
        assert child.stdout.readline().split()[0] == "0"   # training runs
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 130
    assert "Traceback" not in err
    assert err == ""


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("head") is None,
                    reason="needs bash and head for the shell pipe")
def test_closed_pipe_exits_1_without_traceback(tmp_path):
    # `| head -1` closes the pipe after the first line; the demo has
    # thousands more to write (about a second of work)
    err = tmp_path / "stderr"
    command = (f'"{sys.executable}" -m arrseg demo --size 12 --images 1 '
               f'--iterations 3000 --every 1 2>"{err}" | head -1; '
               'exit "${PIPESTATUS[0]}"')
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.stdout.startswith("arrseg ") and done.stdout.count("\n") == 1
    assert done.returncode == 1
    assert "Traceback" not in err.read_text()
    assert err.read_text() == ""
