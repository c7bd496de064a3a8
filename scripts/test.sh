#!/usr/bin/env bash
# The test command of the README: fresh machine → virtual environment → lint → full test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh "dev,hf,bench,notebooks"
.venv/bin/ruff check --quiet .   # unused imports/variables, undefined names, style (pyproject.toml [tool.ruff]); fails CI
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GEOMSTATS_BACKEND=pytorch
exec .venv/bin/python -m pytest "$@"
