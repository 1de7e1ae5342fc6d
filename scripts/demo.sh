#!/usr/bin/env bash
# The main job on a fresh machine: install, then transcribe FILE (default: a sentence spoken by espeak-ng).
# Uses model.dir from config.yaml / QASR_MODEL when set, else the embedded demo model when the package has one,
# else a tiny random-weight model of the real architecture exported on the spot: the whole pipeline runs, but
# its text is meaningless. Real weights: see "Getting a model" in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh >/dev/null
cache="${XDG_CACHE_HOME:-$HOME/.cache}/qasr-live"
mkdir -p "$cache"
audio="${1:-}"
if [ -z "$audio" ]; then
  audio="$cache/sample.wav"
  espeak-ng -v en-us -s 150 -w "$audio" "Hello, this is a dictation test of qasr live."
fi
model_args=()
if [ -n "${QASR_MODEL:-}" ]; then
  model_args=(--model "$QASR_MODEL")
elif ! python3 -c "import sys; from qasr_live.cli import DEMO_MODEL; sys.exit(not (DEMO_MODEL / 'manifest.json').exists())" \
     && ! grep -Eqs '^\s*dir:\s*[^n ]' "${XDG_CONFIG_HOME:-$HOME/.config}/qasr-live/config.yaml"; then
  if [ ! -f "$cache/random-tiny/manifest.json" ]; then
    echo "no model configured and no demo model: exporting a tiny random-weight model (meaningless text)" >&2
    python3 -c "from qasr_live.export.random_checkpoint import *; build_random_checkpoint('$cache/random-tiny-src', RandomModelSpec(init_std=0.1))"
    python3 -m qasr_live export "$cache/random-tiny-src" "$cache/random-tiny" --force
  fi
  model_args=(--model "$cache/random-tiny")
fi
exec python3 -m qasr_live transcribe "$audio" "${model_args[@]}" --format txt,json --out-dir "$cache/out"
