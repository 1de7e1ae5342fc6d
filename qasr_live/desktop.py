"""Which graphical session this user has: X11, Wayland, macOS or none, and the environment that reaches it.

Both the typist (where to type, with which tools) and the hotkey listener (whether global hotkeys can work) ask
:func:`detect_session`. It reads ``XDG_SESSION_TYPE``, ``WAYLAND_DISPLAY``, ``DISPLAY`` and the platform; when
neither display variable is set, the systemd user manager's environment is asked, so a service started before the
graphical session (``systemctl --user start qasr-live`` at login) still finds it once the session has imported its
variables there.
"""

from __future__ import annotations

import enum
import gc
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qasr_live.errors import DisplayError

__all__ = ["SESSION_VARS", "Session", "SessionKind", "detect_session", "open_x_display"]

#: The environment variables that describe the graphical session.
SESSION_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "XDG_CURRENT_DESKTOP", "XAUTHORITY")
_SYSTEMD_CACHE_S = 5.0
_systemd_cache: tuple[float, dict[str, str]] = (0.0, {})
_systemd_lock = threading.Lock()


class SessionKind(enum.StrEnum):
    """The kind of graphical session."""

    X11 = "x11"
    WAYLAND = "wayland"
    MACOS = "macos"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Session:
    """The graphical session text goes to, and the environment for the tools that reach it."""

    kind: SessionKind
    env: Mapping[str, str]
    display: str | None = None  # X11 display (on Wayland: XWayland's, if any)
    wayland_display: str | None = None
    desktop: str = ""  # XDG_CURRENT_DESKTOP

    def describe(self) -> str:
        if self.kind == SessionKind.X11:
            return f"X11 display {self.display}"
        if self.kind == SessionKind.WAYLAND:
            return f"Wayland display {self.wayland_display}" + (f" ({self.desktop})" if self.desktop else "")
        if self.kind == SessionKind.MACOS:
            return "macOS"
        return "no graphical session (DISPLAY and WAYLAND_DISPLAY are not set)"


def _systemd_session_env() -> dict[str, str]:
    """The display variables of the systemd user manager (imported there by the graphical session); cached 5 s."""
    global _systemd_cache
    with _systemd_lock:
        when, cached = _systemd_cache
        if time.monotonic() - when < _SYSTEMD_CACHE_S:
            return cached
        found: dict[str, str] = {}
        if shutil.which("systemctl"):
            try:
                done = subprocess.run(
                    ["systemctl", "--user", "show-environment"],
                    capture_output=True,
                    text=True,
                    timeout=2,
                    check=False,
                )
                for line in done.stdout.splitlines() if done.returncode == 0 else ():
                    key, sep, value = line.partition("=")
                    if sep and key in SESSION_VARS and value:
                        found[key] = value
            except (OSError, subprocess.SubprocessError):
                pass  # no user manager (a container, another init): the session is what os.environ says
        _systemd_cache = (time.monotonic(), found)
        return found


def detect_session(env: Mapping[str, str] | None = None, *, platform: str | None = None) -> Session:
    """The session to type into, from ``env`` (default: this process's environment, completed from the systemd
    user manager when neither ``DISPLAY`` nor ``WAYLAND_DISPLAY`` is set)."""
    platform = platform or sys.platform
    if env is None:
        env = dict(os.environ)
        if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY") and platform != "darwin":
            env.update(_systemd_session_env())
    env = dict(env)
    if platform == "darwin":
        return Session(SessionKind.MACOS, env)
    display = env.get("DISPLAY") or None
    wayland = env.get("WAYLAND_DISPLAY") or None
    kind = env.get("XDG_SESSION_TYPE", "").strip().lower()
    desktop = env.get("XDG_CURRENT_DESKTOP", "")
    if (wayland and kind != "x11") or kind == "wayland":
        # (XDG_SESSION_TYPE=wayland without WAYLAND_DISPLAY: libwayland's default socket, wayland-0, is tried.)
        return Session(SessionKind.WAYLAND, env, display, wayland or "wayland-0", desktop)
    if display:
        return Session(SessionKind.X11, env, display, None, desktop)
    return Session(SessionKind.NONE, env, None, None, desktop)


def open_x_display(name: str | None) -> Any:
    """``Xlib.display.Display(name)``, or :class:`~qasr_live.errors.DisplayError` with python-xlib's reason.

    python-xlib leaves the socket of a connection it could not complete (no server, refused authorization) to
    the garbage collector, which then warns about an unclosed socket somewhere else; it is let go here, where
    the failure happens. ``ImportError`` when python-xlib is missing."""
    import Xlib.display

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            return Xlib.display.Display(name)
        except Exception as e:  # DisplayNameError, DisplayConnectionError, ConnectionClosedError, OSError...
            reason = str(e)
        gc.collect()  # the failed connection's socket sits in a reference cycle of the exception's frames
    raise DisplayError(reason)
