#!/usr/bin/env bash
# Set up .venv (idempotent) and run the main job on embedded defaults (local staging dir).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
exec .venv/bin/python examples/quickstart.py "$@"
