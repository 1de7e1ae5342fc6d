#!/usr/bin/env bash
# Installs qasr-live into a virtual environment, never into the system interpreter: the system packages (apt),
# then `.venv` in the checkout (QASR_VENV=DIR for another place) made with `python3 -m venv` (PYTHON=... for
# another interpreter, >= 3.11). Works on a stock Debian/Ubuntu Python (PEP 668, "externally managed").
#
#   bash scripts/install.sh --runtime   dictation, transcription, pull/export: no torch (what demo.sh uses)
#   bash scripts/install.sh [--dev]     + the official implementation, test, lint and benchmark tools (test.sh)
#   ... --gpu cuda|vulkan|metal|cpu      the llama.cpp backend of the decoder (QASR_GPU=... the same; default
#                                        cpu); cuda also puts onnxruntime-gpu in place of onnxruntime (encoder)
#
# Safe to re-run: seconds when nothing changed (a stamp in the venv records what was installed from which
# pyproject.toml). Afterwards: `.venv/bin/qasr-live ...`, or `source .venv/bin/activate` first.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=dev
gpu="${QASR_GPU:-cpu}"
usage="usage: bash scripts/install.sh [--runtime|--dev] [--gpu cuda|vulkan|metal|cpu]"
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) mode=runtime ;;
    --dev) mode=dev ;;
    --gpu) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; gpu="$2"; shift ;;
    --gpu=*) gpu="${1#--gpu=}" ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift
done
case "$gpu" in
  cpu | cuda | vulkan | metal) ;;
  *) echo "install.sh: error: --gpu (or QASR_GPU) is '$gpu'; use one of cuda, vulkan, metal, cpu." >&2; exit 2 ;;
esac
VENV="${QASR_VENV:-$PWD/.venv}"
PYTHON="${PYTHON:-python3}"

