#!/usr/bin/env bash
# The perf lab: the one command a session with a GPU runs first.  From the repository root on the GPU machine:
#
#     OUT=/some/dir bash scripts/gpu_check.sh                       # every stage below, in order
#     STAGES="build tests" bash scripts/gpu_check.sh                # a selection, in the order given
#     BUDGET=540 ...                                                # seconds for the whole script (default 540)
#
# Stages in priority order, each under its own time limit (seconds; estimates from the H100 session of
# 2026-11-22, benchmarks/results/README.md: build 37 s, the sampling file ~90 s, compile ~100 s; they sum to
# 540 = 9 minutes, and no stage gets more than what BUDGET has left):
#   build     50  python -m pip install --no-build-isolation --no-deps -e . (the CUDA extension for this GPU);
#                 the built fastncsn/_C*.so is copied to $OUT -- carry it back to skip the rebuild next time
#   tests    100  every `gpu` test AND the Triton tests compiled on CUDA tensors (odd shapes included):
#                 -m "gpu or triton" with FASTNCSN_TRITON_DEVICE=cuda (tests/conftest.py), 4 xdist workers
#   ops       80  op micro-benchmarks timed inside CUDA graphs (CIN++ fwd/bwd, Langevin step; every backend and
#                 forced plan, no torch.compile) -> <gpu>-<date>-ops.json (input of scripts/auto_table.py)
#   sampling  90  benchmarks/test_sampling_throughput.py: four configs (mnist/cifar10 x b100/b1000), the
#                 reference loop, every graph path and layout variant -> <gpu>-<date>-sampling.json
#   anchor   120  benchmarks/test_compile_anchor.py: the compile anchor at MNIST b1000 (~100 s of compiling)
#                 with the reference loop of the same run -> <gpu>-<date>-anchor.json
#   profile   30  scripts/profile_step.py: top 15 kernels of one graph replay, MNIST b1000 bf16 -> profile.txt
#                 (in logs.tar.gz)
#   training  60  benchmarks/test_training_throughput.py without the compiled `fast` path (TRAIN_COMPILE=1 adds
#                 it: ~90 s of compiling per config), mnist first -> <gpu>-<date>-training-<cfg>.json
#   summary   10  scripts/perf_summary.py over the JSON files of this run: the short table printed last
# What comes back (the device tool returns at most 8 files from $OUT): the JSON files, fastncsn/_C*.so,
# summary.txt and logs.tar.gz -- every stage's whole output (<stage>.log, tee'd), gpu.txt and profile.txt,
# re-packed after each stage so a run stopped half-way still brings its logs back.  Every JSON record carries the commit and whether
# the tree was clean (benchmarks/conftest.py); where the tree travels without .git, pass them in:
#     FASTNCSN_COMMIT=$(git rev-parse HEAD) FASTNCSN_TREE_CLEAN=$([ -z "$(git status --porcelain)" ] && echo 1 || echo 0)
# Notes: on the device image `pip` is not the torch python's pip -- always `python -m pip`.  Stage limits can be
# changed one by one: LIMIT_tests=150 etc.  A pytest run killed by its limit writes no JSON: keep limits honest.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
LOGS=$(mktemp -d)                                     # packed into $OUT/logs.tar.gz after every stage
pack() { tar -czf "$OUT/logs.tar.gz" -C "$LOGS" . 2>/dev/null; }
START=$(date +%s)
BUDGET=${BUDGET:-540}
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# limit STAGE DEFAULT: the stage's limit (LIMIT_<stage> overrides DEFAULT), capped by what the budget has left
limit() {
  local var="LIMIT_${1//-/_}" want l
  want=${!var:-$2}; l=$(( $(left) - 12 ))           # keep ~10 s for the summary
  (( l < want )) && want=$l; (( want < 1 )) && want=1; echo "$want"
}
GPU=$(python -c "import torch; print(torch.cuda.get_device_name().split()[1].lower())" 2>/dev/null || echo gpu)
DAY=$(date +%F)
STAGES=${STAGES:-"build tests ops sampling anchor profile training summary"}
PYTEST="python -m pytest -q -p no:cacheprovider -rfE"
status=0
run_stage() {  # run_stage NAME LIMIT CMD...: the command under its limit, whole output tee'd to $LOGS/NAME.log
  local name=$1 lim=$2 rc; shift 2
  echo "== $name (limit ${lim} s, $(left) s left)"
  timeout "$lim" "$@" 2>&1 | tee "$LOGS/$name.log" | grep -E "passed|failed|skipped|rror|^FAILED|Fatal" | tail -12
  rc=${PIPESTATUS[0]}
  (( rc == 124 )) && echo "!! $name: stopped at its limit (${lim} s)"
  (( rc != 0 )) && { echo "!! $name: exit $rc"; status=1; }
  pack
  return 0
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__)"
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo "${FASTNCSN_COMMIT:-?}")"
  [ -n "$(git status --porcelain 2>/dev/null)" ] && echo "tree DIRTY"
} 2>&1 | tee "$LOGS/gpu.txt"
for stage in $STAGES; do
  case $stage in
    build)
      run_stage build "$(limit build 50)" env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
        MAX_JOBS="${MAX_JOBS:-16}" python -m pip install --no-build-isolation --no-deps -v -e .
      grep -E "fastncsn:|Successfully installed" "$LOGS/build.log" | tail -4
      cp fastncsn/_C*.so "$OUT/" 2>/dev/null
      python -c "import fastncsn.ops.cuda as c, fastncsn.ops.triton; print('cuda extension:', c.available('cuda'))" ;;
    tests)
      par=""; python -c "import xdist" 2>/dev/null && par="-n ${TEST_WORKERS:-4} --dist loadfile"
      python -c "import pytest_timeout" 2>/dev/null && par="$par --timeout 90"
      run_stage tests "$(limit tests 100)" env FASTNCSN_TRITON_DEVICE=cuda $PYTEST -m "gpu or triton" $par tests ;;
    ops)
      run_stage ops "$(limit ops 80)" $PYTEST benchmarks/test_cond_instance_norm.py benchmarks/test_langevin_step.py \
        benchmarks/test_avg_pool.py \
        -k "not compile and not network" --benchmark-json="$OUT/$GPU-$DAY-ops.json" --benchmark-columns=median ;;
    sampling)
      run_stage sampling "$(limit sampling 90)" $PYTEST benchmarks/test_sampling_throughput.py \
        --benchmark-json="$OUT/$GPU-$DAY-sampling.json" --benchmark-columns=median ;;
    anchor)
      run_stage anchor "$(limit anchor 120)" env TORCHINDUCTOR_CACHE_DIR="$(mktemp -d)" $PYTEST \
        benchmarks/test_compile_anchor.py --benchmark-json="$OUT/$GPU-$DAY-anchor.json" --benchmark-columns=median ;;
    profile)
      run_stage profile "$(limit profile 30)" python scripts/profile_step.py --config mnist --batch 1000 \
        --precision bf16 --top 15 --out "$LOGS/profile.txt" ;;
    training)
      lim=$(limit training 60); t0=$(date +%s)
      sel="not fast or eager or graph"; [ "${TRAIN_COMPILE:-0}" = 1 ] && sel=""
      for cfg in mnist cifar10; do
        rest=$(( lim - ($(date +%s) - t0) )); (( rest < 15 )) && { echo "!! training-$cfg: no time left"; continue; }
        run_stage "training-$cfg" "$rest" env TORCHINDUCTOR_CACHE_DIR="$(mktemp -d)" $PYTEST \
          benchmarks/test_training_throughput.py -k "$cfg${sel:+ and ($sel)}" \
          --benchmark-json="$OUT/$GPU-$DAY-training-$cfg.json" --benchmark-columns=median
      done ;;
    summary)
      echo "== summary ($(left) s left)"
      python scripts/perf_summary.py "$OUT"/*.json 2>&1 | tee "$OUT/summary.txt"; pack ;;
    *) echo "unknown stage $stage"; status=1 ;;
  esac
done
echo "== done ($(left) s left; JSON: $(cd "$OUT" && ls -- *.json 2>/dev/null | tr '\n' ' '))"
exit $status
