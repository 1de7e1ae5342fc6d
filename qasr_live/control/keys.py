"""Hotkey combinations, pure: parsing ``config.yaml``'s key syntax and matching key events against it.

Key combinations use pynput's syntax, a little more forgiving: keys joined by ``+``; special keys by name with or
without angle brackets (``<ctrl>+<alt>+space``, ``ctrl+alt+d``, ``<f9>``, ``<ctrl_r>``); a single character for
an ordinary key; ``<NUMBER>`` for a platform key code. Generic modifiers (``ctrl``, ``alt``, ``shift``, ``cmd``)
match either side; ``ctrl_l``/``ctrl_r`` (etc.) only that side. Aliases: ``control``, ``super``/``win``/``meta``
(= ``cmd``), ``option`` (= ``alt``), ``return``, ``escape``, ``plus``. A combination fires when all its keys are
down (in any order); extra keys held at the same time do not prevent it.

**One press and one release per physical hold.** X key autorepeat sends repeated presses while a key is held
(and, on servers without detectable autorepeat, release+press pairs with the same timestamp). The listener
therefore ignores presses of a key that is already down, and a release only counts once the key stayed up for
``release_grace_s`` (50 ms by default; a press of the same key inside that window is the autorepeat and
continues the hold). So push-to-talk reports ``ptt_press`` when the combination goes down and ``ptt_release``
50 ms after one of its keys comes up; ``toggle`` and ``cancel`` fire once per hold.

Which combinations are active depends on ``trigger.mode``: ``ptt`` → ``hotkeys.ptt`` and ``hotkeys.cancel``;
``toggle`` and ``continuous`` → ``hotkeys.toggle`` and ``hotkeys.cancel``; ``None`` → every configured one. A
mistake raises :class:`~qasr_live.errors.ConfigError` naming the key (``hotkeys.ptt: unknown key 'spce' ...``).
"""

from __future__ import annotations

import difflib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from qasr_live.config import HotkeysConfig
from qasr_live.errors import ConfigError
from qasr_live.events import ControlAction

__all__ = ["Combo", "ComboMatcher", "canonical_key", "combos_for", "parse_combo"]

# Modifier families: a generic name matches any of its sides.
_FAMILIES: dict[str, frozenset[str]] = {
    "ctrl": frozenset({"ctrl_l", "ctrl_r"}),
    "alt": frozenset({"alt_l", "alt_r"}),
    "shift": frozenset({"shift_l", "shift_r"}),
    "cmd": frozenset({"cmd_l", "cmd_r"}),
    "alt_gr": frozenset({"alt_gr"}),
}
_SIDED = {side: generic for generic, sides in _FAMILIES.items() for side in sides}
_NAMED_KEYS = frozenset(
    {
        *_FAMILIES,
        *_SIDED,
        "backspace",
        "caps_lock",
        "delete",
        "down",
        "end",
        "enter",
        "esc",
        "home",
        "insert",
        "left",
        "media_next",
        "media_play_pause",
        "media_previous",
        "media_volume_down",
        "media_volume_mute",
        "media_volume_up",
        "menu",
        "num_lock",
        "page_down",
        "page_up",
        "pause",
        "print_screen",
        "right",
        "scroll_lock",
        "space",
        "tab",
        "up",
        *(f"f{n}" for n in range(1, 25)),
    }
)
_ALIASES = {
    "control": "ctrl",
    "ctl": "ctrl",
    "super": "cmd",
    "win": "cmd",
    "windows": "cmd",
    "meta": "cmd",
    "command": "cmd",
    "option": "alt",
    "altgr": "alt_gr",
    "return": "enter",
    "escape": "esc",
    "del": "delete",
    "pgup": "page_up",
    "pgdn": "page_down",
    "plus": "+",
}
_COMBO_MODES = {"ptt": ("ptt", "cancel"), "toggle": ("toggle", "cancel"), "continuous": ("toggle", "cancel")}
_ACTIONS: dict[str, tuple[ControlAction, ControlAction | None]] = {
    "ptt": (ControlAction.PTT_PRESS, ControlAction.PTT_RELEASE),
    "toggle": (ControlAction.TOGGLE, None),
    "cancel": (ControlAction.CANCEL, None),
}


