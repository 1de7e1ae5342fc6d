"""The command-line tools the typist drives: wtype (Wayland typing), clipboard copy/paste, the paste keystroke.

* **wtype** types on wlroots compositors (Sway, Hyprland, river, labwc: the virtual-keyboard protocol; Unicode via a
  keymap upload). GNOME and KDE do not implement that protocol: wtype fails there and the clipboard is used.
* **clipboard**: copy with ``wl-copy`` on Wayland, ``xclip`` on X11, ``pbcopy`` on macOS (and read back with
  ``wl-paste``, ``xclip -o``, ``pbpaste``); paste with a simulated Ctrl+V: ``wtype -M ctrl -k v`` on Wayland,
  ``xdotool key --clearmodifiers ctrl+v`` on X11 when xdotool is installed (the typist falls back to XTest, or to
  Cmd+V with pynput on macOS).

Every tool runs to completion with the session's environment; a failure raises
:class:`~qasr_live.errors.TypingBackendError` naming the tool and its last line of stderr.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping

from qasr_live.desktop import Session, SessionKind
from qasr_live.errors import TypingBackendError

__all__ = [
    "clipboard_commands",
    "paste_with_tool",
    "read_clipboard",
    "run_tool",
    "run_tool_bytes",
    "type_keys",
    "type_with_wtype",
    "wayland_alive",
    "write_clipboard",
]


# wtype's virtual keyboard and its keymap are new at each run; the compositor hands the keymap to the focused
# window, and a first key sent at once was lost about once in 20 fresh runs in the sway tests: 30 ms first.
_SETTLE = ("-s", "30")


def run_tool(argv: list[str], env: Mapping[str, str], *, input: str = "", timeout: float = 10.0) -> str:
    """Run a helper tool to completion; its stdout; ``TypingBackendError`` with its stderr if it fails."""
    return run_tool_bytes(argv, env, input=input.encode(), timeout=timeout).decode(errors="replace")


def run_tool_bytes(
    argv: list[str], env: Mapping[str, str], *, input: bytes = b"", timeout: float = 10.0, limit: int = -1
) -> bytes:
    """Run a helper tool to completion; its stdout as bytes (at most ``limit``; -1: all); ``TypingBackendError``
    with its stderr if it fails.

    stdout/stderr go to temporary files, not pipes: ``xclip -i`` and ``wl-copy`` leave a background process
    that serves the clipboard and would hold a pipe open forever.
    """
    name = argv[0]
    if shutil.which(name, path=env.get("PATH")) is None:
        raise TypingBackendError(f"{name} is not installed")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            done = subprocess.run(
                argv,
                input=input,
                stdout=out,
                stderr=err,
                env=dict(env),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TypingBackendError(f"{name} did not finish within {timeout:.0f} s") from None
        except OSError as e:
            raise TypingBackendError(f"cannot run {name}: {e}") from None
        out.seek(0)
        err.seek(0)
        stdout = out.read(limit)
        stderr = err.read().decode(errors="replace").strip()
    if done.returncode != 0:
        detail = stderr.splitlines()[-1] if stderr else "no message"
        raise TypingBackendError(f"{name} failed (exit {done.returncode}): {detail}")
    return stdout


def type_with_wtype(text: str, session: Session, char_delay_ms: float = 0.0) -> None:
    """Type ``text`` into the focused Wayland window with wtype (``char_delay_ms`` between characters)."""
    if session.kind != SessionKind.WAYLAND:
        raise TypingBackendError(f"wtype needs a Wayland session; this is {session.describe()}")
    timeout = 10.0 + len(text) * (char_delay_ms / 1000.0 + 0.02)
    argv = ["wtype", *_SETTLE, "-d", str(round(char_delay_ms)), "-"] if char_delay_ms else ["wtype", *_SETTLE, "-"]
    run_tool(argv, session.env, input=text, timeout=timeout)
    if not wayland_alive(session):
        # wtype exits 0 when the compositor vanishes under it: without this the loss would be silent
        raise TypingBackendError("the Wayland compositor went away while typing: the text may be cut short")


def wayland_alive(session: Session) -> bool:
    """Whether the session's Wayland compositor still accepts connections on its socket."""
    name = session.wayland_display or "wayland-0"
    path = name if name.startswith("/") else os.path.join(session.env.get("XDG_RUNTIME_DIR", ""), name)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def type_keys(keys: list[str], session: Session) -> None:
    """Press and release named keys (XKB keysym names, e.g. ``BackSpace``) in order with wtype."""
    if session.kind != SessionKind.WAYLAND:
        raise TypingBackendError(f"wtype needs a Wayland session; this is {session.describe()}")
    if keys:
        run_tool(
            ["wtype", *_SETTLE, *(a for k in keys for a in ("-k", k))], session.env, timeout=10.0 + 0.02 * len(keys)
        )


def clipboard_commands(session: Session) -> tuple[list[str], list[str]]:
    """(copy command reading stdin, paste-out command writing stdout) for the session."""
    if session.kind == SessionKind.WAYLAND:
        return ["wl-copy"], ["wl-paste", "--no-newline"]
    if session.kind == SessionKind.X11:
        return ["xclip", "-selection", "clipboard", "-i"], ["xclip", "-selection", "clipboard", "-o"]
    if session.kind == SessionKind.MACOS:
        return ["pbcopy"], ["pbpaste"]
    raise TypingBackendError(f"no clipboard: {session.describe()}")


def read_clipboard(session: Session) -> str | None:
    """The clipboard's text; ``None`` when it is empty or holds no text (e.g. an image)."""
    _, paste_out = clipboard_commands(session)
    try:
        return run_tool(paste_out, session.env, timeout=2.0)
    except TypingBackendError:
        return None  # empty, or not text


def write_clipboard(text: str, session: Session) -> None:
    """Put ``text`` on the clipboard."""
    copy, _ = clipboard_commands(session)
    run_tool(copy, session.env, input=text, timeout=5.0)


def paste_with_tool(session: Session) -> bool:
    """Press the paste keys with a tool: ``True`` when done, ``False`` when no tool applies here (X11 without
    xdotool, macOS), so the caller presses them in-process."""
    if session.kind == SessionKind.WAYLAND:
        run_tool(["wtype", *_SETTLE, "-M", "ctrl", "-k", "v", "-m", "ctrl"], session.env, timeout=5.0)
        return True
    if session.kind == SessionKind.X11 and shutil.which("xdotool", path=session.env.get("PATH")):
        run_tool(["xdotool", "key", "--clearmodifiers", "ctrl+v"], session.env, timeout=5.0)
        return True
    return False
