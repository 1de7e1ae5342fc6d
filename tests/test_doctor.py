"""`qasr-live doctor`, run as the real CLI in subprocesses: headless with a (PulseAudio) microphone, under Xvfb, with
a truncated model, a port taken by another process, a running daemon, a broken config, a stale service unit; and
the runner's guard and version checks in process."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devkit.daemon_harness import RunningDaemon, write_config
from devkit.desktop import Xvfb
from devkit.pulse import PulseAudio
from qasr_live.config import AppConfig, ControlConfig
from qasr_live.doctor import Context, Status, install, run_checks
from qasr_live.doctor.daemon import check_runtime
from qasr_live.doctor.install import _satisfies
from qasr_live.doctor.report import Lines
from qasr_live.engine.model_dir import open_model_dir
from qasr_live.errors import EXIT_CHECK_FAILED, ModelError
from qasr_live.model_store import DEMO_MODEL

REPO = Path(__file__).resolve().parents[1]
SESSION_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "XAUTHORITY", "XDG_CURRENT_DESKTOP")
CHECK_LINE = re.compile(r"^  (ok|warn|FAIL) +(\S+(?: \S+)*?)  +\S")


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    """A private PulseAudio server whose null sink is a microphone PortAudio lists as ``qasr_test_mic``."""
    with PulseAudio(tmp_path_factory.mktemp("pulse")) as server:
        yield server


def _env(tmp: Path, pulse: PulseAudio | None = None, **extra: str) -> dict[str, str]:
    """This environment without any desktop session, with private XDG directories: a user manager of the machine
    running the tests (systemctl --user) is out of reach, and no user config or unit is read."""
    env = {k: v for k, v in os.environ.items() if k not in SESSION_VARS}
    if pulse is not None:
        env.update(pulse.env)
    env.update(XDG_CONFIG_HOME=str(tmp / "xdg-config"), XDG_RUNTIME_DIR=str(tmp / "xdg-runtime"))
    (tmp / "xdg-runtime").mkdir(mode=0o700, exist_ok=True)
    env.update(extra)
    return env


def _config(tmp: Path, name: str = "config.yaml", **sections: dict) -> Path:
    cfg: dict = {"control": {"runtime_dir": str(tmp / "run")}, "websocket": {"port": _free_port()}}
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _doctor(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qasr_live", "doctor", "--config", str(config), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _report(config: Path, env: dict[str, str]) -> tuple[int, dict[tuple[str, str], dict]]:
    """Exit status and the --json checks by (section, name)."""
    done = _doctor(config, env, "--json")
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    assert report["exit_status"] == done.returncode
    return done.returncode, {(c["section"], c["name"]): c for c in report["checks"]}


def _text_statuses(stdout: str) -> dict[tuple[str, str], str]:
    """(section, name) -> status, read from the text screen."""
    found, section = {}, ""
    for line in stdout.splitlines():
        if line and not line.startswith(" "):
            section = line
        elif m := CHECK_LINE.match(line):
            found[(section, m.group(2))] = m.group(1)
    return found


def test_headless_with_a_microphone_can_dictate(tmp_path: Path, pulse: PulseAudio) -> None:
    """No display: a warning, not a failure, as in the daemon (it still journals, publishes captions and obeys
    ctl); the demo model is a warning with the pull command; the microphone is found by name; exit 0. The text
    screen and --json report the same statuses."""
    config = _config(tmp_path, audio={"device": pulse.device_name})
    env = _env(tmp_path, pulse)
    status, checks = _report(config, env)
    assert status == 0, checks
    assert [k for k, c in checks.items() if c["status"] == "FAIL"] == []
    assert checks[("Desktop", "session")]["status"] == "warn"
    assert "WebSocket" in checks[("Desktop", "session")]["detail"]
    assert checks[("Desktop", "typing")]["status"] == "warn"
    assert "typing.enabled: false" in checks[("Desktop", "typing")]["fix"]
    assert checks[("Desktop", "hotkeys")]["status"] == "warn"
    model = checks[("Model", "model")]
    assert (model["status"], model["fix"], model["data"]["demo"]) == (
        "warn",
        "qasr-live pull Qwen/Qwen3-ASR-0.6B",
        True,
    )
    assert Path(model["data"]["path"]) == DEMO_MODEL
    device = checks[("Audio", "audio.device")]
    assert device["status"] == "ok" and device["data"]["device"] == pulse.device_name
    assert checks[("WebSocket", "port")]["status"] == "ok" and "is free" in checks[("WebSocket", "port")]["detail"]
    assert checks[("Runtime", "daemon")]["data"]["running"] is False
    assert "CPU" in checks[("llama.cpp", "build")]["data"]["backends"]
    assert "CPUExecutionProvider" in checks[("onnxruntime", "providers")]["data"]["providers"]
    assert checks[("Packages", "dependencies")]["data"]["versions"]["llama-cpp-python"]
    # the service check cannot reach a user manager here: a warning, handled, not a crash
    assert checks[("Service", "systemd")]["status"] in ("warn", "ok")

    text = _doctor(config, env)
    assert text.returncode == 0
    assert text.stdout.rstrip().endswith("dictation can work")
    assert "fix: qasr-live pull Qwen/Qwen3-ASR-0.6B" in text.stdout
    assert text.stderr == ""  # what the resolver logs about the demo is said on the model line, not after it
    assert _text_statuses(text.stdout) == {k: c["status"] for k, c in checks.items()}


def test_a_microphone_that_is_not_there_fails(tmp_path: Path, pulse: PulseAudio) -> None:
    config = _config(tmp_path, audio={"device": "no-such-microphone"})
    status, checks = _report(config, _env(tmp_path, pulse))
    assert status == EXIT_CHECK_FAILED
    line = checks[("Audio", "audio.device")]
    assert line["status"] == "FAIL" and "'no-such-microphone'" in line["detail"] and "audio.device" in line["fix"]
    assert checks[("Audio", "devices")]["status"] == "ok"
    assert pulse.device_name in " ".join(checks[("Audio", "devices")]["data"]["devices"])


def test_under_x11_it_reports_the_session_and_the_xtest_typist(tmp_path: Path) -> None:
    wav = DEMO_MODEL / "sample.wav"  # audio from a file: this test is about the desktop
    config = _config(tmp_path, audio={"source": str(wav)})
    with Xvfb() as x:
        env = _env(tmp_path, DISPLAY=x.display, XDG_SESSION_TYPE="x11")
        status, checks = _report(config, env)
        hotkeys_config = _config(tmp_path, "microphone.yaml", audio={"source": None})
        _, with_hotkeys = _report(hotkeys_config, env)
    assert status == 0, checks
    session = checks[("Desktop", "session")]
    assert (session["status"], session["data"]["kind"], session["data"]["display"]) == ("ok", "x11", x.display)
    typing = checks[("Desktop", "typing")]
    assert typing["status"] == "ok" and typing["data"]["chain"] == ["pynput", "clipboard"]
    assert "XTest" in typing["data"]["ready"][0] and x.display in typing["data"]["ready"][0]
    if shutil.which("xclip") and shutil.which("xdotool"):
        assert "xclip + Ctrl+V with xdotool" in typing["data"]["ready"][1]
    hotkeys = with_hotkeys[("Desktop", "hotkeys")]
    assert hotkeys["status"] == "ok" and hotkeys["data"]["backend"] == "pynput", hotkeys
    assert "<ctrl>+<alt>+space" in hotkeys["detail"]

    # the same display once its server is gone: typing would fail at every commit, so this is a FAIL
    status, checks = _report(config, env)
    assert status == EXIT_CHECK_FAILED
    assert checks[("Desktop", "session")]["status"] == "FAIL" and x.display in checks[("Desktop", "session")]["detail"]
    assert checks[("Desktop", "typing")]["status"] == "FAIL"


def test_a_truncated_decoder_fails_naming_the_file(tmp_path: Path, pulse: PulseAudio) -> None:
    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model)
    decoder = open_model_dir(model).decoder
    decoder.write_bytes(decoder.read_bytes()[: decoder.stat().st_size // 2])
    config = _config(tmp_path, model={"dir": str(model)}, audio={"device": pulse.device_name})
    env = _env(tmp_path, pulse)
    status, checks = _report(config, env)
    assert status == EXIT_CHECK_FAILED
    line = checks[("Model", "model")]
    assert line["status"] == "FAIL" and str(decoder) in line["detail"] and "truncated" in line["detail"]
    assert "qasr-live pull" in line["fix"] and "qasr-live export" in line["fix"]
    # one broken subsystem: the others were still checked
    assert checks[("Audio", "audio.device")]["status"] == "ok"
    assert checks[("WebSocket", "port")]["status"] == "ok"

    text = _doctor(config, env)
    assert text.returncode == EXIT_CHECK_FAILED
    model_lines = text.stdout.split("\nModel\n")[1].split("\nAudio\n")[0]
    assert model_lines.startswith("  FAIL  model") and decoder.name in model_lines
    assert "fix: `qasr-live pull Qwen/Qwen3-ASR-0.6B`" in model_lines
    assert "fix the FAIL lines" in text.stdout.splitlines()[-1]


def test_a_port_taken_by_another_program_fails_naming_port_and_key(tmp_path: Path) -> None:
    listener = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
            "print(s.getsockname()[1], flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        config = _config(tmp_path, websocket={"port": port}, audio={"source": str(DEMO_MODEL / "sample.wav")})
        status, checks = _report(config, _env(tmp_path))
    finally:
        listener.kill()
        listener.wait()
        assert listener.stdout is not None
        listener.stdout.close()
    assert status == EXIT_CHECK_FAILED
    line = checks[("WebSocket", "port")]
    assert line["status"] == "FAIL" and f"127.0.0.1:{port}" in line["detail"]
    assert "websocket.port" in line["fix"]
    assert f"pid {listener.pid}" in line["detail"]  # the other program, named


def test_a_running_daemon_owns_its_port_and_runtime(tmp_path: Path) -> None:
    port = _free_port()
    config = write_config(
        tmp_path / "config.yaml",
        DEMO_MODEL,
        tmp_path,
        audio={"source": "-"},
        websocket={"port": port},
        typing={"enabled": False},
        hotkeys={"enabled": False},
    )
    daemon = RunningDaemon(config, tmp_path, stdin=subprocess.PIPE, env=_env(tmp_path))
    try:
        status, checks = _report(config, _env(tmp_path))
    finally:
        daemon.stop()
    assert status == 0, checks
    running = checks[("Runtime", "daemon")]
    assert running["status"] == "ok" and running["data"]["running"] is True
    assert running["data"]["status"]["pid"] == daemon.proc.pid
    port_line = checks[("WebSocket", "port")]
    assert port_line["status"] == "ok" and "running daemon" in port_line["detail"] and str(port) in port_line["detail"]
    assert checks[("Runtime", "directory")]["data"]["mode"] == "0700"
    tokens = checks[("Runtime", "tokens")]
    assert tokens["status"] == "ok" and set(tokens["data"]["present"]) == {"token", "read-token"}
    assert checks[("Desktop", "typing")]["status"] == "ok"  # off by config: nothing to fix


def test_a_broken_config_is_a_fail_line_and_the_rest_still_runs(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("websocket:\n  port: 99999\n")
    status, checks = _report(config, _env(tmp_path))
    assert status == EXIT_CHECK_FAILED
    line = checks[("Config", "config")]
    assert line["status"] == "FAIL" and f"{config}:2: websocket.port" in line["detail"]
    assert checks[("Model", "model")]["status"] == "warn"  # checked with the built-in defaults


def test_service_unit_pointing_elsewhere_is_a_warning(tmp_path: Path) -> None:
    env = _env(tmp_path)
    config = _config(tmp_path, audio={"source": str(DEMO_MODEL / "sample.wav")})
    installed = subprocess.run(
        [sys.executable, "-m", "qasr_live", "install-service", "--config", str(config), "--no-enable"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert installed.returncode == 0, installed.stderr
    _, checks = _report(config, env)
    line = checks[("Service", "exec start")]
    assert line["status"] == "ok" and sys.executable in line["detail"] and line["data"]["config"] == str(config)

    unit = tmp_path / "xdg-config" / "systemd" / "user" / "qasr-live.service"
    unit.write_text(unit.read_text().replace(sys.executable, "/opt/gone/bin/python3"))
    _, checks = _report(config, env)
    line = checks[("Service", "exec start")]
    assert line["status"] == "warn" and "does not exist" in line["detail"]
    assert "qasr-live install-service" in line["fix"]


def test_loose_token_files_are_a_warning(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    (run / "token").write_text("secret\n")
    os.chmod(run / "token", 0o644)
    ctx = Context(AppConfig(control=ControlConfig(runtime_dir=str(run))))
    lines = {c.name: c for c in check_runtime(ctx)}
    assert lines["tokens"].status == Status.WARN and "chmod 600" in lines["tokens"].fix
    assert lines["directory"].status == Status.OK and lines["daemon"].data["running"] is False


def test_a_daemon_that_holds_the_lock_but_does_not_answer_is_a_warning(tmp_path: Path) -> None:
    """A daemon still loading its model holds the instance lock before its ctl socket exists: say so, not "not
    running". The lock is held by a real other process, as the daemon would."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(run / 'ctl.lock')!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        ctx = Context(AppConfig(control=ControlConfig(runtime_dir=str(run))))
        line = {c.name: c for c in check_runtime(ctx)}["daemon"]
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert line.status == Status.WARN and f"pid {holder.pid}" in line.detail and "ctl.sock" in line.detail
    released = {c.name: c for c in check_runtime(Context(ctx.cfg))}["daemon"]
    assert released.status == Status.OK and released.data["running"] is False


