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
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from devkit.desktop import _die_with_parent, require

__all__ = ["DBusFailure", "FakeNotifications", "Service", "SessionBus"]


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
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


class DBusFailure(Exception):
    """Raised by a handler: the call gets an error reply ``name`` with ``message``."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


Handler = Callable[[Any], tuple[str, tuple[Any, ...]]]


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
                sig, body = handler(msg)
                reply = new_method_return(msg, sig, body)
            except DBusFailure as e:
                reply = new_error(msg, e.name, "s", (str(e),))
            self.send(reply)

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
