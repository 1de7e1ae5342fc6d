"""Global hotkeys: combination parsing and validation, the autorepeat-safe matcher, and the real pynput listener
under Xvfb driven by xdotool and XTest key events (push-to-talk held with autorepeat, toggle, cancel)."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import threading
import time

import pytest

from devkit.desktop import TkTextWindow, Xvfb, require, xdotool
from qasr_live.config import HotkeysConfig, TypingConfig
from qasr_live.control.hotkeys import HotkeyListener, available
from qasr_live.control.keys import ComboMatcher, combos_for, parse_combo
from qasr_live.errors import ConfigError, HotkeysUnavailable
from qasr_live.outputs.typing import Typist

# the listener / typist export the session's DISPLAY into os.environ (pynput's Xlib reads it there): undo that
pytestmark = pytest.mark.usefixtures("forget_display_env")


@pytest.fixture(scope="module")
def x():
    require("Xvfb", "xdotool")
    with Xvfb() as server:
        yield server


class Recorder:
    """Collects actions (from any thread) and lets a test wait for them."""

    def __init__(self):
        self.actions: list[str] = []
        self.times: list[float] = []
        self.cond = threading.Condition()

    def __call__(self, action):
        with self.cond:
            self.actions.append(action)
            self.times.append(time.monotonic())
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[str]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.actions) >= count, timeout)
            return list(self.actions)


def autorepeat_pair(display: str, keysym_name: str) -> None:
    """A release immediately followed by a press of the same key, in one batch: what X autorepeat without
    detectable autorepeat produces (two events with the same timestamp). xdotool would put 12 ms and two
    process wake-ups between them, too slow to be sure of on a loaded machine."""
    import Xlib.display
    import Xlib.X
    import Xlib.XK
    from Xlib.ext import xtest

    conn = Xlib.display.Display(display)
    try:
        code = conn.keysym_to_keycode(Xlib.XK.string_to_keysym(keysym_name))
        xtest.fake_input(conn, Xlib.X.KeyRelease, code)
        xtest.fake_input(conn, Xlib.X.KeyPress, code)
        conn.sync()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------ parsing


def test_combinations_parse_in_pynput_syntax_and_friendlier_forms():
    ptt = parse_combo("<ctrl>+<alt>+space")
    assert ptt.keys == {"ctrl", "alt", "space"}
    assert parse_combo("ctrl+alt+space").keys == ptt.keys
    assert parse_combo(" <Control> + <ALT> + <space> ").keys == ptt.keys
    assert parse_combo("<super>+d").keys == {"cmd", "d"}
    assert parse_combo("<ctrl_r>").keys == {"ctrl_r"}
    assert parse_combo("<f9>").keys == {"f9"}
    assert parse_combo("<ctrl>+<shift>+D").keys == {"ctrl", "shift", "d"}
    assert parse_combo("<ctrl>+plus").keys == {"ctrl", "+"}
    assert parse_combo("<ctrl>++").keys == {"ctrl", "+"}
    assert parse_combo("<ctrl>+<65>").keys == {"ctrl", "vk:65"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<ctrl>+<alt>+spce", "hotkeys.ptt: unknown key 'spce' in '<ctrl>+<alt>+spce'; did you mean '<space>'?"),
        ("<ctrl>+<bogus>", "hotkeys.ptt: unknown key '<bogus>'"),
        ("<ctrl>++a", "hotkeys.ptt: empty key in '<ctrl>++a'"),
        ("<ctrl>+<control>", "hotkeys.ptt: key '<control>' appears twice"),
        ("  ", "hotkeys.ptt: empty key combination"),
    ],
)
def test_bad_combinations_name_the_config_key(text, message):
    with pytest.raises(ConfigError) as err:
        parse_combo(text, "hotkeys.ptt")
    assert message in str(err.value)


def test_combinations_are_chosen_by_trigger_mode_and_must_differ():
    config = HotkeysConfig(ptt="<f9>", toggle="<f10>", cancel="<esc>")
    assert set(combos_for(config, "ptt")) == {"ptt", "cancel"}
    assert set(combos_for(config, "toggle")) == {"toggle", "cancel"}
    assert set(combos_for(config, "continuous")) == {"toggle", "cancel"}
    assert set(combos_for(config)) == {"ptt", "toggle", "cancel"}
    assert set(combos_for(HotkeysConfig(cancel=None), "ptt")) == {"ptt"}
    with pytest.raises(ConfigError, match=r"hotkeys\.toggle: 'ctrl\+f9' is the same combination as hotkeys\.ptt"):
        combos_for(HotkeysConfig(ptt="<ctrl>+<f9>", toggle="ctrl+f9"))
    with pytest.raises(ConfigError, match=r"hotkeys\.cancel: unknown key"):
        HotkeyListener(HotkeysConfig(cancel="<ctrl>+<escp>"), print)


# ------------------------------------------------------------------------------------------ matcher


def test_matcher_reports_one_press_and_one_release_per_hold_despite_autorepeat():
    rec = Recorder()
    m = ComboMatcher(combos_for(HotkeysConfig(), "ptt"), rec, release_grace_s=0.03)
    m.press("ctrl_l")
    m.press("alt_l")
    assert m.held_modifiers() == {"ctrl", "alt"}
    m.press("space")
    for _ in range(10):
        m.press("space")  # detectable autorepeat: presses only
    for _ in range(5):
        m.release("space")  # classic autorepeat: release + press pairs
        m.press("space")
    assert rec.actions == ["ptt_press"]
    m.release("space")
    assert rec.wait_for(2) == ["ptt_press", "ptt_release"]
    m.release("alt_l")
    m.release("ctrl_l")
    time.sleep(0.06)
    assert m.held_modifiers() == set()
    # a new hold is a new press; releasing a modifier first ends it as well
    m.press("ctrl_r")
    m.press("alt_l")
    m.press("space")
    m.release("ctrl_r")
    assert rec.wait_for(4) == ["ptt_press", "ptt_release", "ptt_press", "ptt_release"]


def test_matcher_fires_toggle_once_per_hold_and_flushes_on_stop():
    rec = Recorder()
    m = ComboMatcher(combos_for(HotkeysConfig(ptt="<f9>", toggle="<ctrl>+d", cancel="<esc>")), rec, 0.03)
    m.press("ctrl_l")
    for _ in range(5):
        m.press("d")
        m.release("d")
    m.press("esc")
    m.press("f9")  # held while the listener stops: the release is reported so the pair is complete
    time.sleep(0.06)
    m.flush()
    assert rec.actions == ["toggle", "cancel", "ptt_press", "ptt_release"]


# ------------------------------------------------------------------------------------------ availability


def test_availability_without_a_display_and_on_wayland():
    none = available({})
    assert not none and "no graphical session" in none.reason and "qasr-live ctl" in none.reason
    wayland = available({"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}, platform="linux")
    assert not wayland and "compositor" in wayland.reason and "qasr-live ctl ptt-press" in wayland.reason
    dead = available({"DISPLAY": ":4243"}, platform="linux")
    assert not dead and "cannot connect to X display ':4243'" in dead.reason
    with pytest.raises(HotkeysUnavailable, match="global hotkeys are unavailable: no graphical session"):
        HotkeyListener(HotkeysConfig(), print, env={}).start()


def test_importing_the_modules_touches_no_display():
    code = (
        "import sys\n"
        "import qasr_live.control.hotkeys, qasr_live.control.ctl, qasr_live.outputs.typing\n"
        "from qasr_live.control.hotkeys import available\n"
        "print(available().ok)\n"
        "assert not any(m == 'pynput' or m.startswith('pynput.') for m in sys.modules), 'pynput imported'\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# ------------------------------------------------------------------------------------------ real X listener


def test_push_to_talk_held_with_autorepeat_gives_one_press_and_one_release(x):
    assert available(x.env)
    rec = Recorder()
    with HotkeyListener(HotkeysConfig(), rec, mode="ptt", env=x.env) as listener:
        xdotool(x.display, "keydown", "ctrl+alt+space")
        assert rec.wait_for(1) == ["ptt_press"]
        assert listener.held_modifiers() == {"ctrl", "alt"}
        for _ in range(3):
            xdotool(x.display, "keydown", "space")  # repeated key-downs while held
        autorepeat_pair(x.display, "space")  # a release+press pair (classic autorepeat)
        time.sleep(0.8)  # held past the X server's own autorepeat delay (660 ms)
        assert rec.actions == ["ptt_press"]
        xdotool(x.display, "keyup", "space")
        assert rec.wait_for(2) == ["ptt_press", "ptt_release"]
        xdotool(x.display, "keyup", "alt+ctrl")
        time.sleep(0.1)
        assert listener.held_modifiers() == set()
        # a second hold, released modifier first
        xdotool(x.display, "keydown", "ctrl+alt+space")
        xdotool(x.display, "keyup", "ctrl")
        assert rec.wait_for(4) == ["ptt_press", "ptt_release", "ptt_press", "ptt_release"]
        xdotool(x.display, "keyup", "alt+space")
        time.sleep(0.1)
    assert rec.actions == ["ptt_press", "ptt_release", "ptt_press", "ptt_release"]


def test_toggle_and_cancel_fire_once_per_hold_and_actions_reach_the_loop(x):
    async def main():
        loop = asyncio.get_running_loop()
        got: list[tuple[str, bool]] = []
        done = asyncio.Event()

        def on_action(action):
            got.append((action, threading.current_thread() is threading.main_thread()))
            if len(got) == 3:
                done.set()

        config = HotkeysConfig(toggle="<ctrl>+<alt>+d", cancel="<ctrl>+<alt>+c")
        listener = HotkeyListener(config, on_action, mode="toggle", loop=loop, env=x.env)
        listener.start()
        try:
            await asyncio.to_thread(xdotool, x.display, "keydown", "ctrl+alt+d")
            await asyncio.to_thread(xdotool, x.display, "keydown", "d")
            await asyncio.to_thread(autorepeat_pair, x.display, "d")
            await asyncio.to_thread(xdotool, x.display, "keyup", "d")
            await asyncio.sleep(0.15)  # up for longer than the autorepeat grace: the next press is a new one
            await asyncio.to_thread(xdotool, x.display, "key", "d")  # a second press: a second toggle
            await asyncio.to_thread(xdotool, x.display, "key", "c")
            await asyncio.wait_for(done.wait(), 5)
            await asyncio.to_thread(xdotool, x.display, "keyup", "ctrl+alt")
            await asyncio.sleep(0.1)
        finally:
            listener.stop()
        return got

    got = asyncio.run(main())
    assert got == [("toggle", True), ("toggle", True), ("cancel", True)]


def test_listener_latency_from_key_event_to_callback(x, report):
    """XTest key events (what a real keyboard produces at the server) → callback, measured in process."""
    import Xlib.display
    import Xlib.X
    import Xlib.XK
    from Xlib.ext import xtest

    rec = Recorder()
    conn = Xlib.display.Display(x.display)
    code = conn.keysym_to_keycode(Xlib.XK.string_to_keysym("F9"))
    press_ms, release_ms = [], []
    with HotkeyListener(HotkeysConfig(ptt="<f9>"), rec, mode="ptt", env=x.env, release_grace_s=0.05):
        for i in range(10):  # the first press right after start() must be seen too
            sent = time.monotonic()
            xtest.fake_input(conn, Xlib.X.KeyPress, code)
            conn.sync()
            rec.wait_for(2 * i + 1)
            press_ms.append((rec.times[-1] - sent) * 1000)
            sent = time.monotonic()
            xtest.fake_input(conn, Xlib.X.KeyRelease, code)
            conn.sync()
            rec.wait_for(2 * i + 2)
            release_ms.append((rec.times[-1] - sent) * 1000)
    conn.close()
    assert rec.actions == ["ptt_press", "ptt_release"] * 10
    report(
        f"hotkeys (pynput listener, Xvfb): press -> callback median {statistics.median(press_ms):.1f} ms "
        f"(max {max(press_ms):.1f}, first {press_ms[0]:.1f}); "
        f"release -> callback median {statistics.median(release_ms):.1f} ms "
        "(incl. the 50 ms autorepeat grace)"
    )
    assert statistics.median(press_ms) < 100 and press_ms[0] < 500
    assert 45 <= statistics.median(release_ms) < 500


def test_typist_waits_for_the_listeners_modifiers_and_a_held_push_to_talk_survives_typing(x):
    """The daemon's wiring: Typist(hotkeys=listener). A commit arriving while the user
    already holds push-to-talk again waits, then types with the modifiers briefly released and pressed again;
    the listener sees that as the same hold (no ptt_release)."""
    rec = Recorder()
    config = HotkeysConfig(ptt="<ctrl>+<shift>+<f9>")  # (ctrl+alt+F9 is a VT switch)
    with (
        TkTextWindow(x.display) as window,
        HotkeyListener(config, rec, mode="ptt", env=x.env) as listener,
        Typist(TypingConfig(modifier_timeout_s=0.3), hotkeys=listener, env=x.env) as typist,
    ):
        xdotool(x.display, "keydown", "ctrl+shift+F9")
        try:
            assert rec.wait_for(1) == ["ptt_press"]
            result = typist.type_text("Hello 你好")
            assert result.ok and 0.28 <= result.waited_s < 1.0, result
            assert window.wait_text("Hello 你好", settle=0.1) == "Hello 你好"
            time.sleep(0.15)
            assert rec.actions == ["ptt_press"]
            assert listener.held_modifiers() == {"ctrl", "shift"}
        finally:
            xdotool(x.display, "keyup", "F9", "keyup", "shift+ctrl")
        assert rec.wait_for(2) == ["ptt_press", "ptt_release"]
