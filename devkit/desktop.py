"""A real X desktop for tests: Xvfb, a focused Tk text window in a subprocess, xdotool and xclip helpers.

Everything here is a context manager that cleans up after itself (even when the test fails), and everything
takes the display explicitly, so tests never depend on (or touch) the ``DISPLAY`` of the machine running them::

    with Xvfb() as x, TkTextWindow(x.display) as window:
        xdotool(x.display, "type", "hello")
        assert window.wait_text("hello") == "hello"

Children die with the test process (``PR_SET_PDEATHSIG``), so even a run killed by a timeout leaves nothing.

* :class:`Xvfb` starts a virtual X server on a display number the server picks itself (``-displayfd``: the
  number is only reported once the server accepts connections, and two servers started at once never pick the
  same number), and stops it on exit. ``x.env`` is an environment for subprocesses that talk to it (``DISPLAY``
  set, ``WAYLAND_DISPLAY`` removed, ``XDG_SESSION_TYPE=x11``).
* :class:`TkTextWindow` runs a Tk window with one Text widget in a child process, focused (``XSetInputFocus``;
  Xvfb has no window manager), and answers ``get``/``clear``/``focus`` requests over its stdin/stdout, so a
  test reads back exactly what the window received.
* :func:`xdotool`, :func:`clipboard_get`, :func:`clipboard_set` run those tools against a given display;
  :func:`set_layouts` installs keyboard layouts (setxkbmap) and makes one of them the active group.
* :func:`require` skips a test when a needed executable is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

__all__ = [
    "TkTextWindow",
    "Xvfb",
    "clipboard_get",
    "clipboard_set",
    "require",
    "set_layouts",
    "x_env",
    "xdotool",
]

# Variables that would point a child at the real desktop instead of the test's server.
_SESSION_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "XAUTHORITY", "XDG_CURRENT_DESKTOP")


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """End a helper process started here (a server, a compositor): SIGTERM, then SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when the test process dies, even by SIGKILL (Linux), so a killed
    test run leaves no X server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def require(*executables: str) -> None:
    """Skip the calling test unless every executable is on PATH."""
    missing = [name for name in executables if shutil.which(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install xvfb xdotool xclip)")


def x_env(display: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment that talks to X display ``display`` only (no Wayland, no inherited X authority)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _SESSION_VARS}
    env.update(DISPLAY=display, XDG_SESSION_TYPE="x11")
    return env


class Xvfb:
    """A private Xvfb server for the duration of a ``with`` block; ``.display`` is its name (``":N"``)."""

    def __init__(self, width: int = 1024, height: int = 768, start_timeout: float = 20.0):
        self.width, self.height, self.start_timeout = width, height, start_timeout
        self.display = ""
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return x_env(self.display)

    def __enter__(self) -> Xvfb:
        require("Xvfb")
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [
                    "Xvfb",
                    "-displayfd",
                    str(write_fd),
                    "-screen",
                    "0",
                    f"{self.width}x{self.height}x24",
                    "-nolisten",
                    "tcp",
                    "-noreset",
                ],
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            os.close(write_fd)
            write_fd = -1
            number = self._read_display_number(read_fd)
        except BaseException:
            if write_fd >= 0:
                os.close(write_fd)
            self.__exit__(None, None, None)
            raise
        finally:
            os.close(read_fd)
        self.display = f":{number}"
        return self

    def _read_display_number(self, fd: int) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        data = b""
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"Xvfb did not start within {self.start_timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 64)
                if not chunk:  # the server exited before reporting a display
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise RuntimeError(f"Xvfb exited with status {self.proc.wait()}: {err.strip()[-2000:]}")
                data += chunk
        return int(data.strip())

    def __exit__(self, *exc: Any) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stop_process(proc)
        if proc.stderr:
            proc.stderr.close()


def xdotool(display: str, *args: str, timeout: float = 10.0) -> str:
    """Run ``xdotool ARGS`` against ``display``; return its stdout; raise with its stderr on failure."""
    require("xdotool")
    done = subprocess.run(
        ["xdotool", *args], env=x_env(display), capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"xdotool {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def clipboard_get(display: str, selection: str = "clipboard", timeout: float = 5.0) -> str | None:
    """The text of an X selection, or ``None`` when nobody owns it."""
    require("xclip")
    done = subprocess.run(
        ["xclip", "-selection", selection, "-o"],
        env=x_env(display),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout.decode() if done.returncode == 0 else None


def clipboard_set(display: str, text: str, selection: str = "clipboard", timeout: float = 5.0) -> None:
    """Own an X selection with ``text`` (xclip keeps serving it in the background until the server stops)."""
    require("xclip")
    # stdout/stderr must not be pipes: xclip's background child would hold them open.
    subprocess.run(
        ["xclip", "-selection", selection, "-i"],
        env=x_env(display),
        input=text.encode(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=timeout,
        check=True,
    )


def set_layouts(display: str, layouts: str, group: int = 0) -> None:
    """``setxkbmap -layout LAYOUTS`` and lock the active group (0 = the first layout) with XkbLatchLockState,
    as a layout switch key would. (No command-line tool locks a group, and XTest key presses of a group-switch
    key do not reach the core keyboard's state under Xvfb.)"""
    require("setxkbmap")
    subprocess.run(["setxkbmap", "-display", display, "-layout", layouts], check=True, timeout=10)
    import Xlib.display
    from Xlib.protocol import rq

    class UseExtension(rq.ReplyRequest):
        _request = rq.Struct(
            rq.Card8("opcode"), rq.Opcode(0), rq.RequestLength(), rq.Card16("major"), rq.Card16("minor")
        )
        _reply = rq.Struct(rq.ReplyCode(), rq.Bool("supported"), rq.Card16("sequence_number"), rq.Pad(28))

    class LatchLockState(rq.Request):
        _request = rq.Struct(
            rq.Card8("opcode"),
            rq.Opcode(5),
            rq.RequestLength(),
            rq.Card16("device_spec"),
            rq.Card8("affect_mod_locks"),
            rq.Card8("mod_locks"),
            rq.Bool("lock_group"),
            rq.Card8("group_lock"),
            rq.Card8("affect_mod_latches"),
            rq.Pad(2),
            rq.Bool("latch_group"),
            rq.Int16("group_latch"),
        )

    conn = Xlib.display.Display(display)
    try:
        opcode = conn.query_extension("XKEYBOARD").major_opcode
        assert UseExtension(display=conn.display, opcode=opcode, major=1, minor=0).supported
        LatchLockState(
            display=conn.display,
            opcode=opcode,
            device_spec=0x100,  # the core keyboard
            affect_mod_locks=0,
            mod_locks=0,
            lock_group=True,
            group_lock=group,
            affect_mod_latches=0,
            latch_group=False,
            group_latch=0,
        )
        conn.sync()
    finally:
        conn.close()


# The child process: a Tk window with a Text widget; requests on stdin, JSON replies on stdout.
_TK_CHILD = r"""
import json, queue, sys, threading, tkinter as tk

root = tk.Tk()
root.title(sys.argv[1])
root.geometry("640x320+0+0")
text = tk.Text(root)
text.pack(fill="both", expand=True)
requests = queue.Queue()

def reader():
    for line in sys.stdin:
        requests.put(line.strip())
    requests.put("quit")

def reply(**obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

def focus():
    root.focus_force()
    text.focus_force()
    root.update()

def poll():
    while True:
        try:
            cmd = requests.get_nowait()
        except queue.Empty:
            break
        if cmd == "quit":
            root.destroy()
            return
        if cmd == "clear":
            text.delete("1.0", "end")
        elif cmd == "focus":
            focus()
        focused = root.focus_get()
        reply(text=text.get("1.0", "end-1c"), focused=focused is not None and str(focused) == str(text))
    root.after(5, poll)

threading.Thread(target=reader, daemon=True).start()
root.wait_visibility(root)
focus()
root.after(5, poll)
reply(ready=True, window=int(root.wm_frame(), 0))
root.mainloop()
"""


class TkTextWindow:
    """A focused Tk Text window on ``display`` in a child process; read back what it received."""

    def __init__(self, display: str, title: str = "qasr-test", start_timeout: float = 20.0):
        self.display, self.title, self.start_timeout = display, title, start_timeout
        self.proc: subprocess.Popen | None = None
        self.window = 0
        self._replies: queue.Queue[dict | None] = queue.Queue()
        self._stderr: list[str] = []

    def __enter__(self) -> TkTextWindow:
        env = x_env(self.display)
        env["PYTHONIOENCODING"] = "utf-8"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TK_CHILD, self.title],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        try:
            hello = self._reply(self.start_timeout)
            if not hello.get("ready"):
                raise RuntimeError(f"unexpected first message from the Tk window: {hello}")
            self.window = hello["window"]
            self.focus()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._replies.put(json.loads(line))
        self._replies.put(None)

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def _reply(self, timeout: float) -> dict:
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"the Tk window did not answer within {timeout:.0f} s") from None
        if reply is None:
            raise RuntimeError(f"the Tk window exited: {''.join(self._stderr)[-2000:]}")
        return reply

    def _request(self, cmd: str, timeout: float = 10.0) -> dict:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._reply(timeout)

    def text(self) -> str:
        """Everything in the Text widget now."""
        return self._request("get")["text"]

    def clear(self) -> None:
        self._request("clear")

    def focus(self) -> None:
        """Give the Text widget the X input focus again (and check that it has it)."""
        reply = self._request("focus")
        if not reply["focused"]:
            raise RuntimeError("the Tk text widget did not get the focus")

    def wait_text(self, expected: str, timeout: float = 10.0, settle: float = 0.0) -> str:
        """Poll until the widget holds ``expected`` (or ``timeout``); return what it holds then.

        ``settle``: keep polling that long after the match, so extra characters arriving late are caught too.
        """
        deadline = time.monotonic() + timeout
        text = self.text()
        while text != expected and time.monotonic() < deadline:
            time.sleep(0.01)
            text = self.text()
        if text == expected and settle > 0:
            time.sleep(settle)
            text = self.text()
        return text

    def wait_change(self, old: str, timeout: float) -> tuple[str, float]:
        """Poll until the text differs from ``old``; return it and when it changed (``time.monotonic``)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            now = time.monotonic()
            if text != old or now >= deadline:
                return text, now
            time.sleep(0.005)

    def __exit__(self, *exc: Any) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            proc.wait(timeout=5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
