#!/usr/bin/env bash
# The perf lab, as the device tool runs it from the repository root: `bash scripts/gpu_check.sh part1`, then
# `bash scripts/gpu_check.sh part2` right after (the machine still up).  Everything -- the plan (stages, limits
# and the arithmetic behind them, files), the SIGINT-stopped stages, the stamps -- is scripts/gpu_lab.py;
# `python3 scripts/gpu_lab.py plan` prints it, benchmarks/README.md has the commands of a window.
exec python3 "$(dirname "$0")/gpu_lab.py" "$@"
