#!/usr/bin/env bash
# Idempotent set-up of everything SalesPulse needs on Debian 12:
# apt packages (PostgreSQL 15, Java 17, the JDBC driver, Chromium, Redis for the
# dashboard limiter's shared storage, nginx for the Dagster UI proxy's test), a
# .venv with the locked Python packages (requirements.txt: the lock of
# requirements.in, the runtime packages, and requirements-dev.in, the development
# and test ones) and the app image's runtime-only venv (scripts/runtime-venv.sh, for the tests). Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(postgresql-15 openjdk-17-jre-headless libpostgresql-jdbc-java chromium chromium-driver procps util-linux wrk redis-server nginx)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
# Re-install only when the lock file or the project's metadata (pyproject.toml:
# its entry points) changed since the last successful install.
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages from requirements.txt"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  .venv/bin/pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
# The app image's environment (docker/requirements-runtime.txt), for tests/test_runtime_env.py.
bash scripts/runtime-venv.sh >/dev/null
