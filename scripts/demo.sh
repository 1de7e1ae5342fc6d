#!/usr/bin/env bash
# The main job on a fresh machine: install, then transcribe FILE (default: the demo model's spoken sample).
# Uses model.dir from config.yaml / QASR_MODEL when set, else the embedded demo model (a small Qwen3-ASR trained
# here on synthetic speech, limited vocabulary: docs/demo-model.md). Real weights: "Getting a model" in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh >/dev/null
out="${XDG_CACHE_HOME:-$HOME/.cache}/qasr-live/out"
audio="${1:-qasr_live/models/demo/sample.wav}"
model_args=()
[ -n "${QASR_MODEL:-}" ] && model_args=(--model "$QASR_MODEL")
exec python3 -m qasr_live transcribe "$audio" "${model_args[@]}" --format txt,json --out-dir "$out"