def test_missing_and_mismatched_packages(monkeypatch) -> None:
    """A missing run-time dependency is a FAIL, a missing feature dependency a warn, a version other than the pin a
    warn; each with the pip command for this interpreter."""
    real = install._installed
    fake = {"websockets": None, "pynput": None, "llama-cpp-python": "0.3.2"}
    monkeypatch.setattr(install, "_installed", lambda name: fake[name] if name in fake else real(name))
    lines = {c.name: c for c in install.check_packages(Context(AppConfig()))}
    assert lines["websockets"].status == Status.FAIL and sys.executable in lines["websockets"].fix
    assert lines["pynput"].status == Status.WARN and "hotkeys" in lines["pynput"].detail
    assert lines["llama-cpp-python"].status == Status.WARN and "==0.3.36" in lines["llama-cpp-python"].detail
    assert lines["dependencies"].data["versions"]["websockets"] is None


def test_a_section_that_raises_becomes_one_fail_line(tmp_path: Path) -> None:
    def broken(ctx: Context) -> list:
        raise ModelError("the model fell over; re-export it")

    def fine(ctx: Context) -> list:
        out = Lines("Fine")
        out.ok("thing", "works")
        return out

    ctx = Context(AppConfig())
    checks = run_checks(ctx, (("Broken", broken), ("Fine", fine)))
    assert [(c.section, c.status) for c in checks] == [("Broken", Status.FAIL), ("Fine", Status.OK)]
    assert checks[0].detail == "the model fell over; re-export it"


