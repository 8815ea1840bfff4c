#!/usr/bin/env bash
# The whole test suite: pytest against the local sandbox (real sshd instances), and every runbook
# in notebooks/ executed by nbval. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The SDK sends every request through HTTP(S)_PROXY when set, even to the sandbox on loopback.
unset HTTP_PROXY HTTPS_PROXY http_proxy https_proxy ALL_PROXY all_proxy
# Whatever machine runs the suite, nothing in it may ask a metadata service (100.100.100.200).
export PYMLSQL_METADATA_ENDPOINT=off
# Runbooks fall back to a local sandbox of their own, stopped however the run ends.
export PYMLSQL_SANDBOX_DIR=$(mktemp -d)/sandbox
trap '.venv/bin/pymlsql sandbox stop --state-dir "$PYMLSQL_SANDBOX_DIR" >/dev/null 2>&1 || true' EXIT
.venv/bin/python -m pytest tests --nbval-lax notebooks "$@"
