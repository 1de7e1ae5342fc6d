"""The ctl socket: a real asyncio Unix-socket server with the real client, single-instance rules (stale socket
replaced, live daemon refused), protocol errors, concurrency, and the SIGUSR1/SIGUSR2 triggers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from qasr_live.control.ctl import CTL_COMMANDS, CtlServer, install_signal_handlers, send_command
from qasr_live.errors import AlreadyRunning, DaemonNotRunning, ProtocolError, QasrError
from qasr_live.runtime import RuntimeFiles


@pytest.fixture
def runtime(tmp_path) -> RuntimeFiles:
    return RuntimeFiles.create(str(tmp_path / "run"))


class Daemon:
    """Stands in for the daemon: records actions, reports a status."""

    def __init__(self, delay: float = 0.0):
        self.actions: list[str] = []
        self.delay = delay
        self.state = "idle"

    async def on_action(self, action):
        self.actions.append(action)
        if self.delay:
            await asyncio.sleep(self.delay)
        if action == "start":
            self.state = "listening"
        return {"state": self.state}

    def status(self):
        return {"state": self.state, "utterances": 3}


def client(runtime, command, timeout=5.0):
    return asyncio.to_thread(send_command, runtime.dir, command, timeout)


def raw_request(path, payload: bytes, timeout=5.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def test_every_command_reaches_the_daemon_and_status_answers(runtime):
    daemon = Daemon()

    async def main():
        async with CtlServer.for_runtime(runtime, daemon.on_action, daemon.status) as server:
            mode = stat.S_IMODE(os.stat(server.path).st_mode)
            assert stat.S_ISSOCK(os.stat(server.path).st_mode) and mode == 0o600
            replies = {cmd: await client(runtime, cmd) for cmd in CTL_COMMANDS}
            replies["ptt_press"] = await client(runtime, "ptt_press")  # underscore spelling accepted
        assert not runtime.ctl_socket.exists()  # removed on close
        return replies

    replies = asyncio.run(main())
    assert daemon.actions == ["start", "stop", "toggle", "cancel", "finalize", "ptt_press", "ptt_release", "ptt_press"]
    assert replies["start"] == {"ok": True, "command": "start", "action": "start", "state": "listening"}
    assert replies["ptt-release"]["action"] == "ptt_release"
    assert replies["status"] == {"ok": True, "command": "status", "status": {"state": "listening", "utterances": 3}}


def test_protocol_errors_are_answered_not_fatal(runtime):
    daemon = Daemon()

    async def main():
        async with CtlServer(runtime.ctl_socket, daemon.on_action, daemon.status, read_timeout_s=0.3) as server:
            path = server.path
            out = {
                "unknown": await asyncio.to_thread(raw_request, path, b'{"command": "frobnicate"}\n'),
                "bad_json": await asyncio.to_thread(raw_request, path, b'{"command": \n'),
                "no_command": await asyncio.to_thread(raw_request, path, b'{"cmd": "start"}\n'),
                "bare_word": await asyncio.to_thread(raw_request, path, b"toggle\n"),
                "silent": await asyncio.to_thread(raw_request, path, b""),
                "too_long": await asyncio.to_thread(raw_request, path, b"x" * 70000 + b"\n"),
            }
            out["after"] = await client(runtime, "status")  # still serving
            return out

    out = asyncio.run(main())
    assert out["unknown"]["ok"] is False
    assert "unknown command 'frobnicate'; known: start, stop, toggle, cancel, finalize" in out["unknown"]["error"]
    assert out["bad_json"]["ok"] is False and "not valid JSON" in out["bad_json"]["error"]
    assert out["no_command"]["ok"] is False and '"command"' in out["no_command"]["error"]
    assert out["bare_word"] == {"ok": True, "command": "toggle", "action": "toggle", "state": "idle"}
    assert out["silent"] == {"ok": False, "error": "no command received within 0 s"} or "no command" in str(
        out["silent"]
    )
    assert out["too_long"]["ok"] is False and "longer than" in out["too_long"]["error"]
    assert out["after"]["ok"] is True
    assert daemon.actions == ["toggle"]
    # the client refuses unknown commands without a daemon
    with pytest.raises(ProtocolError, match="unknown command 'frobnicate'"):
        send_command(runtime.dir, "frobnicate")


def test_daemon_errors_become_error_replies(runtime):
    async def on_action(action):
        if action == "start":
            raise QasrError("no microphone: device 'USB mic' not found")
        raise RuntimeError("boom")

    async def main():
        async with CtlServer.for_runtime(runtime, on_action, dict):
            return await client(runtime, "start"), await client(runtime, "stop")

    start, stop = asyncio.run(main())
    assert start == {"ok": False, "command": "start", "error": "no microphone: device 'USB mic' not found"}
    assert stop["ok"] is False and stop["error"] == "internal error: RuntimeError: boom"


def test_no_daemon_gives_a_clear_error(runtime):
    with pytest.raises(DaemonNotRunning) as err:
        send_command(runtime.dir, "status")
    message = str(err.value)
    assert str(runtime.ctl_socket) in message and "does not exist" in message and "qasr-live serve" in message
    # a socket file nobody listens on (a crashed daemon's)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(runtime.ctl_socket))
    stale.close()
    with pytest.raises(DaemonNotRunning, match=r"nobody listens on .*ctl\.sock.*qasr-live serve"):
        send_command(runtime.dir, "toggle")


def test_stale_socket_is_replaced_and_a_live_daemon_refused(runtime):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(runtime.ctl_socket))  # left behind by a daemon that crashed
    stale.close()
    daemon = Daemon()

    async def main():
        async with CtlServer.for_runtime(runtime, daemon.on_action, daemon.status):
            assert (await client(runtime, "status"))["ok"]
            second = CtlServer.for_runtime(runtime, daemon.on_action, daemon.status)
            with pytest.raises(AlreadyRunning, match=r"already running \(pid \d+\) on .*ctl\.sock"):
                await second.start()
            assert (await client(runtime, "status"))["ok"]  # the first one is untouched

    asyncio.run(main())


def test_a_daemon_in_another_process_is_refused_and_its_crash_leaves_a_replaceable_socket(runtime):
    """The real cross-process case: a second daemon sees the first's lock; after SIGKILL the socket file
    stays behind, and the next daemon replaces it."""
    child = textwrap.dedent(
        f"""
        import asyncio, sys
        from qasr_live.control.ctl import CtlServer
        async def main():
            server = CtlServer({str(runtime.ctl_socket)!r}, lambda a: None, lambda: {{"child": True}})
            await server.start()
            print("ready", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert send_command(runtime.dir, "status")["status"] == {"child": True}

        async def refused():
            with pytest.raises(AlreadyRunning, match=f"pid {proc.pid}"):
                await CtlServer.for_runtime(runtime, print, dict).start()

        asyncio.run(refused())
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert runtime.ctl_socket.exists()  # the crashed daemon's socket file
    daemon = Daemon()

    async def takeover():
        async with CtlServer.for_runtime(runtime, daemon.on_action, daemon.status):
            return await client(runtime, "status")

    assert asyncio.run(takeover())["status"] == {"state": "idle", "utterances": 3}


def test_a_foreign_listener_on_the_socket_path_is_refused(runtime):
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(runtime.ctl_socket))
    other.listen(1)
    try:

        async def main():
            with pytest.raises(AlreadyRunning, match="already running"):
                await CtlServer.for_runtime(runtime, print, dict).start()

        asyncio.run(main())
    finally:
        other.close()
    # a regular file in the way is an error that names it, not something to delete
    runtime.ctl_socket.unlink()
    runtime.ctl_socket.write_text("not a socket")

    async def blocked():
        with pytest.raises(QasrError, match="exists and is not a socket"):
            await CtlServer.for_runtime(runtime, print, dict).start()

    asyncio.run(blocked())


def test_many_clients_at_once_are_served_concurrently(runtime):
    daemon = Daemon(delay=0.2)  # every action takes 200 ms

    async def main():
        async with CtlServer.for_runtime(runtime, daemon.on_action, daemon.status):
            started = time.monotonic()
            commands = ["toggle", "ptt-press", "ptt-release", "status", "cancel"] * 4
            replies = await asyncio.gather(*(client(runtime, c) for c in commands))
            return commands, replies, time.monotonic() - started

    commands, replies, elapsed = asyncio.run(main())
    assert [r["command"] for r in replies] == commands
    assert all(r["ok"] for r in replies)
    assert sorted(daemon.actions) == sorted(CTL_COMMANDS[c] for c in commands if c != "status")
    assert elapsed < 0.2 * 16 / 2  # 16 slow actions, far from one after another


def test_signals_toggle_and_cancel(runtime):
    got: list[str] = []

    async def main():
        loop = asyncio.get_running_loop()
        remove = install_signal_handlers(loop, got.append)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR2)
            for _ in range(100):
                if len(got) == 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            remove()

    asyncio.run(main())
    assert got == ["toggle", "cancel"]
