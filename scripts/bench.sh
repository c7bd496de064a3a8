#!/usr/bin/env bash
# The main job of the README: fresh machine → virtual environment → quick comparative run on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh "bench"
exec .venv/bin/python -m geoattn.demo "$@"
