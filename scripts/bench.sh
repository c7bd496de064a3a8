#!/usr/bin/env bash
# The main job of the README: fresh machine → virtual environment → the quick comparative benchmark on the CPU
# (every geometry vs Euclidean/SDPA, Tiny Shakespeare + WordNet, 3 seeds; results in bench-results/quick,
# the committed ones in benchmarks/results/quick).
# Extra arguments go to `python -m benchmarks run`, e.g. scripts/bench.sh --suite standard --out /tmp/std
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh "bench"
exec .venv/bin/python -m benchmarks run --suite quick "$@"
