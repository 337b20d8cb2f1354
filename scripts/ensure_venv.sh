#!/usr/bin/env bash
# Creates (or refreshes) .venv in the repository root with the project and its test extras installed.
# Re-installs only when pyproject.toml changed since the last install. Sourced by demo.sh and test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
stamp="$root/.venv/.hf_fga_installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$root/.venv/bin/python" ]; then
  echo "[hf_fga] creating .venv with $py" >&2
  "$py" -m venv "$root/.venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[hf_fga] installing hf_fga and its dependencies into .venv (about a minute)" >&2
  # torch is pinned in pyproject.toml and installed in the same command, so pip takes the local CPU wheel.
  "$root/.venv/bin/pip" install --quiet --disable-pip-version-check -e "$root[test]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
  "$root/.venv/bin/python" -c "import hf_fga" >/dev/null
  echo "$want" > "$stamp"
fi
