"""The caption/control WebSocket: a real server on a free port and real `websockets` clients, no mocks.

Each test runs its own event loop (``asyncio.run``) and server. Timing assertions are generous (the machine is
shared); the measured figures go to the summary printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from qasr_live import __version__
from qasr_live.bus import EventHub
from qasr_live.config import WebSocketConfig
from qasr_live.errors import ConfigError, ProtocolError, QasrError
from qasr_live.events import (
    PROTOCOL_VERSION,
    CommitEvent,
    ConfigMessage,
    ControlMessage,
    ErrorEvent,
    HelloEvent,
    PartialEvent,
    ServerEvent,
    StateEvent,
    SubscribeMessage,
    UtteranceEndEvent,
    UtteranceStartEvent,
    event_from_json,
    event_to_json,
)
from qasr_live.outputs.websocket import CLOSE_TOO_SLOW, WebSocketServer
from qasr_live.runtime import RuntimeFiles, Tokens

IDLE = StateEvent(state="idle", mode="ptt")
RECV_TIMEOUT = 3.0


def run(coro: Awaitable[Any], timeout: float = 15.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@dataclass
class Served:
    server: WebSocketServer
    hub: EventHub
    runtime: RuntimeFiles
    tokens: Tokens
    opened: list[ClientConnection] = field(default_factory=list)  # closed by serving() when the test ends

    @property
    def url(self) -> str:
        assert self.server.url is not None
        return self.server.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def client(self, token: str | None = None, *, query: str = "", **kwargs: Any) -> ClientConnection:
        """A connected client authenticated with the control token (header) unless told otherwise."""
        token = self.tokens.control if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ws = await connect(self.url + "/" + query, additional_headers=headers, **kwargs)
        self.opened.append(ws)
        return ws

    async def stuck_client(self, **kwargs: Any) -> ClientConnection:
        """A client that stops reading: tiny TCP receive buffer, reading paused, so the server's writes back up."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        ws = await connect(
            self.url, sock=sock, additional_headers={"Authorization": f"Bearer {self.tokens.control}"}, **kwargs
        )
        ws.transport.pause_reading()
        self.opened.append(ws)
        return ws


_DAEMON = object()


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path,
    *,
    replay_events: int = 100,
    client_queue: int = 64,
    require_token: bool = True,
    state: Any = _DAEMON,
    **kwargs: Any,
) -> AsyncIterator[Served]:
    """A started server; its ``state`` provider acts like the daemon's (idle until a state is published)."""
    runtime = RuntimeFiles.create(str(tmp_path / "run"))
    hub = EventHub(replay_events=replay_events)
    if state is _DAEMON:

        def state() -> StateEvent:
            return hub.last_state or IDLE

    config = WebSocketConfig(port=0, require_token=require_token, client_queue=client_queue)
    kwargs.setdefault("close_timeout", 0.5)
    server = WebSocketServer(hub, config, runtime, state=state, **kwargs)
    await server.start()
    served = Served(server, hub, runtime, runtime.tokens())
    try:
        yield served
    finally:
        await server.stop()
        for ws in served.opened:  # stuck or silent clients included: their sockets close now, not at GC
            ws.transport.abort()


async def recv(ws: ClientConnection, timeout: float = RECV_TIMEOUT) -> tuple[int, ServerEvent]:
    seq, event = event_from_json(await asyncio.wait_for(ws.recv(), timeout))
    assert seq is not None and isinstance(event, ServerEvent)
    return seq, event


async def greeting(ws: ClientConnection) -> HelloEvent:
    """Read hello and the state snapshot (both seq 0)."""
    seq, hello = await recv(ws)
    assert seq == 0 and isinstance(hello, HelloEvent)
    seq, state = await recv(ws)
    assert seq == 0 and isinstance(state, StateEvent)
    return hello


async def nothing_pending(ws: ClientConnection, wait: float = 0.1) -> bool:
    try:
        await asyncio.wait_for(ws.recv(), wait)
    except TimeoutError:
        return True
    return False


