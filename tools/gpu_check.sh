#!/usr/bin/env bash
# tools/gpu_check.sh: arrseg's one prepared check for a session with a lent GPU
# machine (an H200 with CuPy, PyTorch, pytest, compute-sanitizer; no network).
#
#   1. environment: nvidia-smi, python / numpy / cupy / torch versions  -> env.log
#   2. carried wheels: installs .whl/*.whl (tools/fetch_gpu_wheels.sh, run
#      beforehand where pip can download) into /tmp/site; says which of the
#      modules the checks need are importable                            -> env.log
#   3. the CuPy tests: pytest -k "$PYTEST_K"                             -> pytest.log
#   4. public API vs raw fused launchers: tools/gpu_timings.py           -> timings.log, .json
#   4b. the residual network, arrseg on CuPy vs PyTorch CUDA (cuDNN):
#      tools/deep_vs_torch.py --device gpu $DEEP_ARGS                    -> deep.log
#   5. compute-sanitizer memcheck, racecheck, synccheck, initcheck,
#      on a tiny fused run                                           -> sanitizer.log
#   5b. ncu SpeedOfLight, Occupancy, LaunchStats, seed configuration -> ncu.log
#   6. asv --quick over "$ASV_BENCH" (when asv is importable)            -> asv.log
#   7. the summary table (tools/gpu_table.py), then deep.log's tables, printed
#      last (stdout only: `python tools/gpu_table.py --dir LOGS` remakes it)
#
# Logs go to $GPU_CHECK_LOGS, else $OUT/gpu_check when OUT is set (the device
# tool returns at most 8 files: this writes 8, env pytest timings sanitizer ncu
# deep asv .log and timings.json), else gpu_check_logs/ in the repository. Every step runs under `timeout`, within a total budget
# (GPU_CHECK_BUDGET seconds, default 450): a step gets at most its own limit
# and what is left of the budget; once the budget is spent the remaining steps
# are skipped and say so. The asv step runs last: gpu_timings.py measures the
# same pairs and is the more robust path.
#
# On the device machine (the call's carry names .whl when wheels were fetched):
#   bash tools/gpu_check.sh
# Knobs (environment): PYTHON (default python3), GPU_CHECK_BUDGET,
#   GPU_CHECK_SKIP (space-separated among: env wheels pytest timings deep sanitizer ncu
#   asv), PYTEST_K, PYTEST_WORKERS (pytest-xdist workers when installed, default 4;
#   0: none), TIMINGS_ARGS (e.g. --quick), DEEP_ARGS (default "--depths 0,2,4"; depth
#   0 is the one-layer network, run by the fused kernels), ASV_BENCH (default
#   "Fused|PublicGPU"; "ResidualNetworkGPU|TorchResidualGPU" for the deep pair).
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
REPO=$PWD
PY=${PYTHON:-python3}
if [[ -n ${GPU_CHECK_LOGS:-} ]]; then
    LOGS=$GPU_CHECK_LOGS
elif [[ -n ${OUT:-} ]]; then
    LOGS=$OUT/gpu_check
else
    LOGS=$REPO/gpu_check_logs
fi
BUDGET=${GPU_CHECK_BUDGET:-450}
SKIP=" ${GPU_CHECK_SKIP:-} "
PYTEST_K=${PYTEST_K:-"(cupy or cuda or fused or gpu or device) and not emulated"}
PYTEST_WORKERS=${PYTEST_WORKERS:-4}
ASV_BENCH=${ASV_BENCH:-"Fused|PublicGPU"}
TIMINGS_ARGS=${TIMINGS_ARGS:-}
DEEP_ARGS=${DEEP_ARGS:-"--depths 0,2,4"}
SITE=/tmp/site
START=$SECONDS

mkdir -p "$LOGS" || exit 2
for f in env.log pytest.log timings.log timings.json deep.log sanitizer.log ncu.log asv.log \
    summary.txt; do
    rm -f "$LOGS/$f"
done

# seconds the next step may take: min(WANT, what is left of the budget - 15 s
# kept for the table); 0 when under 20 s would be left
limit() {
    local want=$1 left=$((BUDGET - (SECONDS - START) - 15))
    ((left < want)) && want=$left
    ((want < 20)) && want=0
    echo "$want"
}

# run_step KEY LABEL SECONDS LOG CMD...: CMD's output goes to LOG, framed by
# '### LABEL: CMD' and '### exit RC' (124/137: timed out); one line on stdout
run_step() {
    local key=$1 label=$2 want=$3 log=$4 secs t0 rc
    shift 4
    if [[ $SKIP == *" $key "* ]]; then
        echo "### $label: skipped (GPU_CHECK_SKIP)" >>"$log"
        echo "### skipped (GPU_CHECK_SKIP)" >>"$log"
        printf '%-28s skipped (GPU_CHECK_SKIP)\n' "$label"
        return 0
    fi
    secs=$(limit "$want")
    if ((secs == 0)); then
        echo "### $label: skipped, the budget of ${BUDGET}s is spent" >>"$log"
        echo "### skipped (budget spent)" >>"$log"
        printf '%-28s skipped (budget spent)\n' "$label"
        return 0
    fi
    printf '%-28s (limit %3ss) ... ' "$label" "$secs"
    echo "### $label: $*" >>"$log"
    t0=$SECONDS
    timeout -k 10 "$secs" "$@" >>"$log" 2>&1
    rc=$?
    echo "### exit $rc" >>"$log"
    echo "exit $rc after $((SECONDS - t0)) s"
    return 0
}

