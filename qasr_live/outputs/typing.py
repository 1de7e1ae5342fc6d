"""Typing committed text into the focused window: pynput, wtype or clipboard paste, with fallbacks.

The daemon calls :meth:`Typist.type_text` (or :meth:`Typist.type_commit`, which also puts
``typing.separator`` between utterances) from a worker thread, with **committed text only**: typed text is never
revised (append-only). Each call:

1. **sanitises** the text (:func:`sanitize`): line breaks and tabs become spaces, because dictation must never
   press Enter or Tab (that sends chat messages, runs shell commands, moves the focus); every other control
   character (C0, DEL, C1 incl. ESC), the bidirectional overrides/embeddings/isolates and marks (the "Trojan
   Source" characters), lone surrogates, U+FEFF, interlinear annotation controls and Unicode tag characters are
   removed. Joiners (ZWJ, ZWNJ) and variation selectors stay: emoji and several scripts need them.
2. **waits until the hotkey's modifiers are released** (up to ``typing.modifier_timeout_s``), so a Ctrl or Alt
   still held after (or during) push-to-talk does not turn letters into shortcuts. Two sources say what is held:
   the hotkey listener (``hotkeys=``, :class:`HotkeyState`: it saw every key event) and, in an X11 session, the
   X server's own key state (so a Ctrl held for a window-manager binding that ran ``qasr-live ctl`` counts too).
   If the time runs out on X11, the held modifiers are released with XTest for the typing and pressed again
   after it (what ``xdotool --clearmodifiers`` does), inside the listener's ``synthetic_input()`` block so a
   push-to-talk still held goes on; elsewhere typing goes on and the result's ``notes`` say so.
3. **chooses the backends at output time** from the session (:func:`detect_session`: ``XDG_SESSION_TYPE``,
   ``WAYLAND_DISPLAY``, ``DISPLAY``, macOS; when neither display variable is set, the systemd user manager's
   environment is asked, so a service started before the graphical session still finds it) and tries them in
   order until one succeeds (:func:`backend_chain`):

   ==========  ==============================================
   session     ``typing.backend: auto``
   ==========  ==============================================
   X11         pynput → clipboard
   macOS       pynput → clipboard
   Wayland     wtype → clipboard  (pynput would only reach XWayland windows, so it is never chosen there)
   none        clipboard (fails with "no graphical session")
   ==========  ==============================================

   An explicit ``typing.backend`` is tried first and the clipboard after it. If a backend fails part-way
   (the ``pynput`` backend types character by character and knows how far it got), the next one gets only the
   rest, so nothing is typed twice.

Backends (named as in ``typing.backend`` and the ``output`` events):

* **pynput** — in-process key events. On macOS: pynput's keyboard controller (Unicode key events), imported on
  first use, never at module import. On X11: :class:`XKeyboard`, XTest through python-xlib (the library pynput
  uses there), because pynput's own X typing is wrong for runs of characters missing from the keyboard layout
  (it types 你好世界 as 你好好界: see :class:`XKeyboard`) and uses ``XSendEvent``, which xterm and others
  ignore. It types in the active keyboard layout (XKB group: with a Russian layout active, Latin letters go
  through spare key codes instead of the keys that now give Cyrillic), switches Caps Lock off while typing, and
  names the display when the connection fails (``cannot connect to X display ':1': ...``).
* **wtype** — wlroots compositors (Sway, Hyprland, river, labwc: the virtual-keyboard protocol; Unicode via a
  keymap upload). GNOME and KDE do not implement that protocol: wtype fails there and the clipboard is used.
* **clipboard** — copy (``wl-copy`` on Wayland, ``xclip`` on X11, ``pbcopy`` on macOS), then paste with a
  simulated Ctrl+V (``wtype -M ctrl -k v``; ``xdotool key --clearmodifiers ctrl+v``, else XTest; Cmd+V with
  pynput on macOS).
  The previous clipboard text is put back ``clipboard_restore_s`` later, unless the clipboard changed meanwhile
  (a clipboard that held no text, e.g. an image, is not restored). If copying worked but pasting did not, the
  attempt fails with "text is on the clipboard: press Ctrl+V" and the clipboard is not restored.

**Failure is never silent**: :class:`OutputResult` lists every :class:`Attempt` (backend, ok, error, what it
delivered, time), and the daemon publishes one ``output`` event per attempt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Collection, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from qasr_live.config import TypingConfig

__all__ = [
    "BACKENDS",
    "MODIFIERS",
    "Attempt",
    "BackendError",
    "HotkeyState",
    "OutputResult",
    "Session",
    "Typist",
    "XKeyboard",
    "backend_chain",
    "detect_session",
    "sanitize",
    "x_held_modifiers",
]

log = logging.getLogger(__name__)

Backend = Literal["pynput", "wtype", "clipboard"]
BACKENDS: tuple[Backend, ...] = ("pynput", "wtype", "clipboard")
SessionKind = Literal["x11", "wayland", "macos", "none"]

#: Generic modifier names, as the hotkey listener reports them.
MODIFIERS: tuple[str, ...] = ("ctrl", "alt", "shift", "cmd", "alt_gr")

# --------------------------------------------------------------------------------------------- sanitising

_SPACE_CONTROLS = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x1f\x85\u2028\u2029")
_REMOVED_FORMAT = frozenset(
    "\u061c\u200e\u200f"  # Arabic letter mark, LRM, RLM
    "\u202a\u202b\u202c\u202d\u202e"  # embeddings and overrides
    "\u2066\u2067\u2068\u2069"  # isolates
    "\u206a\u206b\u206c\u206d\u206e\u206f"  # deprecated format characters
    "\ufeff\ufff9\ufffa\ufffb"  # BOM / zero-width no-break space, interlinear annotation
    "\ufffd"  # the replacement character: debris of undecodable bytes, never something said
)


def sanitize(text: str) -> str:
    """``text`` safe to type: line breaks/tabs → one space each, other control and bidi characters removed.

    See the module docstring for the exact rules; everything printable (any script, emoji) is kept as is.
    """
    out = []
    for ch in text:
        if ch in _SPACE_CONTROLS:
            out.append(" ")
            continue
        if ch in _REMOVED_FORMAT or "\U000e0000" <= ch <= "\U000e007f":
            continue
        if unicodedata.category(ch) in ("Cc", "Cs"):
            continue
        out.append(ch)
    return "".join(out)


# --------------------------------------------------------------------------------------------- session

_SESSION_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "XDG_CURRENT_DESKTOP", "XAUTHORITY")
_systemd_cache: tuple[float, dict[str, str]] = (0.0, {})
_systemd_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Session:
    """The graphical session text goes to, and the environment for the tools that reach it."""

    kind: SessionKind
    env: Mapping[str, str]
    display: str | None = None  # X11 display (on Wayland: XWayland's, if any)
    wayland_display: str | None = None
    desktop: str = ""  # XDG_CURRENT_DESKTOP

    def describe(self) -> str:
        if self.kind == "x11":
            return f"X11 display {self.display}"
        if self.kind == "wayland":
            return f"Wayland display {self.wayland_display}" + (f" ({self.desktop})" if self.desktop else "")
        if self.kind == "macos":
            return "macOS"
        return "no graphical session (DISPLAY and WAYLAND_DISPLAY are not set)"


def _systemd_session_env() -> dict[str, str]:
    """The display variables of the systemd user manager (imported there by the graphical session); cached 5 s."""
    global _systemd_cache
    with _systemd_lock:
        when, cached = _systemd_cache
        if time.monotonic() - when < 5.0:
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
                    if sep and key in _SESSION_VARS and value:
                        found[key] = value
            except (OSError, subprocess.SubprocessError):
                pass
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
        return Session("macos", env)
    display = env.get("DISPLAY") or None
    wayland = env.get("WAYLAND_DISPLAY") or None
    kind = env.get("XDG_SESSION_TYPE", "").strip().lower()
    desktop = env.get("XDG_CURRENT_DESKTOP", "")
    if (wayland and kind != "x11") or kind == "wayland":
        # (XDG_SESSION_TYPE=wayland without WAYLAND_DISPLAY: libwayland's default socket, wayland-0, is tried.)
        return Session("wayland", env, display, wayland or "wayland-0", desktop)
    if display:
        return Session("x11", env, display, None, desktop)
    return Session("none", env, None, None, desktop)


def backend_chain(configured: str, session: Session) -> list[Backend]:
    """The backends to try, in order, for ``typing.backend`` = ``configured`` in ``session``."""
    if configured != "auto":
        if configured not in BACKENDS:
            raise ValueError(f"typing.backend: unknown backend {configured!r}")
        return [configured] if configured == "clipboard" else [configured, "clipboard"]  # type: ignore[list-item]
    if session.kind in ("x11", "macos"):
        return ["pynput", "clipboard"]
    if session.kind == "wayland":
        return ["wtype", "clipboard"]
    return ["clipboard"]


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Attempt:
    """One backend's try at delivering text."""

    backend: Backend
    ok: bool
    error: str | None  # why it failed (None when ok)
    text: str  # what it was asked to deliver
    delivered: str  # what it is known to have delivered ("" when nothing; the prefix typed before a failure)
    seconds: float


