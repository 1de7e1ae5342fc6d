"""Caption and control WebSocket: the daemon's event bus (:mod:`qasr_live.bus`) served to local clients.

``WebSocketServer`` is a transport of the :class:`~qasr_live.bus.EventHub`, so the daemon never waits for a
client: it authenticates the HTTP handshake (token, browser ``Origin``), then runs one writer (the connection's
:class:`~qasr_live.bus.Subscription` → socket) and one reader (client messages → the daemon's ``on_control`` /
``on_config``) per connection.

Protocol decisions (the user-facing description is ``docs/websocket.md``; numbering, replay and the drop policy are
the hub's, described in :mod:`qasr_live.bus`):

* On connect the server sends ``hello`` and a snapshot ``state`` (from the daemon's ``state`` callable, else the
  last published one); live events follow at once, with no need to subscribe. Connection messages (``hello``,
  the snapshot ``state``, ``error`` replies to the client's own messages) carry ``seq`` 0: they are not part of
  the event stream, are never replayed, and must not be used as a resume position. Stream events carry ``seq``
  >= 1, strictly increasing.
* Reconnecting without gaps: ``?since_seq=N&session=ID`` in the URL replays the retained events after N, then live,
  atomically, so there are no duplicates and no gaps. The ``subscribe`` message does the same in-band and is exact
  when it is the client's first message, before any live event has been delivered; if live events were already
  delivered, the missed older ones still follow (no gap, no duplicate) but behind them.
* Backpressure: a client too slow for its commits (the hub cut its subscription off) is disconnected with close
  code 1008; one that is only slow loses partials.

Everything here must be called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import http
import inspect
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from qasr_live import __version__
from qasr_live.bus import EventHub, Subscription
from qasr_live.config import WebSocketConfig
from qasr_live.errors import ConfigError, ProtocolError, QasrError
from qasr_live.events import (
    PROTOCOL_VERSION,
    SERVER_EVENTS,
    ClientMessage,
    ConfigMessage,
    ControlAction,
    ControlMessage,
    ErrorEvent,
    HelloEvent,
    StateEvent,
    SubscribeMessage,
    event_from_json,
)
from qasr_live.runtime import RuntimeFiles, Tokens, write_private

__all__ = [
    "CLOSE_TOO_SLOW",
    "ConfigHandler",
    "ControlHandler",
    "WebSocketServer",
    "check_bind",
    "is_loopback",
]

log = logging.getLogger(__name__)

READ, CONTROL = "read", "control"
CLOSE_TOO_SLOW = 1008  # policy violation: the client did not read its events fast enough
MAX_MESSAGE_BYTES = 1 << 16  # clients send tiny JSON messages; the longest is a config with a context text
_EVENT_TYPES = frozenset(cls.TYPE for cls in SERVER_EVENTS)
_LOCAL_ORIGINS = frozenset({"localhost", "127.0.0.1", "::1"})
_QUERY_KEYS = ("token", "since_seq", "session", "events")
_MAX_SEQ_DIGITS = 18  # any seq of a daemon's life fits; int() of thousands of digits is slow, then refused

# Called with the action a client asked for; may be a coroutine.
ControlHandler = Callable[[ControlAction], Awaitable[object] | object]
# Called with (language, context), each None when the client left it unchanged; may be a coroutine.
ConfigHandler = Callable[[str | None, str | None], Awaitable[object] | object]


@dataclass(frozen=True, slots=True)
class _Admission:
    """What an accepted handshake asked for and is allowed to do."""

    scopes: list[str]
    since_seq: int | None
    session: str | None
    events: list[str] | None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_bind(config: WebSocketConfig) -> None:
    """Refuse to serve other machines without a token: a tokenless remote client would read and control
    dictation (a ``ConfigError`` naming both keys); checked before the daemon loads the model."""
    if not is_loopback(config.host) and not config.require_token:
        raise ConfigError(
            f"websocket.host {config.host!r} accepts other machines, so websocket.require_token must be true; "
            "set it to true (clients then need the token), or bind 127.0.0.1"
        )


class _Rejection(NamedTuple):
    status: http.HTTPStatus
    reason: str


class WebSocketServer:
    """Serves an ``EventHub`` over WebSocket on ``config.host:config.port`` (see ``docs/websocket.md``).

    ``on_control`` and ``on_config`` receive the messages of clients with the control scope; they may be plain
    functions or coroutines. A connection's messages are handled one at a time, in order, so a client's
    ``ptt_press`` is handled before its ``ptt_release``; a coroutine runs in its own task, shielded, so a client
    that disconnects does not cancel the daemon half-way through an action. A ``QasrError`` they raise is reported
    to that client as an ``error`` event (``control_failed`` / ``config_failed``), any other exception is logged
    and reported as ``internal_error``; the connection stays either way. No acknowledgement is sent on success:
    the effect shows as the events the daemon publishes (``state`` ...).
    """

    def __init__(
        self,
        hub: EventHub,
        config: WebSocketConfig,
        runtime: RuntimeFiles,
        *,
        on_control: ControlHandler | None = None,
        on_config: ConfigHandler | None = None,
        state: Callable[[], StateEvent] | None = None,
        server_version: str = __version__,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 2.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.hub = hub
        self.config = config
        self.runtime = runtime
        self.on_control = on_control
        self.on_config = on_config
        self._state = state
        self.server_version = server_version
        self._ping = (ping_interval, ping_timeout)
        self._close_timeout = close_timeout
        self._max_message_bytes = max_message_bytes
        self._tokens: Tokens | None = None
        self._server: Server | None = None
        self._connections: set[ServerConnection] = set()
        self._handlers: set[asyncio.Task[None]] = set()  # running on_control/on_config calls (kept referenced)
        self.url: str | None = None

    async def __aenter__(self) -> WebSocketServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> str:
        """Listen, write ``ws://HOST:PORT`` to the runtime directory (0600) and return it."""
        if self._server is not None:
            raise RuntimeError("the WebSocket server is already running")
        check_bind(self.config)
        self._tokens = self.runtime.tokens()
        host, port = self.config.host, self.config.port
        try:
            self._server = await serve(
                self._handle,
                host,
                port,
                process_request=self._process_request,
                server_header=f"qasr-live/{__version__}",
                # Local traffic: compression would only cost one deflate per client per event.
                compression=None,
                max_size=self._max_message_bytes,
                ping_interval=self._ping[0],
                ping_timeout=self._ping[1],
                close_timeout=self._close_timeout,
            )
        except OSError as e:
            raise ConfigError(
                f"websocket: cannot listen on {host}:{port}: {e.strerror or e}; choose another websocket.port "
                "(0 picks a free one) or stop the program using it"
            ) from None
        bound, bound_port = self._server.sockets[0].getsockname()[:2]
        addr = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound, bound)  # the file is for local clients
        self.url = _url(addr, bound_port)
        write_private(self.runtime.websocket_url_file, self.url + "\n")
        if is_loopback(bound):
            log.info("websocket: listening on %s", self.url)
        else:  # said once, at start: what is exposed, and to whom
            log.warning(
                "websocket: listening on %s, reachable from other machines (websocket.host %s); clients need the "
                "token; local clients use %s",
                _url(bound, bound_port),
                self.config.host,
                self.url,
            )
        return self.url

    def write_runtime_files(self) -> None:
        """Write the tokens (the ones in use) and the URL file again: the runtime directory was removed."""
        if self._tokens is None or self.url is None:
            return
        write_private(self.runtime.dir / "token", self._tokens.control + "\n")
        write_private(self.runtime.dir / "read-token", self._tokens.read + "\n")
        write_private(self.runtime.websocket_url_file, self.url + "\n")

    async def stop(self) -> None:
        """Close every connection (1001), stop listening and remove the URL file; idempotent.

        A client that does not read cannot complete the closing handshake, so after ``close_timeout`` its TCP
        connection is aborted: stopping never waits on a client for long.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        try:
            await asyncio.wait_for(asyncio.shield(server.wait_closed()), self._close_timeout + 0.5)
        except TimeoutError:
            for ws in tuple(self._connections):
                ws.transport.abort()
            await server.wait_closed()
        if self._handlers:  # let running control actions finish (briefly) rather than leave them dangling
            await asyncio.wait(self._handlers, timeout=self._close_timeout)
        path = self.runtime.websocket_url_file
        with contextlib.suppress(OSError):
            if path.read_text().strip() == self.url:
                path.unlink()
        log.info("websocket: stopped")

    # --- handshake -----------------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse the upgrade (plain HTTP response) unless path, Origin, token and query are acceptable."""
        verdict = self._admit(request)
        if isinstance(verdict, _Admission):
            return None
        log.info("websocket: refused %s: %d %s", connection.remote_address, verdict.status, verdict.reason)
        response = connection.respond(verdict.status, verdict.reason + "\n")
        if verdict.status == http.HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Bearer realm="qasr-live"'
        return response

    def _admit(self, request: Request) -> _Admission | _Rejection:
        """Check a handshake request; a pure function of the request and the tokens."""
        headers: Headers = request.headers
        url = urlsplit(request.path)
        if url.path != "/":
            return _Rejection(http.HTTPStatus.NOT_FOUND, f"no such path {url.path!r}: connect to /")
        # Browsers always send Origin and cannot be stopped from connecting anywhere (CSWSH); only pages served
        # from this machine may talk to the daemon. Non-browser clients send no Origin.
        origins = headers.get_all("Origin")
        if len(origins) > 1 or (origins and not _local_origin(origins[0])):
            return _Rejection(
                http.HTTPStatus.FORBIDDEN,
                f"Origin {', '.join(origins)} is not allowed: only pages from http(s)://localhost, 127.0.0.1 or "
                "[::1] may connect",
            )
        query = parse_qs(url.query, keep_blank_values=True)
        for key, values in query.items():
            if key not in _QUERY_KEYS:
                return _Rejection(
                    http.HTTPStatus.BAD_REQUEST,
                    f"unknown query parameter {key[:40]!r} (known: {', '.join(_QUERY_KEYS)})",
                )
            if len(values) > 1:
                return _Rejection(http.HTTPStatus.BAD_REQUEST, f"query parameter {key!r} given more than once")
        scopes = self._scopes(headers, query.get("token", [None])[0])
        if isinstance(scopes, _Rejection):
            return scopes
        since = query.get("since_seq", [None])[0]
        if since is not None and not (since.isascii() and since.isdigit() and len(since) <= _MAX_SEQ_DIGITS):
            return _Rejection(
                http.HTTPStatus.BAD_REQUEST,
                f"since_seq must be a non-negative integer of at most {_MAX_SEQ_DIGITS} digits, got {since[:40]!r}",
            )
        events = query.get("events", [None])[0]
        names = None if events is None else [e for e in events.split(",") if e]
        if names is not None and (bad := [e for e in names if e not in _EVENT_TYPES]):
            known = ", ".join(sorted(_EVENT_TYPES))
            return _Rejection(
                http.HTTPStatus.BAD_REQUEST, f"events: unknown event type {bad[0][:40]!r} (known: {known})"
            )
        return _Admission(
            scopes=scopes,
            since_seq=None if since is None else int(since),
            session=query.get("session", [None])[0],
            events=names,
        )

    def _scopes(self, headers: Headers, query_token: str | None) -> list[str] | _Rejection:
        """The scopes of the presented token (header ``Authorization: Bearer T`` or ``?token=T``)."""
        auth = headers.get_all("Authorization")
        if len(auth) > 1:
            return _Rejection(http.HTTPStatus.BAD_REQUEST, "more than one Authorization header")
        token = query_token
        if auth:
            scheme, _, value = auth[0].strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return _Rejection(http.HTTPStatus.UNAUTHORIZED, "Authorization must be 'Bearer TOKEN'")
            token = value.strip()
        where = self.runtime.dir
        if token is None:
            if not self.config.require_token:
                return [READ, CONTROL]
            return _Rejection(
                http.HTTPStatus.UNAUTHORIZED,
                f"missing token: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN to the URL; the tokens are "
                f"{where}/token (read and control) and {where}/read-token (read only)",
            )
        assert self._tokens is not None
        # Compare against both tokens every time, in constant time, so timing reveals neither.
        given = token.encode()
        is_control = hmac.compare_digest(given, self._tokens.control.encode())
        is_read = hmac.compare_digest(given, self._tokens.read.encode())
        if is_control:
            return [READ, CONTROL]
        if is_read:
            return [READ]
        return _Rejection(
            http.HTTPStatus.UNAUTHORIZED,
            f"invalid token: use the contents of {where}/token or {where}/read-token (they change only when deleted)",
        )

    # --- connection ----------------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        """One connection: a writer and a reader task; whichever ends first (or an overflow) ends both."""
        assert ws.request is not None
        admission = self._admit(ws.request)
        if not isinstance(admission, _Admission):  # the handshake already refused it; cannot happen
            return
        hello = HelloEvent(
            protocol=PROTOCOL_VERSION,
            server_version=self.server_version,
            session_id=self.hub.session_id,
            scopes=admission.scopes,
        )
        snapshot = self._state() if self._state is not None else self.hub.last_state
        sub = self.hub.subscribe(
            queue_limit=self.config.client_queue,
            first=[hello] if snapshot is None else [hello, snapshot],
            since_seq=admission.since_seq,
            session=admission.session,
            events=admission.events,
        )
        self._connections.add(ws)
        peer = ws.remote_address
        log.info("websocket: client %s connected, scopes %s", peer, ",".join(admission.scopes))
        writer = asyncio.create_task(self._write(ws, sub))
        reader = asyncio.create_task(self._read(ws, sub, admission.scopes))
        cut_off = asyncio.create_task(sub.wait_closed())
        tasks = (writer, reader, cut_off)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if sub.failure is not None:
                await self._close(ws, CLOSE_TOO_SLOW, sub.failure)
            for task in (writer, reader):
                exc = task.exception() if task.done() and not task.cancelled() else None
                if exc is not None and not isinstance(exc, ConnectionClosed):
                    log.error("websocket: connection %s failed", peer, exc_info=exc)
                    await self._close(ws, 1011, "internal error; see the daemon log")
        finally:
            sub.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._connections.discard(ws)
            log.info("websocket: client %s gone (%s)", peer, sub.failure or "closed")

    async def _close(self, ws: ServerConnection, code: int, reason: str) -> None:
        """Close with a reason, aborting the TCP connection if the client does not complete the handshake
        (a stuck client never reads the close frame; websockets' own close would wait for the write buffer)."""
        try:
            await asyncio.wait_for(ws.close(code, reason[:120]), self._close_timeout)
        except TimeoutError:
            ws.transport.abort()

    async def _write(self, ws: ServerConnection, sub: Subscription) -> None:
        while (text := await sub.next()) is not None:
            await ws.send(text)

    async def _read(self, ws: ServerConnection, sub: Subscription, scopes: list[str]) -> None:
        async for raw in ws:
            await self._on_message(raw, sub, scopes)

    async def _on_message(self, raw: str | bytes, sub: Subscription, scopes: list[str]) -> None:
        if isinstance(raw, bytes):
            sub.reply(_error("bad_message", "binary frames are not accepted: send JSON text messages"))
            return
        try:
            _, message = event_from_json(raw)
        except ProtocolError as e:
            sub.reply(_error("bad_message", str(e)))
            return
        if isinstance(message, SubscribeMessage):
            sub.set_events(message.events)
            if message.since_seq is not None:
                sub.resume(message.since_seq)
            return
        if not isinstance(message, ControlMessage | ConfigMessage):
            sub.reply(
                _error("bad_message", f"{message.TYPE} is a server event; clients send subscribe, control or config")
            )
            return
        if CONTROL not in scopes:
            sub.reply(
                _error(
                    "forbidden",
                    f"{message.TYPE} needs the control scope; this connection has read only (connect with the token "
                    f"in {self.runtime.dir}/token instead of read-token)",
                )
            )
            return
        call: Callable[[], object] | None = None
        if isinstance(message, ControlMessage) and (on_control := self.on_control) is not None:
            call = functools.partial(on_control, message.action)
        elif isinstance(message, ConfigMessage) and (on_config := self.on_config) is not None:
            call = functools.partial(on_config, message.language, message.context)
        if call is None:
            sub.reply(_error("unavailable", f"this server does not accept {message.TYPE} messages"))
            return
        # In a task, shielded: a client that disconnects must not cancel the daemon half-way through an action.
        task = asyncio.create_task(self._dispatch(message, call, sub))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        await asyncio.shield(task)

    async def _dispatch(self, message: ClientMessage, call: Callable[[], object], sub: Subscription) -> None:
        """Run one handler; its failure is reported to the client (if still there) and never ends the server."""
        try:
            result = call()
            if inspect.isawaitable(result):
                await result
        except QasrError as e:
            sub.reply(_error(f"{message.TYPE}_failed", str(e)))
        except Exception:
            log.exception("websocket: %s handler failed on %r", message.TYPE, message)
            sub.reply(_error("internal_error", f"the daemon failed to handle {message.TYPE}; see its log"))


def _url(addr: str, port: int) -> str:
    return f"ws://[{addr}]:{port}" if ":" in addr else f"ws://{addr}:{port}"


def _error(code: str, message: str) -> ErrorEvent:
    return ErrorEvent(code=code, message=message, fatal=False)


def _local_origin(origin: str) -> bool:
    """Whether ``origin`` is a page on this machine: http(s)://localhost, 127.0.0.1 or [::1], any port."""
    try:
        url = urlsplit(origin)
        url.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return (
        url.scheme in ("http", "https")
        and url.hostname in _LOCAL_ORIGINS
        and url.username is None
        and url.path in ("", "/")
        and not url.query
    )
