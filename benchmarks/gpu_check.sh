#!/usr/bin/env bash
# The one GPU check, sized for a 7-minute window on an H200 from a fresh copy of the tree: build
# the CUDA extension (one architecture, MAX_JOBS), run the tests of the kernels on CUDA, verify
# every backend in float32 and bfloat16, benchmark a trimmed shape set against measured floors,
# and autotune the plan on the headline shapes (measured next to modeled times, to calibrate
# scc_kernels.plan). Each step prints its time; a failing step does not stop the others. On a
# CPU-only machine it runs the same steps that can run (about 3 minutes), so it is known to work
# before a GPU is lent.
#
#   bash benchmarks/gpu_check.sh OUT_DIR        (default: $OUT, else benchmarks/results/check-DATE)
#
# Writes OUT_DIR/{info,build,tests,verify,bench,plan}.txt and bench.csv. Needs no network and no
# install step: the package is used from this checkout through PYTHONPATH.
set -u
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-benchmarks/results/check-$(date -u +%F)}}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() {  # step NAME COMMAND...: run, keep its output, remember a failure, go on
    local name=$1; shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@" > "$OUT_DIR/$name.txt" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start)) s; last lines:"
    tail -n 4 "$OUT_DIR/$name.txt" | sed 's/^/   | /'
    [ $rc -eq 0 ] || status=1
}

has_cuda=$($PYTHON -c "import torch; print(int(torch.cuda.is_available()))")
{
    date -u '+%F %T UTC'
    echo "command: bash benchmarks/gpu_check.sh $OUT_DIR"
    git log -1 --format='commit %H %s' 2>/dev/null
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
    command -v nvcc > /dev/null && nvcc --version | tail -n 1
} > "$OUT_DIR/info.txt" 2>&1
step info-backends $PYTHON -m scc_kernels info
cat "$OUT_DIR/info-backends.txt" >> "$OUT_DIR/info.txt" && rm "$OUT_DIR/info-backends.txt"

if [ "$has_cuda" = 1 ]; then
    # the prebuilt route (setup.py, ninja) in place; the JIT route is exercised by the tests
    step build env SCC_KERNELS_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
        MAX_JOBS="${MAX_JOBS:-16}" $PYTHON setup.py build_ext --inplace
fi
# the tests of the kernels, the API and the plan (the CPU-only studies, nnU-Net and gloo DDP, touch
# no GPU code; test_cuda_build/test_cuda_emulated compile and emulate on the host: CI's job)
KERNEL_TESTS="tests/test_triton.py tests/test_triton_dft.py tests/test_triton_fft.py tests/test_api.py tests/test_plan.py"
if [ "$has_cuda" = 1 ]; then
    # (inductor's cold compiles of the changing-shape tests would take minutes: CI runs them)
    step tests $PYTHON -m pytest -q -p no:cacheprovider tests/test_cuda_gpu.py tests/test_precision.py \
        tests/test_contracts.py $KERNEL_TESTS -k "not compile_with_changing_shapes"
    step verify $PYTHON -m scc_kernels verify --dtype float32 bfloat16
    step bench $PYTHON -m scc_kernels bench --floors --shapes 16x4x512x512 16x4x256x256 2x4x128x128x128 \
        --modes complex amplitude --repeats 10 --csv "$OUT_DIR/bench.csv"
    step plan $PYTHON -m scc_kernels plan 16x4x512x512 16x4x256x256 2x4x128x128x128 --autotune
    step plan-complex $PYTHON -m scc_kernels plan 16x4x512x512 --spectrum complex --autotune
else
    step tests $PYTHON -m pytest -q -p no:cacheprovider $KERNEL_TESTS
    step verify $PYTHON -m scc_kernels verify --dtype float32
    step bench $PYTHON -m scc_kernels bench --quick --repeats 3 --modes complex amplitude --no-memory \
        --csv "$OUT_DIR/bench.csv"
    step plan $PYTHON -m scc_kernels plan 16x4x512x512 16x4x256x256 2x4x128x128x128 --gpu H200
fi
echo "results in $OUT_DIR (exit $status)"
exit $status
