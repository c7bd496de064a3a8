#!/usr/bin/env bash
# Create .venv (if missing) and install geoattn with the given extras, pinned by constraints.txt.
# Usage: scripts/setup-venv.sh "dev,hf,bench,notebooks"
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[${extras}]" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import torch, geoattn; assert torch.__version__.startswith('2.13.0'), torch.__version__"