# The GPU toolchain is checked before anything is built: a missing compiler found after five minutes of CPU build,
# or a Vulkan header too old for ggml-vulkan (it needs vk::LayerSettingEXT, Vulkan-Headers >= 1.3.275), would
# be a long way to an unclear CMake error.
gpu_fail() { echo "install.sh: error: --gpu $gpu: $*" >&2; exit 2; }
cmake_arg() { sed -n "s/.*-D$1=\([^ ]*\).*/\1/p" <<<"${CMAKE_ARGS:-}"; }
gpu_cmake=""
case "$gpu" in
  cuda)
    nvcc="$(command -v nvcc || true)"
    [ -n "$nvcc" ] || [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] || nvcc="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
    [ -n "$nvcc" ] || gpu_fail "nvcc (the CUDA toolkit) is not on PATH; install it (Debian/Ubuntu:" \
      "apt-get install nvidia-cuda-toolkit, or NVIDIA's cuda-toolkit from developer.nvidia.com/cuda-downloads)" \
      "and put its bin/ on PATH, then re-run."
    cuda_home="$(dirname "$(dirname "$(readlink -f "$nvcc")")")"
    compgen -G "$cuda_home/include/cublas_v2.h" >/dev/null || compgen -G "/usr/include/cublas_v2.h" >/dev/null ||
      compgen -G "$cuda_home/targets/*/include/cublas_v2.h" >/dev/null || gpu_fail "the CUDA toolkit of $nvcc" \
      "has no cuBLAS headers (cublas_v2.h); install them (NVIDIA's repository: apt-get install" \
      "libcublas-dev-<version>; Debian: nvidia-cuda-toolkit has them) and re-run."
    # llama.cpp builds for the GPUs it sees (CMAKE_CUDA_ARCHITECTURES=native): without one, name them.
    if ! nvidia-smi -L >/dev/null 2>&1 && [ -z "$(cmake_arg CMAKE_CUDA_ARCHITECTURES)" ]; then
      gpu_fail "no NVIDIA GPU is visible here (nvidia-smi -L) to build for; build on the GPU machine, or name its" \
        "architecture: CMAKE_ARGS=\"-DCMAKE_CUDA_ARCHITECTURES=90\" (H100/H200; 89 RTX 40xx/L4, 86 RTX 30xx/A10," \
        "80 A100, 120 RTX 50xx)."
    fi
    export CUDACXX="${CUDACXX:-$nvcc}"
    gpu_cmake="-DGGML_CUDA=on" ;;
  vulkan)
    command -v glslc >/dev/null || gpu_fail "glslc (the GLSL shader compiler) is missing; install it" \
      "(Debian/Ubuntu: apt-get install glslc; or the LunarG Vulkan SDK) and re-run."
    inc="$(cmake_arg Vulkan_INCLUDE_DIR)"
    [ -n "$inc" ] || inc="${VULKAN_SDK:+$VULKAN_SDK/include}"
    [ -n "$inc" ] || for d in /usr/local/include /usr/include; do [ -f "$d/vulkan/vulkan_core.h" ] && inc="$d" && break; done
    core="${inc:-/usr/include}/vulkan/vulkan_core.h"
    [ -f "$core" ] || gpu_fail "the Vulkan headers are missing ($core); install Vulkan-Headers >= 1.3.275" \
      "(Debian 13/Ubuntu 24.04: apt-get install libvulkan-dev; else the LunarG Vulkan SDK with VULKAN_SDK set)."
    vk_ver="$(sed -n 's/^#define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, *\([0-9]*\), *\([0-9]*\),.*/\1.\2/p' "$core")"
    vk_ver="$vk_ver.$(sed -n 's/^#define VK_HEADER_VERSION \([0-9]*\).*/\1/p' "$core")"
    if [ "$(printf '%s\n' 1.3.275 "$vk_ver" | sort -V | head -1)" != 1.3.275 ]; then
      gpu_fail "the Vulkan headers in ${inc:-/usr/include} are $vk_ver, ggml-vulkan needs >= 1.3.275" \
        "(vk::LayerSettingEXT); install newer ones (header only: Debian 13's libvulkan-dev extracted with" \
        "dpkg-deb -x, or the LunarG SDK) and pass CMAKE_ARGS=\"-DVulkan_INCLUDE_DIR=<dir>/include\"."
    fi
    # ggml-vulkan also finds SPIRV-Headers through CMake (find_package CONFIG)
    spirv=""
    for d in $(cmake_arg CMAKE_PREFIX_PATH | tr ';:' '  ') ${VULKAN_SDK:-} /usr /usr/local; do
      spirv="$(compgen -G "$d/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake" ||
        compgen -G "$d/lib/*/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake" || true)"
      [ -z "$spirv" ] || break
    done
    [ -n "$spirv" ] || gpu_fail "SPIRV-Headers (its CMake config) is missing; install it (Debian/Ubuntu:" \
      "apt-get install spirv-headers; or the LunarG SDK), or name its prefix: CMAKE_ARGS=\"-DCMAKE_PREFIX_PATH=<dir>\"."
    gpu_cmake="-DGGML_VULKAN=on" ;;
  metal)
    [ "$(uname -s)" = Darwin ] || gpu_fail "Metal exists only on macOS; on Linux use --gpu cuda (NVIDIA) or" \
      "--gpu vulkan (AMD, Intel, NVIDIA)."
    xcrun -f metal >/dev/null 2>&1 || gpu_fail "the Metal compiler is missing (xcrun -f metal fails); install" \
      "Xcode (or: xcode-select --install) and run: sudo xcode-select -s /Applications/Xcode.app, then re-run."
    gpu_cmake="-DGGML_METAL=on" ;;
  cpu)
    # llama.cpp turns Metal on by itself on macOS: the CPU build there says so.
    [ "$(uname -s)" != Darwin ] || gpu_cmake="-DGGML_METAL=off" ;;