def commit(i: int, text: str | None = None) -> CommitEvent:
    return CommitEvent(utterance_id="u1", idx=i, text=f" w{i}" if text is None else text)


async def refused(served: Served, *, path: str = "", headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    with pytest.raises(InvalidStatus) as info:
        await connect(served.url + path, additional_headers=headers or {})
    response = info.value.response
    return response.status_code, response.body.decode(), response.headers


# ---------------------------------------------------------------------------------------------- lifecycle


def test_port_zero_url_file_hello_and_clean_stop(tmp_path: Path) -> None:
    """Port 0 picks a free port, written 0600 to the runtime dir; hello + state; stop closes (1001) and cleans up."""

    async def main() -> None:
        async with serving(tmp_path) as s:
            url_file = s.runtime.websocket_url_file
            assert url_file.read_text() == s.url + "\n"
            assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
            assert s.url.startswith("ws://127.0.0.1:") and s.port > 0
            ws = await s.client()
            seq, hello = await recv(ws)
            assert seq == 0 and hello == HelloEvent(
                protocol=PROTOCOL_VERSION,
                server_version=__version__,
                session_id=s.hub.session_id,
                scopes=["read", "control"],
            )
            assert await recv(ws) == (0, IDLE)
            # the daemon's state at connect time is the snapshot
            s.hub.publish(StateEvent(state="listening", mode="toggle"))
            later = await s.client()
            await recv(later)
            assert await recv(later) == (0, StateEvent(state="listening", mode="toggle"))
            await s.server.stop()
            assert not url_file.exists()
            for client in (ws, later):
                with pytest.raises(ConnectionClosed):
                    while True:
                        await recv(client)
                assert client.close_code == 1001
            with pytest.raises(OSError):
                await s.client()

    run(main())


def test_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    async def main() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            runtime = RuntimeFiles.create(str(tmp_path / "run"))
            config = WebSocketConfig(port=busy.getsockname()[1])
            server = WebSocketServer(EventHub(), config, runtime)
            with pytest.raises(ConfigError, match=r"websocket: cannot listen on 127\.0\.0\.1:\d+.*websocket\.port"):
                await server.start()
            assert not runtime.websocket_url_file.exists()

    run(main())


def test_state_snapshot_falls_back_to_the_last_published_state(tmp_path: Path) -> None:
    """Without a state provider the snapshot is the hub's last published state (none before the first)."""

    async def main() -> None:
        async with serving(tmp_path, state=None) as s:
            ws = await s.client()
            assert isinstance((await recv(ws))[1], HelloEvent)
            s.hub.publish(StateEvent(state="recording", mode="toggle"))
            assert await recv(ws) == (1, StateEvent(state="recording", mode="toggle"))  # no snapshot before it
            later = await s.client()
            assert isinstance((await recv(later))[1], HelloEvent)
            assert await recv(later) == (0, StateEvent(state="recording", mode="toggle"))

    run(main())


# ---------------------------------------------------------------------------------------------- handshake


def test_tokens_decide_scopes_and_bad_tokens_get_401(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as s:
            control = await s.client()
            assert (await greeting(control)).scopes == ["read", "control"]
            by_header = await s.client(s.tokens.read)
            assert (await greeting(by_header)).scopes == ["read"]
            by_query = await s.client("", query=f"?token={s.tokens.read}")  # browsers cannot set headers
            assert (await greeting(by_query)).scopes == ["read"]

            status, body, headers = await refused(s)
            assert status == 401 and "missing token" in body and str(s.runtime.dir / "read-token") in body
            assert headers["WWW-Authenticate"].startswith("Bearer")
            for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {s.tokens.read}x"}):
                status, body, _ = await refused(s, headers=headers)
                assert status == 401 and "invalid token" in body
            status, body, _ = await refused(s, path="/?token=wrong")
            assert status == 401 and "invalid token" in body
            status, body, _ = await refused(s, headers={"Authorization": f"Basic {s.tokens.control}"})
            assert status == 401 and "Bearer TOKEN" in body
            assert s.hub.subscribers == 3  # the refused ones never reached the hub

    run(main())


def test_token_not_required(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, require_token=False) as s:
            assert (await greeting(await s.client(""))).scopes == ["read", "control"]
            assert (await greeting(await s.client(s.tokens.read))).scopes == ["read"]
            status, _, _ = await refused(s, headers={"Authorization": "Bearer wrong"})
            assert status == 401  # a wrong token is an error even when none is needed

    run(main())


def test_only_local_browser_origins_are_allowed(tmp_path: Path) -> None:
    allowed = ["http://localhost", "http://localhost:5173", "https://127.0.0.1:8443", "http://[::1]:3000"]
    foreign = [
        "https://evil.example",
        "null",  # file:// pages and sandboxed frames
        "http://localhost.evil.example",
        "http://127.0.0.1.nip.io",
        "http://user@localhost",
        "ws://localhost",
        "http://localhost:99999",
    ]

    async def main() -> None:
        async with serving(tmp_path) as s:
            auth = {"Authorization": f"Bearer {s.tokens.control}"}
            for origin in allowed:
                ws = await connect(s.url, origin=origin, additional_headers=auth)
                await greeting(ws)
                await ws.close()
            for origin in foreign:
                status, body, _ = await refused(s, headers={**auth, "Origin": origin})
                assert status == 403, origin
                assert f"Origin {origin} is not allowed" in body
            # checked before the token: a foreign page learns nothing about tokens
            status, _, _ = await refused(s, headers={"Origin": "https://evil.example"})
            assert status == 403

    run(main())


def test_bad_path_and_query_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as s:
            auth = {"Authorization": f"Bearer {s.tokens.control}"}
            cases = {
                "/events": (404, "no such path '/events'"),
                "/?since_seq=-1": (400, "since_seq must be a non-negative integer"),
                "/?since_seq=1&since_seq=2": (400, "given more than once"),
                "/?sinceseq=1": (400, "unknown query parameter 'sinceseq'"),
                "/?events=commit,bogus": (400, "unknown event type 'bogus'"),
            }
            for path, (status, text) in cases.items():
                got_status, body, _ = await refused(s, path=path, headers=auth)
                assert (got_status, text in body) == (status, True), (path, body)

    run(main())


# ---------------------------------------------------------------------------------------------- events and replay


def test_live_events_flow_after_hello_in_order(tmp_path: Path) -> None:
    events: list[ServerEvent] = [
        UtteranceStartEvent(utterance_id="u1", audio_start=1.5),
        PartialEvent(utterance_id="u1", rev=0, text=" hello wor"),
        commit(0, " hello"),
        PartialEvent(utterance_id="u1", rev=1, text=" world"),
        commit(1, " world."),
        UtteranceEndEvent(utterance_id="u1", reason="key_release", latency={"final_ms": 210.0}),
        ErrorEvent(code="mic_unavailable", message="reopened", fatal=False),
    ]

    async def main() -> None:
        async with serving(tmp_path) as s:
            clients = [await s.client(), await s.client(s.tokens.read)]
            for ws in clients:
                await greeting(ws)
            seqs = [s.hub.publish(e) for e in events]
            assert seqs == list(range(1, len(events) + 1)) and s.hub.last_seq == len(events)
            for ws in clients:
                assert [await recv(ws) for _ in events] == list(zip(seqs, events, strict=True))
            with pytest.raises(ValueError, match="per connection"):
                s.hub.publish(HelloEvent(protocol=1, server_version="x", session_id="s", scopes=[]))
            with pytest.raises(ProtocolError, match=r"partial\.utterance_id"):
                s.hub.publish(PartialEvent(utterance_id=3, rev=0, text=""))  # type: ignore[arg-type]
            assert s.hub.publish(commit(2)) == len(events) + 1  # a refused event consumes no seq

    run(main())


def test_reconnect_with_since_seq_in_url_is_seamless(tmp_path: Path) -> None:
    """A client drops out while events keep coming and reconnects with ?since_seq=&session=: every seq exactly once,
    in order, across both connections."""
    total = 300

    async def publisher(hub: EventHub) -> None:
        for i in range(total):
            if i % 3:
                hub.publish(PartialEvent(utterance_id="u1", rev=i, text=f" p{i}"))
            else:
                hub.publish(commit(i // 3))
            await asyncio.sleep(0.001)

    async def main() -> None:
        async with serving(tmp_path, replay_events=total) as s:
            ws = await s.client()
            hello = await greeting(ws)
            task = asyncio.create_task(publisher(s.hub))
            seen: list[int] = []
            while len(seen) < 100:
                seen.append((await recv(ws))[0])
            await ws.close()
            await asyncio.sleep(0.02)  # events published while disconnected
            query = f"?since_seq={seen[-1]}&session={hello.session_id}"
            ws = await s.client(query=query)
            await greeting(ws)
            while seen[-1] < total:
                seen.append((await recv(ws))[0])
            await task
            assert seen == list(range(1, total + 1))
            assert await nothing_pending(ws)

    run(main())


def test_subscribe_message_replays_then_goes_live(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as s:
            for i in range(20):
                s.hub.publish(commit(i))
            ws = await s.client()
            await ws.send(event_to_json(SubscribeMessage(since_seq=5)))
            await greeting(ws)
            assert [(await recv(ws))[0] for _ in range(15)] == list(range(6, 21))
            assert s.hub.publish(commit(20)) == 21
            assert await recv(ws) == (21, commit(20))
            # asking again from a position it already has replays nothing
            await ws.send(event_to_json(SubscribeMessage(since_seq=21)))
            await asyncio.sleep(0.05)
            s.hub.publish(commit(21))
            assert await recv(ws) == (22, commit(21))

    run(main())


def test_subscribe_racing_live_events_has_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    """In-band subscribe while events are being published: live events may overtake the replay, but each seq after
    since_seq arrives exactly once (the URL form is the one that also keeps them in order)."""

    async def publisher(hub: EventHub, n: int) -> None:
        for i in range(n):
            hub.publish(commit(i))
            await asyncio.sleep(0.0005)

    async def main() -> None:
        async with serving(tmp_path, replay_events=1000) as s:
            for i in range(50):
                s.hub.publish(commit(i))
            task = asyncio.create_task(publisher(s.hub, 200))
            ws = await s.client()
            await greeting(ws)
            await ws.send(event_to_json(SubscribeMessage(since_seq=10)))
            seqs = []
            while len(seqs) < 240:
                seqs.append((await recv(ws))[0])
            await task
            assert sorted(seqs) == list(range(11, 251))
            assert await nothing_pending(ws)

    run(main())


def test_replay_gap_and_other_sessions(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, replay_events=10) as s:
            for i in range(30):
                s.hub.publish(commit(i))
            url_ws = await s.client(query="?since_seq=5")
            band_ws = await s.client()
            await band_ws.send(event_to_json(SubscribeMessage(since_seq=5)))
            for ws in (url_ws, band_ws):
                await greeting(ws)
                seq, gap = await recv(ws)
                assert seq == 0 and isinstance(gap, ErrorEvent) and gap.code == "replay_gap" and not gap.fatal
                assert "15 events after since_seq 5 are no longer retained" in gap.message
                assert "replay continues from seq 21" in gap.message
                assert [(await recv(ws))[0] for _ in range(10)] == list(range(21, 31))
                assert await nothing_pending(ws, 0.05)
            # a position from another daemon run (other session, or ahead of this one) replays this whole session
            for query in ("?since_seq=25&session=s-previous", "?since_seq=999"):
                ws = await s.client(query=query)
                await greeting(ws)
                seq, gap = await recv(ws)
                assert isinstance(gap, ErrorEvent) and "20 events after since_seq 0" in gap.message
                assert [(await recv(ws))[0] for _ in range(10)] == list(range(21, 31))

    run(main())


def test_event_type_filter(tmp_path: Path) -> None:
    mixed: list[ServerEvent] = [
        PartialEvent(utterance_id="u1", rev=0, text=" a"),
        commit(0, " a"),
        PartialEvent(utterance_id="u1", rev=1, text=" b"),
        UtteranceEndEvent(utterance_id="u1", reason="silence"),
    ]

    async def main() -> None:
        async with serving(tmp_path) as s:
            seqs = [s.hub.publish(e) for e in mixed]
            by_url = await s.client(query="?events=commit,utterance_end&since_seq=0")
            by_message = await s.client()
            await by_message.send(event_to_json(SubscribeMessage(events=["commit", "utterance_end"])))
            for ws in (by_url, by_message):
                await greeting(ws)
            await asyncio.sleep(0.05)
            more = [s.hub.publish(e) for e in mixed]
            assert [await recv(by_url) for _ in range(4)] == [
                (seqs[1], mixed[1]),
                (seqs[3], mixed[3]),
                (more[1], mixed[1]),
                (more[3], mixed[3]),
            ]
            assert [await recv(by_message) for _ in range(2)] == [(more[1], mixed[1]), (more[3], mixed[3])]

    run(main())


# ---------------------------------------------------------------------------------------------- client messages


def test_control_and_config_reach_the_daemon_only_with_the_control_scope(tmp_path: Path) -> None:
    received: list[Any] = []
    hub_box: list[EventHub] = []

    async def on_control(action: str) -> dict[str, str]:
        if action == "finalize":
            raise QasrError("nothing to finalize: not recording")
        if action == "cancel":
            raise RuntimeError("bug")
        await asyncio.sleep(0.001)
        received.append(("control", action))
        hub_box[0].publish(StateEvent(state="recording", mode="ptt"))  # what the daemon would do
        return {"state": "recording"}  # ignored, like the daemon's status dict

    def on_config(language: str | None, context: str | None) -> None:
        received.append(("config", language, context))

    async def main() -> None:
        async with serving(tmp_path, on_control=on_control, on_config=on_config) as s:
            hub_box.append(s.hub)
            ctl = await s.client()
            reader = await s.client(s.tokens.read)
            for ws in (ctl, reader):
                await greeting(ws)
            sent = [ControlMessage(action="ptt_press"), ConfigMessage(language="English", context="kubectl")]
            sent.append(ControlMessage(action="ptt_release"))
            for message in sent:
                await ctl.send(event_to_json(message))
            for ws in (ctl, reader):  # every subscriber sees the daemon's reaction
                assert [(await recv(ws))[1] for _ in range(2)] == [StateEvent(state="recording", mode="ptt")] * 2
            expected = [("control", "ptt_press"), ("config", "English", "kubectl"), ("control", "ptt_release")]
            assert received == expected  # in order; sync and async handlers alike

            await ctl.send(event_to_json(ControlMessage(action="finalize")))
            seq, error = await recv(ctl)
            assert seq == 0 and error == ErrorEvent(
                code="control_failed", message="nothing to finalize: not recording", fatal=False
            )
            await ctl.send(event_to_json(ControlMessage(action="cancel")))
            assert (await recv(ctl))[1].code == "internal_error"  # type: ignore[union-attr]

            for message in (ControlMessage(action="start"), ConfigMessage(language="German")):
                await reader.send(event_to_json(message))
                seq, error = await recv(reader)
                assert seq == 0 and isinstance(error, ErrorEvent) and error.code == "forbidden"
                assert f"{message.TYPE} needs the control scope" in error.message
            assert received == expected
            # both connections stay usable
            s.hub.publish(commit(0))
            for ws in (ctl, reader):
                assert await recv(ws) == (3, commit(0))

    run(main())


def test_no_handler_means_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as s:
            ws = await s.client()
            await greeting(ws)
            await ws.send(event_to_json(ControlMessage(action="toggle")))
            error = (await recv(ws))[1]
            assert isinstance(error, ErrorEvent) and error.code == "unavailable"

    run(main())


def test_bad_messages_are_answered_and_the_connection_stays(tmp_path: Path) -> None:
    bad_texts = [
        "not json",
        "[1, 2]",
        '{"type": "nope"}',
        '{"type": "control"}',
        '{"type": "control", "action": "explode"}',
        '{"v": 3, "type": "subscribe"}',
        '{"type": "subscribe", "since_seq": -3}',
        '{"type": "config", "language": "en", "volume": 3}',
    ]

    async def main() -> None:
        async with serving(tmp_path) as s:
            ws = await s.client()
            await greeting(ws)
            for text in bad_texts:
                with pytest.raises(ProtocolError) as expected:
                    event_from_json(text)
                await ws.send(text)
                assert await recv(ws) == (0, ErrorEvent(code="bad_message", message=str(expected.value), fatal=False))
            await ws.send(b"\x00\x01")
            error = (await recv(ws))[1]
            assert isinstance(error, ErrorEvent) and "binary frames" in error.message
            await ws.send(event_to_json(IDLE, 3))
            error = (await recv(ws))[1]
            assert isinstance(error, ErrorEvent) and error.message.startswith("state is a server event")
            s.hub.publish(commit(0))
            assert await recv(ws) == (1, commit(0))

    run(main())


def test_oversized_message_closes_with_1009(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as s:
            ws = await s.client()
            await greeting(ws)
            await ws.send(event_to_json(ConfigMessage(context="x" * 70_000)))
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1009

    run(main())


# ---------------------------------------------------------------------------------------------- backpressure


def test_paused_client_loses_partials_but_no_commit(tmp_path: Path) -> None:
    """A real client stops reading while a long utterance streams partials: when it reads again it gets every
    commit, in order, and the utterance_end; superseded partials were dropped; it was never disconnected."""
    n_partials, every = 3000, 100

    async def main() -> None:
        async with serving(tmp_path, client_queue=64) as s:
            slow = await s.stuck_client(max_queue=4)
            for rev in range(n_partials):
                s.hub.publish(PartialEvent(utterance_id="u1", rev=rev, text=os.urandom(1000).hex()))
                if rev % every == every - 1:
                    s.hub.publish(commit(rev // every))
                if rev % 50 == 0:
                    await asyncio.sleep(0)
            s.hub.publish(UtteranceEndEvent(utterance_id="u1", reason="silence"))
            assert s.hub.subscribers == 1
            slow.transport.resume_reading()
            await greeting(slow)
            got: list[tuple[int, ServerEvent]] = []
            while not got or not isinstance(got[-1][1], UtteranceEndEvent):
                got.append(await recv(slow))
            seqs = [seq for seq, _ in got]
            assert seqs == sorted(seqs)
            commits = [e for _, e in got if isinstance(e, CommitEvent)]
            assert commits == [commit(i) for i in range(n_partials // every)]
            revs = [e.rev for _, e in got if isinstance(e, PartialEvent)]
            assert revs == sorted(revs) and len(revs) < n_partials / 2  # the utterance_end superseded the tail

    run(main())


def test_stuck_client_is_cut_off_without_delaying_others(tmp_path: Path, report: Any) -> None:
    """One client stops reading, one reads normally, while 4 KB commits are published every millisecond (far more
    than dictation produces): publish() never waits, the reading client gets every event in order and in time, the
    stuck one is disconnected once even its commits do not fit."""

    async def main() -> None:
        async with serving(tmp_path, client_queue=64, replay_events=10) as s:
            normal = await s.client()
            await greeting(normal)
            stuck = await s.stuck_client()
            published: dict[int, float] = {}
            arrived: dict[int, float] = {}
            order: list[int] = []

            async def read_normal() -> None:
                while True:
                    seq, _ = await recv(normal)
                    arrived[seq] = time.perf_counter()
                    order.append(seq)

            reading = asyncio.create_task(read_normal())
            publish_times: list[float] = []
            t0, cut_at, i, gone_after = time.perf_counter(), 0, 0, 0.0
            while not cut_at or i < cut_at + 200 or not gone_after:
                before = time.perf_counter()
                seq = s.hub.publish(commit(i, os.urandom(2000).hex()))
                published[seq] = after = time.perf_counter()
                publish_times.append(after - before)
                i += 1
                if not cut_at and s.hub.subscribers == 1:
                    cut_at, cut_time = i, after - t0
                if cut_at and not gone_after and len(s.server._connections) == 1:
                    gone_after = time.perf_counter() - t0 - cut_time
                await asyncio.sleep(0.001)
                assert i < 5000, "the stuck client was never disconnected"
            while len(order) < i:
                await asyncio.sleep(0.01)
            reading.cancel()
            assert order == list(range(1, i + 1))
            latencies = sorted(arrived[q] - published[q] for q in order)
            publish_times.sort()
            p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
            assert publish_times[len(publish_times) // 2] < 0.001 and p99 < 0.5
            assert 0 < gone_after < 1.0
            stuck.transport.resume_reading()
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv(stuck)
            assert stuck.close_code in (CLOSE_TOO_SLOW, 1006)
            report(
                f"websocket stuck client: cut off after {cut_at} x 4 KB events ({cut_time:.2f} s at about one per ms; "
                f"client_queue 64, 4 KB receive buffer), TCP closed {gone_after * 1000:.0f} ms later (close_timeout "
                f"0.5 s); publish() p50 {publish_times[len(publish_times) // 2] * 1e6:.0f} us, max "
                f"{publish_times[-1] * 1e6:.0f} us; the reading client got all {i} in order, latency p50 "
                f"{p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, max {latencies[-1] * 1000:.1f} ms"
            )

    run(main())


def test_keepalive_disconnects_a_silent_client(tmp_path: Path) -> None:
    """Without traffic the queue never fills; the ping times out instead (20 s + 20 s by default)."""

    async def main() -> None:
        async with serving(tmp_path, ping_interval=0.2, ping_timeout=0.3) as s:
            alive = await s.client()
            await greeting(alive)
            silent = await s.client()
            await greeting(silent)
            silent.transport.pause_reading()  # no pongs from now on
            t0 = time.perf_counter()
            while s.hub.subscribers > 1:
                await asyncio.sleep(0.02)
                assert time.perf_counter() - t0 < 3.0
            await asyncio.sleep(0.3)
            assert s.hub.subscribers == 1
            s.hub.publish(commit(0))
            assert await recv(alive) == (1, commit(0))

    run(main())


def test_stop_does_not_wait_for_a_stuck_client(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, client_queue=100_000) as s:
            stuck = await s.stuck_client()
            while True:  # until the server's writes back up
                s.hub.publish(commit(0, os.urandom(500).hex()))
                await asyncio.sleep(0)
                ws = next(iter(s.server._connections))
                if ws.transport.get_write_buffer_size() > 0:
                    break
            t0 = time.perf_counter()
            await s.server.stop()
            assert time.perf_counter() - t0 < 0.5 + 1.0  # close_timeout 0.5 s, then abort
            assert not s.server._connections and s.hub.subscribers == 0
            stuck.transport.abort()

    run(main())


# ---------------------------------------------------------------------------------------------- figures


def test_fan_out_latency(tmp_path: Path, report: Any) -> None:
    n_clients, n_paced, n_burst = 20, 200, 1000

    async def main() -> None:
        async with serving(tmp_path, client_queue=2048, replay_events=10) as s:
            clients = [await s.client(s.tokens.read) for _ in range(n_clients)]
            for ws in clients:
                await greeting(ws)
            arrivals: list[dict[int, float]] = [{} for _ in clients]

            async def reader(ws: ClientConnection, got: dict[int, float], until: int) -> None:
                while len(got) < until:
                    seq, _ = await recv(ws)
                    got[seq] = time.perf_counter()

            published: dict[int, float] = {}
            readers = [asyncio.create_task(reader(ws, got, n_paced)) for ws, got in zip(clients, arrivals, strict=True)]
            for i in range(n_paced):
                seq = s.hub.publish(PartialEvent(utterance_id="u1", rev=i, text=" the quick brown fox" * 3))
                published[seq] = time.perf_counter()
                await asyncio.sleep(0.003)
            await asyncio.gather(*readers)
            latencies = sorted(got[q] - published[q] for got in arrivals for q in got)
            assert all(list(got) == list(range(1, n_paced + 1)) for got in arrivals)
            p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]

            arrivals = [{} for _ in clients]
            readers = [asyncio.create_task(reader(ws, got, n_burst)) for ws, got in zip(clients, arrivals, strict=True)]
            t0 = time.perf_counter()
            for i in range(n_burst):
                s.hub.publish(commit(i, " the quick brown fox"))
            t_published = time.perf_counter() - t0
            await asyncio.gather(*readers)
            t_all = max(max(got.values()) for got in arrivals) - t0
            assert p99 < 0.5
            report(
                f"websocket fan-out to {n_clients} clients: publish->receive p50 {p50 * 1000:.2f} ms p99 "
                f"{p99 * 1000:.2f} ms (one event per 3 ms); burst of {n_burst} events: publish() "
                f"{t_published / n_burst * 1e6:.0f} us each, all delivered to all clients in {t_all * 1000:.0f} ms "
                f"({n_burst * n_clients / t_all:.0f} messages/s)"
            )
            assert statistics.mean(latencies) < 0.5

    run(main(), timeout=30)


# ---------------------------------------------------------------------------------------------- example


def test_example_subscriber_prints_commits_and_catches_up_after_a_restart(tmp_path: Path) -> None:
    """examples/subscriber.py (piped: commits only) against the real server; the server restarts on another port
    while an utterance is dictated, and the subscriber reconnects and replays it: no text lost or repeated."""
    example = Path(__file__).resolve().parents[1] / "examples" / "subscriber.py"

    def utterance(uid: str, words: list[str]) -> list[ServerEvent]:
        out: list[ServerEvent] = [UtteranceStartEvent(utterance_id=uid, audio_start=0.0)]
        for i, word in enumerate(words):
            out.append(PartialEvent(utterance_id=uid, rev=i, text=word + " and mor"))
            out.append(CommitEvent(utterance_id=uid, idx=i, text=word))
        out.append(UtteranceEndEvent(utterance_id=uid, reason="silence"))
        return out

    async def main() -> None:
        async with serving(tmp_path) as s:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(example),
                "--runtime-dir",
                str(s.runtime.dir),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                while s.hub.subscribers == 0:
                    await asyncio.sleep(0.02)
                for event in utterance("u1", [" Hello", " world."]):
                    s.hub.publish(event)
                assert proc.stdout is not None
                assert await asyncio.wait_for(proc.stdout.readline(), 5) == b" Hello world.\n"

                await s.server.stop()
                for event in utterance("u2", [" Second", " one."]):
                    s.hub.publish(event)  # while no server runs: retained for the replay
                restarted = WebSocketServer(s.hub, s.server.config, s.runtime, close_timeout=0.5)
                await restarted.start()  # another free port, in the URL file
                try:
                    assert await asyncio.wait_for(proc.stdout.readline(), 5) == b" Second one.\n"
                    s.hub.publish(StateEvent(state="recording", mode="ptt"))
                    for event in utterance("u3", [" Third."]):
                        s.hub.publish(event)
                    assert await asyncio.wait_for(proc.stdout.readline(), 5) == b" Third.\n"
                finally:
                    await restarted.stop()
            finally:
                proc.terminate()
                await proc.wait()
            assert proc.stderr is not None
            assert b"disconnected" in await proc.stderr.read()

    run(main())
