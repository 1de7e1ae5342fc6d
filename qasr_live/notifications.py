"""Desktop notifications: one call, :func:`notify`, for anything the user must see while the daemon runs in the
background (typing failed, the text waits on the clipboard, no microphone, the journal cannot be written).

The notification goes to ``org.freedesktop.Notifications`` on the session bus (D-Bus, with jeepney: pure Python,
no compiled binding), every desktop's notification server (GNOME Shell, KDE Plasma, mako, dunst, swaync...). Where
jeepney or the bus is unavailable, ``notify-send`` (libnotify) is tried; where that is missing too, the message
only goes to the log, which it always does. A notification never raises: failing to tell the user must not stop
dictation. ``enabled=False`` (``feedback.notifications: false``) keeps them in the log only.

The same summary is not repeated within :data:`REPEAT_S` seconds (a failing backend would otherwise pop one up per
commit); the notification id is reused so a newer message replaces the older one on screen.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping

__all__ = ["REPEAT_S", "Notifier"]

log = logging.getLogger(__name__)

REPEAT_S = 30.0
_APP = "qasr-live"
_ICON = "audio-input-microphone"


class Notifier:
    """Sends notifications to the session of ``env`` (None: this process's environment)."""

    def __init__(self, env: Mapping[str, str] | None = None, *, enabled: bool = True, timeout_s: float = 2.0):
        self.env = dict(env) if env is not None else None
        self.enabled = enabled
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._replaces = 0  # the id of our last notification, replaced by the next one
        self.sent: list[tuple[str, str, str]] = []  # (route, summary, body): what went out, for `doctor` and tests

    def notify(self, summary: str, body: str = "", *, urgency: str = "normal") -> str:
        """Show a notification; returns the route that carried it: ``dbus``, ``notify-send``, ``log`` (disabled,
        repeated or no route) — never raises."""
        level = logging.WARNING if urgency != "low" else logging.INFO
        log.log(level, "notification: %s%s", summary, f": {body}" if body else "")
        if not self.enabled:
            return "log"
        with self._lock:
            now = time.monotonic()
            if now - self._last.get(summary, -REPEAT_S) < REPEAT_S:
                return "log"
            self._last[summary] = now
            route = self._dbus(summary, body, urgency) or self._notify_send(summary, body, urgency) or "log"
            self.sent.append((route, summary, body))
            return route

    def _environ(self) -> dict[str, str]:
        return dict(os.environ) if self.env is None else self.env

    def _dbus(self, summary: str, body: str, urgency: str) -> str | None:
        env = self._environ()
        address = env.get("DBUS_SESSION_BUS_ADDRESS")
        if not address and env.get("XDG_RUNTIME_DIR"):
            path = os.path.join(env["XDG_RUNTIME_DIR"], "bus")
            address = f"unix:path={path}" if os.path.exists(path) else None
        if not address:
            return None
        try:
            from jeepney import DBusAddress, new_method_call
            from jeepney.io.blocking import open_dbus_connection
        except ImportError:
            return None
        target = DBusAddress(
            "/org/freedesktop/Notifications",
            bus_name="org.freedesktop.Notifications",
            interface="org.freedesktop.Notifications",
        )
        hints = {"urgency": ("y", {"low": 0, "normal": 1, "critical": 2}.get(urgency, 1))}
        msg = new_method_call(
            target,
            "Notify",
            "susssasa{sv}i",
            (_APP, self._replaces, _ICON, summary, body, [], hints, -1),
        )
        try:
            with open_dbus_connection(address) as conn:
                reply = conn.send_and_get_reply(msg, timeout=self.timeout_s)
        except Exception as e:  # any bus failure (no server, refused, timeout) means: try the next route
            log.debug("notification: D-Bus failed: %s", e)
            return None
        if reply.header.message_type.name != "method_return":
            log.debug("notification: D-Bus error reply: %s", reply.body)
            return None
        self._replaces = int(reply.body[0])
        return "dbus"

    def _notify_send(self, summary: str, body: str, urgency: str) -> str | None:
        env = self._environ()
        exe = shutil.which("notify-send", path=env.get("PATH"))
        if exe is None:
            return None
        argv = [exe, "--app-name", _APP, "--icon", _ICON, "--urgency", urgency, summary]
        if body:
            argv.append(body)
        try:
            done = subprocess.run(argv, env=env, capture_output=True, timeout=self.timeout_s, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            log.debug("notification: notify-send failed: %s", e)
            return None
        return "notify-send" if done.returncode == 0 else None
