#!/usr/bin/env bash
# The whole test suite, on a fresh machine or this one: installs what is missing into .venv (install.sh), then
# type-checks and runs pytest with that venv's interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
py="${QASR_VENV:-$PWD/.venv}/bin/python"
"$py" -m mypy  # type-checks qasr_live (pyproject.toml [tool.mypy])
"$py" -m pytest -q "$@"