@dataclass(frozen=True, slots=True)
class OutputResult:
    """What became of one :meth:`Typist.type_text` call.

    ``backend``: the backend that delivered the text (``"none"`` when there was nothing to type or typing is
    disabled; the last one tried when all failed). ``error``: ``None`` when ``ok``, else every attempt's error.
    ``attempts``: every try in order; publish one ``output`` event per attempt.
    """

    backend: Literal["pynput", "wtype", "clipboard", "none"]
    ok: bool
    error: str | None
    text: str  # the sanitised text that was to be delivered
    attempts: tuple[Attempt, ...] = ()
    session: str = ""  # Session.describe()
    waited_s: float = 0.0  # time spent waiting for modifiers to be released
    notes: tuple[str, ...] = field(default_factory=tuple)


class BackendError(Exception):
    """A backend could not deliver; ``delivered`` is how much of the text it typed before failing."""

    def __init__(self, message: str, delivered: int = 0):
        super().__init__(message)
        self.delivered = delivered


# --------------------------------------------------------------------------------------------- X keyboard

_MOD_INDEX_NAMES = {0: "shift", 2: "ctrl", 3: "alt", 6: "cmd", 7: "alt_gr"}  # Shift, Control, Mod1, Mod4, Mod5


def _char_keysym(ch: str) -> int:
    """The X keysym of a character: Latin-1 keysyms equal the code point, all others are 0x01000000 + it."""
    cp = ord(ch)
    return cp if 0x20 <= cp <= 0x7E or 0xA0 <= cp <= 0xFF else 0x01000000 + cp


