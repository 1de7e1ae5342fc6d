"""Pasting through the clipboard without losing the user's clipboard: save every MIME type, paste, wait until
the paste was taken, put the saved clipboard back.

* **save** (:func:`snapshot`): the types the clipboard offers (``wl-paste --list-types``; on X11 ``xclip -t
  TARGETS``) and the bytes of each, up to :data:`MAX_TYPE_BYTES` per type and :data:`MAX_TOTAL_BYTES` in all
  (bigger ones are left out and the result says so).
* **paste and wait**: on X11 this process owns the clipboard itself (:class:`XClipboardOwner`, python-xlib): it
  sees the window's request for the text, so the restore waits exactly until the paste was taken (bounded by a
  timeout). On Wayland the text is offered with ``wl-copy --paste-once``, which gives up the clipboard after the
  first paste: the clipboard going empty is the signal.
* **restore**: on X11 the same owner serves **every** saved type again (TARGETS lists them). On Wayland a
  clipboard of several types is served by this process through the data-control protocol
  (:class:`~qasr_live.outputs.typing.wayland_clipboard.WaylandClipboardOwner`, pywayland); where that cannot be
  (no pywayland, or GNOME, which has no such protocol) ``wl-copy`` puts back one type, the richest (an image,
  else text, else the first type offered), and the log says so once. One type alone always goes back with
  ``wl-copy`` (its process outlives the daemon). A clipboard that was empty stays empty.

Every tool failure is a :class:`~qasr_live.errors.TypingBackendError` naming the tool.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qasr_live.desktop import Session, SessionKind
from qasr_live.errors import TypingBackendError
from qasr_live.outputs.typing.tools import run_tool_bytes
from qasr_live.outputs.typing.wayland_clipboard import WaylandClipboardOwner, wayland_socket
from qasr_live.outputs.typing.xtest import connect_x

__all__ = [
    "MAX_TOTAL_BYTES",
    "MAX_TYPE_BYTES",
    "Snapshot",
    "XClipboardOwner",
    "paste_failed",
    "paste_wayland",
    "paste_x11",
    "release_wayland",
    "restore_wayland",
    "snapshot",
]

log = logging.getLogger(__name__)

MAX_TYPE_BYTES = 200_000  # the X protocol without INCR transfers carries about this much in one property
MAX_TOTAL_BYTES = 8_000_000
#: X targets that describe the selection rather than hold its content.
_META_TARGETS = frozenset({"TARGETS", "TIMESTAMP", "MULTIPLE", "SAVE_TARGETS", "DELETE", "INSERT_SELECTION"})
_TEXT_TARGETS = ("UTF8_STRING", "text/plain;charset=utf-8", "text/plain", "STRING", "TEXT")


@dataclass
class Snapshot:
    """The clipboard's content: MIME type (X11: target name) → bytes, in the order the owner offered them."""

    types: dict[str, bytes] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # types too big (or unreadable) to save

    def preferred(self) -> str | None:
        """The type to put back where only one can be: an image, else UTF-8 text, else the first offered."""
        for mime in self.types:
            if mime.startswith("image/"):
                return mime
        for mime in ("text/plain;charset=utf-8", "UTF8_STRING", "text/plain"):
            if mime in self.types:
                return mime
        return next(iter(self.types), None)


def snapshot(session: Session) -> Snapshot:
    """Every type the clipboard holds now (an empty snapshot when it is empty or has no owner)."""
    if session.kind == SessionKind.WAYLAND:
        list_cmd, read_cmd = ["wl-paste", "--list-types"], ["wl-paste", "--no-newline", "--type"]
    elif session.kind == SessionKind.X11:
        list_cmd = ["xclip", "-selection", "clipboard", "-t", "TARGETS", "-o"]
        read_cmd = ["xclip", "-selection", "clipboard", "-o", "-t"]
    else:
        raise TypingBackendError(f"no clipboard to save: {session.describe()}")
    try:
        listed = run_tool_bytes(list_cmd, session.env, timeout=2.0).decode(errors="replace")
    except TypingBackendError as e:
        if "not installed" in str(e):
            raise
        return Snapshot()  # empty clipboard: wl-paste and xclip fail when nobody owns it
    snap = Snapshot()
    total = 0
    for mime in dict.fromkeys(line.strip() for line in listed.splitlines()):
        if not mime or mime in _META_TARGETS:
            continue
        try:
            data = run_tool_bytes([*read_cmd, mime], session.env, timeout=2.0, limit=MAX_TYPE_BYTES + 1)
        except TypingBackendError:
            snap.skipped.append(mime)
            continue
        if len(data) > MAX_TYPE_BYTES or total + len(data) > MAX_TOTAL_BYTES:
            snap.skipped.append(mime)
            continue
        snap.types[mime] = data
        total += len(data)
    return snap


