"""The systemd user unit, `qasr-live install-service` and the sd_notify readiness protocol."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from qasr_live.cli import main
from qasr_live.service import UNIT_NAME, notify, render_unit

REPO_UNIT = Path(__file__).resolve().parents[1] / "systemd" / UNIT_NAME


def test_repository_unit_is_the_generated_one() -> None:
    assert REPO_UNIT.read_text() == render_unit(), "regenerate: python -m qasr_live.service > systemd/qasr-live.service"


def test_unit_declares_readiness_restart_and_session() -> None:
    unit = REPO_UNIT.read_text()
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "PartOf=graphical-session.target",
        "WantedBy=graphical-session.target",
    ):
        assert line in unit.splitlines()


@pytest.mark.parametrize("command", ["/usr/bin/env qasr-live", f"{sys.executable} -m qasr_live"])
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, command: str) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is installed by scripts/install.sh (package systemd)"
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_unit(command))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # verify reports problems in the unit file itself on stderr even when it exits 0 for lookups
    assert UNIT_NAME not in result.stderr, result.stderr


def test_install_service_writes_the_unit_of_this_installation(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    config = tmp_path / "my config.yaml"
    config.write_text("trigger:\n  mode: toggle\n")
    assert main(["install-service", "--config", str(config), "--no-enable"]) == 0
    unit = (tmp_path / "xdg" / "systemd" / "user" / UNIT_NAME).read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start == f"ExecStart={sys.executable} -m qasr_live serve --config '{config}'"
    assert "wrote" in capsys.readouterr().out


def test_install_service_refuses_a_missing_config(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert main(["install-service", "--config", str(tmp_path / "nope.yaml"), "--no-enable"]) == 2
    assert "nope.yaml does not exist" in capsys.readouterr().err
    assert not (tmp_path / "xdg" / "systemd").exists()


def test_notify_reaches_the_notify_socket(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1")
        assert server.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify("READY=1")


def test_install_service_on_macos_writes_a_launchd_agent(tmp_path: Path, monkeypatch, capsys) -> None:
    # macOS's code path under a platform patch (not run on a Mac): the plist is what plistlib reads back
    import plistlib

    from qasr_live.service import LAUNCHD_LABEL

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    config = tmp_path / "my config.yaml"
    config.write_text("trigger:\n  mode: toggle\n")
    assert main(["install-service", "--config", str(config), "--no-enable"]) == 0
    path = tmp_path / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    agent = plistlib.loads(path.read_bytes())
    assert agent["Label"] == LAUNCHD_LABEL
    assert agent["ProgramArguments"] == [sys.executable, "-m", "qasr_live", "serve", "--config", str(config)]
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["StandardErrorPath"] == str(tmp_path / "Library" / "Logs" / "qasr-live.log")
    assert not (tmp_path / "xdg" / "systemd").exists()  # no systemd unit on macOS
    assert f"wrote {path}" in capsys.readouterr().out


def test_install_service_on_macos_loads_the_agent_with_launchctl(tmp_path: Path, monkeypatch, capsys) -> None:
    # a stand-in launchctl on PATH records how it is called (the real one exists only on macOS)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    launchctl = bin_dir / "launchctl"
    launchctl.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    launchctl.chmod(0o755)
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert main(["install-service"]) == 0
    plist = tmp_path / "Library" / "LaunchAgents" / "io.github.qasr-live.plist"
    uid = os.getuid()
    assert calls.read_text().splitlines() == [f"bootout gui/{uid}/io.github.qasr-live", f"bootstrap gui/{uid} {plist}"]
    assert "loaded io.github.qasr-live" in capsys.readouterr().out