@dataclass(frozen=True, slots=True)
class Combo:
    """A parsed key combination: ``keys`` are canonical key names (``ctrl``, ``ctrl_r``, ``space``, ``d``,
    ``vk:65``); ``text`` is what the user wrote."""

    keys: frozenset[str]
    text: str

    def matches(self, down: Mapping[str, Any]) -> bool:
        """Whether every key of the combination is among the keys that are down."""
        return all(_key_down(key, down) for key in self.keys)

    def involves(self, key: str) -> bool:
        """Whether a key that is physically ``key`` (canonical event name) is part of the combination."""
        return any(key == k or key in _FAMILIES.get(k, ()) for k in self.keys)


def _key_down(key: str, down: Mapping[str, Any]) -> bool:
    family = _FAMILIES.get(key)
    if family is not None:
        return any(side in down for side in family)
    return key in down


def parse_combo(text: str, where: str = "hotkeys") -> Combo:
    """Parse a key combination; ``ConfigError`` naming ``where`` (e.g. ``hotkeys.ptt``) and the bad key."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{where}: empty key combination; write e.g. '<ctrl>+<alt>+space'")
    parts = text.strip().split("+")
    # "<ctrl>++" or "ctrl++": the last key is "+" itself.
    if len(parts) >= 3 and parts[-1] == "" and parts[-2] == "":
        parts = [*parts[:-2], "+"]
    keys: list[str] = []
    for raw in parts:
        part = raw.strip()
        if not part:
            raise ConfigError(f"{where}: empty key in {text!r} (keys are joined by '+'; write 'plus' for the + key)")
        if len(part) == 1:
            key = part.lower()
        else:
            name = part[1:-1].strip() if part.startswith("<") and part.endswith(">") else part
            lowered = name.lower()
            if name.isdigit():
                key = f"vk:{int(name)}"
            elif len(name) == 1:
                key = name.lower()
            else:
                key = _ALIASES.get(lowered, lowered)
                if key not in _NAMED_KEYS and len(key) != 1:
                    close = difflib.get_close_matches(lowered, sorted(_NAMED_KEYS | set(_ALIASES)), n=1, cutoff=0.6)
                    hint = f"did you mean '<{close[0]}>'? " if close else ""
                    raise ConfigError(
                        f"{where}: unknown key {part!r} in {text!r}; {hint}(keys: <ctrl>, <alt>, <shift>, <cmd>, "
                        "<space>, <f1>...<f24>, <enter>, <esc>, ..., a single character, or <NUMBER> for a key code)"
                    )
        if key in keys:
            raise ConfigError(f"{where}: key {part!r} appears twice in {text!r}")
        keys.append(key)
    return Combo(frozenset(keys), text)


def combos_for(config: HotkeysConfig, mode: str | None = None) -> dict[str, Combo]:
    """The active combinations (``ptt``, ``toggle``, ``cancel``) of ``config`` for trigger ``mode``, checked."""
    names = _COMBO_MODES.get(mode, ("ptt", "toggle", "cancel")) if mode is not None else ("ptt", "toggle", "cancel")
    combos: dict[str, Combo] = {}
    for name in names:
        text = getattr(config, name)
        if text is None:
            continue
        combo = parse_combo(text, f"hotkeys.{name}")
        for other, seen in combos.items():
            if seen.keys == combo.keys:
                raise ConfigError(
                    f"hotkeys.{name}: {text!r} is the same combination as hotkeys.{other} ({seen.text!r})"
                )
        combos[name] = combo
    return combos


class ComboMatcher:
    """The autorepeat-safe state machine behind :class:`~qasr_live.control.hotkeys.HotkeyListener`, free of any X
    or pynput code.

    Feed it canonical key names with :meth:`press` and :meth:`release` (see :func:`canonical_key`); it calls
    ``emit(action)`` as described in the module docstring. Thread-safe.
    """

    def __init__(self, combos: Mapping[str, Combo], emit: Callable[[ControlAction], None], release_grace_s: float):
        self.combos = dict(combos)
        self._emit = emit
        self.release_grace_s = release_grace_s
        self._lock = threading.RLock()
        self._down: dict[str, float] = {}  # key -> when it went down
        self._active: set[str] = set()  # combos currently held
        # released key -> timer that makes the release count (None: waiting for a synthetic-input window to end)
        self._pending: dict[str, threading.Timer | None] = {}
        self._synthetic = 0  # open synthetic-input windows

    def held_modifiers(self) -> frozenset[str]:
        """Generic names of the modifiers held now (a key released within the grace window counts as held)."""
        with self._lock:
            return frozenset(_SIDED[k] for k in self._down if k in _SIDED)

    def press(self, key: str) -> None:
        with self._lock:
            if key in self._pending:  # released and pressed again within the grace window: autorepeat
                timer = self._pending.pop(key)
                if timer is not None:
                    timer.cancel()
                return
            if key in self._down:  # a repeated press while held: autorepeat
                return
            self._down[key] = time.monotonic()
            for name, combo in self.combos.items():
                if name not in self._active and combo.involves(key) and combo.matches(self._down):
                    self._active.add(name)
                    self._emit(_ACTIONS[name][0])

    def release(self, key: str) -> None:
        with self._lock:
            if key not in self._down or key in self._pending:
                return
            if self._synthetic:
                self._pending[key] = None  # decided when the synthetic input is over
                return
            if self.release_grace_s <= 0:
                self._commit_release(key)
                return
            self._start_grace(key)

    def _start_grace(self, key: str) -> None:
        timer = threading.Timer(self.release_grace_s, self._timer_fired, args=(key,))
        timer.daemon = True
        self._pending[key] = timer
        timer.start()

    def begin_synthetic(self) -> None:
        """Synthetic key events follow (the typist releasing held modifiers, typing, pressing them again):
        until :meth:`end_synthetic`, a release only counts if no press of the same key follows it."""
        with self._lock:
            self._synthetic += 1

    def end_synthetic(self) -> None:
        with self._lock:
            self._synthetic = max(0, self._synthetic - 1)
            if self._synthetic:
                return
            for key in [k for k, timer in self._pending.items() if timer is None]:
                if self.release_grace_s <= 0:
                    del self._pending[key]
                    self._commit_release(key)
                else:
                    self._start_grace(key)

    def _timer_fired(self, key: str) -> None:
        with self._lock:
            timer = self._pending.get(key)
            if timer is None or timer is not threading.current_thread():
                return  # cancelled by a press meanwhile
            del self._pending[key]
            self._commit_release(key)

    def _commit_release(self, key: str) -> None:
        self._down.pop(key, None)
        for name in sorted(self._active):
            combo = self.combos[name]
            if combo.involves(key) and not combo.matches(self._down):
                self._active.discard(name)
                release = _ACTIONS[name][1]
                if release is not None:
                    self._emit(release)

    def flush(self) -> None:
        """Let every pending release count now and end every active combination (listener stopping)."""
        with self._lock:
            for key, timer in list(self._pending.items()):
                if timer is not None:
                    timer.cancel()
                del self._pending[key]
                self._commit_release(key)
            for key in list(self._down):
                self._commit_release(key)


def canonical_key(key: Any) -> str | None:
    """The canonical name of a pynput key event (``ctrl_l``, ``space``, ``d``, ``vk:65``); ``None`` if unknown."""
    if key is None:
        return None
    name = getattr(key, "name", None)  # a pynput Key enum member
    if isinstance(name, str):
        name = {"ctrl": "ctrl_l", "alt": "alt_l", "shift": "shift_l", "cmd": "cmd_l"}.get(name, name)
        return name
    char = getattr(key, "char", None)
    if isinstance(char, str) and char:
        return char.lower()
    vk = getattr(key, "vk", None)
    return f"vk:{vk}" if vk is not None else None
