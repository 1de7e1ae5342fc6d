"""A real Wayland desktop for tests: a headless sway (wlroots) and a focused foot terminal that records every
character it receives.

    with Sway() as sway, FootRecorder(sway) as window:
        subprocess.run(["wtype", "hello"], env=sway.env)
        assert window.wait_text("hello") == "hello"

* :class:`Sway` runs ``sway`` with the headless wlroots backend and the pixman renderer (no GPU, no input
  devices) in a private ``XDG_RUNTIME_DIR`` (0700). sway refuses to run as root (it cannot drop privileges it
  could regain), so as root it runs as ``nobody`` through ``setpriv``; clients running as root still reach its
  socket. ``sway.env`` is an environment for clients of this compositor only (``WAYLAND_DISPLAY``,
  ``XDG_RUNTIME_DIR``, ``SWAYSOCK``, no ``DISPLAY``).
* :class:`ClipboardApp` is another application holding the clipboard with several MIME types at once (as a
  browser does after copying an image: ``wl-copy`` offers only one), served from a process of its own through
  the data-control protocol; it exits when another client takes the clipboard.
* :class:`FootRecorder` runs ``foot`` (a Wayland-native terminal) with ``cat`` writing to a file, the terminal in
  non-canonical mode without echo or signals: each key the window receives arrives as bytes right away (Return
  as ``\\n``, BackSpace as DEL, which :meth:`FootRecorder.text` applies as "delete the last character").
  It waits until sway reports the window focused.

Children die with the test process (``PR_SET_PDEATHSIG``), so a killed run leaves no compositor behind.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from devkit.desktop import _SESSION_VARS, _die_with_parent, require, stop_process

__all__ = ["ClipboardApp", "FootRecorder", "Sway", "swaymsg"]

_NOBODY = 65534
_CONFIG = """\
xwayland disable
output HEADLESS-1 resolution 1024x768
default_border none
focus_follows_mouse no
"""


class Sway:
    """A headless sway for the duration of a ``with`` block."""

    def __init__(self, start_timeout: float = 15.0):
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.root = Path()
        self.wayland_display = ""
        self.swaysock = ""
        self._log: Any = None

    @property
    def runtime_dir(self) -> Path:
        return self.root / "run"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SESSION_VARS and k != "SWAYSOCK"}
        env.update(
            XDG_RUNTIME_DIR=str(self.runtime_dir),
            WAYLAND_DISPLAY=self.wayland_display,
            XDG_SESSION_TYPE="wayland",
            XDG_CURRENT_DESKTOP="sway",
            SWAYSOCK=self.swaysock,
        )
        return env

    def log(self) -> str:
        path = self.root / "sway.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def __enter__(self) -> Sway:
        require("sway")
        self.root = Path(tempfile.mkdtemp(prefix="qasr-sway-"))
        self.runtime_dir.mkdir(mode=0o700)
        (self.root / "config").write_text(_CONFIG)
        argv = ["sway", "-c", str(self.root / "config")]
        if os.geteuid() == 0:
            require("setpriv")
            os.chown(self.runtime_dir, _NOBODY, _NOBODY)
            os.chmod(self.root, 0o755)
            # --pdeathsig: the death signal is reset when the user changes, so setpriv sets it again after
            argv = ["setpriv", f"--reuid={_NOBODY}", f"--regid={_NOBODY}", "--clear-groups", "--pdeathsig=TERM"]
            argv += ["sway", "-c", str(self.root / "config")]
        env = {k: v for k, v in os.environ.items() if k not in _SESSION_VARS and k != "SWAYSOCK"}
        env.update(
            XDG_RUNTIME_DIR=str(self.runtime_dir),
            HOME=str(self.root),
            WLR_BACKENDS="headless",
            WLR_LIBINPUT_NO_DEVICES="1",
            WLR_RENDERER="pixman",
        )
        self._log = open(self.root / "sway.log", "wb")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_sockets()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_sockets(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sway exited with status {self.proc.returncode}: {self.log()}")
            names = os.listdir(self.runtime_dir)
            wayland = [n for n in names if n.startswith("wayland-") and not n.endswith(".lock")]
            ipc = [n for n in names if n.startswith("sway-ipc.")]
            if wayland and ipc:
                self.wayland_display = wayland[0]
                self.swaysock = str(self.runtime_dir / ipc[0])
                try:
                    swaymsg(self, "-t", "get_version")
                    return
                except RuntimeError:
                    pass  # the IPC socket exists before sway answers on it
            time.sleep(0.05)
        raise RuntimeError(f"sway did not start within {self.start_timeout:.0f} s: {self.log()}")

    def stop(self) -> None:
        """Stop the compositor now (tests of a compositor that goes away)."""
        proc = self.proc
        stop_process(proc)

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.root, ignore_errors=True)


def swaymsg(sway: Sway, *args: str, timeout: float = 5.0) -> Any:
    """``swaymsg ARGS`` against ``sway``; its JSON reply."""
    done = subprocess.run(
        ["swaymsg", "-r", *args], env=sway.env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"swaymsg {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout) if done.stdout.strip() else None


def _nodes(tree: dict) -> list[dict]:
    out = [tree]
    for key in ("nodes", "floating_nodes"):
        for child in tree.get(key, ()):
            out.extend(_nodes(child))
    return out


# Ctrl+V pastes in this window, as in a GUI application (foot's own default is Ctrl+Shift+V), so the clipboard
# route (wl-copy + the paste keys) can be tested too.
_FOOT_OPTIONS = ("-o", "key-bindings.clipboard-paste=Control+v Control+Shift+v")
_RECORDER = 'stty -icanon -echo -isig -ixon -iexten min 1 time 0 && exec cat > "$0"'


class FootRecorder:
    """A focused foot window on ``sway`` whose terminal records every character it receives."""

    def __init__(self, sway: Sway, app_id: str = "qasr-recorder", start_timeout: float = 15.0):
        self.sway, self.app_id, self.start_timeout = sway, app_id, start_timeout
        self.proc: subprocess.Popen | None = None
        self.path = sway.root / f"{app_id}.typed"

    def __enter__(self) -> FootRecorder:
        require("foot", "swaymsg")
        self.path.write_bytes(b"")
        with open(self.sway.root / f"{self.app_id}.log", "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                ["foot", "--app-id", self.app_id, *_FOOT_OPTIONS, "sh", "-c", _RECORDER, str(self.path)],
                env=self.sway.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            self.wait_focused(self.start_timeout)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def focused(self) -> bool:
        tree = swaymsg(self.sway, "-t", "get_tree")
        return any(n.get("app_id") == self.app_id and n.get("focused") for n in _nodes(tree))

    def focus(self) -> None:
        swaymsg(self.sway, f'[app_id="{self.app_id}"]', "focus")
        self.wait_focused(5.0)

    def wait_focused(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.focused():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"foot exited with status {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the foot window {self.app_id!r} was not focused within {timeout:.0f} s")
            time.sleep(0.05)
        time.sleep(0.2)  # the terminal's stty runs after the window maps

    def raw(self) -> bytes:
        return self.path.read_bytes()

    def text(self) -> str:
        """Everything the window received, BackSpace (DEL) applied."""
        return _apply_backspace(self.raw().decode(errors="replace"))

    def clear(self) -> None:
        """Forget what was received so far (``cat`` keeps its offset, so the file is not truncated: a mark)."""
        self._offset = len(self.raw())

    def wait_text(self, expected: str, timeout: float = 10.0, settle: float = 0.2) -> str:
        """Poll until the window received ``expected`` since :meth:`clear` (or ``timeout``); what it holds then."""
        deadline = time.monotonic() + timeout
        text = self.received()
        while text != expected and time.monotonic() < deadline:
            time.sleep(0.02)
            text = self.received()
        if text == expected and settle > 0:
            time.sleep(settle)
            text = self.received()
        return text

    def received(self) -> str:
        """What arrived since the last :meth:`clear`, BackSpace applied; a BackSpace that deleted something
        received before stays as ``"\\x7f"``."""
        return _apply_backspace(self.raw()[getattr(self, "_offset", 0) :].decode(errors="replace"))

    def __exit__(self, *exc: Any) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)


def _apply_backspace(text: str) -> str:
    out: list[str] = []
    for ch in text:
        if ch == "\x7f" and out and out[-1] != "\x7f":
            out.pop()
        else:
            out.append(ch)
    return "".join(out)


_CLIPBOARD_APP = """
import json, sys, time
from pathlib import Path
from qasr_live.outputs.typing.wayland_clipboard import WaylandClipboardOwner
root = Path(sys.argv[1])
types = {mime: (root / name).read_bytes() for mime, name in json.loads((root / "types.json").read_text())}
owner = WaylandClipboardOwner(dict(__import__("os").environ), types)
print("ready", flush=True)
while owner.alive:
    time.sleep(0.02)
