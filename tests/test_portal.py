"""GNOME/KDE typing through the XDG RemoteDesktop portal: the real D-Bus protocol (requests, Response signals,
restore tokens, keysyms) against a test service on a private session bus (devkit/dbus.py). No GNOME or KDE
session can run here: what the desktop then does with the keysyms is not verified here."""

from __future__ import annotations

import pytest

from devkit.dbus import FakeRemoteDesktop, SessionBus
from qasr_live.config import TypingConfig
from qasr_live.errors import TypingBackendError
from qasr_live.events import OutputBackend
from qasr_live.outputs.typing import Typist
from qasr_live.outputs.typing.portal import probe_portal

pytest.importorskip("jeepney", reason="jeepney is a runtime dependency (pip install -e .)")


@pytest.fixture(scope="module")
def bus():
    with SessionBus() as b:
        yield b


def gnome_env(bus: SessionBus, tmp_path) -> dict[str, str]:
    return {
        "DBUS_SESSION_BUS_ADDRESS": bus.address,
        "WAYLAND_DISPLAY": "wayland-0",
        "XDG_SESSION_TYPE": "wayland",
        "XDG_CURRENT_DESKTOP": "ubuntu:GNOME",
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "PATH": str(tmp_path),  # no wtype, no wl-copy: only the portal can type
    }


def test_auto_types_through_the_portal_and_asks_only_once(bus, tmp_path):
    env = gnome_env(bus, tmp_path)
    token_file = tmp_path / "state" / "qasr-live" / "portal-restore-token"
    with FakeRemoteDesktop(bus.address) as portal:
        with Typist(TypingConfig(modifier_timeout_s=0), env=env, platform="linux") as t:
            first = t.type_commit("u1", "Hello, wörld 你好\nnext", newlines=True)
            second = t.type_commit("u2", "again")
            assert first.ok and second.ok, (first.error, second.error)
            assert [a.backend for a in first.attempts] == [OutputBackend.PORTAL]
            # "scratch that": the last utterance and its separator are deleted with BackSpace
            assert t.type_commit("u3", "", scratch=True).ok
        assert portal.typed() == "Hello, wörld 你好\nnext"
        assert portal.dialogs == 1
        # keyboard only, kept until revoked
        selected = next(c for c in portal.calls if c[1] == "SelectDevices")[2][1]
        assert selected["types"] == ("u", 1) and selected["persist_mode"] == ("u", 2)
        assert token_file.read_text().strip() == portal.valid_tokens[-1]
        assert (token_file.stat().st_mode & 0o777) == 0o600
        # the daemon starts again: the saved token restores the session without a dialog
        portal.keys.clear()
        with Typist(TypingConfig(modifier_timeout_s=0), env=env, platform="linux") as t:
            assert t.type_text("restored").ok
        assert portal.typed() == "restored"
        assert portal.dialogs == 1
        assert len(portal.closed) == 2  # each typist closed its session


def test_consent_refused_is_reported_and_not_asked_again(bus, tmp_path):
    env = gnome_env(bus, tmp_path)
    with FakeRemoteDesktop(bus.address, consent="refuse") as portal:
        with Typist(TypingConfig(modifier_timeout_s=0), env=env, platform="linux") as t:
            first = t.type_text("secret")
            second = t.type_text("more")
        assert not first.ok and not second.ok
        assert "the user refused keyboard access" in (first.attempts[0].error or "")
        assert "typing.backend: clipboard" in (first.attempts[0].error or "")
        assert [a.backend for a in first.attempts] == [OutputBackend.PORTAL, OutputBackend.CLIPBOARD]
        assert portal.dialogs == 1  # the refusal holds for the run: no dialog per commit
        assert portal.keys == []


def test_no_portal_on_the_bus_is_a_clear_error(bus, tmp_path):
    env = gnome_env(bus, tmp_path)
    with Typist(TypingConfig(backend="portal", modifier_timeout_s=0), env=env, platform="linux") as t:
        result = t.type_text("x")
    assert not result.ok
    assert "no XDG desktop portal on the session bus" in (result.attempts[0].error or "")


def test_doctor_probe_reports_the_portal_without_asking(bus, tmp_path):
    env = gnome_env(bus, tmp_path)
    with pytest.raises(TypingBackendError, match="no XDG desktop portal on the session bus"):
        probe_portal(env)
    with FakeRemoteDesktop(bus.address) as portal:
        line = probe_portal(env)
        assert "RemoteDesktop portal version 2, keyboard only" in line
        assert "asks once" in line
        assert portal.dialogs == 0 and not portal.sessions  # nothing was started
