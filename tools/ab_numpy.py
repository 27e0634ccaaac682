"""Interleaved A/B timing of the NumPy path: a base commit against the working tree.

asv runs one side after the other, so on a shared 2-core machine a drift
between the two runs reads as a change. This script alternates fresh
processes of the two sides, ``--rounds`` times (ABBA order), and reports per
case the median over all rounds of each side's per-process medians::

    python tools/ab_numpy.py BASE [--rounds 3]

Cases: the public ``predict_proba`` / ``loss_and_grad`` at N=8, C=3,
256 x 256, n_c=4 with (k, s) = (32, 3), (64, 3), (32, 5), (32, 7); and the
asv ``SegmenterFit`` (crops, whole images) and ``SegmenterPredict`` problems
(asv_benchmarks/benchmarks/bench_segmenter.py). The base's arrseg comes
first on PYTHONPATH from a temporary git worktree.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHILD = r'''
import json, sys, time
import numpy as np
import arrseg
sys.path.insert(0, sys.argv[1])
from benchmarks import bench_segmenter as b

def median_ms(fn, n):
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)

out = {}
x = np.random.default_rng(0).random((8, 3, 256, 256), dtype=np.float32)
y = np.random.default_rng(1).integers(0, 4, (8, 256, 256))
for k, s in ((32, 3), (64, 3), (32, 5), (32, 7)):
    p = arrseg.init_params(3, k, 4, kernel_size=s)
    out[f"predict_proba k={k} s={s}"] = median_ms(lambda: arrseg.predict_proba(x, p), 7)
    out[f"loss_and_grad k={k} s={s}"] = median_ms(lambda: arrseg.loss_and_grad(x, y, p), 7)
for batches in ("crops", "whole images"):
    f = b.SegmenterFit(); f.setup(batches)
    out[f"Segmenter.fit ({batches})"] = median_ms(lambda: f.time_fit(batches), 5)
pr = b.SegmenterPredict(); pr.setup()
out["Segmenter.predict_proba 2048^2"] = median_ms(pr.time_predict_proba, 5)
print(json.dumps(out))
'''


def run(side_path, python):
    env = dict(os.environ, PYTHONPATH=str(side_path))
    with tempfile.TemporaryDirectory() as cwd:   # no arrseg/ in the cwd
        out = subprocess.run([python, "-c", CHILD, str(ROOT / "asv_benchmarks")],
                             env=env, cwd=cwd, capture_output=True, text=True,
                             check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the base commit")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import numpy as np

    tmp = tempfile.mkdtemp()
    worktree = pathlib.Path(tmp) / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.base],
                   cwd=ROOT, check=True, capture_output=True)
    try:
        results = {"base": [], "head": []}
        sides = [("base", worktree), ("head", ROOT)]
        for r in range(args.rounds):
            # ABBA: the side that runs first alternates, so that a drift of
            # the machine within a round favours neither
            for side, path in (sides if r % 2 == 0 else sides[::-1]):
                results[side].append(run(path, sys.executable))
                print(f"round {r + 1}/{args.rounds}: {side} done", file=sys.stderr)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)],
                       cwd=ROOT, check=False, capture_output=True)
    cases = list(results["base"][0])
    width = max(len(c) for c in cases)
    line = "=" * width + "  " + "=" * 9 + "  " + "=" * 9 + "  " + "=" * 5
    print(line)
    print(f"{'case':<{width}}  {'base ms':>9}  {'head ms':>9}  {'ratio':>5}")
    print(line)
    for c in cases:
        base = float(np.median([r[c] for r in results["base"]]))
        head = float(np.median([r[c] for r in results["head"]]))
        print(f"{c:<{width}}  {base:>9.1f}  {head:>9.1f}  {head / base:>5.2f}")
    print(line)


if __name__ == "__main__":
    main()
