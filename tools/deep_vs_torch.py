"""The residual network in arrseg against PyTorch, side by side, on the CPU or a GPU.

The same network, data and parameters in both
(``asv_benchmarks/benchmarks/residual.py``, whose classes this script
times, as asv's ``ResidualNetwork`` and ``TorchResidual`` do): an opening convolution
C -> k (s x s, tanh), ``depth`` residual layers k -> k (s_r x s_r, dilations
1, 2, 4, ... doubling, step h), a 1 x 1 classifier and the mean
cross-entropy. Two functions per configuration:

- training step: loss and the gradient in every parameter (arrseg:
  ``loss_and_grad``; PyTorch: forward, ``cross_entropy``, ``.backward()``);
- prediction: class probabilities (arrseg: ``predict_proba``; PyTorch:
  forward and softmax under ``torch.inference_mode``).

PyTorch runs eager, float32 by default, NCHW, on ``--threads`` threads
(``torch.set_num_threads``, default 2); arrseg on its blocked, threaded
NumPy path (``ARRSEG_NUM_THREADS``, else the CPU count, printed in the
header). The two take turns in three rounds (the order rotating); in each
turn one is called ``--warmup`` times, then ``--repeat`` times back to back,
timed, as in ``asv_benchmarks/side_by_side.py``. The table gives medians and
the ratio arrseg / PyTorch (below 1: arrseg is faster). Before timing, the
two results are compared (the largest difference of the losses and of the
probabilities), so that the table compares the same computation.

``--device gpu``: arrseg on CuPy arrays (method "auto" unless ``--method``:
with residual layers the array-API path; ``--depths 0`` adds the one-layer
network, which the fused kernels run) against PyTorch on CUDA (cuDNN,
``cudnn.benchmark = True``, TF32 off unless ``--tf32``). Each timed call
ends with ``cupy.cuda.Device().synchronize()`` / ``torch.cuda.synchronize()``;
the tables add the path arrseg's dispatcher picked. Without CuPy, a visible
GPU or PyTorch's CUDA the script says so in one line and exits with status 2.
A depth that fails is reported (traceback on stderr, "failed" in its row)
and the others still run; the exit status is then 1.

Run from the repository root::

    python tools/deep_vs_torch.py                       # depth 2, 4, 6
    python tools/deep_vs_torch.py --depths 6 --repeat 5 --markdown
    python tools/deep_vs_torch.py --quick               # smoke run, < 20 s
    python tools/deep_vs_torch.py --device gpu --depths 0,2,4
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time
import traceback

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "asv_benchmarks"))

from benchmarks.common import CHANNELS, N_CLASSES, Config, get_backend, torch  # noqa: E402
from benchmarks.residual import (  # noqa: E402
    ArrsegResidualNetwork,
    TorchResidualNetwork,
    make_residual_problem,
)
from side_by_side import format_table  # noqa: E402

import arrseg  # noqa: E402

#: Turns each contender takes, the order rotating.
ROUNDS = 3
FUNCTIONS = (("loss_and_grad", "training step (loss and gradient)"),
             ("predict_proba", "prediction (probabilities)"))


def _host(a):
    """A NumPy copy of a NumPy, CuPy or PyTorch array."""
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return a.get() if hasattr(a, "get") else np.asarray(a)


def check_agreement(ours, theirs):
    """(|loss difference|, max |P difference|) of the two implementations."""
    loss, _ = ours.loss_and_grad()
    P = ours.predict_proba()
    return (abs(float(_host(loss)) - theirs.loss_and_grad().item()),
            float(np.abs(_host(P) - _host(theirs.predict_proba())).max()))


def time_depth(depth, args):
    """{(function, contender): median seconds}, the agreement and arrseg's
    paths {function: path} of one depth."""
    config = Config(args.N, args.size, args.width, args.kernel_size, args.dtype)
    problem = make_residual_problem(config, depth, args.layer_kernel_size)
    network = dict(step=args.step, layer=args.layer)
    gpu = args.device == "gpu"
    contenders = {
        "arrseg": ArrsegResidualNetwork(problem, method=args.method,
                                        backend="cupy" if gpu else "numpy", **network),
        "torch": TorchResidualNetwork(problem, device="cuda" if gpu else "cpu",
                                      tf32=args.tf32, **network),
    }
    paths = {"loss_and_grad": contenders["arrseg"].path("train"),
             "predict_proba": contenders["arrseg"].path("predict")}
    agreement = check_agreement(contenders["arrseg"], contenders["torch"])
    medians = {}
    for function, _ in FUNCTIONS:
        names = list(contenders)
        samples = {name: [] for name in names}
        for r in range(ROUNDS):
            for name in names[r % 2:] + names[: r % 2]:
                call = getattr(contenders[name], function)
                for _ in range(args.warmup):
                    call()
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    call()
                    samples[name].append(time.perf_counter() - start)
        for name, s in samples.items():
            medians[function, name] = statistics.median(s)
    return medians, agreement, paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"),
                        help="cpu: NumPy and PyTorch CPU (default); gpu: CuPy and "
                             "PyTorch CUDA")
    parser.add_argument("--depths", default="2,4,6",
                        help="comma-separated numbers of residual layers (default 2,4,6; "
                             "0: the one-layer network)")
    parser.add_argument("--N", type=int, default=4, help="images (default 4)")
    parser.add_argument("--size", type=int, default=256, help="H = W (default 256)")
    parser.add_argument("--width", type=int, default=16, help="k (default 16)")
    parser.add_argument("--kernel-size", type=int, default=3,
                        help="s, the opening layer's (default 3)")
    parser.add_argument("--layer-kernel-size", type=int, default=3,
                        help="s_r, the residual layers' (default 3)")
    parser.add_argument("--layer", default="residual", choices=("residual", "symmetric"))
    parser.add_argument("--step", type=float, default=1.0, help="h (default 1)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--method", default=None,
                        help="arrseg's method= (default direct on the CPU: the blocked "
                             "NumPy path; auto on the GPU)")
    parser.add_argument("--tf32", action="store_true",
                        help="let cuDNN use TF32 (--device gpu; default off: float32)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed calls per turn, 3 turns each (default 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed calls at the start of each turn (default 1)")
    parser.add_argument("--markdown", action="store_true", help="GitHub markdown tables")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: N=1, 64 x 64, depth 2, one call per turn")
    args = parser.parse_args(argv)
    if args.quick:
        args.N, args.size, args.depths, args.repeat, args.warmup = 1, 64, "2", 1, 0
    if args.method is None:
        args.method = "auto" if args.device == "gpu" else "direct"
    try:
        args.depths = [int(d) for d in args.depths.split(",") if d.strip()]
    except ValueError:
        parser.error(f"--depths must be comma-separated integers, got {args.depths!r}")
    if not args.depths or min(args.depths) < 0:
        parser.error(f"--depths must be integers >= 0, got {args.depths}")
    for name in ("N", "size", "width", "threads", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, "
                         f"got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def gpu_unavailable():
    """Why ``--device gpu`` cannot run here (one line), or None."""
    try:
        get_backend("cupy")
    except NotImplementedError as e:
        return f"arrseg's side: {e}"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA GPU (a CPU-only build?)"
    return None


def header(args):
    """The lines that say what ran where."""
    if args.device == "gpu":
        import cupy
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        return [
            (f"arrseg {arrseg.__version__} (CuPy {cupy.__version__}, method="
             f"{args.method!r}) vs PyTorch {torch.__version__} (CUDA "
             f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, eager, "
             f"cudnn.benchmark, TF32 {'on' if args.tf32 else 'off'})"),
            (f"{name.decode() if isinstance(name, bytes) else name}, Python "
             f"{platform.python_version()}; every timed call ends with a device "
             f"synchronisation"),
        ]
    threads = os.environ.get("ARRSEG_NUM_THREADS", f"unset: {os.cpu_count()} CPUs")
    return [
        (f"arrseg {arrseg.__version__} (NumPy {np.__version__}, method="
         f"{args.method!r}, ARRSEG_NUM_THREADS={threads}) vs PyTorch "
         f"{torch.__version__} (CPU, eager, {torch.get_num_threads()} threads)"),
        (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
         f"Python {platform.python_version()}"),
    ]


def main(argv=None):
    args = parse_args(argv)
    if torch is None:
        sys.exit("deep_vs_torch.py needs PyTorch (pip install torch)")
    if args.device == "gpu":
        why = gpu_unavailable()
        if why is not None:
            print(f"deep_vs_torch.py --device gpu: no GPU to run on: {why}", file=sys.stderr)
            sys.exit(2)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = {}
    for depth in args.depths:
        try:
            results[depth] = time_depth(depth, args)
        except Exception:  # report it and go on with the other depths
            traceback.print_exc()
            results[depth] = None
        print(f"depth {depth} {'done' if results[depth] else 'FAILED'} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    gpu = args.device == "gpu"
    out = header(args) + [
        (f"N={args.N} C={CHANNELS} {args.size}x{args.size} k={args.width} "
         f"n_c={N_CLASSES} s={args.kernel_size} s_r={args.layer_kernel_size} "
         f"{args.layer} h={args.step} tanh {args.dtype}, dilations 1, 2, 4, ...; "
         f"medians of {ROUNDS} x {args.repeat} calls in rotating turns"),
    ]
    for function, title in FUNCTIONS:
        rows = []
        for depth, result in results.items():
            if result is None:
                rows.append([str(depth)] + ["failed"] * (5 if gpu else 4))
                continue
            medians, agreement, paths = result
            ours, theirs = (1e3 * medians[function, name] for name in ("arrseg", "torch"))
            rows.append([str(depth)] + ([paths[function]] if gpu else [])
                        + [f"{ours:.1f}", f"{theirs:.1f}", f"{ours / theirs:.2f}",
                           f"{agreement[0 if function == 'loss_and_grad' else 1]:.1e}"])
        out += ["", f"{title}, ms:", "", format_table(
            ["depth"] + (["arrseg path"] if gpu else [])
            + ["arrseg ms", "torch ms", "arrseg / torch",
               "|loss diff|" if function == "loss_and_grad" else "max |P diff|"],
            rows, args.markdown)]
    out += ["", f"Total {time.perf_counter() - started:.0f} s."]
    print("\n".join(out))
    if None in results.values():
        sys.exit(1)


if __name__ == "__main__":
    main()