_told_one_type: set[str] = set()  # why all types could not be restored, logged once per reason


def restore_wayland(
    snap: Snapshot, session: Session, owners: dict[str, WaylandClipboardOwner] | None = None
) -> list[str]:
    """Put the snapshot back; the types restored (empty: the clipboard was empty, and is cleared). Several types
    are served by this process (``owners``: kept per compositor socket) where the data-control protocol can be
    spoken; else, and for a single type, ``wl-copy`` puts back the preferred one."""
    mime = snap.preferred()
    if mime is None:
        run_tool_bytes(["wl-copy", "--clear"], session.env, timeout=5.0)
        return []
    if owners is not None and len(snap.types) > 1:
        try:
            _serve_wayland(snap.types, session, owners)
            return list(snap.types)
        except TypingBackendError as e:
            if str(e) not in _told_one_type:
                _told_one_type.add(str(e))
                log.warning("typing: the clipboard is restored as one type only (%s)", e)
    run_tool_bytes(["wl-copy", "--type", mime], session.env, input=snap.types[mime], timeout=5.0)
    return [mime]


def _serve_wayland(types: dict[str, bytes], session: Session, owners: dict[str, WaylandClipboardOwner]) -> None:
    socket = wayland_socket(session.env)
    owner = owners.pop(socket, None)
    if owner is not None and owner.alive:
        try:
            owner.set_types(types)  # our connection is up still (it served the last restore): a new selection
            owners[socket] = owner
            return
        except TypingBackendError:
            log.debug("clipboard: the Wayland clipboard owner stopped: a new one")
    if owner is not None:
        owner.close()
    owners[socket] = WaylandClipboardOwner(session.env, types)


def release_wayland(owner: WaylandClipboardOwner) -> None:
    """Close ``owner``; a clipboard it still serves is handed to ``wl-copy`` first (its preferred type: one
    process, one type), so the user's clipboard outlives the daemon as far as wl-copy allows."""
    types = owner.types if owner.alive else {}
    mime = Snapshot(types).preferred()
    try:
        if mime is not None:
            run_tool_bytes(["wl-copy", "--type", mime], owner.env, input=types[mime], timeout=5.0)
    except TypingBackendError as e:
        log.warning("typing: the restored clipboard is lost with the daemon: %s", e)
    finally:
        owner.close()


def wayland_selection_empty(session: Session) -> bool:
    """Whether nobody offers a clipboard now (``wl-paste --list-types`` fails)."""
    try:
        run_tool_bytes(["wl-paste", "--list-types"], session.env, timeout=2.0)
    except TypingBackendError as e:
        if "not installed" in str(e):
            raise
        return True
    return False


class XClipboardOwner:
    """This process owns the X CLIPBOARD and serves ``types`` (target name → bytes) from a thread until another
    client takes the clipboard or :meth:`close` is called. ``served`` is set when a content target (not
    TARGETS) was delivered to a window: the paste was taken."""

    def __init__(self, display: str, types: dict[str, bytes]) -> None:
        self._d = connect_x(display)
        import Xlib.X

        self._X = Xlib.X
        self._lock = threading.Lock()
        self._types: dict[int, tuple[str, bytes]] = {}
        self.served = threading.Event()
        self.lost = threading.Event()
        self._stop = False
        screen = self._d.screen()
        self._window = screen.root.create_window(0, 0, 1, 1, 0, screen.root_depth)
        self._clipboard = self._d.intern_atom("CLIPBOARD")
        self._targets = self._d.intern_atom("TARGETS")
        self._multiple = self._d.intern_atom("MULTIPLE")
        self._atom_type = self._d.intern_atom("ATOM")
        self.set_types(types)
        self._window.set_selection_owner(self._clipboard, Xlib.X.CurrentTime)
        self._d.sync()
        if self._d.get_selection_owner(self._clipboard) != self._window:
            self._d.close()
            raise TypingBackendError(f"could not take the clipboard of X display {display!r}")
        self._thread = threading.Thread(target=self._serve, name="qasr-clipboard", daemon=True)
        self._thread.start()

    def set_types(self, types: dict[str, bytes]) -> None:
        """Serve ``types`` from now on (the restore after a paste); ``served`` is cleared."""
        atoms = {self._d.intern_atom(name): (name, data) for name, data in types.items()}
        with self._lock:
            self._types = atoms
            self.served.clear()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.lost.is_set()

    def _serve(self) -> None:
        from Xlib import X
        from Xlib.protocol import event as xevent

        fd = self._d.fileno()
        try:
            while not self._stop:
                if not self._d.pending_events():
                    select.select([fd], [], [], 0.1)
                    if not self._d.pending_events():
                        continue
                e = self._d.next_event()
                if e.type == X.SelectionClear:
                    self.lost.set()  # another client copied something: it is theirs now
                    return
                if e.type != X.SelectionRequest:
                    continue
                prop = e.property or e.target  # obsolete clients leave the property None: use the target
                answered = self._answer(e.requestor, e.target, prop)
                notify = xevent.SelectionNotify(
                    time=e.time,
                    requestor=e.requestor,
                    selection=e.selection,
                    target=e.target,
                    property=prop if answered else X.NONE,
                )
                e.requestor.send_event(notify, event_mask=0)
                self._d.flush()
        except Exception:  # the X server went away or the requestor vanished: the clipboard is gone with it
            log.debug("clipboard: the X clipboard owner stopped", exc_info=True)
            self.lost.set()

    def _answer(self, requestor: Any, target: int, prop: int) -> bool:
        with self._lock:
            types = self._types
        if target == self._targets:
            atoms = [self._targets, *types]
            requestor.change_property(prop, self._atom_type, 32, atoms)
            return True
        if target == self._multiple or target not in types:
            return False
        requestor.change_property(prop, target, 8, types[target][1])
        self.served.set()
        return True

    def close(self) -> None:
        """Stop serving (the clipboard empties, as when any application that owns it exits)."""
        self._stop = True
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        try:
            self._d.close()
        except Exception:  # already closed by a lost server
            log.debug("clipboard: closing the X connection failed", exc_info=True)


