#!/usr/bin/env bash
# The main job on a fresh machine: install the runtime (no torch) into .venv, then transcribe FILE (default: the
# demo model's spoken sample). Uses QASR_MODEL=DIR when set, else the configured or default model (`qasr-live
# models`), else the embedded demo model (a small Qwen3-ASR trained here on synthetic speech, limited vocabulary:
# docs/demo-model.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --runtime >&2
venv="${QASR_VENV:-$PWD/.venv}"
out="${XDG_CACHE_HOME:-$HOME/.cache}/qasr-live/out"
audio="${1:-qasr_live/models/demo/sample.wav}"
model_args=()
[ -n "${QASR_MODEL:-}" ] && model_args=(--model "$QASR_MODEL")
"$venv/bin/qasr-live" transcribe "$audio" "${model_args[@]}" --format txt,json --out-dir "$out"
cat >&2 <<MSG

Real dictation: $venv/bin/qasr-live pull Qwen/Qwen3-ASR-0.6B   (downloads and converts the real model)
           then $venv/bin/qasr-live serve                      (hold Ctrl+Alt+Space and speak)
MSG
