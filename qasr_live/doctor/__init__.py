"""`qasr-live doctor`: one screen that says what works here and what to fix.

Each section is a check function (:data:`SECTIONS`) that looks (imports, stats, connects, asks the running
daemon) but changes nothing, and returns :class:`~qasr_live.doctor.report.Check` lines: ``ok`` / ``warn`` /
``FAIL``, what was found, and for warn/FAIL the fix. :func:`run_checks` runs them all; a section that raises a
``QasrError`` or an ``OSError`` becomes one FAIL line and the others still run. Rendering is
:mod:`~qasr_live.doctor.report`'s.

The rooms: :mod:`.install` (Python, packages, llama.cpp, onnxruntime, the model), :mod:`.audio`,
:mod:`.desktop` (session, typing, hotkeys, tools), :mod:`.daemon` (runtime directory, systemd unit, WebSocket
port), :mod:`.context` (what the checks share), :mod:`.report`.

**"Dictation can work"** (exit status 0, warnings allowed; else ``EXIT_CHECK_FAILED``) means: the run-time
packages load, the model verifies, audio comes from somewhere, a desktop that is configured can be reached and
typed into, the WebSocket port can be served. Headless (no DISPLAY/WAYLAND_DISPLAY) is a *warning*, as the
daemon treats it: it starts, journals every commit, publishes captions on the WebSocket and obeys
`qasr-live ctl`; only typing and global hotkeys are off. A display that is set but cannot be reached is a FAIL:
typing would fail at every commit. The embedded demo model is a warning (it works, on its small vocabulary).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from qasr_live.config import AppConfig
from qasr_live.doctor.audio import check_audio
from qasr_live.doctor.context import Context
from qasr_live.doctor.daemon import check_runtime, check_service, check_websocket
from qasr_live.doctor.desktop import check_desktop
from qasr_live.doctor.install import check_llama, check_model, check_onnxruntime, check_packages, check_python
from qasr_live.doctor.report import Check, Status, exit_status, first_line, render_json, render_text
from qasr_live.errors import ConfigError, QasrError

__all__ = ["SECTIONS", "Check", "Context", "Status", "exit_status", "render_json", "render_text", "run_checks"]
__all__ += ["run_doctor"]

Section = Callable[[Context], list[Check]]

#: (title, check) in screen order; each check titles its lines with the same name.
SECTIONS: tuple[tuple[str, Section], ...] = (
    ("Python", check_python),
    ("Packages", check_packages),
    ("llama.cpp", check_llama),
    ("onnxruntime", check_onnxruntime),
    ("Model", check_model),
    ("Audio", check_audio),
    ("Desktop", check_desktop),
    ("Runtime", check_runtime),
    ("Service", check_service),
    ("WebSocket", check_websocket),
)


def run_checks(ctx: Context, sections: tuple[tuple[str, Section], ...] = SECTIONS) -> list[Check]:
    """Every section's lines, in order; a section that fails as a whole gives one FAIL line saying why."""
    checks: list[Check] = []
    for title, section in sections:
        try:
            checks.extend(section(ctx))
        except QasrError as e:
            checks.append(Check(title, "error", Status.FAIL, first_line(e), "the message says what to do"))
        except OSError as e:  # a file or socket this section probes refused us: that is its finding
            fix = "check that path's permissions"
            checks.append(Check(title, "error", Status.FAIL, f"{type(e).__name__}: {e}", fix))
    return checks


def run_doctor(
    load_config: Callable[[], AppConfig],
    config_path: Path,
    *,
    as_json: bool = False,
    out: Callable[[str], object] = print,
) -> int:
    """Load the config (a broken one is a FAIL line, and the checks use the defaults), check, print; the exit
    status (:func:`~qasr_live.doctor.report.exit_status`)."""
    data = {"path": str(config_path)}
    try:
        cfg = load_config()
        where = str(config_path) if config_path.is_file() else f"built-in defaults (no {config_path})"
        config = Check("Config", "config", Status.OK, where, "", data)
    except ConfigError as e:
        cfg = AppConfig()
        fix = "correct that key; the checks below use the built-in defaults meanwhile"
        config = Check("Config", "config", Status.FAIL, str(e), fix, data)
    checks = [config, *run_checks(Context(cfg))]
    out(render_json(checks) if as_json else render_text(checks, max(80, shutil.get_terminal_size().columns - 1)))
    return exit_status(checks)
