"""Global hotkeys with pynput (X11, macOS): push-to-talk, toggle and cancel. The key syntax, the combinations of
each trigger mode and the autorepeat-safe matching are :mod:`qasr_live.control.keys`.

Actions go to ``on_action(action)`` with the :class:`~qasr_live.events.ControlAction`
(``ptt_press``, ``ptt_release``, ``toggle``, ``cancel``), called from the listener's thread (or the release
timer's) — or, when an asyncio ``loop`` is given, scheduled on that loop with ``call_soon_threadsafe``. Calls
are serialised and in order: a ``ptt_release`` never overtakes its ``ptt_press``.

pynput is imported by :meth:`HotkeyListener.start` only, never at import time, and :func:`available` says
(without importing it) whether hotkeys can work here and, if not, why: no display, a Wayland session (pynput
sees only XWayland windows' keys there — bind keys in the compositor to ``qasr-live ctl`` instead), no X RECORD
extension. The listener also tracks which modifiers are held (:meth:`HotkeyListener.held_modifiers`), which the
typist uses to wait until they are released, and :meth:`HotkeyListener.synthetic_input`, which the typist wraps
its own key events in: when a modifier held for longer than ``typing.modifier_timeout_s`` is released for the
typing and pressed again after it, the hold goes on (no ``ptt_release``). Events pynput injected itself are
ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from qasr_live.config import HotkeysConfig
from qasr_live.control.keys import ComboMatcher, canonical_key, combos_for
from qasr_live.desktop import Session, SessionKind, detect_session, open_x_display
from qasr_live.errors import DisplayError, HotkeysUnavailable
from qasr_live.events import ControlAction

__all__ = [
    "Availability",
    "HotkeyListener",
    "available",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether global hotkeys can work here; ``reason`` says why not (or what they will use). Truthy if ok."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


def available(env: Mapping[str, str] | None = None, *, platform: str | None = None) -> Availability:
    """Whether global hotkeys can work in the session of ``env`` (default: this process's); never imports
    pynput. On X11 it connects to the display and checks for the RECORD extension pynput listens with."""
    platform = platform or sys.platform
    session = detect_session(env, platform=platform)
    if session.kind == SessionKind.MACOS:
        return Availability(True, "macOS: needs the Input Monitoring permission for this program")
    if session.kind == SessionKind.WAYLAND:
        return Availability(
            False,
            f"{session.describe()}: global hotkeys cannot be read on Wayland; bind keys in your compositor to "
            "`qasr-live ctl ptt-press` / `ptt-release` (or `toggle`)",
        )
    if session.kind == SessionKind.NONE:
        return Availability(False, f"{session.describe()}: no hotkeys; use `qasr-live ctl` or signals")
    return _x_record_available(session)


def _x_record_available(session: Session) -> Availability:
    try:
        conn = open_x_display(session.display)
    except ImportError as e:
        return Availability(False, f"python-xlib is not installed ({e})")
    except DisplayError as e:
        return Availability(False, f"cannot connect to X display {session.display!r}: {e}")
    try:
        if not conn.has_extension("RECORD"):
            return Availability(False, f"X display {session.display} lacks the RECORD extension hotkeys need")
    finally:
        conn.close()
    return Availability(True, f"X11 display {session.display}")


class HotkeyListener:
    """A global hotkey listener; :meth:`start` / :meth:`stop` (or ``with``). See the module docstring.

    ``config``: the ``hotkeys`` section (validated here: ``ConfigError``). ``on_action``: receives the action
    names (an ``async def`` is fine with ``loop``). ``mode``: ``trigger.mode``, selecting the active
    combinations. ``loop``: deliver actions on this asyncio loop. ``env``: the session's environment (default:
    this process's). ``release_grace_s``: how long a key must stay up for its release to count (autorepeat
    filter).
    """

    def __init__(
        self,
        config: HotkeysConfig,
        on_action: Callable[[ControlAction], Any],
        *,
        mode: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        env: Mapping[str, str] | None = None,
        release_grace_s: float = 0.05,
        start_timeout_s: float = 5.0,
    ):
        self.config = config
        self.combos = combos_for(config, mode)
        self._on_action = on_action
        self._loop = loop
        self._env = dict(env) if env is not None else None
        self.start_timeout_s = start_timeout_s
        self._matcher = ComboMatcher(self.combos, self._dispatch, release_grace_s)
        self._listener: Any = None
        self._tasks: set[asyncio.Future[Any]] = set()

    @property
    def running(self) -> bool:
        return self._listener is not None

    def held_modifiers(self) -> frozenset[str]:
        """Generic names (``ctrl``, ``alt``, ``shift``, ``cmd``, ``alt_gr``) of the modifiers held now."""
        return self._matcher.held_modifiers()

    @contextlib.contextmanager
    def synthetic_input(self) -> Iterator[None]:
        """Wrap key events this process injects (the typist does): a modifier it releases and presses again
        does not end a hotkey hold, however long the typing takes. A key the user really releases meanwhile
        counts once the block ends."""
        self._matcher.begin_synthetic()
        try:
            yield
        finally:
            self._matcher.end_synthetic()

    def _dispatch(self, action: ControlAction) -> None:
        log.debug("hotkey: %s", action)
        if self._loop is None:
            self._call(action)
            return
        try:
            self._loop.call_soon_threadsafe(self._call, action)
        except RuntimeError:  # the loop is closed: the daemon is shutting down
            log.debug("hotkeys: %s dropped, the event loop is closed", action)

    def _call(self, action: ControlAction) -> None:
        try:
            result = self._on_action(action)
            if inspect.isawaitable(result) and self._loop is not None:
                task = asyncio.ensure_future(result, loop=self._loop)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except Exception:
            log.exception("hotkeys: the %s handler failed", action)

    def start(self) -> None:
        """Start listening; ``HotkeysUnavailable`` says why it cannot (no display, Wayland, ...)."""
        if self._listener is not None:
            return
        if not self.combos:
            raise HotkeysUnavailable("no hotkeys are configured for this trigger mode")
        platform = sys.platform
        session = detect_session(self._env, platform=platform)
        state = available(session.env, platform=platform)
        if not state:
            raise HotkeysUnavailable(f"global hotkeys are unavailable: {state.reason}")
        if session.kind == SessionKind.X11:
            for var in ("DISPLAY", "XAUTHORITY"):  # Xlib inside pynput reads the display from the environment
                if session.env.get(var):
                    os.environ[var] = session.env[var]
        try:
            from pynput import keyboard
        except ImportError as e:
            raise HotkeysUnavailable(f"pynput is unavailable: {str(e).splitlines()[0]}") from None

        def on_press(key: Any, injected: bool = False) -> None:
            name = canonical_key(key)
            if name is not None and not injected:
                self._matcher.press(name)

        def on_release(key: Any, injected: bool = False) -> None:
            name = canonical_key(key)
            if name is not None and not injected:
                self._matcher.release(name)

        listener = keyboard.Listener(on_press=on_press, on_release=on_release)
        ready = threading.Event()
        record_handler = getattr(listener, "_handler", None)
        if record_handler is not None:
            # X11: pynput reports "ready" before it enables the RECORD context, and a key pressed in between
            # is never seen. The first reply of an enabled context (StartOfData) is the real start.
            def handler(reply: Any) -> Any:
                ready.set()
                return record_handler(reply)

            listener._handler = handler
        else:

            def wait_ready() -> None:
                listener.wait()
                ready.set()

            threading.Thread(target=wait_ready, daemon=True).start()
        listener.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not ready.wait(0.02):
            if not listener.is_alive() or time.monotonic() > deadline:
                self._stop_listener(listener)
                raise HotkeysUnavailable(
                    f"the pynput keyboard listener did not start on {session.describe()} "
                    f"within {self.start_timeout_s:.0f} s"
                )
        self._listener = listener
        log.info(
            "hotkeys: listening on %s for %s",
            session.describe(),
            ", ".join(f"{n}={c.text}" for n, c in self.combos.items()),
        )

    def stop(self) -> None:
        """Stop listening; a push-to-talk still held is released (``ptt_release``) so the pair is complete."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stop_listener(listener)
        self._matcher.flush()

    @staticmethod
    def _stop_listener(listener: Any) -> None:
        # pynput ends an X RECORD session on the recording connection itself, which leaves its thread blocked
        # until the server goes away; disabling the context on the control connection ends it at once.
        context, control = getattr(listener, "_context", None), getattr(listener, "_display_stop", None)
        if context is not None and control is not None:
            try:
                control.record_disable_context(context)
                control.flush()
            except Exception:  # any Xlib error: the listener's own stop below still ends the thread
                log.debug("hotkeys: disabling the X RECORD context failed", exc_info=True)
        try:
            listener.stop()
        except Exception:  # its own disable request fails when the thread has closed already
            log.debug("hotkeys: stopping the pynput listener failed", exc_info=True)
        try:
            listener.join(2.0)
        except Exception:  # join re-raises what the listener thread raised
            log.debug("hotkeys: the pynput listener thread failed", exc_info=True)
        if listener.is_alive():
            log.warning("hotkeys: the pynput listener thread did not stop within 2 s")

    def __enter__(self) -> HotkeyListener:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
