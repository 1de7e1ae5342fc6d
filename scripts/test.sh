#!/usr/bin/env bash
# The whole test suite, on a fresh machine or this one: installs what is missing, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python3 -m mypy  # type-checks qasr_live (pyproject.toml [tool.mypy])
python3 -m pytest -q "$@"
