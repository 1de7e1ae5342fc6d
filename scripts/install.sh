#!/usr/bin/env bash
# Installs qasr-live into a virtual environment, never into the system interpreter: the system packages (apt),
# then `.venv` in the checkout (QASR_VENV=DIR for another place) made with `python3 -m venv` (PYTHON=... for
# another interpreter, >= 3.11). Works on a stock Debian/Ubuntu Python (PEP 668, "externally managed").
#
#   bash scripts/install.sh --runtime   dictation, transcription, pull/export: no torch (what demo.sh uses)
#   bash scripts/install.sh [--dev]     + the official implementation, test, lint and benchmark tools (test.sh)
#
# Safe to re-run: seconds when nothing changed (a stamp in the venv records what was installed from which
# pyproject.toml). Afterwards: `.venv/bin/qasr-live ...`, or `source .venv/bin/activate` first.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=dev
case "${1:-}" in
  --runtime) mode=runtime ;;
  --dev | "") mode=dev ;;
  *) echo "usage: bash scripts/install.sh [--runtime|--dev]" >&2; exit 2 ;;
esac
VENV="${QASR_VENV:-$PWD/.venv}"
PYTHON="${PYTHON:-python3}"

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
# session bus for the notification and portal tests), libnotify-bin (notify-send).
# Demo model training (training/demo_model/build.sh): libtcmalloc-minimal4.
[ "$mode" = dev ] && APT_PACKAGES+=(git pipx espeak-ng xvfb pulseaudio pulseaudio-utils libasound2-plugins
  libtk8.6 python3-tk procps systemd libtcmalloc-minimal4 sway foot fonts-dejavu-core dbus libnotify-bin)
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
want="$( (cat pyproject.toml "$0"; echo "${CMAKE_ARGS:-}") | sha256sum | cut -c1-16)"
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
# GPU offload: CMAKE_ARGS="-DGGML_CUDA=on" (or -DGGML_VULKAN=on, -DGGML_METAL=on) bash scripts/install.sh
llama_version="$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml)"
llama_cmake="-DLLAVA_BUILD=OFF -DCMAKE_INSTALL_LIBDIR=llama_cpp/lib -DCMAKE_INSTALL_BINDIR=llama_cpp/lib"
llama_cmake+=" -DCMAKE_INSTALL_INCLUDEDIR=llama_cpp/include ${CMAKE_ARGS:-}"
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
  echo "== pip install -e . into $VENV"
  "${PIP[@]}" --no-compile -e .
else
  # torch first and pinned: an unpinned torch requested by a dependency would pull gigabytes of CUDA wheels.
  echo "== pip install torch==2.13.0 (CPU) and -e .[reference,bench,dev] into $VENV"
  "${PIP[@]}" torch==2.13.0
  "${PIP[@]}" -e ".[reference,bench,dev]"
  # The official implementation (parity tests and benchmarks only). Its own dependency list pins gradio, flask
  # and vllm-era packages it does not need for the transformers backend, so it goes in without them.
  "${PIP[@]}" --no-deps qwen-asr==0.0.6
fi
echo "$mode $want" >"$stamp"
echo "== installed $("$PY" -m qasr_live --version) ($mode) in $VENV:" \
  "run $VENV/bin/qasr-live, or source $VENV/bin/activate first"
