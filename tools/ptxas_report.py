"""Registers, spills and shared memory of the fused kernels, per architecture.

Compiles the kernels as the library does (tests/test_cuda_compile.py's
compiler: CuPy's NVRTC binding, libnvrtc through ctypes, or nvcc) with
``-Xptxas -v`` and prints one line per kernel, plus the occupancy that the
registers and shared memory allow (65536 registers and 228 KiB of shared
memory per SM, at most 32 blocks / 2048 threads; sm_75: 64 KiB, 16 blocks,
1024 threads). No GPU is needed.

    python tools/ptxas_report.py                       # largest + benchmark configs
    python tools/ptxas_report.py --sweep               # the compile test's rows
    python tools/ptxas_report.py --config float32,3,3,32,4,tanh,zeros,1
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import test_cuda_compile as compile_tests

from arrseg.cuda import limits
from arrseg.cuda.build import KERNEL_FILES, kernel_source
from arrseg.cuda.limits import KernelConfig

#: per-SM resources: (shared memory bytes, max blocks, max threads)
SM = {"sm_75": (64 * 1024, 16, 1024), "sm_80": (164 * 1024, 32, 2048),
      "sm_90": (228 * 1024, 32, 2048), "sm_100": (228 * 1024, 32, 2048)}
_SMEM = re.compile(r"(\d+) bytes smem")


def blocks_per_sm(arch, registers, smem, threads):
    shared, max_blocks, max_threads = SM[arch]
    # registers are allocated per warp in units of 256
    per_warp = -(-registers * 32 // 256) * 256
    by_regs = 65536 // (per_warp * -(-threads // 32))
    by_smem = shared // (smem + 1024) if smem else max_blocks  # 1 KiB reserved per block
    return min(by_regs, by_smem, max_blocks, max_threads // threads)


def report(compiler, config, archs):
    rows = []
    for arch in archs:
        for filename, kernels in KERNEL_FILES.items():
            log, _ = compiler.compile(kernel_source(filename), filename,
                                      compile_tests.options_for(compiler, config, arch))
            found, others = compile_tests.ptxas_report(log)
            if others:
                print("\n".join(others), file=sys.stderr)
            smem = {}
            current = None
            for line in log.splitlines():
                m = compile_tests._FUNCTION.search(line)
                if m:
                    current = m.group(1)
                m = _SMEM.search(line)
                if m and current:
                    smem[current] = int(m.group(1))
            for kernel in kernels:
                registers, stores, loads = found[kernel]
                threads = (limits.THREADS if kernel != "arrseg_reduce_partials"
                           else limits.REDUCE_THREADS)
                b = blocks_per_sm(arch, registers, smem.get(kernel, 0), threads)
                rows.append((arch, kernel, registers, stores, loads, smem.get(kernel, 0), b,
                             b * threads))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--config", action="append", default=[],
                        help="dtype,s,C,k,n_c,activation,boundary,has_c")
    parser.add_argument("--arch", action="append", default=[])
    args = parser.parse_args(argv)
    compiler, reasons = compile_tests.find_compiler()
    if compiler is None:
        sys.exit("no CUDA compiler: " + "; ".join(reasons))
    archs = args.arch or list(compile_tests.ARCHS)
    configs = []
    for text in args.config:
        dt, s, C, k, n_c, act, bnd, has_c = text.split(",")
        configs.append((KernelConfig(dt, int(s), int(C), int(k), int(n_c), act, bnd,
                                     bool(int(has_c))), archs))
    if args.sweep:
        configs += [(compile_tests.config_of(r), [r["arch"]]) for r in compile_tests.sweep()]
    if not configs:
        for dtype in limits.DTYPES:
            configs.append((KernelConfig(dtype, 7, 4, 64, 16, "sigmoid", "periodic", True),
                            archs))
            configs.append((KernelConfig(dtype, 3, 3, 32, 4, "tanh", "zeros", True), archs))
    print(f"compiler: {compiler.name} {compiler.version}")
    print(f"{'config':44} {'arch':7} {'kernel':24} {'regs':>4} {'spill st/ld':>11} "
          f"{'smem':>6} {'blocks/SM':>9} {'threads/SM':>10}")
    for config, config_archs in configs:
        name = (f"{config.dtype} s={config.s} C={config.C} k={config.k} n_c={config.n_c} "
                f"KC={config.kc} {config.activation[:4]}")
        for row in report(compiler, config, config_archs):
            arch, kernel, regs, st, ld, smem, blocks, threads = row
            print(f"{name:44} {arch:7} {kernel:24} {regs:4d} {st:5d}/{ld:<5d} {smem:6d} "
                  f"{blocks:9d} {threads:10d}")


if __name__ == "__main__":
    main()
