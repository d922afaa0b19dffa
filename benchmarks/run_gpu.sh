#!/usr/bin/env bash
# Everything a GPU machine should check, in one go: build, the GPU tests, the benchmark suite,
# the results file. Run from the repository root; results go to $OUT (default benchmarks/results).
# Usage: OUT=dir benchmarks/run_gpu.sh [extra pytest args for the benchmarks, e.g. -k train-step]
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
# A preinstalled torch stays: no dependency resolution (the machine may have no package index).
pip install -e . --no-build-isolation --no-deps -q > "$OUT/install.log" 2>&1 || { tail -30 "$OUT/install.log"; exit 1; }
python -m pytest -m gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.txt" | tail -25
python -m pytest benchmarks/ --benchmark-only -q -p no:cacheprovider --benchmark-json "$OUT/BENCH.json" "$@" \
    2>&1 | tail -15
python benchmarks/report.py "$OUT/BENCH.json" --out "$OUT" | tee "$OUT/table.md"