def _xkb_requests() -> tuple[type, type]:
    """Raw XkbUseExtension and XkbGetState requests for python-xlib (built on first use: no Xlib import at
    module import)."""
    from Xlib.protocol import rq

    class UseExtension(rq.ReplyRequest):
        _request = rq.Struct(
            rq.Card8("opcode"), rq.Opcode(0), rq.RequestLength(), rq.Card16("major"), rq.Card16("minor")
        )
        _reply = rq.Struct(
            rq.ReplyCode(),
            rq.Bool("supported"),
            rq.Card16("sequence_number"),
            rq.Card32("length"),
            rq.Card16("server_major"),
            rq.Card16("server_minor"),
            rq.Pad(20),
        )

    class GetState(rq.ReplyRequest):
        _request = rq.Struct(rq.Card8("opcode"), rq.Opcode(4), rq.RequestLength(), rq.Card16("device_spec"), rq.Pad(2))
        _reply = rq.Struct(
            rq.ReplyCode(),
            rq.Card8("device_id"),
            rq.Card16("sequence_number"),
            rq.Card32("length"),
            rq.Card8("mods"),
            rq.Card8("base_mods"),
            rq.Card8("latched_mods"),
            rq.Card8("locked_mods"),
            rq.Card8("group"),
            rq.Card8("locked_group"),
            rq.Int16("base_group"),
            rq.Int16("latched_group"),
            rq.Pad(14),  # compat state, grab and lookup modifiers, pointer buttons: 32 bytes in all
        )

    return UseExtension, GetState


