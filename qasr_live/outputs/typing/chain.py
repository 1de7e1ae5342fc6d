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
import logging
import sys
import threading
import time
from collections.abc import Collection, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from qasr_live.config import TypingConfig
from qasr_live.desktop import Session, SessionKind, detect_session
from qasr_live.errors import TypingBackendError
from qasr_live.events import OutputBackend
from qasr_live.outputs.typing.backends import BACKENDS, Attempt, OutputResult, backend_chain, portal_desktop
from qasr_live.outputs.typing.keyboards import Keyboards
from qasr_live.outputs.typing.sanitize import sanitize
from qasr_live.outputs.typing.tools import type_keys, write_clipboard

__all__ = ["BACKENDS", "MODIFIERS", "Attempt", "HotkeyState", "OutputResult", "Typist", "backend_chain"]

log = logging.getLogger(__name__)

#: Generic modifier names, as the hotkey listener reports them.
MODIFIERS: tuple[str, ...] = ("ctrl", "alt", "shift", "cmd", "alt_gr")


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
        self._lock = threading.RLock()
        self._env = dict(env) if env is not None else None
        self._platform = platform or sys.platform
        # the backends' connections, and the clipboard waiting to be put back (keyboards.py)
        self._keys = Keyboards(
            config or TypingConfig(),
            self._lock,
            self.session,
            clipboard_restore_s=clipboard_restore_s,
            portal_token_path=portal_token_path,
        )
        self._hotkeys = hotkeys
        self._last_utterance: str | None = None
        self._typed_any = False
        self._targets: dict[str, int] = {}  # X11: the window focused when each recent utterance started
        self._typed_len: dict[str, int] = {}  # characters typed per recent utterance (for "scratch that")

    # the backends read these at every call: one value, kept by Keyboards
    @property
    def config(self) -> TypingConfig:
        return self._keys.config

    @config.setter
    def config(self, config: TypingConfig) -> None:
        self._keys.config = config

    @property
    def clipboard_restore_s(self) -> float:
        """Delay before the clipboard backend puts the previous clipboard text back."""
        return self._keys.clipboard_restore_s

    @clipboard_restore_s.setter
    def clipboard_restore_s(self, seconds: float) -> None:
        self._keys.clipboard_restore_s = seconds

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
                self._targets[utterance_id] = self._keys.xkb(session.display).focused_window()
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
            now = self._keys.xkb(session.display).focused_window()
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
            self.config.backend == "portal" or (self.config.backend == "auto" and portal_desktop(session))
        )
        wayland = OutputBackend.PORTAL if portal else OutputBackend.WTYPE
        backend = wayland if session.kind == SessionKind.WAYLAND else OutputBackend.PYNPUT
        started = time.monotonic()
        if count == 0:
            return Attempt(backend, True, None, "", "", 0.0)
        try:
            if portal:
                self._keys.portal_keyboard(session).press_keys([0xFF08] * count)  # XK_BackSpace
            elif session.kind == SessionKind.WAYLAND:
                type_keys(["BackSpace"] * count, session)
            elif session.kind == SessionKind.X11 and session.display:
                kb = self._keys.xkb(session.display)
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
                            self._keys.xkb(session.display).press(cleared)
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

    def _deliver(self, backend: OutputBackend, text: str, session: Session) -> None:
        """One backend's try (the seam tests replace to make a backend fail part-way)."""
        self._keys.deliver(backend, text, session)

    def close(self) -> None:
        """Put back a clipboard waiting to be restored and close X connections."""
        self._keys.close()

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
                x_codes = self._keys.xkb(session.display).held()
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
            self._keys.xkb(display).release(codes)
        except TypingBackendError as e:
            codes.clear()
            notes.append(f"could not release them: {e}")