@pytest.mark.parametrize(
    ("version", "spec", "ok"),
    [
        ("0.3.36", "==0.3.36", True),
        ("0.3.35", "==0.3.36", False),
        ("2.13.0+cpu", ">=2.13", True),
        ("1.25.2", ">=1.26", False),
        ("17.4", ">=13", True),
        ("2.0.14.post1", ">=2.0.14", True),
        ("6.0", "", True),
    ],
)
def test_version_specifiers(version: str, spec: str, ok: bool) -> None:
    assert _satisfies(version, spec) is ok


def test_wayland_reports_wtype_and_compositor_bindings(tmp_path: Path) -> None:
    """A Wayland session (its socket: a listening Unix socket where the compositor's would be): wtype types on
    wlroots desktops, GNOME types through the RemoteDesktop portal (no session bus here: a warn, the clipboard
    fallback, and the fix names the portal package), hotkeys are the compositor's bindings to `qasr-live ctl`;
    a WAYLAND_DISPLAY without its socket is a FAIL."""
    replay = _config(tmp_path, audio={"source": str(DEMO_MODEL / "sample.wav")})
    microphone = _config(tmp_path, "mic.yaml")
    sway = _env(tmp_path, WAYLAND_DISPLAY="wayland-test", XDG_SESSION_TYPE="wayland", XDG_CURRENT_DESKTOP="sway")
    with socket.socket(socket.AF_UNIX) as compositor:
        compositor.bind(str(tmp_path / "xdg-runtime" / "wayland-test"))
        compositor.listen(1)
        _, on_sway = _report(replay, sway)
        _, on_gnome = _report(replay, {**sway, "XDG_CURRENT_DESKTOP": "GNOME"})
        _, with_mic = _report(microphone, sway)
    session = on_sway[("Desktop", "session")]
    assert (session["status"], session["data"]["kind"]) == ("ok", "wayland")
    typing = on_sway[("Desktop", "typing")]
    assert typing["data"]["chain"] == ["wtype", "clipboard"]
    if shutil.which("wtype") and shutil.which("wl-copy") and shutil.which("wl-paste"):
        assert typing["status"] == "ok", typing
        gnome = on_gnome[("Desktop", "typing")]
        assert gnome["data"]["chain"] == ["portal", "clipboard"]
        assert gnome["status"] == "warn" and "portal: no D-Bus session bus" in gnome["detail"], gnome
        assert "GNOME" in gnome["fix"] and "xdg-desktop-portal" in gnome["fix"], gnome
    # with audio.source set the daemon leaves hotkeys off; with the microphone they are the compositor's bindings
    assert (
        on_sway[("Desktop", "hotkeys")]["status"] == "ok"
        and "audio.source" in on_sway[("Desktop", "hotkeys")]["detail"]
    )
    hotkeys = with_mic[("Desktop", "hotkeys")]
    assert hotkeys["data"]["backend"] == "compositor" and "qasr-live ctl ptt-press" in hotkeys["detail"]

    (tmp_path / "xdg-runtime" / "wayland-test").unlink()
    status, gone = _report(replay, sway)
    assert status == EXIT_CHECK_FAILED and gone[("Desktop", "session")]["status"] == "FAIL"
    assert "wayland-test" in gone[("Desktop", "session")]["detail"]
