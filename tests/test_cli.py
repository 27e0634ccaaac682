"""python -m arrseg: the demo trains and the loss falls; bad options are refused."""

import subprocess
import sys

import pytest

from arrseg.cli import main


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


@pytest.mark.parametrize("args,message", [
    (["demo", "--kernel-size", "4"], "must be odd"),
    (["demo", "--classes", "1"], "must be >= 2"),
    (["demo", "--learning-rate", "-1"], "must be a positive number"),
    (["demo", "--activation", "softplus"], "invalid choice"),
])
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