esac
if [ "$(uname -s)" = Darwin ]; then
  # macOS: no apt; the microphone library comes from Homebrew (sounddevice loads libportaudio at run time).
  command -v brew >/dev/null || gpu_fail "Homebrew is needed for portaudio on macOS: install it from https://brew.sh, then re-run."
  brew list portaudio >/dev/null 2>&1 || { echo "== brew install portaudio"; brew install portaudio; }
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# Runtime: build-essential + cmake (llama-cpp-python builds libllama from source), python3-venv (Debian splits
# venv/ensurepip out of python3), libportaudio2 (microphone), ffmpeg (any audio file format),
# xdotool/xclip/wtype/wl-clipboard/x11-xkb-utils (typing backends).
APT_PACKAGES=(build-essential cmake python3-venv ffmpeg libportaudio2 xdotool xclip wtype wl-clipboard
  x11-xkb-utils xkb-data)
# Tests: git + pipx (fresh-clone install tests), espeak-ng (speech), xvfb + pulseaudio + libasound2-plugins (a
# real display and microphone), libtk8.6 + python3-tk (the Tk window the tests type into), systemd (unit check),
# sway + foot + a font (a headless Wayland compositor and a window the Wayland tests type into), dbus (a private
# session bus for the notification and portal tests), libnotify-bin (notify-send), librust-wayland-protocols-dev
# (its wlr-data-control XML: sway 1.7's clipboard protocol, for the multi-type clipboard restore test).
# Demo model training (training/demo_model/build.sh): libtcmalloc-minimal4.
# glslc: the --gpu vulkan toolchain check is tested (tests/test_gpu.py).
[ "$mode" = dev ] && APT_PACKAGES+=(git pipx espeak-ng xvfb pulseaudio pulseaudio-utils libasound2-plugins
  libtk8.6 python3-tk procps systemd libtcmalloc-minimal4 sway foot fonts-dejavu-core dbus libnotify-bin glslc
  librust-wayland-protocols-dev)
if command -v dpkg >/dev/null; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
else
  echo "== not a Debian/Ubuntu system: install the equivalents of ${APT_PACKAGES[*]} yourself" >&2
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "install.sh: error: qasr-live needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1 || echo missing)." \
    "Install python3.11 (or newer) and run: PYTHON=python3.11 bash scripts/install.sh" >&2
  exit 2
fi
# A venv whose interpreter is gone (Python upgraded or removed) is rebuilt rather than half-used.
if [ -d "$VENV" ] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
  echo "== $VENV is broken (its interpreter is gone): recreating it"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "== $PYTHON -m venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# What is installed is recorded in a stamp; the same mode (or a superset) with the same pyproject.toml and
# install.sh installs nothing.
want="$( (cat pyproject.toml "$0"; echo "$gpu ${CMAKE_ARGS:-}") | sha256sum | cut -c1-16)"
stamp="$VENV/.qasr-live-installed"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$have" = "dev $want" ] || [ "$have" = "$mode $want" ]; then
  exit 0
fi

PIP=("$PY" -m pip --disable-pip-version-check)
# llama-cpp-python ships only sources: libllama is compiled here, about 5 minutes on 2 cores, once per build
# configuration, into a wheel kept under ~/.cache/qasr-live/wheels (QASR_WHEEL_CACHE=DIR elsewhere), which every
# venv, pipx and uv can install from. Its libraries are installed once, inside the package (by default they go
# to site-packages/lib a second time: 37 MB), and the multimodal library, unused here, is not built.
# GPU offload: --gpu adds its backend's flag (the CPU build keeps the flags, and so the cache key, it always had).
llama_version="$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)"
llama_cmake="-DLLAVA_BUILD=OFF -DCMAKE_INSTALL_LIBDIR=llama_cpp/lib -DCMAKE_INSTALL_BINDIR=llama_cpp/lib"
llama_cmake+=" -DCMAKE_INSTALL_INCLUDEDIR=llama_cpp/include${gpu_cmake:+ $gpu_cmake} ${CMAKE_ARGS:-}"
llama_key="$(echo "$llama_version $(uname -m) $llama_cmake" | sha256sum | cut -c1-12)"
wheel_cache="${QASR_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qasr-live/wheels}"
wheels="$wheel_cache/llama-cpp-python-$llama_version-$llama_key"
if ! compgen -G "$wheels/llama_cpp_python-*.whl" >/dev/null; then
  echo "== building llama-cpp-python $llama_version (libllama, once per build configuration; about 5 minutes)"
  rm -rf "$wheels.partial"
  CMAKE_ARGS="$llama_cmake" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "${PIP[@]}" wheel -q --no-deps --no-cache-dir \
    "llama-cpp-python==$llama_version" -w "$wheels.partial"
  mv "$wheels.partial" "$wheels"  # only a finished build is ever found
