"""Opt-in: the decoder on a real Vulkan device (Mesa's lavapipe needs no GPU), token-identical to the CPU build on
the parity cases. Needs the Vulkan build of llama-cpp-python in a venv of its own (minutes of shader compiling,
so not in the default suite):

    CMAKE_ARGS="-DVulkan_INCLUDE_DIR=..." QASR_VENV=/path/vk-venv bash scripts/install.sh --runtime --gpu vulkan
    QASR_VULKAN=1 QASR_VULKAN_VENV=/path/vk-venv python3 -m pytest -q tests/test_vulkan.py
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = os.environ.get("QASR_VULKAN_VENV", "")

pytestmark = pytest.mark.skipif(
    os.environ.get("QASR_VULKAN") != "1" or not VENV,
    reason="opt-in: QASR_VULKAN=1 and QASR_VULKAN_VENV=<venv with the --gpu vulkan build> (scripts/vulkan_check.sh)",
)


def test_all_layers_on_vulkan_give_the_cpu_token_ids(tmp_path: Path) -> None:
    out = tmp_path / "vulkan.json"
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "vulkan_check.sh"), VENV],
        env={**os.environ, "OUT": str(out), "QASR_GPU_WORK": str(tmp_path / "work")},
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["cases"] == 48
    # f32 GGUF: exactly the CPU build's ids; f16: GPU arithmetic rounds activations to f16 (see gpu_parity.py)
    assert all(r["gpu_equals_cpu"] for r in result["rows"] if "-f32-" in r["case"])
    assert result["f16_mean_common_prefix"] >= 0.3
    assert result["all_layers_on_the_gpu_device"]
    for devices in result["layers_per_device"].values():
        assert list(devices) == ["Vulkan0"] and devices["Vulkan0"] >= 2
