"""The typist: committed text to the focused window, trying backends in order until one delivers.

The daemon calls :meth:`Typist.type_text` (or :meth:`Typist.type_commit`, which also puts ``typing.separator``
between utterances) from a worker thread, with **committed text only**: typed text is never revised
(append-only). Each call:

1. **sanitises** the text (:func:`~qasr_live.outputs.typing.sanitize.sanitize`: no Tab, no invisible controls,
   no Enter unless asked for: ``newlines=True`` for the voice commands' line breaks and ``typing.separator``);
2. **waits until the hotkey's modifiers are released** (up to ``typing.modifier_timeout_s``), so a Ctrl or Alt
   still held after (or during) push-to-talk does not turn letters into shortcuts. Two sources say what is held:
   the hotkey listener (``hotkeys=``, :class:`HotkeyState`: it saw every key event) and, in an X11 session, the
   X server's own key state (so a Ctrl held for a window-manager binding that ran ``qasr-live ctl`` counts too).
   If the time runs out on X11, the held modifiers are released with XTest for the typing and pressed again
   after it (what ``xdotool --clearmodifiers`` does), inside the listener's ``synthetic_input()`` block so a
   push-to-talk still held goes on; elsewhere typing goes on and the result's ``notes`` say so;
3. **chooses the backends at output time** from the session (:func:`~qasr_live.desktop.detect_session`) and tries
   them in order until one succeeds (:func:`backend_chain`): X11 and macOS: pynput → clipboard; GNOME/KDE
   Wayland (``XDG_CURRENT_DESKTOP``): the RemoteDesktop portal → clipboard; other Wayland (wlroots): wtype →
   clipboard (pynput would only reach XWayland windows); no session: clipboard (fails, "no graphical
   session"). An explicit ``typing.backend`` is tried first and the clipboard after it. A backend that fails
   part-way reports how far it got, and the next one gets only the rest, so nothing is typed twice.

Also: ``type_commit(..., scratch=True)`` deletes (BackSpace) what was typed of the utterance, or of the previous
one ("scratch that"); on X11 :meth:`Typist.mark_target` remembers the window focused when an utterance starts
and ``typing.focus_changed`` decides what happens when another one has the focus when its text comes.

Backends (named as in ``typing.backend`` and the ``output`` events, :class:`~qasr_live.events.OutputBackend`):
**pynput** (macOS: pynput's controller; X11: :class:`~qasr_live.outputs.typing.xtest.XKeyboard`), **wtype**
(:mod:`~qasr_live.outputs.typing.tools`), **portal** (:mod:`~qasr_live.outputs.typing.portal`), **clipboard**
(:mod:`~qasr_live.outputs.typing.clipboard`: the user's clipboard saved, every type, and put back once the
window took the paste; if copying worked but pasting did not, the attempt fails with "text is on the clipboard:
press Ctrl+V").

**Failure is never silent**: :class:`OutputResult` lists every :class:`Attempt` (backend, ok, error, what it
delivered, time), and the daemon publishes one ``output`` event per attempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sys
import threading
import time
from collections.abc import Collection, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qasr_live.config import TypingConfig
from qasr_live.desktop import Session, SessionKind, detect_session
from qasr_live.errors import TypingBackendError
from qasr_live.events import OutputBackend
from qasr_live.outputs.typing.clipboard import XClipboardOwner, paste_failed, paste_wayland, paste_x11
from qasr_live.outputs.typing.portal import PortalKeyboard
from qasr_live.outputs.typing.sanitize import sanitize
from qasr_live.outputs.typing.tools import (
    clipboard_commands,
    paste_with_tool,
    read_clipboard,
    type_keys,
    type_with_wtype,
    write_clipboard,
)
from qasr_live.outputs.typing.xtest import XKeyboard

__all__ = ["BACKENDS", "MODIFIERS", "Attempt", "HotkeyState", "OutputResult", "Typist", "backend_chain"]

log = logging.getLogger(__name__)

#: The backends that can deliver text (``OutputBackend.NONE`` is what a result says when nothing was typed).
BACKENDS: tuple[OutputBackend, ...] = (
    OutputBackend.PYNPUT,
    OutputBackend.WTYPE,
    OutputBackend.PORTAL,
    OutputBackend.CLIPBOARD,
)


def _portal_desktop(session: Session) -> bool:
    """GNOME and KDE: no virtual-keyboard protocol (wtype cannot work), the RemoteDesktop portal instead."""
    names = {part.strip().lower() for part in session.desktop.split(":")}
    return bool(names & {"gnome", "kde"})  # (Ubuntu: "ubuntu:GNOME")


#: Generic modifier names, as the hotkey listener reports them.
MODIFIERS: tuple[str, ...] = ("ctrl", "alt", "shift", "cmd", "alt_gr")


def backend_chain(configured: str, session: Session) -> list[OutputBackend]:
    """The backends to try, in order, for ``typing.backend`` = ``configured`` in ``session``."""
    if configured != "auto":
        if configured not in BACKENDS:
            raise ValueError(f"typing.backend: unknown backend {configured!r}")
        first = OutputBackend(configured)
        return [first] if first == OutputBackend.CLIPBOARD else [first, OutputBackend.CLIPBOARD]
    if session.kind in (SessionKind.X11, SessionKind.MACOS):
        return [OutputBackend.PYNPUT, OutputBackend.CLIPBOARD]
    if session.kind == SessionKind.WAYLAND:
        first = OutputBackend.PORTAL if _portal_desktop(session) else OutputBackend.WTYPE
        return [first, OutputBackend.CLIPBOARD]
    return [OutputBackend.CLIPBOARD]


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Attempt:
    """One backend's try at delivering text."""

    backend: OutputBackend
    ok: bool
    error: str | None  # why it failed (None when ok)
    text: str  # what it was asked to deliver
    delivered: str  # what it is known to have delivered ("" when nothing; the prefix typed before a failure)
    seconds: float


