"""Typing on GNOME and KDE Wayland through the XDG RemoteDesktop portal (keyboard only), without root.

GNOME (mutter) and KDE (KWin) implement no virtual-keyboard protocol, so wtype cannot type there; what they do
offer every application is ``org.freedesktop.portal.RemoteDesktop`` (xdg-desktop-portal with the -gnome or -kde
backend): the desktop asks the user once ("allow qasr-live to control the keyboard?"), then key events sent to
the session reach the focused window. :class:`PortalKeyboard` talks to it over the session bus (jeepney):

1. ``CreateSession`` → ``SelectDevices`` (``types``: keyboard only; ``persist_mode`` 2: until revoked; the
   ``restore_token`` saved by the last run) → ``Start``. Each call answers with a request object whose
   ``Response`` signal carries the outcome (0 granted, 1 refused by the user, 2 failed).
2. ``Start`` returns a new ``restore_token``: saved (``$XDG_STATE_HOME/qasr-live/portal-restore-token``, 0600), so
   the next daemon start restores the session without asking again.
3. Text goes out as ``NotifyKeyboardKeysym`` press/release pairs (Latin-1 keysyms are the code point, others
   ``0x01000000`` + it, a line break is Return). The desktop maps each keysym onto the active layout; a
   character the layout lacks fails there, and the typist hands the rest to the next backend.

A refusal is remembered for the daemon's run (the dialog is not shown again at every commit): the text goes to
the clipboard route and the user is told how to allow it. Verified here against a test service speaking the
protocol on a private bus (tests/test_portal.py); on a real GNOME/KDE session it is not verified here.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qasr_live.errors import TypingBackendError

__all__ = ["PortalKeyboard", "default_token_path", "keysym", "probe_portal"]

log = logging.getLogger(__name__)

_BUS_NAME = "org.freedesktop.portal.Desktop"
_PATH = "/org/freedesktop/portal/desktop"
_IFACE = "org.freedesktop.portal.RemoteDesktop"
_KEYBOARD = 1
_PERSIST_UNTIL_REVOKED = 2


def keysym(ch: str) -> int:
    """The keysym of a character: Return for a line break, Latin-1 = the code point, else 0x01000000 + it."""
    if ch == "\n":
        return 0xFF0D
    cp = ord(ch)
    return cp if 0x20 <= cp <= 0x7E or 0xA0 <= cp <= 0xFF else 0x01000000 + cp


def default_token_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_STATE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path(env.get("HOME", "~")).expanduser() / ".local/state"
    return root / "qasr-live" / "portal-restore-token"


def _bus_address(env: Mapping[str, str]) -> str:
    address = env.get("DBUS_SESSION_BUS_ADDRESS", "")
    if not address and env.get("XDG_RUNTIME_DIR"):
        path = os.path.join(env["XDG_RUNTIME_DIR"], "bus")
        address = f"unix:path={path}" if os.path.exists(path) else ""
    if not address:
        raise TypingBackendError("no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set): the portal needs one")
    return address


class PortalKeyboard:
    """A RemoteDesktop portal session with a keyboard, opened on first use (the consent dialog, if any)."""

    def __init__(self, env: Mapping[str, str], *, token_path: Path | None = None, consent_timeout_s: float = 120.0):
        self.env = dict(env)
        self.token_path = token_path or default_token_path(self.env)
        self.consent_timeout_s = consent_timeout_s
        self._conn: Any = None
        self._session: str | None = None
        self._refused: str | None = None  # why the user or the desktop said no (this run: do not ask again)
        self._lock = threading.Lock()

    # -- session ----------------------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._conn is None:
            try:
                from jeepney.io.blocking import open_dbus_connection
            except ImportError as e:
                raise TypingBackendError(f"jeepney is not installed ({e}): pip install jeepney") from None
            try:
                self._conn = open_dbus_connection(_bus_address(self.env))
            except (OSError, ValueError) as e:
                raise TypingBackendError(f"cannot connect to the D-Bus session bus: {e}") from None
        return self._conn

    def _request(self, method: str, signature: str, args: tuple[Any, ...], timeout: float) -> dict[str, Any]:
        """Call a portal method that answers through a Request object; the results of its ``Response``."""
        from jeepney import DBusAddress, MatchRule, MessageType, new_method_call
        from jeepney.bus_messages import message_bus

        conn = self._connect()
        token = "qasr_" + secrets.token_hex(6)
        sender = conn.unique_name.lstrip(":").replace(".", "_")
        path = f"{_PATH}/request/{sender}/{token}"
        rule = MatchRule(type="signal", interface="org.freedesktop.portal.Request", member="Response", path=path)
        conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=5)
        options = args[-1]
        options["handle_token"] = ("s", token)
        call = new_method_call(DBusAddress(_PATH, bus_name=_BUS_NAME, interface=_IFACE), method, signature, args)
        with conn.filter(rule) as queue:
            try:
                reply = conn.send_and_get_reply(call, timeout=10)
            except TimeoutError:
                raise TypingBackendError(f"the desktop portal did not answer {method}") from None
            if reply.header.message_type == MessageType.error:
                detail = reply.body[0] if reply.body else reply.header.fields
                if "ServiceUnknown" in str(reply.header.fields) or "ServiceUnknown" in str(detail):
                    raise TypingBackendError(
                        "no XDG desktop portal on the session bus: install xdg-desktop-portal with the -gnome or "
                        "-kde backend"
                    )
                raise TypingBackendError(f"the desktop portal refused {method}: {detail}")
            try:
                signal = conn.recv_until_filtered(queue, timeout=timeout)
            except TimeoutError:
                raise TypingBackendError(f"no answer to {method} within {timeout:.0f} s (a consent dialog?)") from None
        response, results = signal.body
        if response == 1:
            raise _Refused(f"{method}: the user refused keyboard access")
        if response != 0:
            raise _Refused(f"{method}: the desktop refused keyboard access (response {response})")
        return {key: value[1] for key, value in results.items()}

    def _start(self) -> str:
        if self._session is not None:
            return self._session
        if self._refused:
            raise TypingBackendError(self._refused)
        try:
            created = self._request("CreateSession", "a{sv}", ({"session_handle_token": ("s", "qasr")},), 10)
            session = str(created["session_handle"])
            options: dict[str, Any] = {"types": ("u", _KEYBOARD), "persist_mode": ("u", _PERSIST_UNTIL_REVOKED)}
            token = self._read_token()
            if token:
                options["restore_token"] = ("s", token)
            self._request("SelectDevices", "oa{sv}", (session, options), 10)
            started = self._request("Start", "osa{sv}", (session, "", {}), self.consent_timeout_s)
        except _Refused as e:
            self._refused = (
                f"keyboard access through the desktop portal was refused ({e}); restart the daemon to be asked "
                "again, or set typing.backend: clipboard"
            )
            raise TypingBackendError(self._refused) from None
        if not int(started.get("devices", _KEYBOARD)) & _KEYBOARD:
            raise TypingBackendError("the desktop portal granted no keyboard")
        if started.get("restore_token"):
            self._save_token(str(started["restore_token"]))
        self._session = session
        return session

    def _read_token(self) -> str | None:
        try:
            return self.token_path.read_text().strip() or None
        except OSError:
            return None

    def _save_token(self, token: str) -> None:
        try:
            self.token_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
        except OSError as e:  # typing works; only the next start will ask again
            log.warning("typing: cannot save the portal's restore token to %s: %s", self.token_path, e)

    # -- typing -----------------------------------------------------------------------------------------

    def type(self, text: str) -> None:
        """Type ``text``; ``TypingBackendError.delivered`` says how many characters went out before a failure."""
        with self._lock:
            session = self._start()
            done = 0
            try:
                for ch in text:
                    self._key(session, keysym(ch))
                    done += 1
            except TypingBackendError as e:
                raise TypingBackendError(f"{e} (after {done} of {len(text)} characters)", delivered=done) from None

    def press_keys(self, keysyms: list[int]) -> None:
        """Tap each keysym in turn (BackSpace for "scratch that")."""
        with self._lock:
            session = self._start()
            for sym in keysyms:
                self._key(session, sym)

    def _key(self, session: str, sym: int) -> None:
        from jeepney import DBusAddress, MessageType, new_method_call

        target = DBusAddress(_PATH, bus_name=_BUS_NAME, interface=_IFACE)
        for state in (1, 0):
            call = new_method_call(target, "NotifyKeyboardKeysym", "oa{sv}iu", (session, {}, sym, state))
            try:
                reply = self._conn.send_and_get_reply(call, timeout=5)
            except (TimeoutError, OSError) as e:
                self._session = None
                raise TypingBackendError(f"the desktop portal stopped answering: {e}") from None
            if reply.header.message_type == MessageType.error:
                self._session = None  # a closed session (revoked, desktop restarted): a new one next time
                raise TypingBackendError(
                    f"the desktop portal refused key {sym:#x}: {reply.body[0] if reply.body else ''}"
                )

    def close(self) -> None:
        conn, self._conn = self._conn, None
        session, self._session = self._session, None
        if conn is None:
            return
        if session is not None:
            from jeepney import DBusAddress, new_method_call

            call = new_method_call(
                DBusAddress(session, bus_name=_BUS_NAME, interface="org.freedesktop.portal.Session"), "Close"
            )
            try:
                conn.send_and_get_reply(call, timeout=2)
            except Exception as e:  # the desktop may be gone already
                log.debug("typing: closing the portal session failed: %s", e)
        conn.close()


def probe_portal(env: Mapping[str, str]) -> str:
    """What the portal route will use in this session, asking nothing of the user (``qasr-live doctor``);
    ``TypingBackendError`` when there is no session bus, no portal, or no RemoteDesktop interface."""
    try:
        from jeepney import DBusAddress, MessageType, new_method_call
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection
    except ImportError as e:
        raise TypingBackendError(f"jeepney is not installed ({e}): pip install jeepney") from None
    try:
        with open_dbus_connection(_bus_address(env)) as conn:
            if not conn.send_and_get_reply(message_bus.NameHasOwner(_BUS_NAME), timeout=5).body[0]:
                raise TypingBackendError(
                    "no XDG desktop portal on the session bus: install xdg-desktop-portal with the -gnome or "
                    "-kde backend"
                )
            target = DBusAddress(_PATH, bus_name=_BUS_NAME, interface="org.freedesktop.DBus.Properties")
            reply = conn.send_and_get_reply(new_method_call(target, "Get", "ss", (_IFACE, "version")), timeout=5)
    except (OSError, TimeoutError, ValueError) as e:
        raise TypingBackendError(f"cannot ask the session bus: {e}") from None
    if reply.header.message_type == MessageType.error:
        raise TypingBackendError("the desktop portal has no RemoteDesktop interface (its backend lacks it)")
    token = default_token_path(env)
    asked = "allowed before (restore token kept)" if token.exists() else "the desktop asks once at the first text"
    return f"RemoteDesktop portal version {reply.body[0][1]}, keyboard only; {asked}"


class _Refused(TypingBackendError):
    """The user or the desktop said no (remembered for the run)."""
