"""tools/dask_vs_memory.py run as a user runs it, in a subprocess.

``--quick`` (small sizes, one timed call each, a 2-process LocalCluster):
exit 0, its header, and one table row per case whose agreement column (the
Dask result against the in-memory one, the script's own check before
timing) is at float32 rounding. A bad ``--cases`` is refused by argparse.
No timings are asserted.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("dask.array", reason="the script times arrseg.dask")
pytest.importorskip("distributed", reason="the script starts a LocalCluster")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "dask_vs_memory.py"
CASES = ("predict threads", "predict 2 procs", "gradient 2 procs", "problem 2 procs")


def run_script(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_quick_run_prints_a_row_per_case_that_agrees():
    done = run_script("--quick")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("arrseg ") and " vs arrseg.dask " in out.splitlines()[0]
    number = r"(\d+\.\d+)"
    for case in CASES:
        # case, in-memory s, dask s, ratio, goal, met, agreement
        row = re.search(rf"^{case} +{number} +{number} +{number} +(<= [\d.]+x|-) +"
                        rf"(met|not met|-) +(.+)$", out, re.M)
        assert row is not None, (case, out)
        memory_s, dask_s, ratio = (float(row.group(i)) for i in (1, 2, 3))
        assert memory_s > 0 and dask_s > 0
        # the ratio of the unrounded times: within the seconds' rounding (3 decimals)
        slack = 0.0005 / memory_s + 0.0005 / dask_s
        assert abs(ratio / (dask_s / memory_s) - 1) <= slack + 0.01
        assert (row.group(5) == "-") == (row.group(4) == "-")
        diffs = [float(d) for d in re.findall(r"\d\.\de[+-]\d+", row.group(6))]
        assert diffs and max(diffs) < 1e-5, (case, row.group(6))
    assert "Traceback" not in done.stderr


def test_unknown_case_is_refused():
    done = run_script("--cases", "predict threads,predict everywhere", timeout=60)
    assert done.returncode == 2  # argparse's usage error
    assert "--cases must name some of" in done.stderr