@dataclass(frozen=True, slots=True)
class OutputResult:
    """What became of one :meth:`Typist.type_text` call.

    ``backend``: the backend that delivered the text (``NONE`` when there was nothing to type or typing is
    disabled; the last one tried when all failed). ``error``: ``None`` when ``ok``, else every attempt's error.
    ``attempts``: every try in order; publish one ``output`` event per attempt.
    """

    backend: OutputBackend
    ok: bool
    error: str | None
    text: str  # the sanitised text that was to be delivered
    attempts: tuple[Attempt, ...] = ()
    session: str = ""  # Session.describe()
    waited_s: float = 0.0  # time spent waiting for modifiers to be released
    notes: tuple[str, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------------------------- the typist


class HotkeyState(Protocol):
    """What the typist needs from the hotkey listener (:class:`~qasr_live.control.hotkeys.HotkeyListener`)."""

    def held_modifiers(self) -> Collection[str]:
        """Generic names (``ctrl``, ``alt``, ``shift``, ``cmd``, ``alt_gr``) of the modifiers held now."""
        ...

    def synthetic_input(self) -> AbstractContextManager[Any]:
        """A block in which this process injects key events that must not end a hotkey hold."""
        ...


class Typist:
    """Delivers committed text to the focused window; thread-safe (calls are serialised).

    ``config``: the ``typing`` section. ``hotkeys``: what the hotkey listener knows (a
    :class:`~qasr_live.control.hotkeys.HotkeyListener`, or anything with ``held_modifiers()`` and
    ``synthetic_input()``, see :class:`HotkeyState`); may be set later with :meth:`set_hotkeys`. ``env``: a fixed
    environment describing the session (tests); ``None`` = this process's, read again at every call.
    ``clipboard_restore_s``: delay before the clipboard backend puts the previous clipboard text back.
    """

    def __init__(
        self,
        config: TypingConfig | None = None,
        *,
        hotkeys: HotkeyState | None = None,
        env: Mapping[str, str] | None = None,
        clipboard_restore_s: float = 1.0,
        platform: str | None = None,
        portal_token_path: Path | None = None,
    ):
        self.config = config or TypingConfig()
        self._hotkeys = hotkeys
        self._env = dict(env) if env is not None else None
        self._platform = platform or sys.platform
        self.clipboard_restore_s = clipboard_restore_s
        self._lock = threading.RLock()
        self._x: dict[str, XKeyboard] = {}  # XTest keyboards by X display
        self._mac_controller: Any = None  # pynput keyboard controller (macOS)
        self._restore: threading.Timer | None = None
        self._saved_clipboard: tuple[str, str | None] | None = None  # (our text, previous text)
        self._last_utterance: str | None = None
        self._typed_any = False
        self._portal: PortalKeyboard | None = None  # GNOME/KDE: the RemoteDesktop portal session
        self._portal_token_path = portal_token_path
        self._owners: dict[str, XClipboardOwner] = {}  # X11: this process's clipboard, by display
        self._targets: dict[str, int] = {}  # X11: the window focused when each recent utterance started
        self._typed_len: dict[str, int] = {}  # characters typed per recent utterance (for "scratch that")

    # -- public -------------------------------------------------------------------------------------

    def set_hotkeys(self, hotkeys: HotkeyState | None) -> None:
        """Attach (or detach) the hotkey listener, e.g. once it started."""
        self._hotkeys = hotkeys

    def session(self) -> Session:
        return detect_session(self._env, platform=self._platform)

    def type_commit(
        self, utterance_id: str, text: str, *, newlines: bool = False, scratch: bool = False
    ) -> OutputResult:
        """Type one commit; the first commit of a new utterance gets ``typing.separator`` before it, unless
        nothing was typed before or the text already starts with white space.

        ``newlines``: line breaks in ``text`` are typed as Return (text from the voice commands, never the
        model's own). ``scratch``: first delete (BackSpace) what was typed of this utterance, or of the previous
        one when nothing of this one was typed (its separator included)."""
        with self._lock:
            clean = sanitize(text, newlines=newlines)
            deleted: list[Attempt] = []
            if scratch:
                deleted.append(self._scratch(utterance_id))
                if not deleted[0].ok:
                    clean = ""  # typing after a failed deletion would leave both texts: stop here
            if (
                utterance_id != self._last_utterance
                and self._typed_any
                and clean
                and not clean[0].isspace()
                and self.config.separator
            ):
                clean = sanitize(self.config.separator, newlines=True) + clean
            if clean:  # (a bare "scratch that" types nothing: the utterance's first text still gets the separator)
                self._last_utterance = utterance_id
            held = self._focus_moved(utterance_id, clean) if clean and not deleted else None
            result = held or self.type_text(clean, newlines=True)
            delivered = sum(len(a.delivered) for a in result.attempts)
            if delivered:
                self._typed_len[utterance_id] = self._typed_len.get(utterance_id, 0) + delivered
                while len(self._typed_len) > 8:  # scratch reaches one utterance back: keep a few
                    del self._typed_len[next(iter(self._typed_len))]
            if not deleted:
                return result
            attempts = (*deleted, *result.attempts)
            ok = deleted[0].ok and result.ok
            error = "; ".join(a.error for a in attempts if a.error) or None
            backend = result.backend if result.attempts else deleted[0].backend
            return dataclasses.replace(result, backend=backend, ok=ok, error=error, attempts=attempts)

    def mark_target(self, utterance_id: str) -> None:
        """Dictation of ``utterance_id`` starts: remember the focused window (X11 only; elsewhere unknowable)."""
        with self._lock:
            session = self.session()
            if session.kind != SessionKind.X11 or not session.display:
                return
            try:
                self._targets[utterance_id] = self._xkb(session.display).focused_window()
            except TypingBackendError as e:
                log.warning("typing: cannot read the focused window: %s", e)
                return
            while len(self._targets) > 8:
                del self._targets[next(iter(self._targets))]

    def _focus_moved(self, utterance_id: str, text: str) -> OutputResult | None:
        """The result when the focus left the utterance's window and ``typing.focus_changed`` says not to type."""
        target = self._targets.get(utterance_id)
        session = self.session()
        if target is None or session.kind != SessionKind.X11 or not session.display:
            return None
        try:
            now = self._xkb(session.display).focused_window()
        except TypingBackendError:
            return None  # the typing attempt reports the display problem itself
        if now == target:
            return None
        policy = self.config.focus_changed
        moved = f"the focus moved from window {target:#x} to {now:#x} since dictation started"
        if policy == "type":
            log.info("typing: %s: typing there anyway (typing.focus_changed: type)", moved)
            return None
        if policy == "hold":
            error = f"{moved}: not typed (typing.focus_changed: hold); the text is in the journal (qasr-live history)"
            attempt = Attempt(OutputBackend.NONE, False, error, text, "", 0.0)
            return OutputResult(OutputBackend.NONE, False, error, text, (attempt,), session.describe())
        started = time.monotonic()
        try:
            write_clipboard(text, session)
        except TypingBackendError as e:
            error = f"{moved}: not typed, and putting it on the clipboard failed ({e}); it is in the journal"
        else:
            error = f"{moved}: not typed; the text is on the clipboard: press Ctrl+V where it should go"
        attempt = Attempt(OutputBackend.CLIPBOARD, False, error, text, "", time.monotonic() - started)
        return OutputResult(OutputBackend.CLIPBOARD, False, error, text, (attempt,), session.describe())

    def _scratch(self, utterance_id: str) -> Attempt:
        """Delete what was typed of ``utterance_id`` (else of the utterance typed last) with BackSpace."""
        target = utterance_id if self._typed_len.get(utterance_id) else next(reversed(self._typed_len), None)
        count = self._typed_len.pop(target, 0) if target is not None else 0
        session = self.session()
        portal = session.kind == SessionKind.WAYLAND and (
            self.config.backend == "portal" or (self.config.backend == "auto" and _portal_desktop(session))
        )
        wayland = OutputBackend.PORTAL if portal else OutputBackend.WTYPE
        backend = wayland if session.kind == SessionKind.WAYLAND else OutputBackend.PYNPUT
        started = time.monotonic()
        if count == 0:
            return Attempt(backend, True, None, "", "", 0.0)
        try:
            if portal:
                self._portal_keyboard(session).press_keys([0xFF08] * count)  # XK_BackSpace
            elif session.kind == SessionKind.WAYLAND:
                type_keys(["BackSpace"] * count, session)
            elif session.kind == SessionKind.X11 and session.display:
                kb = self._xkb(session.display)
                for _ in range(count):
                    kb.chord("BackSpace")
            else:
                raise TypingBackendError(f"cannot press BackSpace in {session.describe()}")
        except TypingBackendError as e:
            if target is not None:
                self._typed_len[target] = count  # still there: a later scratch may try again
            error = f"{backend}: scratch that: could not delete {count} characters: {e}"
            log.warning("typing: %s", error)
            return Attempt(backend, False, error, "\b" * count, "", time.monotonic() - started)
        return Attempt(backend, True, None, "\b" * count, "\b" * count, time.monotonic() - started)

    def type_text(self, text: str, *, newlines: bool = False) -> OutputResult:
        """Deliver ``text`` (sanitised first; ``newlines``: keep line breaks, typed as Return) with the first
        backend of the chain that works."""
        with self._lock:
            clean = sanitize(text, newlines=newlines)
            if not self.config.enabled:
                disabled = ("typing is disabled (typing.enabled)",)
                return OutputResult(OutputBackend.NONE, True, None, clean, notes=disabled)
            if not clean:
                return OutputResult(OutputBackend.NONE, True, None, clean)
            session = self.session()
            notes: list[str] = []
            synthetic = self._hotkeys.synthetic_input() if self._hotkeys is not None else contextlib.nullcontext()
            waited, cleared = self._wait_for_modifiers(session, notes)
            with synthetic:
                if cleared and session.display:
                    self._release_modifiers(session.display, cleared, notes)
                try:
                    attempts = self._try_chain(clean, session)
                finally:
                    if cleared and session.display:  # press again what we released, like xdotool --clearmodifiers
                        try:
                            self._xkb(session.display).press(cleared)
                        except TypingBackendError as e:
                            notes.append(f"could not press the held modifiers again: {e}")
            ok = attempts[-1].ok
            if any(a.delivered for a in attempts):
                self._typed_any = True
            error = None if ok else "; ".join(a.error for a in attempts if a.error)
            return OutputResult(
                attempts[-1].backend, ok, error, clean, tuple(attempts), session.describe(), waited, tuple(notes)
            )

    def _try_chain(self, text: str, session: Session) -> list[Attempt]:
        """Every attempt, in order, until one delivered the (rest of the) text."""
        attempts: list[Attempt] = []
        remaining = text
        chain = backend_chain(self.config.backend, session)
        if len(text) > self.config.paste_above_chars and OutputBackend.CLIPBOARD in chain:
            # key by key this would take minutes (wtype: ~180 characters/s): one paste instead
            log.info("typing: %d characters: pasted (typing.paste_above_chars)", len(text))
            chain = [OutputBackend.CLIPBOARD]
        for backend in chain:
            started = time.monotonic()
            try:
                self._deliver(backend, remaining, session)
            except TypingBackendError as e:
                error = f"{backend}: {e}"
                done = remaining[: e.delivered]
                attempts.append(Attempt(backend, False, error, remaining, done, time.monotonic() - started))
                log.warning("typing: %s", error)
                remaining = remaining[e.delivered :]
                continue
            except Exception as e:  # a bug or an unexpected library error must not end the daemon's typing
                error = f"{backend}: unexpected {type(e).__name__}: {e}"
                log.exception("typing: %s", error)
                attempts.append(Attempt(backend, False, error, remaining, "", time.monotonic() - started))
                continue
            attempts.append(Attempt(backend, True, None, remaining, remaining, time.monotonic() - started))
            break
        return attempts

    def close(self) -> None:
        """Put back a clipboard waiting to be restored and close X connections."""
        with self._lock:
            timer, self._restore = self._restore, None
            if timer is not None:
                timer.cancel()
                self._restore_clipboard()
            keyboards, self._x = self._x, {}
            owners, self._owners = self._owners, {}
            portal, self._portal = self._portal, None
            self._mac_controller = None
        for kb in keyboards.values():
            kb.close()
        for owner in owners.values():
            owner.close()
        if portal is not None:
            portal.close()

    def __enter__(self) -> Typist:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- modifiers ----------------------------------------------------------------------------------

    def _held(self, session: Session) -> tuple[set[str], dict[str, list[int]]]:
        held: set[str] = set()
        if self._hotkeys is not None:
            try:
                held.update(m for m in self._hotkeys.held_modifiers() if m in MODIFIERS)
            except Exception:
                log.exception("typing: the hotkey listener's held_modifiers() failed")
        x_codes: dict[str, list[int]] = {}
        if session.kind == SessionKind.X11 and session.display:
            with contextlib.suppress(TypingBackendError):  # the backend reports the display problem itself
                x_codes = self._xkb(session.display).held()
            held.update(x_codes)
        return held, x_codes

    def _wait_for_modifiers(self, session: Session, notes: list[str]) -> tuple[float, list[int]]:
        """Block until no modifier is held or ``modifier_timeout_s`` passed: ``(seconds waited, X key codes
        released because they were still held)``."""
        started = time.monotonic()
        deadline = started + self.config.modifier_timeout_s
        held, x_codes = self._held(session)
        while held and time.monotonic() < deadline:
            time.sleep(0.01)
            held, x_codes = self._held(session)
        waited = time.monotonic() - started
        cleared: list[int] = []
        if held:
            names = ", ".join(sorted(held))
            if x_codes and session.display:
                cleared = [c for group in x_codes.values() for c in group]
                notes.append(f"{names} still held after {waited:.1f} s: released while typing, then pressed again")
            else:
                notes.append(f"{names} still held after {waited:.1f} s; typed anyway")
            log.warning("typing: %s", notes[-1])
        return waited, cleared

    def _release_modifiers(self, display: str, codes: list[int], notes: list[str]) -> None:
        try:
            self._xkb(display).release(codes)
        except TypingBackendError as e:
            codes.clear()
            notes.append(f"could not release them: {e}")

    # -- backends -----------------------------------------------------------------------------------

    def _deliver(self, backend: OutputBackend, text: str, session: Session) -> None:
        if backend == OutputBackend.PYNPUT:
            self._type_pynput(text, session)
        elif backend == OutputBackend.WTYPE:
            type_with_wtype(text, session, self.config.char_delay_ms)
        elif backend == OutputBackend.PORTAL:
            self._portal_keyboard(session).type(text)
        else:
            self._paste_clipboard(text, session)

    def _portal_keyboard(self, session: Session) -> PortalKeyboard:
        if session.kind != SessionKind.WAYLAND:
            raise TypingBackendError(
                f"the RemoteDesktop portal types into Wayland sessions; this is {session.describe()}"
            )
        if self._portal is None:
            self._portal = PortalKeyboard(session.env, token_path=self._portal_token_path)
        return self._portal

    def _xkb(self, display: str) -> XKeyboard:
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
            self._xkb(session.display).type(text, delay)
        except TypingBackendError as e:
            if not (reused and e.delivered == 0 and self._x[session.display].closed):
                raise
            # the connection was kept from an X server that has gone since: once more, afresh
            self._xkb(session.display).type(text, delay)

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
        paste_wayland(text, session, functools.partial(self._press_paste, session), self.config.paste_timeout_s)

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
            self._xkb(session.display).chord("Control_L", "v")
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
        session = session or self.session()
        try:
            if read_clipboard(session) != ours:
                return  # the user copied something meanwhile: leave it
            write_clipboard(previous or "", session)
        except TypingBackendError as e:
            log.warning("typing: could not restore the previous clipboard: %s", e)
