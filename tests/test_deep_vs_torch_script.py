"""tools/deep_vs_torch.py run as a user runs it, in a subprocess.

- ``--quick`` (CPU): exit 0, its header and two tables, one row for depth 2,
  whose agreement columns (arrseg against PyTorch's autograd, the script's
  own check before timing) are at float32 rounding.
- ``--device gpu`` where CuPy, a GPU or PyTorch's CUDA is missing: exit
  status 2 and one line on stderr, no traceback (skipped where a GPU is in
  fact usable by both).
No timings are asserted.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="the script compares with PyTorch")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "deep_vs_torch.py"


def run_script(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def gpu_usable():
    """Whether both CuPy and PyTorch see a CUDA GPU (then --device gpu runs)."""
    import torch
    try:
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # not installed, no driver, no device
        return False
    return n > 0 and torch.cuda.is_available()


def test_quick_cpu_run_agrees_with_pytorch():
    done = run_script("--quick")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("arrseg ") and " vs PyTorch " in out.splitlines()[0]
    assert "training step (loss and gradient), ms:" in out
    assert "prediction (probabilities), ms:" in out
    # one row per table: depth 2, arrseg ms, torch ms, ratio, agreement
    rows = re.findall(r"^2 +([\d.]+) +([\d.]+) +([\d.]+) +([\d.e+-]+)$", out, re.M)
    assert len(rows) == 2, out
    loss_diff, p_diff = float(rows[0][3]), float(rows[1][3])
    assert loss_diff < 1e-5 and p_diff < 1e-5, (loss_diff, p_diff)
    assert "Traceback" not in done.stderr


def test_gpu_without_a_gpu_exits_2_with_one_line():
    if gpu_usable():
        pytest.skip("a GPU is usable here: --device gpu runs instead of refusing")
    done = run_script("--device", "gpu", "--quick", timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "--device gpu" in lines[0] and "GPU" in lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_bad_depths_are_refused():
    done = run_script("--depths", "2,-1", timeout=60)
    assert done.returncode == 2  # argparse's usage error
    assert "--depths must be integers >= 0" in done.stderr
