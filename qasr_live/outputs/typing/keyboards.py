"""The typing backends' connections and how each one delivers text (the :class:`~qasr_live.outputs.typing.chain.Typist`
decides which one, when, and what to do when it fails).

:class:`Keyboards` owns what stays open between calls: the XTest keyboards (by X display), the macOS pynput
controller, the RemoteDesktop portal session, this process's X11 clipboard owners, and on macOS the clipboard text
waiting to be put back after a paste. Every failure raises :class:`~qasr_live.errors.TypingBackendError`, with
``delivered`` saying how much of the text got through.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qasr_live.config import TypingConfig
from qasr_live.desktop import Session, SessionKind
from qasr_live.errors import TypingBackendError
from qasr_live.events import OutputBackend
from qasr_live.outputs.typing.clipboard import (
    XClipboardOwner,
    paste_failed,
    paste_wayland,
    paste_x11,
    release_wayland,
)
from qasr_live.outputs.typing.portal import PortalKeyboard
from qasr_live.outputs.typing.tools import (
    clipboard_commands,
    paste_with_tool,
    read_clipboard,
    type_with_wtype,
    write_clipboard,
)
from qasr_live.outputs.typing.wayland_clipboard import WaylandClipboardOwner
from qasr_live.outputs.typing.xtest import XKeyboard

__all__ = ["Keyboards"]

log = logging.getLogger("qasr_live.outputs.typing.chain")  # the typist's logger: one name for all typing logs


class Keyboards:
    """The backends of one :class:`~qasr_live.outputs.typing.chain.Typist`; called under its ``lock`` (an RLock,
    also taken by the timer that puts the clipboard back). ``session``: the session now (for that restore)."""

    def __init__(
        self,
        config: TypingConfig,
        lock: threading.RLock,
        session: Callable[[], Session],
        *,
        clipboard_restore_s: float,
        portal_token_path: Path | None,
    ) -> None:
        self.config = config
        self.clipboard_restore_s = clipboard_restore_s
        self._lock = lock
        self._session = session
        self._x: dict[str, XKeyboard] = {}  # XTest keyboards by X display
        self._mac_controller: Any = None  # pynput keyboard controller (macOS)
        self._restore: threading.Timer | None = None
        self._saved_clipboard: tuple[str, str | None] | None = None  # (our text, previous text)
        self._portal: PortalKeyboard | None = None  # GNOME/KDE: the RemoteDesktop portal session
        self._portal_token_path = portal_token_path
        self._owners: dict[str, XClipboardOwner] = {}  # X11: this process's clipboard, by display
        self._wl_owners: dict[str, WaylandClipboardOwner] = {}  # Wayland: a restored clipboard, by socket

    def close(self) -> None:
        """Put back a clipboard waiting to be restored, hand a restored Wayland clipboard to wl-copy, and close
        the connections."""
        with self._lock:
            timer, self._restore = self._restore, None
            if timer is not None:
                timer.cancel()
                self._restore_clipboard()
            keyboards, self._x = self._x, {}
            owners, self._owners = self._owners, {}
            wl_owners, self._wl_owners = self._wl_owners, {}
            portal, self._portal = self._portal, None
            self._mac_controller = None
        for kb in keyboards.values():
            kb.close()
        for owner in owners.values():
            owner.close()
        for wl_owner in wl_owners.values():
            release_wayland(wl_owner)
        if portal is not None:
            portal.close()

    # -- backends -----------------------------------------------------------------------------------

    def deliver(self, backend: OutputBackend, text: str, session: Session) -> None:
        if backend == OutputBackend.PYNPUT:
            self._type_pynput(text, session)
        elif backend == OutputBackend.WTYPE:
            type_with_wtype(text, session, self.config.char_delay_ms)
        elif backend == OutputBackend.PORTAL:
            self.portal_keyboard(session).type(text)
        else:
            self._paste_clipboard(text, session)

    def portal_keyboard(self, session: Session) -> PortalKeyboard:
        if session.kind != SessionKind.WAYLAND:
            raise TypingBackendError(
                f"the RemoteDesktop portal types into Wayland sessions; this is {session.describe()}"
            )
        if self._portal is None:
            self._portal = PortalKeyboard(session.env, token_path=self._portal_token_path)
        return self._portal

    def xkb(self, display: str) -> XKeyboard:
        """The XTest keyboard of ``display``, (re)connected as needed (``TypingBackendError`` names the display)."""
        kb = self._x.get(display)
        if kb is None or kb.closed:
            kb = self._x[display] = XKeyboard(display)
        return kb

    def _mac(self) -> Any:
        if self._mac_controller is None:
            try:
                from pynput.keyboard import Controller

                self._mac_controller = Controller()
            except Exception as e:  # pynput fails with many types where it has no backend (ImportError, OSError...)
                raise TypingBackendError(f"pynput is unavailable: {str(e).splitlines()[0]}") from e
        return self._mac_controller

    def _type_pynput(self, text: str, session: Session) -> None:
        delay = self.config.char_delay_ms / 1000.0
        if session.kind == SessionKind.MACOS:
            controller = self._mac()
            for i, ch in enumerate(text):
                try:
                    controller.type(ch)
                except Exception as e:  # pynput's macOS controller raises what Quartz raises: report it as a failure
                    raise TypingBackendError(
                        f"failed at character {i + 1} of {len(text)} ({ch!r}): {e}", delivered=i
                    ) from e
                if delay:
                    time.sleep(delay)
            return
        if session.kind == SessionKind.WAYLAND:
            raise TypingBackendError("pynput cannot type into Wayland windows (only XWayland ones); use wtype")
        if session.kind != SessionKind.X11 or not session.display:
            raise TypingBackendError(f"no X display to type into: {session.describe()}")
        reused = session.display in self._x
        try:
            self.xkb(session.display).type(text, delay)
        except TypingBackendError as e:
            if not (reused and e.delivered == 0 and self._x[session.display].closed):
                raise
            # the connection was kept from an X server that has gone since: once more, afresh
            self.xkb(session.display).type(text, delay)

    # -- clipboard ----------------------------------------------------------------------------------

    def _paste_clipboard(self, text: str, session: Session) -> None:
        clipboard_commands(session)  # a session without a clipboard fails here, leaving a pending restore alone
        if session.kind == SessionKind.X11 and session.display:
            self._paste_x11(text, session, session.display)
        elif session.kind == SessionKind.WAYLAND:
            self._paste_wayland(text, session)
        else:
            self._paste_mac(text, session)

    def _paste_x11(self, text: str, session: Session, display: str) -> None:
        press = functools.partial(self._press_paste, session)
        paste_x11(text, session, display, self._owners, press, self.config.paste_timeout_s)

    def _paste_wayland(self, text: str, session: Session) -> None:
        press = functools.partial(self._press_paste, session)
        paste_wayland(text, session, press, self.config.paste_timeout_s, self._wl_owners)

    def _paste_mac(self, text: str, session: Session) -> None:
        timer, self._restore = self._restore, None
        if timer is not None:
            timer.cancel()  # the clipboard still holds our previous text; keep the saved original
            previous = self._saved_clipboard[1] if self._saved_clipboard else None
        else:
            previous = read_clipboard(session)
        self._saved_clipboard = None
        write_clipboard(text, session)
        try:
            self._press_paste(session)
        except TypingBackendError as e:
            raise paste_failed(e, "Cmd+V") from None
        if previous is not None and previous != text and self.clipboard_restore_s >= 0:
            self._saved_clipboard = (text, previous)
            self._restore = threading.Timer(self.clipboard_restore_s, self._restore_later, args=(session,))
            self._restore.daemon = True
            self._restore.start()

    def _press_paste(self, session: Session) -> None:
        if paste_with_tool(session):
            return
        if session.kind == SessionKind.X11 and session.display:
            self.xkb(session.display).chord("Control_L", "v")
            return
        controller = self._mac()
        try:
            from pynput.keyboard import Key

            with controller.pressed(Key.cmd):
                controller.press("v")
                controller.release("v")
        except Exception as e:  # pynput's macOS controller raises what Quartz raises: report it as a failure
            raise TypingBackendError(f"cannot press Cmd+V with pynput: {e}") from e

    def _restore_later(self, session: Session) -> None:
        with self._lock:
            if self._restore is None or self._restore is not threading.current_thread():
                return  # cancelled or replaced meanwhile
            self._restore = None
            self._restore_clipboard(session)

    def _restore_clipboard(self, session: Session | None = None) -> None:
        saved, self._saved_clipboard = self._saved_clipboard, None
        if saved is None:
            return
        ours, previous = saved
        session = session or self._session()
        try:
            if read_clipboard(session) != ours:
                return  # the user copied something meanwhile: leave it
            write_clipboard(previous or "", session)
        except TypingBackendError as e:
            log.warning("typing: could not restore the previous clipboard: %s", e)
