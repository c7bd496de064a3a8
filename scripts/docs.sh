#!/usr/bin/env bash
# The documentation site: fresh machine → .venv → mkdocs build --strict into site/ (offline: KaTeX is bundled).
# Strict: a broken link or reference, a page missing from the nav, a public name without a docstring or on no API
# page (docs/_build/hooks.py) fails the build. Extra arguments go to mkdocs build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh "docs,bench"
export NO_MKDOCS_2_WARNING=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m mkdocs build --strict --site-dir site "$@"