owner.close()
"""


class ClipboardApp:
    """A separate client of ``sway`` owning the clipboard with ``types`` (MIME type → bytes), all offered at
    once, until another client copies something (then its process exits: :meth:`gone`). Needs pywayland."""

    def __init__(self, sway: Sway, types: dict[str, bytes], start_timeout: float = 15.0):
        self.sway, self.types, self.start_timeout = sway, types, start_timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ClipboardApp:
        root = Path(tempfile.mkdtemp(prefix="clipboard-app-", dir=self.sway.root))
        names = []
        for i, (mime, data) in enumerate(self.types.items()):
            (root / str(i)).write_bytes(data)
            names.append((mime, str(i)))
        (root / "types.json").write_text(json.dumps(names))
        repo = str(Path(__file__).resolve().parents[1])
        env = {**self.sway.env, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
        self.log = root / "app.log"
        with open(self.log, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _CLIPBOARD_APP, str(root)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.start_timeout)
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.__exit__(None, None, None)
            raise RuntimeError(f"the clipboard app did not start: {line!r} {self.log.read_text()[-2000:]}")
        return self

    def gone(self, timeout: float = 5.0) -> bool:
        """Whether the app exited (it lost the clipboard to another client) within ``timeout`` seconds."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def __exit__(self, *exc: Any) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
