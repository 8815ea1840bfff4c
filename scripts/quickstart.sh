#!/usr/bin/env bash
# The main job: runs the quickstart runbook against the local ECS sandbox and writes the executed
# copy to notebooks/quickstart.executed.ipynb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The runbook falls back to a local sandbox (no credentials here): keep it in a folder of its own,
# and stop it however the run ends.
export PYMLSQL_SANDBOX_DIR=${PYMLSQL_SANDBOX_DIR:-$(mktemp -d)/sandbox}
trap '.venv/bin/pymlsql sandbox stop --state-dir "$PYMLSQL_SANDBOX_DIR" >/dev/null 2>&1 || true' EXIT
unset ALIBABA_CLOUD_ACCESS_KEY_ID ALIBABA_CLOUD_ACCESS_KEY_SECRET PYMLSQL_ECS_ENDPOINT HTTP_PROXY HTTPS_PROXY http_proxy https_proxy
.venv/bin/python scripts/run_notebook.py notebooks/quickstart.ipynb notebooks/quickstart.executed.ipynb
