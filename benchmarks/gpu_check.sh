#!/usr/bin/env bash
# The one GPU check: build the CUDA extension, run the whole test suite on CUDA, verify every
# backend, benchmark them side by side. Runs on a CPU-only machine too (CUDA steps are skipped),
# so it is known to work before a GPU is lent.
#
#   bash benchmarks/gpu_check.sh OUT_DIR        (default: $OUT, else benchmarks/results/check-DATE)
#
# Writes OUT_DIR/{info,build,tests,verify,bench}.txt and bench.csv. Needs no network and no
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
# tests of the kernels and the API; the CPU-only studies (training example, nnU-Net, gloo DDP)
# touch no GPU code and would take minutes of the GPU window
step tests $PYTHON -m pytest -q -p no:cacheprovider tests --ignore=tests/test_examples.py \
    --ignore=tests/test_nnunet.py --ignore=tests/test_distributed.py
step verify $PYTHON -m scc_kernels verify --dtype float32 bfloat16
if [ "$has_cuda" = 1 ]; then
    step bench $PYTHON -m scc_kernels bench --floors --csv "$OUT_DIR/bench.csv"
else
    step bench $PYTHON -m scc_kernels bench --quick --repeats 3 --modes complex amplitude --csv "$OUT_DIR/bench.csv"
fi
echo "results in $OUT_DIR (exit $status)"
exit $status
