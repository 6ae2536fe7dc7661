#!/usr/bin/env bash
# The GPU checks of issue 12 in one command: the CUDA tests, then the inference benchmark.
#
#   bash benchmarks/gpu_checks.sh [RESULTS_DIR]          # RESULTS_DIR defaults to ./gpu-results
#
# Steps, each run from the repository root and shown as it runs (tee) and saved in RESULTS_DIR:
#   machine.log          GPU, driver, Python and library versions
#   pytest-gpu.log       $PYTHON -m pytest -m gpu tests/test_gpu.py -v -rP $PYTEST_ARGS
#                        (GPU against CPU fp32: tiny, demo and random full-size models; the
#                        fused attention kernels; printed differences shown for passing tests)
#   bench-inference.log  $PYTHON benchmarks/bench_inference.py --device cuda
#                        (vanilla and CLIP-guided at fp32 and bf16, batches 1 and 8, peak GPU
#                        memory, click latency)
#   bench-compiled.log   the same with both image encoders compiled (torch.compile), bf16,
#                        batch 1: the compile times and the 8 ms goal (COMPILE=0 skips it)
# Every step runs even when an earlier one fails; the exit status is 0 only if all passed.
#
# Environment:
#   PYTHON        the interpreter with napari-clipsam and torch (default: python)
#   PYTEST_ARGS   extra pytest arguments, split on spaces, e.g. "-x -k full_size", or
#                 "-o addopts= -o filterwarnings= -p no:cacheprovider" where the dev tools are missing
#   COMPILE       1 (default) runs the compiled benchmark, 0 skips it
#   PYTEST_TIMEOUT_S, BENCH_TIMEOUT_S, COMPILE_TIMEOUT_S
#                 limits of the three steps in seconds (default 180, 210, 200: under 10 minutes)
set -u

PYTHON=${PYTHON:-python}
PYTEST_ARGS=${PYTEST_ARGS:-}
COMPILE=${COMPILE:-1}
RESULTS=${1:-./gpu-results}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
cd "$ROOT" || exit 2
export PYTHONUNBUFFERED=1
STARTED=$(date +%s)
STATUS=0

# step NAME TIMEOUT_S COMMAND...: runs COMMAND under a time limit, output shown and saved in NAME.log.
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(( $(date +%s) - STARTED )) s since start): $*" | tee "$RESULTS/$name.log"
    timeout "$limit" "$@" 2>&1 | tee -a "$RESULTS/$name.log"
    local code=${PIPESTATUS[0]}
    if [ "$code" -ne 0 ]; then
        [ "$code" -eq 124 ] && echo "== $name: stopped at its limit of $limit s" | tee -a "$RESULTS/$name.log"
        echo "== $name: exit status $code" | tee -a "$RESULTS/$name.log"
        STATUS=1
    fi
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" 2>&1
} | tee "$RESULTS/machine.log"

# shellcheck disable=SC2086  # PYTEST_ARGS is a list of words on purpose
step pytest-gpu "${PYTEST_TIMEOUT_S:-180}" "$PYTHON" -m pytest -m gpu tests/test_gpu.py -v -rP $PYTEST_ARGS
step bench-inference "${BENCH_TIMEOUT_S:-210}" "$PYTHON" benchmarks/bench_inference.py --device cuda
if [ "$COMPILE" = 1 ]; then
    step bench-compiled "${COMPILE_TIMEOUT_S:-200}" "$PYTHON" benchmarks/bench_inference.py --device cuda \
        --compile encoder --precisions auto --batches 1
fi
echo "== done in $(( $(date +%s) - STARTED )) s, status $STATUS; logs in $RESULTS" | tee -a "$RESULTS/machine.log"
exit "$STATUS"
