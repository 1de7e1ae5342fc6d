"""Where text goes and what triggers it: the desktop session, the typing backend the typist will use, the hotkey
backend, and the helper tools. The typist (:mod:`qasr_live.outputs.typing`) and the hotkey listener
(:mod:`qasr_live.control.hotkeys`) are asked; their rules are not repeated here."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from qasr_live.desktop import Session, SessionKind, open_x_display
from qasr_live.doctor.context import Context
from qasr_live.doctor.report import Check, Lines
from qasr_live.errors import DisplayError

__all__ = ["check_desktop"]

#: Helper tools the typist runs, and the Debian/Ubuntu package of each.
_APT = {"xclip": "xclip", "xdotool": "xdotool", "wtype": "wtype", "wl-copy": "wl-clipboard", "wl-paste": "wl-clipboard"}


def check_desktop(ctx: Context) -> list[Check]:
    out = Lines("Desktop")
    session = ctx.session
    reachable = _session_line(out, session)
    _typing_line(out, ctx, session, reachable)
    _hotkeys_line(out, ctx, session, reachable)
    tools = {t: shutil.which(t, path=session.env.get("PATH")) for t in _APT}
    needed = _session_tools(session) if ctx.cfg.typing.enabled else []
    missing = [t for t in needed if not tools[t]]
    found = f"found: {', '.join(t for t, p in tools.items() if p) or 'none'}"
    found += f"; not found: {', '.join(t for t, p in tools.items() if not p) or 'none'}"
    data = {"tools": tools, "needed": needed}
    if missing:
        packages = " ".join(sorted({_APT[t] for t in missing}))
        fix = f"`sudo apt install {packages}`"
        out.warn("tools", f"{found}: {', '.join(missing)} missing for this session", fix, **data)
    else:
        out.ok("tools", found, **data)
    return out


def _session_line(out: Lines, session: Session) -> bool:
    """Add the session line; whether the session can be reached."""
    data = {"kind": str(session.kind), "display": session.display, "wayland_display": session.wayland_display}
    if session.kind == SessionKind.NONE:
        out.warn(
            "session",
            f"{session.describe()}: no typing, no global hotkeys; the daemon still journals, publishes captions on "
            "the WebSocket and obeys `qasr-live ctl`",
            "run inside your desktop session, or import it for the service: "
            "`systemctl --user import-environment DISPLAY WAYLAND_DISPLAY XAUTHORITY`",
            **data,
        )
        return False
    if session.kind == SessionKind.X11:
        try:
            open_x_display(session.display).close()
        except ImportError as e:
            out.fail("session", f"{session.describe()}: python-xlib is missing ({e})", "`pip install python-xlib`")
            return False
        except DisplayError as e:
            fix = "check DISPLAY and XAUTHORITY (run `qasr-live doctor` in the session's terminal to compare)"
            out.fail("session", f"cannot connect to X display {session.display!r}: {e}", fix, **data)
            return False
    elif session.kind == SessionKind.WAYLAND:
        runtime = session.env.get("XDG_RUNTIME_DIR", "")
        sock = Path(runtime) / (session.wayland_display or "")
        if not (session.wayland_display or "").startswith("/") and not sock.exists():
            fix = "check WAYLAND_DISPLAY and XDG_RUNTIME_DIR (run `qasr-live doctor` in the session's terminal)"
            out.fail("session", f"{session.describe()}: no socket {sock}", fix, **data)
            return False
    out.ok("session", session.describe(), **data)
    return True


def _typing_line(out: Lines, ctx: Context, session: Session, reachable: bool) -> None:
    from qasr_live.errors import TypingBackendError
    from qasr_live.outputs.typing import backend_chain

    if not ctx.cfg.typing.enabled:
        out.ok("typing", "off (typing.enabled: false): text goes to the journal and the WebSocket")
        return
    if session.kind == SessionKind.NONE:
        fix = "set typing.enabled: false to stop trying (captions still reach the WebSocket)"
        out.warn("typing", "nothing can be typed without a graphical session", fix, chain=[])
        return
    chain = backend_chain(ctx.cfg.typing.backend, session)
    ready: list[str] = []
    problems: list[str] = []
    for backend in chain:
        try:
            ready.append(f"{backend}: {_probe_backend(str(backend), session, reachable)}")
        except TypingBackendError as e:
            problems.append(f"{backend}: {e}")
    data = {"chain": [str(b) for b in chain], "ready": ready, "problems": problems}
    order = " -> ".join(str(b) for b in chain)
    if ready and not problems:
        out.ok("typing", f"{order}; {'; '.join(ready)}", **data)
    elif ready and _no_virtual_keyboard(session):
        fix = (
            f"{session.desktop}: install xdg-desktop-portal with its -gnome or -kde backend (typing.backend: auto "
            "types through its RemoteDesktop portal), or paste with Ctrl+V"
        )
        out.warn("typing", f"{order}: {'; '.join(problems)}; falls back to {'; '.join(ready)}", fix, **data)
    elif ready:
        fix = "install what is missing (see tools) or set typing.backend in config.yaml to one that works here"
        out.warn("typing", f"{order}: {'; '.join(problems)}; falls back to {'; '.join(ready)}", fix, **data)
    else:
        fix = "fix the session line above, then install the tools below"
        out.fail("typing", f"nothing can be typed: {'; '.join(problems)}", fix, **data)


def _probe_backend(backend: str, session: Session, reachable: bool) -> str:
    """What ``backend`` will use in ``session``; TypingBackendError when it cannot work."""
    from qasr_live.errors import TypingBackendError
    from qasr_live.outputs.typing.tools import clipboard_commands
    from qasr_live.outputs.typing.xtest import XKeyboard

    path = session.env.get("PATH")
    if backend == "pynput" and session.kind == SessionKind.X11 and session.display:
        XKeyboard(session.display).close()  # connects and checks XTEST, as the typist will
        return f"XTest keyboard on X display {session.display}"
    if backend == "pynput" and session.kind == SessionKind.MACOS:
        if importlib.util.find_spec("pynput") is None:
            raise TypingBackendError("pynput is not installed")
        return "pynput key events (needs the Accessibility permission)"
    if backend == "pynput":
        raise TypingBackendError(f"cannot type into {session.describe()}")
    if backend == "wtype":
        if not shutil.which("wtype", path=path):
            raise TypingBackendError("wtype is not installed")
        if _no_virtual_keyboard(session):
            raise TypingBackendError(f"{session.desktop} does not offer the virtual-keyboard protocol wtype needs")
        return "wtype (wlroots virtual keyboard)"
    if backend == "portal":
        from qasr_live.outputs.typing.portal import probe_portal

        return probe_portal(session.env)
    copy, paste = clipboard_commands(session)
    if not reachable:
        raise TypingBackendError(f"no clipboard: {session.describe()} cannot be reached")
    for tool in (copy[0], paste[0]):
        if not shutil.which(tool, path=path):
            raise TypingBackendError(f"{tool} is not installed")
    if session.kind == SessionKind.X11:
        keys = "xdotool" if shutil.which("xdotool", path=path) else "XTest"
        return f"{copy[0]} + Ctrl+V with {keys}"
    if _no_virtual_keyboard(session):  # the paste keys go through wtype too: the user presses them
        return f"{copy[0]}, then you press Ctrl+V"
    return f"{copy[0]} + Ctrl+V"


def _no_virtual_keyboard(session: Session) -> bool:
    """GNOME and KDE (Wayland) lack the virtual-keyboard protocol wtype types and presses Ctrl+V with."""
    return session.kind == SessionKind.WAYLAND and any(d in session.desktop.upper() for d in ("GNOME", "KDE"))


def _hotkeys_line(out: Lines, ctx: Context, session: Session, reachable: bool) -> None:
    from qasr_live.control.hotkeys import available
    from qasr_live.control.keys import combos_for

    cfg = ctx.cfg
    if not cfg.hotkeys.enabled or cfg.audio.source is not None:
        why = "hotkeys.enabled: false" if not cfg.hotkeys.enabled else "audio.source is set"
        out.ok("hotkeys", f"off ({why}): `qasr-live ctl` and the WebSocket control dictation")
        return
    combos = combos_for(cfg.hotkeys, cfg.trigger.mode)
    keys = ", ".join(f"{name} {combo.text}" for name, combo in combos.items()) or "none for this mode"
    ctl = "ctl ptt-press / ptt-release" if cfg.trigger.mode == "ptt" else "ctl toggle"
    if session.kind == SessionKind.WAYLAND:
        detail = f"compositor key bindings: bind your keys to `qasr-live {ctl}` (Wayland has no global hotkeys)"
        out.ok("hotkeys", detail, backend="compositor")
        return
    if session.kind == SessionKind.NONE:
        fix = f"drive dictation with `qasr-live {ctl}` (or WebSocket control messages)"
        out.warn("hotkeys", "off without a graphical session", fix, backend=None)
        return
    state = available(session.env)
    if not state:
        fix = f"bind keys in your desktop to `qasr-live {ctl}`" if reachable else "fix the session line above"
        out.warn("hotkeys", f"off: {state.reason}", fix, backend=None)
    elif session.kind == SessionKind.X11 and importlib.util.find_spec("pynput") is None:
        out.warn("hotkeys", "off: pynput is not installed", f"`{sys.executable} -m pip install pynput`", backend=None)
    else:
        out.ok("hotkeys", f"pynput on {state.reason} (X RECORD): {keys}", backend="pynput", keys=keys)


def _session_tools(session: Session) -> list[str]:
    if session.kind == SessionKind.X11:
        return ["xclip", "xdotool"]
    if session.kind == SessionKind.WAYLAND:
        return ["wtype", "wl-copy", "wl-paste"]
    return []
