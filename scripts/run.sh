#!/usr/bin/env bash
# One entry point for a fresh clone: makes .venv with Python >= 3.12 (the version in
# .python-version, which ArviZ 1.x needs), installs the project into it when pyproject.toml
# changed, then runs what was asked.
#
#   bash scripts/run.sh demo [pyro-mle demo flags]   # set up, then the main job on built-in data
#   bash scripts/run.sh test [pytest flags]          # set up, then the whole test suite
#   bash scripts/run.sh setup                        # set up only
set -euo pipefail
cd "$(dirname "$0")/.."

want=$(tr -d '[:space:]' < .python-version)

is_new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }

find_python() {
  local c
  for c in "${PYTHON:-}" python3 "python$want" "$(pyenv prefix "$want" 2>/dev/null)/bin/python3"; do
    if [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && is_new_enough "$c"; then
      echo "$c"; return 0
    fi
  done
  echo "scripts/run.sh: no Python >= 3.12 found (tried python3, python$want, pyenv $want)." >&2
  echo "Install it (e.g. 'pyenv install $want') or set PYTHON=/path/to/python3.12." >&2
  return 1
}

if [ ! -x .venv/bin/python ] || ! is_new_enough .venv/bin/python; then
  py=$(find_python)
  echo "setting up .venv with $($py --version)" >&2
  rm -rf .venv
  "$py" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi

cmd=${1:-test}
[ $# -gt 0 ] && shift
extras=""
[ "$cmd" = "test" ] && extras="[test]"
# Reinstall only when the dependencies changed: the stamp is a hash of pyproject.toml + extras.
stamp=".venv/.pyro-mle-installed"
want_stamp="$(sha256sum pyproject.toml | cut -c1-16)$extras"
if ! grep -qxF -- "$want_stamp" "$stamp" 2>/dev/null; then
  echo "installing pyro-mle$extras and its dependencies into .venv (torch is large: a few minutes the first time)" >&2
  .venv/bin/python -m pip install --quiet -e ".$extras"
  echo "$want_stamp" >> "$stamp"
fi

case "$cmd" in
  demo) exec .venv/bin/pyro-mle demo "$@" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
  setup) echo "ready: .venv/bin/pyro-mle --help" ;;
  *) echo "usage: bash scripts/run.sh demo|test|setup [args]" >&2; exit 2 ;;
esac
