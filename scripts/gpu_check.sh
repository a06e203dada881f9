#!/usr/bin/env bash
# One device command that checks the GPU acceptance points in priority order, each stage under its own
# time limit, logs and JSON under $OUT (default ./gpu-out).  Written after the first H100 session
# (2026-11-22) lost a third of its device time to install problems.  Usage on the GPU machine, from
# the repository root:
#
#     STAGES="build tests sampling" bash scripts/gpu_check.sh     # default: all stages below, in order
#     BUDGET=580 ...                                                # seconds for the whole script
#
# Stages: build (extension for the local GPU; reuses a carried fastncsn/_C*.so when FASTNCSN_BUILD_CUDA=0),
# tests (every `gpu` test), sampling, training-mnist, training-cifar10, cuda-ops (benchmarks).
# Notes: on the device image `pip` is not the torch python's pip -- always `python -m pip`; copy
# $OUT/_C*.so back and carry it to skip the ~40 s rebuild on the next (fresh) machine.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
START=$(date +%s)
left() { echo $(( ${BUDGET:-580} - ($(date +%s) - START) )); }
limit() { local want=$1 l; l=$(( $(left) - 5 )); (( l < want )) && want=$l; (( want < 1 )) && want=1; echo "$want"; }
GPU=$(python -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())" 2>/dev/null || echo gpu)
DAY=$(date +%F)
STAGES=${STAGES:-"build tests sampling training-mnist training-cifar10 cuda-ops"}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__)" | tee -a "$OUT/gpu.txt"
for stage in $STAGES; do
  echo "== $stage ($(left) s left)"
  case $stage in
    build)
      ( time TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
          python -m pip install --no-build-isolation --no-deps -v -e . ) > "$OUT/install.log" 2>&1
      grep -E "fastncsn:|rror|Successfully installed|^real" "$OUT/install.log" | tail -8
      cp fastncsn/_C*.so "$OUT/" 2>/dev/null
      python -c "import fastncsn.ops.cuda as c, fastncsn.ops.triton; print('cuda extension:', c.available('cuda'))" ;;
    tests)
      timeout "$(limit 420)" python -m pytest -q -p no:cacheprovider -rfE -m gpu tests 2>&1 \
        | tee "$OUT/tests.log" | grep -E "passed|failed|skipped|^FAILED|^ERROR|Fatal" | tail -20 ;;
    sampling)
      timeout "$(limit 300)" python -m pytest -q -p no:cacheprovider -rfE benchmarks/test_sampling_throughput.py \
        --benchmark-json="$OUT/$GPU-$DAY-sampling.json" --benchmark-columns=median 2>&1 \
        | tee "$OUT/sampling.log" | grep -E "passed|failed|skipped|^test_|rror" | tail -16 ;;
    training-mnist|training-cifar10)
      cfg=${stage#training-}
      TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout "$(limit 300)" python -m pytest -q -p no:cacheprovider -rfE \
        benchmarks/test_training_throughput.py -k "$cfg" --benchmark-json="$OUT/$GPU-$DAY-training-$cfg.json" \
        --benchmark-columns=median 2>&1 | tee "$OUT/training-$cfg.log" | grep -E "passed|failed|skipped|^test_|rror" | tail -8 ;;
    cuda-ops)
      timeout "$(limit 180)" python -m pytest -q -p no:cacheprovider -rfE benchmarks/test_cond_instance_norm.py \
        benchmarks/test_langevin_step.py benchmarks/test_avg_pool.py \
        -k "(cuda or triton or reference) and not compile and not triton-fused and not triton-split and not network" \
        --benchmark-json="$OUT/$GPU-$DAY-cuda-ops.json" --benchmark-columns=median 2>&1 \
        | tee "$OUT/cuda-ops.log" | grep -E "passed|failed|skipped|rror" | tail -4 ;;
    *) echo "unknown stage $stage" ;;
  esac
done
echo "== done ($(left) s left)"
