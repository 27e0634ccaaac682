#!/usr/bin/env python3
"""Time arrseg's public API on CuPy against the raw fused launchers, outside asv.

The pairs are those of ``asv_benchmarks/benchmarks/bench_public_gpu.py``
(imported from there, so both time the same problems): ``predict_proba`` and
``loss_and_grad`` against ``fused_forward`` / ``fused_loss_and_grad`` on the
seed configuration and on N = 32, 512 x 512; ``Segmenter.fit`` per iteration
against the fused steps of an iteration; ``Segmenter.predict_proba`` of an
8192 x 8192 uint16 image against one ``fused_forward``. Each pair is timed in
alternating rounds with CUDA events (``cupyx.profiler.benchmark``), and the
table gives the medians, their ratio and the goal::

    python tools/gpu_timings.py                 # every pair, ~1 minute on an H200
    python tools/gpu_timings.py --quick         # fewer samples
    python tools/gpu_timings.py --only seed,fit --json timings.json
    python tools/gpu_timings.py --dry-run       # no GPU: NumPy + the CPU emulator,
                                                # tiny sizes; checks the code paths only

Without CuPy or a CUDA GPU it prints "no CUDA GPU: ..." and exits 0 (with
``--json``, the file says so too). Exit status 1 if a pair raised. The JSON
is rewritten after each pair, so a run stopped by a timeout keeps what it
measured. Goals that are missed are results, not errors.

arrseg is the one Python imports (installed, or on PYTHONPATH), else this
checkout's.
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import platform
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: --only names -> what they select
GROUPS = ("seed", "512", "fit", "large")

#: (rounds, calls per round) per group, full and --quick
SETTINGS = {
    False: {"seed": (5, 10), "512": (5, 10), "fit": (3, 3), "large": (3, 3)},
    True: {"seed": (2, 5), "512": (2, 5), "fit": (2, 2), "large": (2, 2)},
}


def cuda_gpu():
    """(True, device name) or (False, why not); imports CuPy, not arrseg."""
    try:
        import cupy
    except ImportError as e:
        return False, f"CuPy is not installed ({e})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, no device
        return False, f"{type(e).__name__}: {e}"
    if n == 0:
        return False, "CuPy sees no CUDA device"
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    return True, name.decode() if isinstance(name, bytes) else str(name)


def load_pairs_module():
    """asv_benchmarks/benchmarks/bench_public_gpu.py, as part of its package."""
    sys.path.append(str(ROOT))  # this checkout's arrseg, unless one is importable
    sys.path.insert(0, str(ROOT / "asv_benchmarks"))
    from benchmarks import bench_public_gpu

    return bench_public_gpu


def build_group(m, group, xp, dry_run):
    """The pairs of one --only group; tiny problems with the CPU emulator
    when dry_run."""
    kernels = None
    if dry_run:
        from arrseg.cuda.emulation import EmulatedKernels

        kernels = EmulatedKernels()
    if group in ("seed", "512"):
        name = "seed" if group == "seed" else "N=32 512x512"
        config = m.NETWORK_CONFIGS[name]
        if dry_run:
            config = config._replace(n_images=2, size=24)
        pairs = m.network_pairs(xp, name, config=config, kernels=kernels)
        return [pairs["predict_proba"], pairs["loss_and_grad"]]
    if group == "fit":
        if dry_run:  # crops smaller than the image, so the crop branch runs
            return [m.fit_pair(xp, shape=(40, 72), iters=2,
                               segmenter_options={"crop_size": 16}, kernels=kernels)]
        return [m.fit_pair(xp)]
    if group == "large":
        if dry_run:  # several tiles
            return [m.predict_large_pair(xp, size=80, train_size=32,
                                         segmenter_options={"tile_size": 32},
                                         kernels=kernels)]
        return [m.predict_large_pair(xp)]
    raise ValueError(group)


def free_memory(xp):
    gc.collect()
    if xp.__name__ == "cupy":
        xp.get_default_memory_pool().free_all_blocks()
        xp.get_default_pinned_memory_pool().free_all_blocks()


def write_json(path, report):
    if path is not None:
        pathlib.Path(path).write_text(json.dumps(report, indent=1) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Groups: seed (N=8 256x256), 512 (N=32 512x512), fit (Segmenter.fit), "
               "large (Segmenter.predict_proba 8192x8192).")
    p.add_argument("--quick", action="store_true",
                   help="fewer rounds and calls (2 rounds; 5 calls, 2 for fit/large)")
    p.add_argument("--only", default=",".join(GROUPS),
                   help=f"comma-separated groups among {', '.join(GROUPS)} (default all)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU needed: run every pair once on NumPy with the CPU "
                        "emulator at tiny sizes (checks the code, times nothing useful)")
    args = p.parse_args(argv)
    args.groups = [g.strip() for g in args.only.split(",") if g.strip()]
    bad = [g for g in args.groups if g not in GROUPS]
    if bad:
        p.error(f"--only: unknown group(s) {bad}; choose among {list(GROUPS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    # imported here so that --help needs nothing beyond the standard library
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from gpu_table import format_timings

    report = {"status": "ok", "quick": args.quick, "dry_run": args.dry_run,
              "python": platform.python_version(), "rows": []}
    if args.dry_run:
        import numpy as xp

        def sync():
            pass

        report["device"] = "none (dry run: NumPy and the CPU emulator)"
    else:
        ok, what = cuda_gpu()
        if not ok:
            print(f"no CUDA GPU: {what}; nothing timed")
            report.update(status="no-gpu", device=what)
            write_json(args.json, report)
            return 0
        import cupy as xp

        sync = xp.cuda.get_current_stream().synchronize
        report.update(device=what, cupy=xp.__version__)
    m = load_pairs_module()
    import arrseg
    import numpy

    report.update(arrseg=arrseg.__version__, numpy=numpy.__version__)
    print(f"device: {report['device']}; arrseg {arrseg.__version__}, numpy "
          f"{numpy.__version__}" + (f", cupy {report['cupy']}" if "cupy" in report else ""),
          flush=True)

    failed = False
    for group in args.groups:
        rounds, n_repeat = (1, 1) if args.dry_run else SETTINGS[args.quick][group]
        t0 = time.perf_counter()
        try:
            pairs = build_group(m, group, xp, args.dry_run)
            sync()
        except Exception as e:
            failed = True
            report["rows"].append({"name": group, "group": group,
                                   "error": f"{type(e).__name__}: {e}"})
            traceback.print_exc()
            write_json(args.json, report)
            continue
        for pair in pairs:
            row = {"name": pair.name, "group": group, "goal": pair.goal, "per": pair.per,
                   "unit": pair.unit}
            try:
                r = m.measure_pair(pair, sync, xp, rounds=rounds, n_repeat=n_repeat,
                                   n_warmup=1, max_duration=10.0)
            except Exception as e:
                failed = True
                row["error"] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            else:
                row.update(r)
                # a dry run's times are the CPU emulator's: no verdict
                row["pass"] = None if args.dry_run else bool(r["ratio"] <= pair.goal)
            report["rows"].append(row)
            print(format_timings([row], header=False), flush=True)
            write_json(args.json, report)
        del pairs
        free_memory(xp)
        print(f"  ({group}: {time.perf_counter() - t0:.1f} s with data and compilation)",
              flush=True)

    if failed:
        report["status"] = "errors"
    write_json(args.json, report)
    print()
    print(format_timings(report["rows"]))
    if args.dry_run:
        print("dry run: NumPy and the CPU emulator; the times say nothing about a GPU")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