fi
PIP+=(install -q --find-links "$wheels")
if [ "$mode" = runtime ]; then
  # --no-compile: Python writes the bytecode of the modules it really imports at their first import; compiling
  # every module of every package up front (scipy's and onnx's tests included) would add 70 MB to the venv.
  # (The dev venv compiles at install: the tests turn warnings into errors, and some dependencies' sources
  # warn when compiled, e.g. nagisa's invalid escape sequences.)
  echo "== pip install -e .[wayland] into $VENV"
  "${PIP[@]}" --no-compile -e ".[wayland]"  # pywayland: every clipboard type restored on Wayland (Linux only)
else
  # torch first and pinned: an unpinned torch requested by a dependency would pull gigabytes of CUDA wheels.
  echo "== pip install torch==2.13.0 (CPU) and -e .[reference,bench,dev] into $VENV"
  "${PIP[@]}" torch==2.13.0
  "${PIP[@]}" -e ".[reference,bench,dev]"
  # The official implementation (parity tests and benchmarks only). Its own dependency list pins gradio, flask
  # and vllm-era packages it does not need for the transformers backend, so it goes in without them.
  "${PIP[@]}" --no-deps qwen-asr==0.0.6
fi
# pip keeps an installed llama-cpp-python of the same version whatever its backend: a venv whose recorded build
# is not this one gets this one's wheel by force. The record is what `doctor` and `transcribe`'s stats report.
record="$VENV/share/qasr-live/llama-build.json"
if ! grep -q "\"key\": \"$llama_key\"" "$record" 2>/dev/null; then
  echo "== llama-cpp-python $llama_version ($gpu build) into $VENV"
  "${PIP[@]}" --force-reinstall --no-deps "$(compgen -G "$wheels/llama_cpp_python-*.whl" | head -1)"
  mkdir -p "$(dirname "$record")"
  "$PY" -c 'import json, sys; json.dump(dict(zip(("backend", "version", "cmake_args", "key"), sys.argv[1:])),
    open(sys.argv[5], "w"), indent=1)' "$gpu" "$llama_version" "$llama_cmake" "$llama_key" "$record"
fi
# The encoder's GPU: onnxruntime-gpu (CUDA execution provider) is the same `onnxruntime` module as the CPU
# package, so one replaces the other; a later CPU install puts the CPU package back. Other providers are other
# packages, installed by hand the same way: onnxruntime-openvino (Intel), onnxruntime-directml (Windows),
# onnxruntime-rocm (AMD; wheels from repo.radeon.com), CoreML is in the macOS onnxruntime already.
has_dist() { "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$1" 2>/dev/null; }
ort_version="$("$PY" -c 'import onnxruntime; print(onnxruntime.__version__)')"
if [ "$gpu" = cuda ] && has_dist onnxruntime; then
  # (`pip install -e .` above puts the CPU package back over the GPU one each time: swapped again, by force.)
  echo "== onnxruntime-gpu $ort_version in place of onnxruntime (the encoder on CUDA)"
  "$PY" -m pip uninstall -y -q onnxruntime
  "${PIP[@]}" --force-reinstall --no-deps "onnxruntime-gpu==$ort_version"
elif [ "$gpu" != cuda ] && has_dist onnxruntime-gpu; then
  echo "== onnxruntime (CPU) in place of onnxruntime-gpu"
  "$PY" -m pip uninstall -y -q onnxruntime-gpu
  "${PIP[@]}" --force-reinstall --no-deps "onnxruntime==$ort_version"
fi
echo "$mode $want" >"$stamp"
echo "== installed $("$PY" -m qasr_live --version) ($mode) in $VENV:" \
  "run $VENV/bin/qasr-live, or source $VENV/bin/activate first"