def _XkbUseExtension(**kwargs: Any) -> Any:
    return _xkb_requests()[0](**kwargs)


def _XkbGetState(**kwargs: Any) -> Any:
    return _xkb_requests()[1](**kwargs)


class XKeyboard:
    """Keyboard input on one X display through XTest (python-xlib, which pynput is built on).

    Characters on the keyboard layout (first or shifted level) are typed with their key, Shift added as needed.
    Any other character (accents missing from the layout, CJK, emoji) is typed with a spare key code (one the
    layout leaves empty) mapped to its keysym. Clients translate a key code with the mapping they hold when they
    *process* the event, so a mapping must not change while a client may still be behind: text is typed in runs
    whose missing characters all fit on the spare codes at once; before a run the new mappings are made, then
    ``settle_s`` passes before its keys; a code is only remapped ``reuse_after_s`` after it was last typed.
    (pynput's own X backend remaps right before each key and also uses AltGr levels, which Tk does not read:
    it types 你好世界 as 你好好界.) Spare codes keep their mapping until :meth:`close`, so characters typed
    again cost nothing; in practice only texts with more distinct missing characters than spare codes (about
    18 with the default layout) pay more than one settle pause.

    XTest input is real input to the server: it reaches every client (unlike the ``XSendEvent`` pynput types
    with, which xterm and others ignore), and held modifiers apply to it — hence the wait for their release.
    Caps Lock is switched off while typing and back on after.
    """

    def __init__(self, name: str, settle_s: float = 0.05, reuse_after_s: float = 0.25):
        self.name = name
        self.settle_s = settle_s
        self.reuse_after_s = reuse_after_s
        try:
            import Xlib.display
            import Xlib.ext.xtest
        except ImportError as e:
            raise BackendError(f"python-xlib is not installed ({e})") from None
        try:
            self._d = Xlib.display.Display(name)
        except Exception as e:  # DisplayNameError, DisplayConnectionError, ConnectionClosedError, OSError...
            raise BackendError(f"cannot connect to X display {name!r}: {e}") from None
        if not self._d.has_extension("XTEST"):
            self._d.close()
            raise BackendError(f"X display {name!r} lacks the XTEST extension")
        self._errors: list[Any] = []
        self._d.set_error_handler(lambda *args: self._errors.append(args))
        self._layout: dict[int, tuple[int, bool]] = {}  # keysym -> (key code, needs shift) of the user's layout
        self._spare: dict[int, tuple[int, float]] = {}  # spare key code -> (keysym mapped there or 0, last use)
        self._spare_sym: dict[int, int] = {}  # keysym -> spare key code it is mapped to
        self._xkb_opcode: int | None = None  # major opcode of XKEYBOARD once enabled (0: unavailable)
        self._row = 2
        self.closed = False

    # -- plumbing

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
            if self._errors:
                errors, self._errors[:] = list(self._errors), []
                raise BackendError(f"X error while {what}: {errors[0][0]}")
            return result
        except BackendError:
            raise
        except Exception as e:
            self.close()
            raise BackendError(f"lost X display {self.name!r} while {what}: {e}") from None

    def _fake(self, press: bool, keycode: int) -> None:
        import Xlib.ext.xtest
        import Xlib.X

        Xlib.ext.xtest.fake_input(self._d, Xlib.X.KeyPress if press else Xlib.X.KeyRelease, keycode)

    def _tap(self, code: int, shift_code: int = 0) -> None:
        if shift_code:
            self._fake(True, shift_code)
        self._fake(True, code)
        self._fake(False, code)
        if shift_code:
            self._fake(False, shift_code)
        self._d.sync()

    def _keysym_code(self, name: str) -> int:
        import Xlib.XK

        return self._d.keysym_to_keycode(Xlib.XK.string_to_keysym(name))

    def _load_layout(self, group: int = 0) -> None:
        """Read the current key map (the user may have switched layouts since the last call). ``group``: the
        active XKB group (layout); the core map lists group 1 at levels 0-1 and group 2 at levels 2-3, and a key
        without the group falls back to group 1."""
        info = self._d.display.info
        first = info.min_keycode
        rows = self._d.get_keyboard_mapping(first, info.max_keycode - first + 1)
        layout: dict[int, tuple[int, bool]] = {}
        for i, syms in enumerate(rows):
            code = first + i
            if code in self._spare:
                mine = self._spare[code][0]
                if (syms[0] if syms else 0) == mine:
                    continue
                del self._spare[code]  # another program took this code meanwhile: it is no longer spare
                self._spare_sym.pop(mine, None)
            if not any(syms):
                if code > 8:  # some clients ignore key code 8
                    self._spare[code] = (0, 0.0)
                continue
            if group > 1:
                continue  # groups 3-4 have no fixed place in the core map: every character on a spare code
            base = 2 if group == 1 and len(syms) > 2 and syms[2] else 0
            for level in (0, 1):
                keysym = syms[base + level] if base + level < len(syms) else 0
                if level == 1 and not keysym and base:
                    continue  # a one-level key of this group: no shifted symbol
                if keysym and keysym not in layout:
                    layout[keysym] = (code, level == 1)
        self._layout = layout
        self._row = len(rows[0]) if rows else 2

    def _chunk(self, text: str, start: int) -> tuple[int, list[int], set[int]]:
        """``(end, to_map, on_spare)``: the longest run ``text[start:end]`` whose characters missing from the layout
        fit on the spare codes at once; the keysyms of the run that still need a code; all its spare keysyms."""
        on_spare: set[int] = set()
        to_map: list[int] = []
        end = start
        while end < len(text):
            keysym = _char_keysym(text[end])
            if keysym not in self._layout and keysym not in on_spare:
                if len(on_spare) == len(self._spare):
                    break
                on_spare.add(keysym)
                if keysym not in self._spare_sym:
                    to_map.append(keysym)
            end += 1
        return end, to_map, on_spare

    def _map(self, keysyms: list[int], keep: set[int]) -> None:
        """Map ``keysyms`` onto the least recently used spare codes not holding a keysym of ``keep``."""
        free = sorted((c for c, (k, _) in self._spare.items() if k not in keep), key=lambda c: self._spare[c][1])
        codes = free[: len(keysyms)]
        # A client translates a key code when it processes the event, so a code typed moments ago keeps its
        # mapping until the client is surely done with it; the new mappings, in turn, need a moment to reach
        # every client before their keys arrive (a remap right before the key shows another character).
        last = max((self._spare[c][1] for c in codes), default=0.0)
        if (wait := last + self.reuse_after_s - time.monotonic()) > 0:
            time.sleep(wait)
        for keysym, code in zip(keysyms, codes, strict=True):
            old = self._spare[code][0]
            self._spare_sym.pop(old, None)
            self._d.change_keyboard_mapping(code, [[keysym, keysym] + [0] * max(0, self._row - 2)])
            self._spare[code] = (keysym, time.monotonic())
            self._spare_sym[keysym] = code
        self._d.sync()
        time.sleep(self.settle_s)

    def _xkb_group(self) -> int:
        """The active keyboard group (layout) 0-3, from XKB's GetState (python-xlib has no XKB binding, and the
        core protocol reports the group only to clients that enabled XKB); 0 without XKB."""
        if self._xkb_opcode is None:
            self._xkb_opcode = 0
            with contextlib.suppress(Exception):
                info = self._d.query_extension("XKEYBOARD")
                if info is not None and info.present:
                    reply = _XkbUseExtension(display=self._d.display, opcode=info.major_opcode, major=1, minor=0)
                    if reply.supported:
                        self._xkb_opcode = info.major_opcode
        if not self._xkb_opcode:
            return 0
        try:
            return _XkbGetState(display=self._d.display, opcode=self._xkb_opcode, device_spec=0x100).group & 3
        except Exception as e:
            log.debug("typing: XkbGetState failed (%s); assuming the first layout", e)
            return 0

    # -- public

    def held(self) -> dict[str, list[int]]:
        """Modifier name (``ctrl``, ``alt``, ``shift``, ``cmd``, ``alt_gr``) -> its key codes held down now."""

        def query() -> tuple[Any, Any]:
            return self._d.query_keymap(), self._d.get_modifier_mapping()

        keymap, mapping = self._call("reading the keyboard state", query)
        held: dict[str, list[int]] = {}
        for index, keycodes in enumerate(mapping):
            mod = _MOD_INDEX_NAMES.get(index)
            for code in keycodes if mod else ():
                if code and keymap[code // 8] & (1 << (code % 8)):
                    held.setdefault(mod, []).append(code)
        return held

    def release(self, keycodes: Iterable[int]) -> None:
        """Release keys (what ``xdotool --clearmodifiers`` does for held modifiers)."""
        self._press_or_release(False, list(keycodes))

    def press(self, keycodes: Iterable[int]) -> None:
        """Press keys (and leave them down)."""
        self._press_or_release(True, list(keycodes))

    def _press_or_release(self, press: bool, keycodes: list[int]) -> None:
        def run() -> None:
            for code in keycodes:
                self._fake(press, code)
            self._d.sync()

        self._call("pressing modifiers" if press else "releasing modifiers", run)

    def chord(self, *keysym_names: str) -> None:
        """Press the keys in order and release them in reverse (e.g. ``chord("Control_L", "v")``)."""

        def run() -> None:
            codes = [self._keysym_code(name) for name in keysym_names]
            if not all(codes):
                raise BackendError(f"the keyboard layout lacks one of {', '.join(keysym_names)}")
            for code in codes:
                self._fake(True, code)
            for code in reversed(codes):
                self._fake(False, code)
            self._d.sync()

        self._call("pressing " + "+".join(keysym_names), run)

    def type(self, text: str, char_delay_s: float = 0.0) -> None:
        """Type ``text``; ``BackendError.delivered`` says how many characters were sent before a failure."""
        import Xlib.X

        def setup() -> tuple[int, int]:
            self._load_layout(group=self._xkb_group())
            caps = self._d.screen().root.query_pointer().mask & Xlib.X.LockMask
            return self._keysym_code("Shift_L"), self._keysym_code("Caps_Lock") if caps else 0

        def one(keysym: int) -> None:
            if keysym in self._layout:
                code, shift = self._layout[keysym]
                self._tap(code, shift_code if shift else 0)
            else:
                code = self._spare_sym[keysym]
                self._tap(code)
                self._spare[code] = (keysym, time.monotonic())

        done = 0
        try:
            shift_code, caps_code = self._call("reading the keyboard layout", setup)
            if caps_code:  # Caps Lock would invert every letter: off while typing, back on after
                self._call("switching Caps Lock off", lambda: self._tap(caps_code))
            try:
                while done < len(text):
                    end, to_map, on_spare = self._chunk(text, done)
                    if end == done:
                        raise BackendError(f"X display {self.name!r} has no spare key code for {text[done]!r}")
                    if to_map:
                        self._call("mapping spare key codes", lambda m=to_map, k=on_spare: self._map(m, k))
                    for ch in text[done:end]:
                        self._call(f"typing {ch!r}", lambda ch=ch: one(_char_keysym(ch)))
                        done += 1
                        if char_delay_s:
                            time.sleep(char_delay_s)
            finally:
                if caps_code and not self.closed:
                    self._call("switching Caps Lock back on", lambda: self._tap(caps_code))
        except BackendError as e:
            where = f" (after {done} of {len(text)} characters)" if done else ""
            raise BackendError(f"{e}{where}", delivered=done) from None

    def close(self) -> None:
        """Put the spare key codes back to empty and disconnect."""
        if self.closed:
            return
        self.closed = True
        last = max((used for _, used in self._spare.values()), default=0.0)
        if (wait := last + self.reuse_after_s - time.monotonic()) > 0:
            time.sleep(wait)  # clients may still be translating the last keys typed with these codes
        with contextlib.suppress(Exception):
            empty = [0] * self._row
            for code, (keysym, _) in self._spare.items():
                if keysym:
                    self._d.change_keyboard_mapping(code, [empty])
            self._d.sync()
        with contextlib.suppress(Exception):
            self._d.close()


def x_held_modifiers(display: str) -> frozenset[str]:
    """The modifiers (``ctrl``, ``alt``, ``shift``, ``cmd``, ``alt_gr``) held down on X display ``display``."""
    kb = XKeyboard(display)
    try:
        return frozenset(kb.held())
    finally:
        kb.close()


# --------------------------------------------------------------------------------------------- subprocesses


def _run_tool(argv: list[str], env: Mapping[str, str], *, input: str = "", timeout: float = 10.0) -> str:
    """Run a helper tool to completion; its stdout; ``BackendError`` with its stderr if it fails.

    stdout/stderr go to temporary files, not pipes: ``xclip -i`` and ``wl-copy`` leave a background process
    that serves the clipboard and would hold a pipe open forever.
    """
    name = argv[0]
    if shutil.which(name, path=env.get("PATH")) is None:
        raise BackendError(f"{name} is not installed")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            done = subprocess.run(
                argv,
                input=input.encode(),
                stdout=out,
                stderr=err,
                env=dict(env),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BackendError(f"{name} did not finish within {timeout:.0f} s") from None
        except OSError as e:
            raise BackendError(f"cannot run {name}: {e}") from None
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace").strip()
    if done.returncode != 0:
        detail = stderr.splitlines()[-1] if stderr else "no message"
        raise BackendError(f"{name} failed (exit {done.returncode}): {detail}")
    return stdout


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

    # -- public -------------------------------------------------------------------------------------

    def set_hotkeys(self, hotkeys: HotkeyState | None) -> None:
        """Attach (or detach) the hotkey listener, e.g. once it started."""
        self._hotkeys = hotkeys

    def session(self) -> Session:
        return detect_session(self._env, platform=self._platform)

    def type_commit(self, utterance_id: str, text: str) -> OutputResult:
        """Type one commit; the first commit of a new utterance gets ``typing.separator`` before it, unless
        nothing was typed before or the text already starts with white space."""
        with self._lock:
            clean = sanitize(text)
            if (
                utterance_id != self._last_utterance
                and self._typed_any
                and clean
                and not clean[0].isspace()
                and self.config.separator
            ):
                clean = sanitize(self.config.separator) + clean
            self._last_utterance = utterance_id
            return self.type_text(clean)

    def type_text(self, text: str) -> OutputResult:
        """Deliver ``text`` (sanitised first) with the first backend of the chain that works."""
        with self._lock:
            clean = sanitize(text)
            if not self.config.enabled:
                return OutputResult("none", True, None, clean, notes=("typing is disabled (typing.enabled)",))
            if not clean:
                return OutputResult("none", True, None, clean)
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
                        except BackendError as e:
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
        for backend in backend_chain(self.config.backend, session):
            started = time.monotonic()
            try:
                self._deliver(backend, remaining, session)
            except BackendError as e:
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
            self._mac_controller = None
        for kb in keyboards.values():
            kb.close()

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
        if session.kind == "x11" and session.display:
            with contextlib.suppress(BackendError):  # the backend reports the display problem itself
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
        except BackendError as e:
            codes.clear()
            notes.append(f"could not release them: {e}")

    # -- backends -----------------------------------------------------------------------------------

    def _deliver(self, backend: Backend, text: str, session: Session) -> None:
        if backend == "pynput":
            self._type_pynput(text, session)
        elif backend == "wtype":
            self._type_wtype(text, session)
        else:
            self._paste_clipboard(text, session)

    def _xkb(self, display: str) -> XKeyboard:
        """The XTest keyboard of ``display``, (re)connected as needed (``BackendError`` names the display)."""
        kb = self._x.get(display)
        if kb is None or kb.closed:
            kb = self._x[display] = XKeyboard(display)
        return kb

    def _mac(self) -> Any:
        if self._mac_controller is None:
            try:
                from pynput.keyboard import Controller

                self._mac_controller = Controller()
            except Exception as e:
                raise BackendError(f"pynput is unavailable: {str(e).splitlines()[0]}") from None
        return self._mac_controller

    def _type_pynput(self, text: str, session: Session) -> None:
        delay = self.config.char_delay_ms / 1000.0
        if session.kind == "macos":
            controller = self._mac()
            for i, ch in enumerate(text):
                try:
                    controller.type(ch)
                except Exception as e:
                    raise BackendError(
                        f"failed at character {i + 1} of {len(text)} ({ch!r}): {e}", delivered=i
                    ) from None
                if delay:
                    time.sleep(delay)
            return
        if session.kind == "wayland":
            raise BackendError("pynput cannot type into Wayland windows (only XWayland ones); use wtype")
        if session.kind != "x11" or not session.display:
            raise BackendError(f"no X display to type into: {session.describe()}")
        reused = session.display in self._x
        try:
            self._xkb(session.display).type(text, delay)
        except BackendError as e:
            if not (reused and e.delivered == 0 and self._x[session.display].closed):
                raise
            # the connection was kept from an X server that has gone since: once more, afresh
            self._xkb(session.display).type(text, delay)

    def _type_wtype(self, text: str, session: Session) -> None:
        if session.kind != "wayland":
            raise BackendError(f"wtype needs a Wayland session; this is {session.describe()}")
        delay = self.config.char_delay_ms
        timeout = 10.0 + len(text) * (delay / 1000.0 + 0.02)
        argv = ["wtype", "-d", str(round(delay)), "-"] if delay else ["wtype", "-"]
        _run_tool(argv, session.env, input=text, timeout=timeout)

    # -- clipboard ----------------------------------------------------------------------------------

    def _clipboard_tools(self, session: Session) -> tuple[list[str], list[str]]:
        """(copy command reading stdin, paste-out command writing stdout) for the session."""
        if session.kind == "wayland":
            return ["wl-copy"], ["wl-paste", "--no-newline"]
        if session.kind == "x11":
            return ["xclip", "-selection", "clipboard", "-i"], ["xclip", "-selection", "clipboard", "-o"]
        if session.kind == "macos":
            return ["pbcopy"], ["pbpaste"]
        raise BackendError(f"no clipboard: {session.describe()}")

    def _read_clipboard(self, session: Session) -> str | None:
        _, paste_out = self._clipboard_tools(session)
        try:
            return _run_tool(paste_out, session.env, timeout=2.0)
        except BackendError:
            return None  # empty, or not text

    def _paste_clipboard(self, text: str, session: Session) -> None:
        copy, _ = self._clipboard_tools(session)
        timer, self._restore = self._restore, None
        if timer is not None:
            timer.cancel()  # the clipboard still holds our previous text; keep the saved original
            previous = self._saved_clipboard[1] if self._saved_clipboard else None
        else:
            previous = self._read_clipboard(session)
        self._saved_clipboard = None
        _run_tool(copy, session.env, input=text, timeout=5.0)
        try:
            self._press_paste(session)
        except BackendError as e:
            keys = "Cmd+V" if session.kind == "macos" else "Ctrl+V"
            raise BackendError(f"the text is on the clipboard, but pasting it failed ({e}): press {keys}") from None
        if previous is not None and previous != text and self.clipboard_restore_s >= 0:
            self._saved_clipboard = (text, previous)
            self._restore = threading.Timer(self.clipboard_restore_s, self._restore_later, args=(session,))
            self._restore.daemon = True
            self._restore.start()

    def _press_paste(self, session: Session) -> None:
        if session.kind == "wayland":
            _run_tool(["wtype", "-M", "ctrl", "-k", "v", "-m", "ctrl"], session.env, timeout=5.0)
            return
        if session.kind == "x11" and shutil.which("xdotool", path=session.env.get("PATH")):
            _run_tool(["xdotool", "key", "--clearmodifiers", "ctrl+v"], session.env, timeout=5.0)
            return
        if session.kind == "x11" and session.display:
            self._xkb(session.display).chord("Control_L", "v")
            return
        controller = self._mac()
        try:
            from pynput.keyboard import Key

            with controller.pressed(Key.cmd):
                controller.press("v")
                controller.release("v")
        except Exception as e:
            raise BackendError(f"cannot press Cmd+V with pynput: {e}") from None

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
            if self._read_clipboard(session) != ours:
                return  # the user copied something meanwhile: leave it
            copy, _ = self._clipboard_tools(session)
            _run_tool(copy, session.env, input=previous or "", timeout=5.0)
        except BackendError as e:
            log.warning("typing: could not restore the previous clipboard: %s", e)
