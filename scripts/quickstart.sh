#!/usr/bin/env bash
# The main job: runs the quickstart runbook against the local ECS sandbox and writes the executed
# copy to notebooks/quickstart.executed.ipynb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/run_notebook.py notebooks/quickstart.ipynb notebooks/quickstart.executed.ipynb
