"""A private D-Bus session bus for tests, and test services on it (jeepney).

    with SessionBus() as bus, FakeNotifications(bus.address) as server:
        Notifier({"DBUS_SESSION_BUS_ADDRESS": bus.address}).notify("hello")
        assert server.calls[0][3] == "hello"

* :class:`SessionBus` runs ``dbus-daemon --session`` (its own, never the machine's) and stops it on exit.
* :class:`Service` owns a bus name and answers method calls on a thread: a subclass maps ``(interface,
  member)`` to a handler returning ``(signature, body)``, or raising :class:`DBusFailure` for an error reply.
  ``emit`` sends a signal (the portal's ``Request.Response``).
* :class:`FakeNotifications` is ``org.freedesktop.Notifications`` recording every ``Notify`` call.
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from devkit.desktop import _die_with_parent, require, stop_process

__all__ = ["DBusFailure", "FakeNotifications", "FakeRemoteDesktop", "Service", "SessionBus"]


class SessionBus:
    """A private session bus; ``address`` is its D-Bus address."""

    def __init__(self, start_timeout: float = 10.0):
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def __enter__(self) -> SessionBus:
        require("dbus-daemon")
        self.proc = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address=1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.start_timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line:
            self.__exit__(None, None, None)
            raise RuntimeError("dbus-daemon did not print its address")
        self.address = line
        return self

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SESSION_BUS_ADDRESS": self.address}

    def __exit__(self, *exc: Any) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stop_process(proc)  # (SIGTERM, as terminate() sends)
        if proc.stdout:
            proc.stdout.close()


class DBusFailure(Exception):
    """Raised by a handler: the call gets an error reply ``name`` with ``message``."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


# A handler answers (signature, body), or (signature, body, after): ``after()`` runs once the reply is sent (a
# portal's Response signal must come after the request's handle).
Handler = Callable[[Any], tuple[Any, ...]]


class Service:
    """Owns ``bus_name`` on the bus at ``address`` and answers calls on a thread."""

    bus_name = ""

    def __init__(self, address: str):
        self.address = address
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []  # (interface, member, body)
        self._stop = False
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._send_lock = threading.Lock()

    def handlers(self) -> dict[tuple[str, str], Handler]:
        return {}

    def __enter__(self) -> Service:
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection

        self._conn = open_dbus_connection(self.address)
        reply = self._conn.send_and_get_reply(message_bus.RequestName(self.bus_name, 4), timeout=5)
        if reply.body[0] != 1:
            raise RuntimeError(f"could not own {self.bus_name}: {reply.body}")
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        from jeepney import HeaderFields, MessageType, new_error, new_method_return

        handlers = self.handlers()
        while not self._stop:
            try:
                msg = self._conn.receive(timeout=0.1)
            except TimeoutError:
                continue
            except Exception:  # the connection closed on exit
                return
            if msg.header.message_type != MessageType.method_call:
                continue
            interface = msg.header.fields.get(HeaderFields.interface, "")
            member = msg.header.fields.get(HeaderFields.member, "")
            self.calls.append((interface, member, tuple(msg.body)))
            handler = handlers.get((interface, member))
            try:
                if handler is None:
                    raise DBusFailure("org.freedesktop.DBus.Error.UnknownMethod", f"no {interface}.{member}")
                sig, body, *after = handler(msg)
                reply = new_method_return(msg, sig, body)
            except DBusFailure as e:
                reply, after = new_error(msg, e.name, "s", (str(e),)), []
            self.send(reply)
            for fn in after:
                fn()

    def send(self, msg: Any) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def emit(self, path: str, interface: str, member: str, signature: str, body: tuple[Any, ...]) -> None:
        from jeepney import DBusAddress, new_signal

        self.send(new_signal(DBusAddress(path, interface=interface), member, signature, body))

    def wait_calls(self, n: int, timeout: float = 5.0) -> list[tuple[str, str, tuple[Any, ...]]]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.calls)

    def __exit__(self, *exc: Any) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join(2)
        if self._conn is not None:
            self._conn.close()


class FakeNotifications(Service):
    """``org.freedesktop.Notifications``: records each ``Notify`` and answers ids 1, 2, 3..."""

    bus_name = "org.freedesktop.Notifications"

    def handlers(self) -> dict[tuple[str, str], Handler]:
        def notify(msg: Any) -> tuple[str, tuple[Any, ...]]:
            return "u", (sum(1 for c in self.calls if c[1] == "Notify"),)

        return {("org.freedesktop.Notifications", "Notify"): notify}


