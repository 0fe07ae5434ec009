#!/usr/bin/env bash
# Installs everything Conveyor needs on a fresh machine: Debian packages (when root),
# uv, and a .venv with Conveyor and its dev tools. Safe to run again; it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

want_browser="${1:-}"   # "test" also installs the system Chromium for the browser tests

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  pkgs=()
  if [ "$want_browser" = "test" ] && [ ! -x /usr/bin/chromium ]; then pkgs+=(chromium); fi
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "setup: apt-get install ${pkgs[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
fi

if ! command -v uv >/dev/null 2>&1; then
  echo "setup: installing uv"
  python3 -m pip install --quiet --disable-pip-version-check uv 2>/dev/null \
    || python3 -m pip install --quiet --user --disable-pip-version-check uv
  export PATH="$HOME/.local/bin:$PATH"
fi

if [ ! -x .venv/bin/python ]; then
  uv venv --quiet --python "$(command -v python3.11 || command -v python3)" .venv
fi
stamp=.venv/.conveyor-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  VIRTUAL_ENV="$PWD/.venv" uv pip install --quiet --config-settings editable_mode=compat -e ".[dev]"
  touch "$stamp"
fi
