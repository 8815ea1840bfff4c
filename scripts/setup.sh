#!/usr/bin/env bash
# Installs what pymlsql-magics needs on a fresh Debian machine: OpenSSH's server (the sandbox's
# instances are real sshd processes), Chromium and its driver (the browser test runs the widgets in
# JupyterLab), a Java runtime (the Spark runbook's nodes run Spark; the sandbox's instances share this
# machine's /usr) and a virtualenv in .venv with the package, its test tools and the runbooks' clients.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the sandbox and the tests use, by the command that shows each is there.
missing=()
for pair in /usr/sbin/sshd:openssh-server ssh:openssh-client ssh-keyscan:openssh-client \
            unshare:util-linux nsenter:util-linux setpriv:util-linux pgrep:procps ip:iproute2 \
            zstd:zstd /usr/bin/chromium:chromium /usr/bin/chromedriver:chromium-driver \
            java:openjdk-17-jre-headless; do
  command=${pair%%:*} package=${pair#*:}
  if ! command -v "$command" >/dev/null 2>&1 && [ ! -x "$command" ]; then
    missing+=("$package")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: $packages; install them with: sudo apt-get install -y $packages" >&2
    exit 1
  fi
  echo "setup: installing $packages(sandbox instances are real sshd servers; the browser test uses Chromium; Spark runs on Java)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $packages >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test,dask,spark]'
  rm -f .venv/.installed-* && touch "$stamp"
fi
