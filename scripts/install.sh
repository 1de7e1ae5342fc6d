#!/usr/bin/env bash
# Installs everything qasr-live needs on a fresh Debian/Ubuntu machine: system packages, then the package
# itself with its export and test extras. Safe to re-run (seconds when everything is there).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# Runtime: libportaudio2 (microphone), ffmpeg (any audio file format), xdotool/xclip/wtype/wl-clipboard (typing
# backends). Tests: espeak-ng (speech), xvfb + pulseaudio + libasound2-plugins (a real display and microphone),
# libtk8.6 (the Tk window the tests type into), systemd (unit check). Demo model training
# (training/demo_model/build.sh): libtcmalloc-minimal4.
APT_PACKAGES=(build-essential cmake ffmpeg libportaudio2 espeak-ng xvfb xdotool xclip wtype wl-clipboard
  x11-xkb-utils xkb-data pulseaudio pulseaudio-utils libasound2-plugins libtk8.6 procps systemd libtcmalloc-minimal4)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PIP="python3 -m pip"
$PIP --version >/dev/null
# torch first and pinned: an unpinned torch requested by a dependency would pull gigabytes of CUDA wheels.
$PIP install -q torch==2.13.0
# llama-cpp-python builds libllama from source (about 5 minutes on 2 cores; pip caches the wheel afterwards).
# GPU offload: CMAKE_ARGS="-DGGML_CUDA=on" (or -DGGML_VULKAN=on, -DGGML_METAL=on) bash scripts/install.sh
echo "== pip install -e .[export,bench,dev] (first run builds llama-cpp-python)"
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" $PIP install -q -e ".[export,bench,dev]"
# The official implementation (export + parity tests only). Its own dependency list pins gradio, flask and
# vllm-era packages it does not need for the transformers backend, so it goes in without them.
$PIP install -q --no-deps qwen-asr==0.0.6
echo "== installed: $(python3 -m qasr_live --version)"