echo "arrseg GPU check in $REPO; logs in $LOGS; budget ${BUDGET}s"

# --- 1. environment ------------------------------------------------------------
run_step env "environment" 60 "$LOGS/env.log" bash -c '
    date -u; uname -srm; echo
    nvidia-smi -L
    nvidia-smi --format=csv \
        --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem,temperature.gpu
    echo; command -v nvcc compute-sanitizer ncu || true
    echo; "$1" - <<"EOF"
import platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("numpy", "cupy", "torch"):
    try:
        m = __import__(name)
        print(name, m.__version__)
    except Exception as e:
        print(name, "NOT IMPORTABLE:", type(e).__name__, e)
try:
    import cupy
    print("cupy sees", cupy.cuda.runtime.getDeviceCount(), "device(s); CUDA runtime",
          cupy.cuda.runtime.runtimeGetVersion(), "driver", cupy.cuda.runtime.driverGetVersion())
except Exception as e:
    print("cupy: no device:", type(e).__name__, e)
EOF' environment "$PY"

# --- 2. carried wheels, and what is importable ----------------------------------
if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    run_step wheels "carried wheels" 90 "$LOGS/env.log" \
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" $(ls "$REPO"/.whl/*.whl)
else
    echo "### carried wheels: none (no .whl/*.whl; see tools/fetch_gpu_wheels.sh)" >>"$LOGS/env.log"
fi
# this checkout's arrseg first, then the carried wheels; asv passes ASV_PYTHONPATH
# (not PYTHONPATH) on to the environments it runs benchmarks in
export PYTHONPATH="$REPO${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export ASV_PYTHONPATH=$PYTHONPATH
export PYTHONUNBUFFERED=1
run_step env "importable modules" 60 "$LOGS/env.log" "$PY" - <<'EOF'
import importlib, importlib.metadata as md
need = {
    "array_api_compat": "arrseg's runtime dependency",
    "threadpoolctl": "arrseg's runtime dependency",
    "arrseg": "this checkout",
    "pytest": "tests",
    "array_api_strict": "tests (xp=array_api_strict; skipped without it)",
    "xdist": "tests in parallel (optional)",
    "cupy": "the GPU backend",
    "torch": "benchmarks' reference (optional)",
    "asv": "asv step (else skipped; gpu_timings.py still runs)",
    "asv_runner": "asv step",
    "json5": "asv (reads asv.conf.json)",
    "importlib_metadata": "asv",
    "tabulate": "asv",
}
dists = {"xdist": "pytest-xdist", "asv_runner": "asv_runner"}
for name, why in need.items():
    try:
        m = importlib.import_module(name)
        v = getattr(m, "__version__", None)
        if v is None:
            try:
                v = md.version(dists.get(name, name).replace("_", "-"))
            except Exception:
                v = "?"
        print(f"  ok       {name:<20} {v:<14} {why}")
    except Exception as e:
        print(f"  MISSING  {name:<20} {'':<14} {why}: {type(e).__name__}: {e}")
EOF
grep -E "^  (ok|MISSING) " "$LOGS/env.log" | sed 's/^/    /'

# --- 3. the CuPy tests ---------------------------------------------------------
XDIST=()
if ((PYTEST_WORKERS > 0)) && "$PY" -c "import xdist" 2>/dev/null; then
    XDIST=(-n "$PYTEST_WORKERS")
fi
run_step pytest "pytest (CuPy selection)" 180 "$LOGS/pytest.log" \
    "$PY" -m pytest -q -p no:cacheprovider -rfE "${XDIST[@]}" tests -k "$PYTEST_K"

# --- 4. public API vs raw launchers --------------------------------------------
# shellcheck disable=SC2086  # TIMINGS_ARGS is a list of options
run_step timings "gpu_timings.py" 150 "$LOGS/timings.log" \
    "$PY" tools/gpu_timings.py --json "$LOGS/timings.json" $TIMINGS_ARGS

# --- 4b. the residual network: CuPy (array-API path; fused at depth 0) vs cuDNN ---
# exit 2 with one line when CuPy, a GPU or PyTorch's CUDA is missing
# shellcheck disable=SC2086  # DEEP_ARGS is a list of options
run_step deep "deep_vs_torch.py (GPU)" 90 "$LOGS/deep.log" \
    "$PY" tools/deep_vs_torch.py --device gpu $DEEP_ARGS

