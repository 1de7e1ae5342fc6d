"""Shared fixtures: tiny random-weight Qwen3-ASR checkpoints built with the official classes (devkit), and their
exports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devkit.random_checkpoint import TINY_SPECS

PARITY_DECODERS = ("f32", "f16", "q8_0")
PARITY_ENCODERS = ("fp32", "int8")


def pytest_configure(config):
    config.qasr_report = []


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if config.qasr_report:
        terminalreporter.section("qasr-live parity figures")
        for line in config.qasr_report:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def report(pytestconfig):
    """Append a line to the parity summary printed at the end of the run."""
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