class FakeRemoteDesktop(Service):
    """``org.freedesktop.portal.Desktop`` with the RemoteDesktop interface, as xdg-desktop-portal-gnome/-kde
    speak it: requests answered by a ``Request.Response`` signal, a consent "dialog" at ``Start`` unless the
    restore token of an earlier grant is given, keysyms recorded.

    ``consent``: ``"grant"`` or ``"refuse"`` (the user's answer to the dialog). ``dialogs``: how many times it
    was shown. ``keys``: ``(keysym, state)`` in order. ``valid_tokens``: tokens handed out.
    """

    bus_name = "org.freedesktop.portal.Desktop"
    _IFACE = "org.freedesktop.portal.RemoteDesktop"

    def __init__(self, address: str, consent: str = "grant"):
        super().__init__(address)
        self.consent = consent
        self.dialogs = 0
        self.keys: list[tuple[int, int]] = []
        self.valid_tokens: list[str] = []
        self.sessions: dict[str, dict[str, Any]] = {}
        self.closed: list[str] = []

    def typed(self) -> str:
        """The text the pressed keysyms spell (Return as a line break, BackSpace deleting)."""
        out: list[str] = []
        for sym, state in self.keys:
            if state != 1:
                continue
            if sym == 0xFF0D:
                out.append("\n")
            elif sym == 0xFF08:
                if out:
                    out.pop()
            else:
                out.append(chr(sym - 0x01000000 if sym >= 0x01000000 else sym))
        return "".join(out)

    def _respond(self, msg: Any, token: str, response: int, results: dict[str, Any]) -> tuple[Any, ...]:
        from jeepney import HeaderFields

        sender = msg.header.fields[HeaderFields.sender].lstrip(":").replace(".", "_")
        path = f"/org/freedesktop/portal/desktop/request/{sender}/{token}"

        def respond() -> None:
            self.emit(path, "org.freedesktop.portal.Request", "Response", "ua{sv}", (response, results))

        return "o", (path,), respond

    def handlers(self) -> dict[tuple[str, str], Handler]:
        def create(msg: Any) -> tuple[Any, ...]:
            (options,) = msg.body
            handle = f"/org/freedesktop/portal/desktop/session/s{len(self.sessions) + 1}"
            self.sessions[handle] = {"started": False}
            return self._respond(msg, options["handle_token"][1], 0, {"session_handle": ("s", handle)})

        def select(msg: Any) -> tuple[Any, ...]:
            session, options = msg.body
            if session not in self.sessions:
                raise DBusFailure("org.freedesktop.DBus.Error.AccessDenied", "invalid session")
            self.sessions[session]["options"] = {k: v[1] for k, v in options.items()}
            return self._respond(msg, options["handle_token"][1], 0, {})

        def start(msg: Any) -> tuple[Any, ...]:
            session, _parent, options = msg.body
            chosen = self.sessions[session].get("options", {})
            if chosen.get("restore_token") not in self.valid_tokens:
                self.dialogs += 1  # the user is asked
                if self.consent != "grant":
                    return self._respond(msg, options["handle_token"][1], 1, {})
            token = f"token-{len(self.valid_tokens) + 1}"
            self.valid_tokens.append(token)
            self.sessions[session]["started"] = True
            results = {"devices": ("u", chosen.get("types", 7)), "restore_token": ("s", token)}
            return self._respond(msg, options["handle_token"][1], 0, results)

        def keysym(msg: Any) -> tuple[Any, ...]:
            session, _options, sym, state = msg.body
            if not self.sessions.get(session, {}).get("started"):
                raise DBusFailure("org.freedesktop.DBus.Error.AccessDenied", "session not started")
            self.keys.append((sym, state))
            return "", ()

        def close(msg: Any) -> tuple[Any, ...]:
            from jeepney import HeaderFields

            path = msg.header.fields[HeaderFields.path]
            self.sessions.pop(path, None)
            self.closed.append(path)
            return "", ()

        def get(msg: Any) -> tuple[Any, ...]:
            interface, name = msg.body
            if (interface, name) != (self._IFACE, "version"):
                raise DBusFailure("org.freedesktop.DBus.Error.UnknownProperty", f"no {interface}.{name}")
            return "v", (("u", 2),)

        return {
            ("org.freedesktop.DBus.Properties", "Get"): get,
            (self._IFACE, "CreateSession"): create,
            (self._IFACE, "SelectDevices"): select,
            (self._IFACE, "Start"): start,
            (self._IFACE, "NotifyKeyboardKeysym"): keysym,
            ("org.freedesktop.portal.Session", "Close"): close,
        }