# --- 5. compute-sanitizer on a tiny fused run ----------------------------------
SNIPPET=$(mktemp /tmp/arrseg_sanitizer_XXXXXX.py)
cat >"$SNIPPET" <<'EOF'
# predict_proba and loss_and_grad with method="fused" on N = 2 images of
# 40 x 37 (not multiples of the 8 x 16 tile), against method="direct"
import numpy as np
import cupy
import arrseg

cupy.cuda.set_allocator(None)  # one cudaMalloc per array: memcheck sees its bounds
for dtype, width, s in (("float32", 32, 3), ("float64", 8, 5)):
    x, y = arrseg.data.make_shapes(n_images=2, size=(40, 37), n_classes=4, channels=3,
                                   seed=1, dtype=dtype, xp=cupy)
    y[:, :3] = -100  # some unlabelled pixels
    params = arrseg.init_params(3, width, 4, s, seed=0, dtype=dtype, xp=cupy)
    P = arrseg.predict_proba(x, params, method="fused")
    loss, g = arrseg.loss_and_grad(x, y, params, method="fused")
    P_ref = arrseg.predict_proba(x, params, method="direct")
    loss_ref, g_ref = arrseg.loss_and_grad(x, y, params, method="direct")
    cupy.cuda.get_current_stream().synchronize()
    tol = 1e-4 if dtype == "float32" else 1e-10
    for name, a, b in (("P", P, P_ref), ("loss", loss, loss_ref), ("dK", g.K, g_ref.K),
                       ("dW", g.W, g_ref.W)):
        err = float(cupy.max(cupy.abs(a - b))) / max(float(cupy.max(cupy.abs(b))), 1e-30)
        print(f"{dtype} s={s} {name}: relative error {err:.2e}")
        assert err < tol, (dtype, name, err)
print("SNIPPET OK")
EOF
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
for tool in memcheck racecheck synccheck initcheck; do
    if [[ -z $SANITIZER ]]; then
        printf '### compute-sanitizer %s: compute-sanitizer: command not found\n### exit 127\n' \
            "$tool" >>"$LOGS/sanitizer.log"
        printf '%-28s skipped (not installed)\n' "compute-sanitizer $tool"
        continue
    fi
    run_step sanitizer "compute-sanitizer $tool" 60 "$LOGS/sanitizer.log" \
        "$SANITIZER" --tool "$tool" --error-exitcode 99 --target-processes all "$PY" "$SNIPPET"
done
rm -f "$SNIPPET"

# --- 5b. ncu on the seed configuration (N=8, C=3, 256^2, k=32, n_c=4, s=3) -------
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
SEED_RUN=$(mktemp /tmp/arrseg_ncu_XXXXXX.py)
cat >"$SEED_RUN" <<'EOF'
import cupy
import arrseg

x, y = arrseg.data.make_shapes(n_images=8, size=256, n_classes=4, seed=0, xp=cupy)
params = arrseg.init_params(3, 32, 4, 3, seed=0, xp=cupy)
for _ in range(2):  # the second call is the one to read (warm caches, compiled)
    arrseg.predict_proba(x, params, method="fused")
    arrseg.loss_and_grad(x, y, params, method="fused")
cupy.cuda.get_current_stream().synchronize()
EOF
if [[ -n $NCU ]]; then
    run_step ncu "ncu (seed configuration)" 120 "$LOGS/ncu.log" \
        "$NCU" --section SpeedOfLight --section Occupancy --section LaunchStats \
        -k 'regex:arrseg_(fused_forward|fused_backward|reduce_partials)' \
        "$PY" "$SEED_RUN"
else
    echo "### skipped: ncu is not installed" >>"$LOGS/ncu.log"
    printf '%-28s skipped (not installed)\n' "ncu"
fi
rm -f "$SEED_RUN"

# --- 6. asv --quick ------------------------------------------------------------
if "$PY" -c "import asv, asv_runner" 2>/dev/null; then
    run_step asv "asv run --quick" 240 "$LOGS/asv.log" bash -c '
        cd asv_benchmarks && "$0" -m asv machine --yes >/dev/null &&
        "$0" -m asv run --python=same --quick --show-stderr --bench "$1"' "$PY" "$ASV_BENCH"
else
    echo "### skipped: asv is not importable (fetch its wheels with tools/fetch_gpu_wheels.sh)" \
        >>"$LOGS/asv.log"
    printf '%-28s skipped (asv not importable)\n' "asv run --quick"
fi

# --- 7. the table ----------------------------------------------------------------
echo "total $((SECONDS - START)) s"
echo
"$PY" tools/gpu_table.py --dir "$LOGS"
# deep.log's tables (its header on), else its last lines (why it did not run)
echo
echo "== the residual network, arrseg on CuPy vs PyTorch CUDA (deep.log) =="
if grep -q "^arrseg .* vs PyTorch" "$LOGS/deep.log" 2>/dev/null; then
    sed -n '/^arrseg .* vs PyTorch/,/^### exit/p' "$LOGS/deep.log"
else
    tail -n 5 "$LOGS/deep.log" 2>/dev/null || echo "no deep.log"
fi
