#!/usr/bin/env bash
# Set up .venv (idempotent) and run the whole test suite: lint, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
