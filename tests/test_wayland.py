"""Typing on Wayland, in a real compositor: a headless sway (wlroots) started by the tests, and a foot terminal
window that records every character it receives (devkit/wayland.py). The typist goes through ``wtype`` (the
virtual-keyboard protocol) exactly as in a user's sway or Hyprland session; what arrives must equal what was
committed. One sway serves the module (it starts in well under a second)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

from devkit.desktop import require
from devkit.wayland import ClipboardApp, FootRecorder, Sway
from qasr_live.config import TypingConfig
from qasr_live.events import OutputBackend
from qasr_live.outputs.typing import Typist, sanitize, wayland_clipboard

pytestmark = pytest.mark.skipif(shutil.which("sway") is None, reason="needs sway (apt-get install sway foot wtype)")


@pytest.fixture(scope="module")
def sway():
    require("sway", "foot", "wtype", "swaymsg", "wl-copy", "wl-paste")
    with Sway() as compositor:
        yield compositor


@pytest.fixture(scope="module")
def foot(sway):
    with FootRecorder(sway) as window:
        yield window


@pytest.fixture
def window(foot):
    foot.focus()
    foot.clear()
    return foot


def typist(sway: Sway, **config) -> Typist:
    return Typist(TypingConfig(**config), env=sway.env, clipboard_restore_s=0.2)


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world: 1 + 2 = 3; (a) [b] {c} <d> 'e' \"f\" ~!@#$%^&*_-|\\/?`",
        "你好，世界。こんにちは 안녕하세요 Ünïcödé ß ø",
        "emoji 🙂🎉 and a family 👩\u200d👩\u200d👧 stay whole",
    ],
    ids=["ascii-punctuation", "cjk-latin", "emoji"],
)
def test_wtype_types_exactly_what_was_committed(sway, window, text):
    with typist(sway) as t:
        result = t.type_text(text)
    assert result.ok, result.error
    assert [a.backend for a in result.attempts] == [OutputBackend.WTYPE]
    assert window.wait_text(text) == text


def test_text_that_looks_like_an_option_and_a_char_delay(sway, window):
    # wtype gets the text on stdin ("-"): text starting with "-" is never taken for an option
    with typist(sway, char_delay_ms=2) as t:
        result = t.type_text("-n -d 5 héllo")
    assert result.ok, result.error
    assert window.wait_text("-n -d 5 héllo") == "-n -d 5 héllo"


def test_line_breaks_from_commands_and_the_separator_arrive_as_return(sway, window, report):
    with typist(sway, separator="\n") as t:
        first = t.type_commit("u1", "first line\nsecond line", newlines=True)
        second = t.type_commit("u2", "next utterance")
        # the model's own line break is never typed as Return (only the rules and the separator make them)
        third = t.type_commit("u2", " raw\nbreak")
    assert first.ok and second.ok and third.ok
    assert window.wait_text("first line\nsecond line\nnext utterance raw break") == (
        "first line\nsecond line\nnext utterance raw break"
    )


def test_a_2000_character_commit_arrives_whole(sway, window, report):
    words = "alpha beta gamma delta, epsilon. 你好 ünï 🙂 "
    text = (words * (2000 // len(words) + 1))[:2000]
    with typist(sway) as t:
        started = time.monotonic()
        result = t.type_text(text)
        sent = time.monotonic() - started
    assert result.ok, result.error
    assert window.wait_text(text, timeout=30) == text
    shown = time.monotonic() - started
    report(f"typing (wtype, headless sway, foot): 2000 chars sent in {sent:.2f} s, all shown after {shown:.2f} s")


def test_scratch_that_deletes_what_was_typed(sway, window):
    with typist(sway) as t:
        assert t.type_commit("u1", "keep this").ok
        assert t.type_commit("u2", "drop that").ok
        # "scratch that" said at the start of u3: the previous utterance and its separator go
        result = t.type_commit("u3", "", scratch=True)
        assert result.ok, result.error
        assert t.type_commit("u3", "and more").ok
    assert window.wait_text("keep this and more") == "keep this and more"


def test_wtype_missing_is_a_clear_error_and_nothing_is_typed(sway, window, tmp_path):
    # a PATH without wtype (nor wl-copy): both backends fail, each saying why
    (tmp_path / "bin").mkdir()
    env = {**sway.env, "PATH": str(tmp_path / "bin")}
    with Typist(TypingConfig(), env=env) as t:
        result = t.type_text("never typed")
    assert not result.ok
    assert "wtype is not installed" in (result.error or "")
    assert [a.backend for a in result.attempts] == [OutputBackend.WTYPE, OutputBackend.CLIPBOARD]
    time.sleep(0.3)
    assert window.received() == ""


def test_compositor_gone_mid_typing_is_reported():
    """A sway of its own, stopped while a slow commit is typed: the typist reports the failure (and the next
    commit fails fast with a clear error), it never hangs."""
    require("sway", "foot", "wtype")
    with Sway() as own, FootRecorder(own) as window:
        text = "x" * 200
        with Typist(TypingConfig(char_delay_ms=10), env=own.env, clipboard_restore_s=0.2) as t:
            results = []
            worker = threading.Thread(target=lambda: results.append(t.type_text(text)))
            worker.start()
            deadline = time.monotonic() + 10
            while not window.raw() and time.monotonic() < deadline:
                time.sleep(0.01)
            own.stop()
            worker.join(30)
            assert not worker.is_alive()
            (result,) = results
            assert not result.ok
            assert "wtype" in (result.error or "")
            later = t.type_text("after")
            assert not later.ok and later.error
        typed = window.raw().decode()
        assert 0 < len(typed) < len(text) and set(typed) == {"x"}


def test_clipboard_route_pastes_and_restores_the_previous_clipboard(sway, window):
    """The clipboard route on Wayland (GNOME/KDE's last resort; forced here): the text is pasted with Ctrl+V
    (foot's paste binding set to it, as in GUI applications) and the user's clipboard, here an image, comes
    back byte for byte once the window took the paste."""
    image = bytes(range(256)) * 20
    subprocess.run(["wl-copy", "--type", "image/png"], input=image, env=sway.env, check=True, timeout=5)
    with typist(sway, backend="clipboard") as t:
        result = t.type_text("pasted ünï 你好")
    assert result.ok, result.error
    assert [a.backend for a in result.attempts] == [OutputBackend.CLIPBOARD]
    assert window.wait_text("pasted ünï 你好") == "pasted ünï 你好"
    types = subprocess.run(["wl-paste", "--list-types"], env=sway.env, capture_output=True, timeout=5)
    assert types.stdout.decode().split() == ["image/png"]
    back = subprocess.run(["wl-paste", "--type", "image/png"], env=sway.env, capture_output=True, timeout=5)
    assert back.stdout == image


# what a browser leaves on the clipboard after "copy image": text, HTML and the image, offered at once
RICH_CLIPBOARD = {
    "text/plain": "a café 你好".encode(),
    "text/html": '<p>a <b>café</b> 你好 <img src="x.png"></p>'.encode(),
    "image/png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40,
}


def clipboard_now(sway: Sway) -> dict[str, bytes]:
    """Every type the clipboard offers now and its bytes, as another application would read them (wl-paste)."""
    listed = subprocess.run(["wl-paste", "--list-types"], env=sway.env, capture_output=True, timeout=5, check=True)
    return {
        mime: subprocess.run(
            ["wl-paste", "--no-newline", "--type", mime], env=sway.env, capture_output=True, timeout=5, check=True
        ).stdout
        for mime in listed.stdout.decode().split()
    }


def require_data_control() -> None:
    pytest.importorskip("pywayland", reason="pywayland serves several clipboard types (pip install -e .[dev])")
    if "zwlr_data_control_manager_v1" not in dict(wayland_clipboard.data_control_protocols()):
        pytest.skip("sway 1.7 speaks wlr-data-control only: its XML is missing (librust-wayland-protocols-dev)")


def test_clipboard_route_restores_every_type_of_the_previous_clipboard(sway, window):
    """Another application holds text, HTML and an image at once; after the paste every type comes back byte for
    byte, served by the typist (the application lost the clipboard to the paste and has exited)."""
    require_data_control()
    with ClipboardApp(sway, RICH_CLIPBOARD) as app:
        assert clipboard_now(sway) == RICH_CLIPBOARD
        with typist(sway, backend="clipboard") as t:
            result = t.type_text("pasted ünï 你好")
            assert result.ok, result.error
            assert window.wait_text("pasted ünï 你好") == "pasted ünï 你好"
            assert app.gone(), "the application still owns the clipboard: the paste never replaced it"
            assert clipboard_now(sway) == RICH_CLIPBOARD
            # a second paste while the typist serves the restored clipboard: it comes back again
            window.clear()
            assert t.type_text("again").ok
            assert window.wait_text("again") == "again"
            assert clipboard_now(sway) == RICH_CLIPBOARD
    # the typist closes (the daemon exits): what it served goes to wl-copy, one type, the richest
    assert clipboard_now(sway) == {"image/png": RICH_CLIPBOARD["image/png"]}


def test_a_copy_after_the_restore_is_the_users_and_stays(sway, window):
    require_data_control()
    with ClipboardApp(sway, RICH_CLIPBOARD), typist(sway, backend="clipboard") as t:
        assert t.type_text("restored").ok
        assert window.wait_text("restored") == "restored"
        assert clipboard_now(sway) == RICH_CLIPBOARD
        subprocess.run(["wl-copy", "mine"], env=sway.env, check=True, timeout=5)
        assert clipboard_now(sway)["text/plain"] == b"mine"
    # closing the typist neither empties nor overwrites the user's new clipboard
    assert clipboard_now(sway)["text/plain"] == b"mine"


def test_without_data_control_one_type_comes_back_and_the_log_says_so(sway, window, monkeypatch, caplog):
    """Where the data-control protocol cannot be spoken (GNOME, or no pywayland), wl-copy restores the richest
    type, the image, and the log says once that the others were not restored."""
    require_data_control()
    monkeypatch.setattr(wayland_clipboard, "data_control_protocols", lambda: ())
    monkeypatch.setattr("qasr_live.outputs.typing.clipboard._told_one_type", set())
    with ClipboardApp(sway, RICH_CLIPBOARD) as app, caplog.at_level("INFO"):
        with typist(sway, backend="clipboard") as t:
            result = t.type_text("one type")
        assert result.ok, result.error
        assert window.wait_text("one type") == "one type"
        assert app.gone()
    assert clipboard_now(sway) == {"image/png": RICH_CLIPBOARD["image/png"]}
    assert "restored as one type only (no Wayland data-control protocol" in caplog.text


def test_a_100_kb_commit_full_of_control_characters_is_sanitized_and_pasted(sway, window, report):
    """Bad input: 100 KB with escape sequences, NULs, bidi overrides and tabs: nothing of it acts on the window
    (no Enter, no escape), and so long a text is pasted in one go instead of typed for ten minutes."""
    chunk = "word\x1b[2J\x00 \u202eevil\u202c\tend\x07. "
    text = (chunk * (100_000 // len(chunk) + 1))[:100_000]
    expected = sanitize(text)
    assert "\x1b" not in expected and "\n" not in expected
    with typist(sway, paste_timeout_s=10.0) as t:  # 100 KB through foot's paste: slow on a loaded machine
        started = time.monotonic()
        result = t.type_text(text)
    assert result.ok, result.error
    assert [a.backend for a in result.attempts] == [OutputBackend.CLIPBOARD]
    assert window.wait_text(expected, timeout=30) == expected
    report(f"typing (100 KB commit, sway): pasted in {time.monotonic() - started:.2f} s")


def test_environment_is_private(sway):
    # the tests never reach the desktop of the machine running them
    assert sway.env["XDG_RUNTIME_DIR"] != os.environ.get("XDG_RUNTIME_DIR")
    assert "DISPLAY" not in sway.env
