#!/usr/bin/env bash
# The GPU path proven on Vulkan: the parity cases of tests/test_parity.py (random checkpoints of the real
# architecture, f32 and f16 GGUF) transcribed with every decoder layer on the Vulkan device, their greedy token
# ids compared with the CPU build's and the official implementation's, and llama.cpp's load log checked to put
# the layers on the Vulkan device. Needs no GPU: Mesa's lavapipe (mesa-vulkan-drivers) is a Vulkan device on the
# CPU. Writes bench/results/gpu-vulkan-lavapipe.json (OUT=... elsewhere); exit 0 only if every case matches.
#
#   CMAKE_ARGS="-DVulkan_INCLUDE_DIR=..." QASR_VENV=/path/vk-venv bash scripts/install.sh --runtime --gpu vulkan
#   bash scripts/vulkan_check.sh /path/vk-venv
#
# The dev interpreter (PYTHON, default python3: torch and qwen-asr, the CPU build) makes the checkpoints and the
# reference; the venv's interpreter runs the GPU side.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${QASR_VULKAN_VENV:-}}"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-bench/results/gpu-vulkan-lavapipe.json}"
fail() { echo "vulkan_check.sh: error: $*" >&2; exit 2; }
[ -n "$VENV" ] || fail "name the venv with the Vulkan build: bash scripts/vulkan_check.sh VENV (or QASR_VULKAN_VENV=VENV)"
[ -x "$VENV/bin/python" ] || fail "$VENV has no bin/python; build it: QASR_VENV=$VENV bash scripts/install.sh --runtime --gpu vulkan"
# ggml-vulkan skips CPU-type devices (lavapipe is one) unless they are named; 0 = the first Vulkan device.
export GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}"
device="$("$VENV/bin/python" -c '
from qasr_live.engine.gpu import llama_build
b = llama_build()
print("; ".join(d.describe() for d in b.gpus if d.backend == "Vulkan"))')"
[ -n "$device" ] || fail "the llama.cpp of $VENV sees no Vulkan device (vulkaninfo --summary; is it the --gpu vulkan build?)"
echo "== Vulkan device: $device"
# SPEED_MODEL=<an exported real-shaped model, f16 decoder + int8 encoder> adds a speed comparison (bench/models.py
# builds one; lavapipe is a CPU emulating a GPU: expect it slower than the CPU build)
"$PYTHON" -m devkit.gpu_parity --gpu-python "$VENV/bin/python" --backend Vulkan --out "$OUT" \
  --work "${QASR_GPU_WORK:-/tmp/qasr-vulkan-parity}" --device-note "$device" \
  ${SPEED_MODEL:+--speed-model "$SPEED_MODEL"}