def text_types(text: str) -> dict[str, bytes]:
    """The targets text is offered under on X11."""
    types = dict.fromkeys(_TEXT_TARGETS, text.encode())
    types["STRING"] = text.encode("latin-1", "replace")  # STRING is Latin-1 by definition
    return types


def wait(condition: Any, timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition()`` until true or ``timeout`` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def paste_failed(e: TypingBackendError, keys: str = "Ctrl+V") -> TypingBackendError:
    return TypingBackendError(f"the text is on the clipboard, but pasting it failed ({e}): press {keys}")


def _not_taken(timeout: float) -> TypingBackendError:
    return TypingBackendError(
        f"pressed Ctrl+V, but no window took the text within {timeout:g} s (typing.paste_timeout_s): "
        "it stays on the clipboard: press Ctrl+V where it should go"
    )


def paste_x11(
    text: str,
    session: Session,
    display: str,
    owners: dict[str, XClipboardOwner],
    press: Callable[[], None],
    timeout: float,
) -> None:
    """Paste ``text`` on X11 with this process owning the clipboard (``owners``: kept per display): the paste is
    known to be taken when the window asks for the text; then every saved type is served again."""
    saved = snapshot(session)
    owner = owners.get(display)
    if owner is not None and owner.alive:
        owner.set_types(text_types(text))  # we own it already (serving a restored clipboard): re-offer
    else:
        owner = owners[display] = XClipboardOwner(display, text_types(text))
    try:
        press()
    except TypingBackendError as e:
        raise paste_failed(e) from None
    if not wait(lambda: owner.served.is_set() or owner.lost.is_set(), timeout):
        raise _not_taken(timeout)
    time.sleep(0.05)  # a window may ask for a second type right after the first
    if owner.lost.is_set():
        return  # something else took the clipboard meanwhile: it is the user's now
    if saved.types:
        owner.set_types(saved.types)
    else:  # the clipboard was empty: empty again
        owner.close()
        owners.pop(display, None)
    if saved.skipped:
        log.warning("typing: clipboard types too big to restore: %s", ", ".join(saved.skipped))


def paste_wayland(
    text: str,
    session: Session,
    press: Callable[[], None],
    timeout: float,
    owners: dict[str, WaylandClipboardOwner] | None = None,
) -> None:
    """Paste ``text`` on Wayland: ``wl-copy --paste-once`` gives the clipboard up after the first paste, its
    emptiness says the paste was taken; then the saved clipboard goes back (:func:`restore_wayland`)."""
    saved = snapshot(session)
    run_tool_bytes(["wl-copy", "--paste-once"], session.env, input=text.encode(), timeout=5.0)
    try:
        press()
    except TypingBackendError as e:
        raise paste_failed(e) from None
    if not wait(lambda: wayland_selection_empty(session), timeout):
        raise _not_taken(timeout)
    restored = restore_wayland(saved, session, owners)
    if len(restored) < len(saved.types):
        log.info("typing: clipboard restored as %s (%d types were there)", ", ".join(restored), len(saved.types))
    if saved.skipped:
        log.warning("typing: clipboard types too big to restore: %s", ", ".join(saved.skipped))
