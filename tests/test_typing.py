"""Typing committed text: sanitising, session detection, backend chains and fallbacks, and real typing into a
focused Tk window under Xvfb (pynput and clipboard paste), including the wait for held modifiers."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from devkit.desktop import TkTextWindow, Xvfb, clipboard_get, clipboard_set, require, set_layouts, x_env, xdotool
from qasr_live.config import TypingConfig
from qasr_live.desktop import detect_session
from qasr_live.errors import TypingBackendError
from qasr_live.outputs.typing import Typist, backend_chain, sanitize, x_held_modifiers
from qasr_live.outputs.typing.clipboard import XClipboardOwner

# the listener / typist export the session's DISPLAY into os.environ (pynput's Xlib reads it there): undo that
pytestmark = pytest.mark.usefixtures("forget_display_env")


@pytest.fixture(scope="module")
def desktop():
    require("Xvfb", "xdotool", "xclip")
    with Xvfb() as x, TkTextWindow(x.display) as window:
        yield x, window


@pytest.fixture
def window(desktop):
    _x, window = desktop
    window.clear()
    window.focus()
    return window


def typist(x: Xvfb, **config) -> Typist:
    config.setdefault("modifier_timeout_s", 2.0)
    return Typist(TypingConfig(**config), env=x.env)


# ------------------------------------------------------------------------------------------ pure logic


def test_sanitize_strips_controls_and_keeps_every_script():
    assert sanitize("Hello, world! é ü ß 你好 こんにちは 🙂") == "Hello, world! é ü ß 你好 こんにちは 🙂"
    # line breaks and tabs become spaces: dictation never presses Enter or Tab
    assert sanitize("one\ntwo\r\nthree\tfour\u2028five") == "one two  three four five"
    # ESC sequences, DEL, NUL, C1 and BEL vanish (the printable rest of an escape sequence stays as text)
    assert sanitize("a\x1b[31mb\x7fc\x00d\x9be\x07") == "a[31mbcde"
    # bidi overrides / isolates / marks ("Trojan Source"), BOM and tag characters vanish
    assert sanitize("x\u202eevil\u202c\u2066y\u2069\u200f\ufeffz\U000e0041") == "xevilyz"
    # joiners stay: emoji sequences and scripts like Persian need them
    assert sanitize("👩\u200d💻 می\u200cخواهم") == "👩\u200d💻 می\u200cخواهم"
    assert sanitize("\ud800lone surrogate") == "lone surrogate"
    # replacement characters are decoding debris (a token boundary inside a character), not speech
    assert sanitize("caf\ufffd\ufffd ok") == "caf ok"


def test_session_detection_and_backend_chains():
    x11 = detect_session({"DISPLAY": ":5"}, platform="linux")
    assert (x11.kind, x11.display) == ("x11", ":5")
    wl = detect_session(
        {"WAYLAND_DISPLAY": "wayland-1", "DISPLAY": ":0", "XDG_CURRENT_DESKTOP": "sway"}, platform="linux"
    )
    assert (wl.kind, wl.wayland_display, wl.display) == ("wayland", "wayland-1", ":0")
    forced_x = detect_session(
        {"WAYLAND_DISPLAY": "wayland-1", "DISPLAY": ":0", "XDG_SESSION_TYPE": "x11"}, platform="linux"
    )
    assert forced_x.kind == "x11"
    assert detect_session({}, platform="linux").kind == "none"
    assert detect_session({}, platform="darwin").kind == "macos"

    assert backend_chain("auto", x11) == ["pynput", "clipboard"]
    assert backend_chain("auto", wl) == ["wtype", "clipboard"]  # never pynput: it only reaches XWayland windows
    for desktop in ("GNOME", "ubuntu:GNOME", "KDE"):  # no virtual keyboard there: the RemoteDesktop portal
        gnome = detect_session({"WAYLAND_DISPLAY": "wayland-0", "XDG_CURRENT_DESKTOP": desktop}, platform="linux")
        assert backend_chain("auto", gnome) == ["portal", "clipboard"]
    assert backend_chain("auto", detect_session({}, platform="darwin")) == ["pynput", "clipboard"]
    assert backend_chain("auto", detect_session({}, platform="linux")) == ["clipboard"]
    assert backend_chain("wtype", x11) == ["wtype", "clipboard"]
    assert backend_chain("clipboard", wl) == ["clipboard"]


def test_no_session_fails_loudly_with_every_attempt():
    t = Typist(TypingConfig(backend="pynput", modifier_timeout_s=0), env={"PATH": os.environ["PATH"]}, platform="linux")
    result = t.type_text("hello")
    assert not result.ok
    assert [(a.backend, a.ok) for a in result.attempts] == [("pynput", False), ("clipboard", False)]
    assert "pynput: no X display to type into" in result.error
    assert "clipboard: no clipboard: no graphical session (DISPLAY and WAYLAND_DISPLAY are not set)" in result.error
    assert result.session.startswith("no graphical session")
    # nothing to type is not a failure; disabled typing says so
    assert Typist(env={}).type_text("\x1b\x07").backend == "none"
    off = Typist(TypingConfig(enabled=False), env={}).type_text("hi")
    assert off.ok and off.backend == "none" and off.notes


def test_partial_failure_hands_only_the_rest_to_the_next_backend():
    delivered: list[tuple[str, str]] = []

    class Flaky(Typist):
        def _deliver(self, backend, text, session):
            if backend == "pynput":
                delivered.append((backend, text[:3]))
                raise TypingBackendError("X connection lost", delivered=3)
            delivered.append((backend, text))

    result = Flaky(TypingConfig(modifier_timeout_s=0), env={"DISPLAY": ":9"}, platform="linux").type_text("abcdef")
    assert result.ok and result.backend == "clipboard"
    assert delivered == [("pynput", "abc"), ("clipboard", "def")]  # nothing typed twice
    assert [(a.backend, a.ok, a.delivered) for a in result.attempts] == [
        ("pynput", False, "abc"),
        ("clipboard", True, "def"),
    ]
    assert result.attempts[0].error == "pynput: X connection lost"


def _fake_tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_wayland_without_virtual_keyboard_keeps_text_on_clipboard(tmp_path):
    """GNOME/KDE without the RemoteDesktop portal (no session bus here): the clipboard copy works but the paste
    (wtype, refused by the compositor) does not — reported as a failure that tells the user the text is on the
    clipboard. (Fake tools: no GNOME or KDE
    compositor can run here; wtype itself is tested for real in a headless sway, tests/test_wayland.py.)"""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_tool(bin_dir, "wtype", 'echo "Compositor does not support the virtual keyboard protocol" >&2\nexit 1\n')
    _fake_tool(bin_dir, "wl-copy", f"cat > {tmp_path}/clipboard\n")
    _fake_tool(bin_dir, "wl-paste", "exit 1\n")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "WAYLAND_DISPLAY": "wayland-7", "XDG_CURRENT_DESKTOP": "GNOME"}
    result = Typist(TypingConfig(modifier_timeout_s=0), env=env, platform="linux").type_text("Grüße")
    assert not result.ok
    assert [a.backend for a in result.attempts] == ["portal", "clipboard"]
    assert "no D-Bus session bus" in result.attempts[0].error
    assert "Compositor does not support the virtual keyboard protocol" in result.attempts[1].error
    assert "the text is on the clipboard" in result.attempts[1].error
    assert "press Ctrl+V" in result.attempts[1].error
    assert (tmp_path / "clipboard").read_text() == "Grüße"


def test_real_wtype_without_a_compositor_fails_clearly(tmp_path):
    require("wtype")
    env = {"PATH": os.environ["PATH"], "WAYLAND_DISPLAY": "qasr-test-absent-0", "XDG_RUNTIME_DIR": str(tmp_path)}
    result = Typist(TypingConfig(backend="wtype", modifier_timeout_s=0), env=env, platform="linux").type_text("hi")
    assert not result.ok
    assert "wtype failed (exit 1): Wayland connection failed" in result.attempts[0].error
    assert result.attempts[1].backend == "clipboard" and result.attempts[1].error


# ------------------------------------------------------------------------------------------ real X desktop


def test_pynput_types_exactly_what_was_committed(desktop, window, report):
    x, _ = desktop
    with typist(x) as t:
        text = "Hello, world! (1+2=3) <tag> & 'quotes' \"double\" ~`^ é ü ß Grüße 你好"
        result = t.type_text(text)
        assert result.ok and result.backend == "pynput", result
        assert [a.backend for a in result.attempts] == ["pynput"]
        assert window.wait_text(text, settle=0.1) == text

        # control characters never reach the window; line breaks became spaces
        window.clear()
        result = t.type_text("rm -rf x\n\x1b[A\u202eok\tdone")
        assert result.text == "rm -rf x [Aok done"
        assert window.wait_text("rm -rf x [Aok done", settle=0.1) == "rm -rf x [Aok done"

        # speed: 400 characters with mixed case, digits and punctuation
        window.clear()
        long = "The quick brown fox, 42 times; JUMPS over the lazy dog! " * 7
        started = time.monotonic()
        result = t.type_text(long)
        sent = time.monotonic() - started
        assert window.wait_text(long, timeout=30) == long
        shown = time.monotonic() - started
    report(
        f"typing (backend pynput = XTest on X11, Xvfb, Tk): {len(long) / sent:.0f} chars/s sent, "
        f"{len(long) / shown:.0f} chars/s until all shown ({len(long)} chars)"
    )


def test_more_distinct_missing_characters_than_spare_key_codes(desktop, window, report):
    """40 distinct CJK characters need the ~18 spare key codes of the layout remapped several times: every one
    must still arrive as itself (pynput's own X backend types 你好世界 as 你好好界)."""
    x, _ = desktop
    text = "你好世界我们是中国人说话天气很好今天明天北京上海东西南北春夏秋冬日月水火山石花草鸟鱼" + " 東京 ĀāĒēĪīŌōŪū"
    with typist(x) as t:
        started = time.monotonic()
        result = t.type_text(text)
        elapsed = time.monotonic() - started
        assert result.ok, result
        assert window.wait_text(text, settle=0.1) == text
        window.clear()
        assert t.type_text("你好世界 Ūū").ok  # once more, with the spare codes as the last call left them
        assert window.wait_text("你好世界 Ūū") == "你好世界 Ūū"
    report(f"typing (XTest, CJK, {len(text)} chars, {len(set(text))} distinct): {len(text) / elapsed:.0f} chars/s")


def test_typing_follows_the_active_keyboard_layout():
    """With a Russian layout active (second group), the key that gives 'h' on the US layout gives 'р': the
    typist reads the active group (XKB) and types Latin text with spare codes instead."""
    require("Xvfb", "setxkbmap")
    with Xvfb() as x, TkTextWindow(x.display) as window:
        set_layouts(x.display, "us,ru", group=1)
        window.focus()
        text = "Hello, World! Привет, мир! éü 你好"
        with typist(x) as t:
            assert t.type_text(text).ok
        assert window.wait_text(text, settle=0.1) == text


def test_commits_are_appended_with_the_separator_between_utterances(desktop, window):
    x, _ = desktop
    with typist(x, separator=" ") as t:
        for utt, text in [("u1", "Hello"), ("u1", " world."), ("u2", "How are"), ("u2", " you?"), ("u3", " Fine.")]:
            assert t.type_commit(utt, text).ok
    assert window.wait_text("Hello world. How are you? Fine.", settle=0.1) == "Hello world. How are you? Fine."


def test_typing_waits_until_held_modifiers_are_released(desktop, window):
    """Ctrl held (as after a push-to-talk combination) would turn letters into shortcuts: typing waits."""
    x, _ = desktop
    xdotool(x.display, "keydown", "ctrl")
    results = []
    try:
        assert x_held_modifiers(x.display) == {"ctrl"}
        t = typist(x, modifier_timeout_s=5.0)
        worker = threading.Thread(target=lambda: results.append(t.type_text("abc")))
        started = time.monotonic()
        worker.start()
        time.sleep(0.4)
        assert window.text() == ""  # still waiting
        assert worker.is_alive()
    finally:
        xdotool(x.display, "keyup", "ctrl")
    released = time.monotonic()
    worker.join(10)
    _text, changed = window.wait_change("", timeout=5)
    t.close()
    assert window.wait_text("abc", settle=0.05) == "abc"
    assert results[0].ok and results[0].waited_s >= 0.35
    assert changed >= released - 0.05 and released - started >= 0.4


def test_modifiers_still_held_after_the_timeout_are_released_before_typing(desktop, window):
    x, _ = desktop
    xdotool(x.display, "keydown", "alt")
    try:
        with typist(x, modifier_timeout_s=0.3, backend="clipboard") as t:
            result = t.type_text("paste me")  # Alt+Ctrl+V would not paste: alt is released first
        assert result.ok, result
        assert 0.28 <= result.waited_s < 1.5
        assert any("alt still held" in note and "released while typing" in note for note in result.notes)
        assert x_held_modifiers(x.display) == {"alt"}  # pressed again afterwards, as the user still holds it
        assert window.wait_text("paste me", settle=0.05) == "paste me"
    finally:
        xdotool(x.display, "keyup", "alt")


def test_held_modifiers_hook_delays_typing(desktop, window):
    """The hotkey listener's view of held keys is honoured even where X cannot be asked."""
    x, _ = desktop
    release_at = time.monotonic() + 0.3

    class Listener:
        def held_modifiers(self):
            return {"ctrl", "alt"} if time.monotonic() < release_at else set()

        def synthetic_input(self):
            return contextlib.nullcontext()

    with Typist(TypingConfig(modifier_timeout_s=5), hotkeys=Listener(), env=x.env) as t:
        result = t.type_text("ok")
    assert result.ok and 0.25 <= result.waited_s < 1.0
    assert not result.notes
    assert window.wait_text("ok") == "ok"


def test_clipboard_backend_pastes_and_restores_the_previous_clipboard(desktop, window):
    x, _ = desktop
    clipboard_set(x.display, "what the user had copied")
    with Typist(TypingConfig(backend="clipboard", modifier_timeout_s=1), env=x.env) as t:
        first = t.type_text("Pasted: é ü 你好.")
        # restored as soon as the window took the paste: nothing to wait for
        assert clipboard_get(x.display) == "what the user had copied"
        second = t.type_text(" And more.")
        assert first.ok and first.backend == "clipboard", first
        assert second.ok
        expected = "Pasted: é ü 你好. And more."
        assert window.wait_text(expected, settle=0.05) == expected
        assert clipboard_get(x.display) == "what the user had copied"


def _targets(display: str) -> list[str]:
    done = subprocess.run(
        ["xclip", "-selection", "clipboard", "-t", "TARGETS", "-o"], env=x_env(display), capture_output=True, timeout=5
    )
    return done.stdout.decode().split()


def _target(display: str, target: str) -> bytes:
    done = subprocess.run(
        ["xclip", "-selection", "clipboard", "-t", target, "-o"], env=x_env(display), capture_output=True, timeout=5
    )
    return done.stdout


def test_clipboard_restores_every_type_of_the_previous_clipboard(desktop, window):
    """The user had copied rich content (HTML, text and an image, as a browser or an image viewer offers it):
    after the paste, every type is back, byte for byte; an empty clipboard stays empty."""
    x, _ = desktop
    previous = {
        "text/html": "<b>bold</b> ünï".encode(),
        "UTF8_STRING": "bold ünï".encode(),
        "image/png": bytes(range(256)) * 40,  # binary, 10 KB
    }
    user_app = XClipboardOwner(x.display, previous)  # stands for the application the user copied from
    try:
        with Typist(TypingConfig(backend="clipboard", modifier_timeout_s=1), env=x.env) as t:
            result = t.type_text("dictated")
            assert result.ok, result.error
            assert window.wait_text("dictated") == "dictated"
            assert user_app.lost.is_set()  # the typist took the clipboard for the paste
            assert set(previous) <= set(_targets(x.display))
            for target, data in previous.items():
                assert _target(x.display, target) == data, target
    finally:
        user_app.close()


def test_clipboard_paste_nobody_takes_is_reported_and_left_on_the_clipboard(desktop, window, tmp_path):
    """No window takes the paste (here: the paste keys go nowhere, as with a focus on the desktop): after
    typing.paste_timeout_s the attempt fails, saying the text is on the clipboard; nothing else is claimed."""
    x, _ = desktop
    bin_dir = tmp_path
    (bin_dir / "xdotool").write_text("#!/bin/sh\nexit 0\n")  # a paste key press that reaches no window
    (bin_dir / "xdotool").chmod(0o755)
    env = {**x.env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    with Typist(TypingConfig(backend="clipboard", paste_timeout_s=0.3), env=env) as t:
        result = t.type_text("lost paste")
        assert not result.ok
        assert "no window took the text within 0.3 s" in (result.error or "")
        assert clipboard_get(x.display) == "lost paste"
    assert window.text() == ""


def test_pynput_on_a_dead_display_falls_back_and_says_why(desktop, window):
    x, _ = desktop
    env = dict(x.env)
    result = Typist(TypingConfig(modifier_timeout_s=0), env={**env, "DISPLAY": ":4242"}).type_text("x")
    assert not result.ok
    assert "pynput: cannot connect to X display ':4242'" in result.attempts[0].error
    assert result.attempts[1].backend == "clipboard"
    assert "clipboard: cannot connect to X display ':4242'" in result.attempts[1].error


def test_focus_moved_since_dictation_started_applies_the_policy(desktop, window):
    """X11: the window focused when the utterance started is remembered; when another window has the focus at
    typing time, typing.focus_changed decides: type there anyway, hold (not typed), or the clipboard."""
    x, _ = desktop
    with TkTextWindow(x.display, title="another window") as other:
        for policy in ("type", "hold", "clipboard"):
            window.clear()
            other.clear()
            window.focus()
            clipboard_set(x.display, "before")
            with typist(x, focus_changed=policy) as t:
                t.mark_target("u1")
                same = t.type_commit("u1", "same window")
                assert same.ok and window.wait_text("same window") == "same window"
                t.mark_target("u2")
                other.focus()  # the user clicked elsewhere while speaking
                moved = t.type_commit("u2", "moved")
            if policy == "type":
                assert moved.ok
                assert other.wait_text(" moved") == " moved"  # the separator goes with it
            else:
                assert not moved.ok and "the focus moved" in (moved.error or "")
                time.sleep(0.3)
                assert other.text() == "" and window.text() == "same window"
                if policy == "hold":
                    assert "not typed (typing.focus_changed: hold)" in (moved.error or "")
                    assert clipboard_get(x.display) == "before"
                else:
                    assert "on the clipboard: press Ctrl+V" in (moved.error or "")
                    assert clipboard_get(x.display) == " moved"  # with the separator, as it would be typed
