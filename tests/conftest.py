"""Shared fixtures: tiny random-weight Qwen3-ASR checkpoints built with the official classes (devkit), and their
exports."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile
from scipy.signal import resample_poly

from devkit.random_checkpoint import TINY_SPECS

PARITY_DECODERS = ("f32", "f16", "q8_0")
PARITY_ENCODERS = ("fp32", "int8")


def pytest_configure(config):
    config.qasr_report = []


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if config.qasr_report:
        terminalreporter.section("qasr-live figures")
        for line in config.qasr_report:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def report(pytestconfig):
    """Append a line to the figures printed at the end of the run."""
    return pytestconfig.qasr_report.append


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    from devkit.random_checkpoint import build_random_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    return {name: build_random_checkpoint(root / name, spec) for name, spec in TINY_SPECS.items()}


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    from qasr_live.export.exporter import export_checkpoint

    root = tmp_path_factory.mktemp("models")
    return {
        name: export_checkpoint(
            src, root / name, encoders=PARITY_ENCODERS, decoders=PARITY_DECODERS, progress=lambda _line: None
        )
        for name, src in tiny_checkpoints.items()
    }


@pytest.fixture
def forget_display_env(monkeypatch):
    """Undo, after the test, what code under test exported to os.environ about the X display it used."""
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("XAUTHORITY", raising=False)


@pytest.fixture(scope="session")
def slow_enabled() -> bool:
    return os.environ.get("QASR_SLOW") == "1"


@pytest.fixture(scope="session")
def say(tmp_path_factory):
    """Synthesize ``text`` with espeak-ng at 16 kHz, cut to its first..last sample above 1 % of full scale."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    tmp: Path = tmp_path_factory.mktemp("espeak")
    cache: dict[str, np.ndarray] = {}

    def _say(text: str) -> np.ndarray:
        if text not in cache:
            path = tmp / f"{len(cache)}.wav"
            subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
            rate, data = wavfile.read(path)
            assert rate == 22050
            y = resample_poly(data.astype(np.float64), 320, 441)
            y = np.clip(np.round(y), -32768, 32767).astype(np.int16)
            loud = np.flatnonzero(np.abs(y) > 328)
            cache[text] = y[loud[0] : loud[-1] + 1]
        return cache[text]

    return _say
