#!/usr/bin/env bash
# CUDA check for a machine with an NVIDIA GPU (written for the device sessions; NOT RUN YET: see
# docs/performance.md). Builds llama-cpp-python with CUDA and onnxruntime-gpu into a venv of its own, then
#   1. the parity cases (random checkpoints, f32 and f16 GGUF) with every layer on CUDA0: greedy token ids
#      identical to the CPU build and the official implementation -> bench/results/gpu-cuda-parity.json
#   2. the real-shaped 0.6B and 1.7B (bench/models.py, random weights): offline RTF on 60 s, prefill and
#      generation tok/s -> bench/results/gpu-cuda-<size>-offline.json
#   3. the daemon's speech-end -> final and key-release -> final latency (bench/streaming.py, all layers on
#      the GPU) -> bench/results/gpu-cuda-<size>-streaming.json
#
#   bash scripts/gpu_check.sh [VENV]     (default .venv-cuda; SIZES="0.6b 1.7b"; CUDA_ARCH=90 without nvidia-smi)
#
# The dev interpreter (PYTHON, default python3, with torch and qwen-asr: `bash scripts/install.sh`, the CPU
# build) builds the checkpoints and runs the CPU side and the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-cuda}"
PYTHON="${PYTHON:-python3}"
SIZES="${SIZES:-0.6b 1.7b}"
RESULTS=bench/results
fail() { echo "gpu_check.sh: error: $*" >&2; exit 2; }
nvidia-smi -L >/dev/null 2>&1 || fail "no NVIDIA GPU answers nvidia-smi -L; run this on the GPU machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# 0. the CUDA build (install.sh checks nvcc and cuBLAS first, and records the build)
args="${CMAKE_ARGS:-}"
[ -z "${CUDA_ARCH:-}" ] || args="$args -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH"
# --dev: the streaming benchmark imports the checkpoint builder (torch, CPU wheel) in the GPU venv too
CMAKE_ARGS="$args" QASR_VENV="$VENV" bash scripts/install.sh --dev --gpu cuda
"$VENV/bin/python" -m qasr_live doctor --json >"$RESULTS/gpu-cuda-doctor.json" || true  # (no microphone: a FAIL)
"$VENV/bin/python" - <<'PY'
from qasr_live.engine.gpu import llama_build
import onnxruntime
b = llama_build()
assert b.gpus and b.gpus[0].backend == "CUDA", f"no CUDA device in this build: {b}"
assert "CUDAExecutionProvider" in onnxruntime.get_available_providers(), onnxruntime.get_available_providers()
print("devices:", "; ".join(d.describe() for d in b.gpus))
PY

# 1. parity
"$PYTHON" -m devkit.gpu_parity --gpu-python "$VENV/bin/python" --backend CUDA \
  --out "$RESULTS/gpu-cuda-parity.json" --work /tmp/qasr-cuda-parity \
  --device-note "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

# 2. offline, real-shaped: 60 s of the benchmark's audio, all layers and the encoder on the GPU
for size in $SIZES; do
  model="$("$PYTHON" -c "from bench.models import prepare; print(prepare('$size', log=lambda *a: None).model_dir)")"
  wav="/tmp/qasr-gpu-60s.wav"
  "$PYTHON" -c "
import numpy as np, scipy.io.wavfile
from tests.test_parity import make_audio
scipy.io.wavfile.write('$wav', 16000, np.concatenate([make_audio(10.0, s) for s in range(6)]))"
  cfg="/tmp/qasr-gpu-$size.yaml"
  printf 'model:\n  decoder_precision: f16\n  encoder_precision: fp32\nengine:\n  n_gpu_layers: -1\n  gpu: require\n  encoder_providers: [cuda]\n  flash_attention: true\n' >"$cfg"
  out="/tmp/qasr-gpu-$size-out"
  "$VENV/bin/python" -m qasr_live transcribe "$wav" --model "$model" --config "$cfg" --format json --out-dir "$out"
  "$VENV/bin/python" -m qasr_live transcribe "$wav" --model "$model" --config "$cfg" --format json --out-dir "$out"  # warm
  "$PYTHON" -c "
import json; d = json.load(open('$out/qasr-gpu-60s.json'))
json.dump({'size': '$size', 'decoder': 'f16', 'stats': d['stats']}, open('$RESULTS/gpu-cuda-$size-offline.json', 'w'), indent=1)
print('$size offline:', d['stats'])"
  # 3. streaming latency through the real daemon
  "$VENV/bin/python" -m bench.streaming "$size" "$RESULTS/gpu-cuda-$size-streaming.json" \
    --set engine.n_gpu_layers=-1 --set engine.gpu=require --set "engine.encoder_providers=[cuda]"
done
echo "== done: $RESULTS/gpu-cuda-*.json; add the rows to docs/performance.md (GPU section)"
