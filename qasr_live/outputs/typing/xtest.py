"""Typing on an X11 display through XTest (python-xlib, the library pynput uses there).

pynput's own X typing is wrong for runs of characters missing from the keyboard layout (it types 你好世界 as
你好好界: see :class:`XKeyboard`) and uses ``XSendEvent``, which xterm and others ignore. :class:`XKeyboard` types
in the active keyboard layout (XKB group: with a Russian layout active, Latin letters go through spare key codes
instead of the keys that now give Cyrillic), switches Caps Lock off while typing, and names the display when the
connection fails (``cannot connect to X display ':1': ...``). It also reads which modifiers are held and releases
or presses them, for the typist's wait for the hotkey's modifiers (:func:`x_held_modifiers`).

python-xlib is imported on first use, never at module import. Failures raise
:class:`~qasr_live.errors.TypingBackendError`; ``delivered`` says how many characters went out before one.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from qasr_live.desktop import open_x_display
from qasr_live.errors import DisplayError, TypingBackendError

__all__ = ["XKeyboard", "connect_x", "x_held_modifiers"]

log = logging.getLogger(__name__)

_MOD_INDEX_NAMES = {0: "shift", 2: "ctrl", 3: "alt", 6: "cmd", 7: "alt_gr"}  # Shift, Control, Mod1, Mod4, Mod5


def _char_keysym(ch: str) -> int:
    """The X keysym of a character (``"\\n"``: Return): Latin-1 keysyms equal the code point, all others are
    0x01000000 + it."""
    cp = ord(ch)
    if ch == "\n":
        return 0xFF0D  # XK_Return: a line break the user asked for (sanitize(newlines=True))
    return cp if 0x20 <= cp <= 0x7E or 0xA0 <= cp <= 0xFF else 0x01000000 + cp


def _xkb_requests() -> tuple[type, type]:
    """Raw XkbUseExtension and XkbGetState requests for python-xlib (built on first use: no Xlib import at
    module import)."""
    from Xlib.protocol import rq

    class UseExtension(rq.ReplyRequest):  # type: ignore[misc]  # python-xlib has no type information
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

    class GetState(rq.ReplyRequest):  # type: ignore[misc]  # python-xlib has no type information
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


def connect_x(display: str) -> Any:
    """A python-xlib connection to ``display`` for a typing backend; its failures as ``TypingBackendError``."""
    try:
        return open_x_display(display)
    except ImportError as e:
        raise TypingBackendError(f"python-xlib is not installed ({e})") from None
    except DisplayError as e:
        raise TypingBackendError(f"cannot connect to X display {display!r}: {e}") from e


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
        self._d = connect_x(name)
        if not self._d.has_extension("XTEST"):
            self._d.close()
            raise TypingBackendError(f"X display {name!r} lacks the XTEST extension")
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
                raise TypingBackendError(f"X error while {what}: {errors[0][0]}")
            return result
        except TypingBackendError:
            raise
        except Exception as e:  # ConnectionClosedError, XError, OSError...: Xlib raises many types
            self.close()
            raise TypingBackendError(f"lost X display {self.name!r} while {what}: {e}") from e

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

        code: int = self._d.keysym_to_keycode(Xlib.XK.string_to_keysym(name))
        return code

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
            try:
                info = self._d.query_extension("XKEYBOARD")
                if info is not None and info.present:
                    reply = _XkbUseExtension(display=self._d.display, opcode=info.major_opcode, major=1, minor=0)
                    if reply.supported:
                        self._xkb_opcode = info.major_opcode
            except Exception:  # any Xlib error here only means: no XKB, type in the first layout
                log.debug("typing: XKEYBOARD unusable on %r; assuming the first layout", self.name, exc_info=True)
        if not self._xkb_opcode:
            return 0
        try:
            group: int = _XkbGetState(display=self._d.display, opcode=self._xkb_opcode, device_spec=0x100).group
            return group & 3
        except Exception as e:  # any Xlib error here only means: type in the first layout
            log.debug("typing: XkbGetState failed (%s); assuming the first layout", e, exc_info=True)
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
            if mod is None:
                continue  # Lock, Mod2 (Num Lock), Mod3: not modifiers a shortcut is made of
            for code in keycodes:
                if code and keymap[code // 8] & (1 << (code % 8)):
                    held.setdefault(mod, []).append(code)
        return held

    def focused_window(self) -> int:
        """The top-level window that has the keyboard focus (0: none, 1: PointerRoot)."""

        def run() -> int:
            focus = self._d.get_input_focus().focus
            if isinstance(focus, int):
                return focus
            root = self._d.screen().root.id
            window = focus
            while True:  # the focus is often a child (a text widget): compare the application's top level
                parent = window.query_tree().parent
                if not parent or isinstance(parent, int) or parent.id == root:
                    return int(window.id)
                window = parent

        return int(self._call("reading the focused window", run))

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
                raise TypingBackendError(f"the keyboard layout lacks one of {', '.join(keysym_names)}")
            for code in codes:
                self._fake(True, code)
            for code in reversed(codes):
                self._fake(False, code)
            self._d.sync()

        self._call("pressing " + "+".join(keysym_names), run)

    def type(self, text: str, char_delay_s: float = 0.0) -> None:
        """Type ``text``; ``TypingBackendError.delivered`` says how many characters were sent before a failure."""
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
                        raise TypingBackendError(f"X display {self.name!r} has no spare key code for {text[done]!r}")
                    if to_map:
                        self._call("mapping spare key codes", functools.partial(self._map, to_map, on_spare))
                    for ch in text[done:end]:
                        self._call(f"typing {ch!r}", functools.partial(one, _char_keysym(ch)))
                        done += 1
                        if char_delay_s:
                            time.sleep(char_delay_s)
            finally:
                if caps_code and not self.closed:
                    self._call("switching Caps Lock back on", lambda: self._tap(caps_code))
        except TypingBackendError as e:
            where = f" (after {done} of {len(text)} characters)" if done else ""
            raise TypingBackendError(f"{e}{where}", delivered=done) from None

    def close(self) -> None:
        """Put the spare key codes back to empty and disconnect."""
        if self.closed:
            return
        self.closed = True
        last = max((used for _, used in self._spare.values()), default=0.0)
        if (wait := last + self.reuse_after_s - time.monotonic()) > 0:
            time.sleep(wait)  # clients may still be translating the last keys typed with these codes
        try:
            empty = [0] * self._row
            for code, (keysym, _) in self._spare.items():
                if keysym:
                    self._d.change_keyboard_mapping(code, [empty])
            self._d.sync()
        except Exception:  # the display may be gone already: nothing left to clean up there
            log.debug("typing: could not empty the spare key codes on %r", self.name, exc_info=True)
        try:
            self._d.close()
        except Exception:
            log.debug("typing: closing X display %r failed", self.name, exc_info=True)


def x_held_modifiers(display: str) -> frozenset[str]:
    """The modifiers (``ctrl``, ``alt``, ``shift``, ``cmd``, ``alt_gr``) held down on X display ``display``."""
    kb = XKeyboard(display)
    try:
        return frozenset(kb.held())
    finally:
        kb.close()
