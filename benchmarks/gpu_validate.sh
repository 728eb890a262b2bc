#!/usr/bin/env bash
# GPU validation, the first time a GPU is at hand: install, the GPU tests, then
# the GPU benchmark tier with --benchmark-json and the bench-report tables.
# Each step fits in 10 minutes on one H100; run them one at a time where a
# command has a time limit, or all in order:
#
#   bash benchmarks/gpu_validate.sh [install|tests|head|ranking|train|graph|report|all] [OUTDIR]
#
# OUTDIR (default gpu-results) collects the JSON files and logs.
set -euo pipefail
cd "$(dirname "$0")/.."
step="${1:-all}"
out="${2:-gpu-results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1

run_step() {
    case "$1" in
    install)
        python -c "import tfllmer_fast" 2>/dev/null || pip install -e . --no-deps --no-build-isolation
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
        python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
            | tee -a "$out/device.txt"
        ;;
    tests)
        # int64 offsets, every kernel against its reference at the paper's shapes,
        # CuPy graph and Rec-PCA (skipped, with the reason, without CuPy).
        python -m pytest -m gpu tests -q -rs 2>&1 | tee "$out/tests_gpu.log"
        python -m pytest tests/graph -q -rs -k "cupy" 2>&1 | tee "$out/tests_cupy.log"
        ;;
    head | ranking | train | graph)
        local file="benchmarks/bench_${1}.py"
        [ "$1" = train ] && file=benchmarks/bench_train_step.py
        [ "$1" = graph ] && file="benchmarks/bench_graph.py benchmarks/bench_rec_pca.py"
        # shellcheck disable=SC2086
        python -m pytest $file -m gpu -q -rs --benchmark-json "$out/bench_$1.json" 2>&1 | tee "$out/bench_$1.log"
        ;;
    report)
        for f in "$out"/bench_*.json; do
            [ -e "$f" ] && tfllmer-fast bench-report "$f"
        done | tee "$out/report.md"
        ;;
    *)
        echo "error: unknown step '$1' (install|tests|head|ranking|train|graph|report|all)" >&2
        exit 2
        ;;
    esac
}

if [ "$step" = all ]; then
    for s in install tests head ranking train graph report; do run_step "$s"; done
else
    run_step "$step"
fi
