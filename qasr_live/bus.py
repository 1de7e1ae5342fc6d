"""The daemon's in-process event bus: events numbered, retained for replay and fanned out to subscribers.

No sockets here: transports (the WebSocket server, and any other) subscribe and send what they are handed.

* ``EventHub`` belongs to the daemon. ``publish(event)`` is synchronous: it numbers the event (``seq`` 1, 2, 3, ...
  within this daemon run, identified by ``session_id``), encodes it to JSON once, keeps it in a bounded replay
  buffer and appends it to each subscriber's bounded queue. It never awaits, so a slow or stuck client cannot stall
  the recognizer loop; the worst a client can do is lose its partials and then its subscription.
* ``Subscription`` is one subscriber's view: connection messages first (``hello``, the ``state`` snapshot; seq 0,
  never replayed), then the replay of retained events it asked for (``since_seq``), then live events.
  Resuming is atomic (the replay is taken in the same synchronous step that registers the subscriber), so there
  are no duplicates and no gaps; a resume asked for later (the ``subscribe`` message) is exact when no live event
  was delivered yet, else the missed older events still follow (no gap, no duplicate) but behind them.
* Backpressure: a full queue first loses partials that a later partial or ``utterance_end`` of the same utterance
  supersedes, then the oldest partials, then an incoming partial; commits, ``utterance_end``, ``state`` and every
  other event are never dropped: when they do not fit, the subscription fails (``failure`` says why) and the
  transport disconnects the client.

Everything here must be called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Iterable
from itertools import islice
from typing import NamedTuple

from qasr_live.events import ErrorEvent, HelloEvent, ServerEvent, StateEvent, event_to_json

__all__ = ["EventHub", "Subscription"]

log = logging.getLogger(__name__)


class _Item(NamedTuple):
    """One queued message: the JSON text plus what the drop policy needs to know about it."""

    seq: int  # 0 for connection messages
    type: str
    utterance_id: str | None
    text: str


def _connection_message(event: ServerEvent) -> _Item:
    """A message for one connection only (hello, snapshot state, error reply): seq 0, never replayed."""
    return _Item(0, event.TYPE, None, event_to_json(event, 0))


# ---------------------------------------------------------------------------------------------- hub


class EventHub:
    """Numbers, retains and fans out the daemon's events; owned by the daemon, shared by every transport.

    ``session_id`` names this daemon run (seqs restart with every run); ``replay_events`` bounds the replay
    buffer (0 keeps none). ``last_state`` is the last published ``StateEvent``, the fallback state snapshot for
    new subscribers.
    """

    def __init__(self, session_id: str | None = None, replay_events: int = 2000) -> None:
        self.session_id = session_id or f"s-{secrets.token_hex(6)}"
        self.last_state: StateEvent | None = None
        self._seq = 0
        self._buffer: deque[_Item] = deque(maxlen=max(0, replay_events))
        self._subscribers: set[Subscription] = set()
        self.slow_disconnects = 0  # subscribers cut off because even their commits did not fit

    @property
    def last_seq(self) -> int:
        """The seq of the last published event (0 before the first)."""
        return self._seq

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, event: ServerEvent) -> int:
        """Number, retain and fan out ``event``; return its seq. Never blocks and never awaits.

        Raises ``ProtocolError`` (and consumes no seq) if the event is invalid, ``ValueError`` for a ``hello``
        (which only a connection can send).
        """
        if isinstance(event, HelloEvent):
            raise ValueError("hello is sent per connection, not published")
        seq = self._seq + 1
        item = _Item(seq, event.TYPE, getattr(event, "utterance_id", None), event_to_json(event, seq))
        self._seq = seq
        self._buffer.append(item)
        if isinstance(event, StateEvent):
            self.last_state = event
        for sub in tuple(self._subscribers):  # a subscriber that overflows removes itself
            sub._offer(item)
        return seq

    def subscribe(
        self,
        *,
        queue_limit: int,
        first: Iterable[ServerEvent] = (),
        since_seq: int | None = None,
        session: str | None = None,
        events: Iterable[str] | None = None,
    ) -> Subscription:
        """Register a subscriber: it is sent the connection messages ``first`` (seq 0: hello, state snapshot),
        then with ``since_seq`` the retained events after it, then every live event.

        Synchronous, so no event can slip between the replay and the live stream. ``session`` is the client's last
        known ``session_id``; when it is not this one, ``since_seq`` belongs to another daemon run and the whole
        retained session is replayed. ``queue_limit`` bounds the live events waiting for this subscriber.
        """
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        sub = Subscription(self, queue_limit=queue_limit, events=events)
        sub._local.extend(_connection_message(event) for event in first)
        if since_seq is not None:
            sub.resume(0 if session is not None and session != self.session_id else since_seq)
        self._subscribers.add(sub)
        return sub

    def _retained(self, after: int, upto: int) -> list[_Item]:
        """Retained events with ``after < seq <= upto``; seqs in the buffer are consecutive."""
        if not self._buffer:
            return []
        oldest = self._buffer[0].seq
        start = max(0, after + 1 - oldest)
        stop = max(start, upto + 1 - oldest)
        return list(islice(self._buffer, start, stop))

    def _oldest_seq(self) -> int:
        """The seq of the oldest retained event, or the next seq when nothing is retained."""
        return self._buffer[0].seq if self._buffer else self._seq + 1


class Subscription:
    """One subscriber's view of the hub: a bounded queue of pending events plus the replay still to send.

    The transport loops on ``await next()`` and sends each text; ``None`` means the subscription is over
    (``failure`` says why when the hub cut it off).
    """

    def __init__(self, hub: EventHub, *, queue_limit: int, events: Iterable[str] | None) -> None:
        self._hub = hub
        self._limit = queue_limit
        self._filter: frozenset[str] | None = None if events is None else frozenset(events)
        self._local: deque[_Item] = deque()  # hello, state snapshot, replay_gap: always first
        self._replay: deque[_Item] = deque()  # retained events being replayed, in seq order
        self._queue: deque[_Item] = deque()  # live events and error replies, at most queue_limit
        # Every stream event with seq > _floor is delivered, pending, dropped or filtered out.
        self._floor = hub.last_seq
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self.failure: str | None = None
        self.dropped_partials = 0

    @property
    def closed(self) -> bool:
        return self._done.is_set()

    async def next(self) -> str | None:
        """The next message to send, waiting for one; ``None`` once the subscription is closed."""
        while not self._done.is_set():
            for q in (self._local, self._replay, self._queue):
                if q:
                    return q.popleft().text
            self._wake.clear()
            await self._wake.wait()
        return None

    async def wait_closed(self) -> None:
        await self._done.wait()

    def close(self) -> None:
        """Stop receiving events (the client went away); idempotent."""
        self._finish()

    def reply(self, event: ServerEvent) -> None:
        """Queue a connection message (an error answering the client): seq 0, never dropped, counted against
        the client's queue so that a client that floods bad messages without reading is disconnected."""
        if not self._done.is_set():
            self._enqueue(_connection_message(event))

    def set_events(self, events: Iterable[str] | None) -> None:
        """Only deliver these event types from now on (``None``: all); pending events of other types go."""
        self._filter = None if events is None else frozenset(events)
        if self._filter is not None:
            keep = self._filter

            def wanted(it: _Item) -> bool:
                return it.seq == 0 or it.type in keep

            self._replay = deque(filter(wanted, self._replay))
            self._queue = deque(filter(wanted, self._queue))

    def resume(self, since_seq: int) -> None:
        """Deliver every retained event with seq > ``since_seq`` not yet covered, before further live events.

        A ``since_seq`` beyond the last published event comes from an earlier daemon run: the whole retained
        session is replayed. If events after ``since_seq`` are no longer retained, an ``error`` with code
        ``replay_gap`` says how many are lost and the replay continues from the oldest retained one.
        """
        hub = self._hub
        if since_seq > hub.last_seq:
            since_seq = 0
        if since_seq >= self._floor:  # the client already has these: skip any still pending
            self._replay = deque(it for it in self._replay if it.seq > since_seq)
            self._queue = deque(it for it in self._queue if it.seq == 0 or it.seq > since_seq)
            return
        first = min(hub._oldest_seq(), self._floor + 1)
        lost = first - since_seq - 1
        if lost > 0:
            kept = hub._buffer.maxlen
            message = (
                f"{lost} events after since_seq {since_seq} are no longer retained (the server keeps the last "
                f"{kept}); replay continues from seq {first}"
            )
            self._local.append(_connection_message(ErrorEvent(code="replay_gap", message=message, fatal=False)))
        backfill = [it for it in hub._retained(since_seq, self._floor) if self._wants(it)]
        self._replay.extendleft(reversed(backfill))
        self._floor = since_seq
        self._wake.set()

    # --- called by the hub ---------------------------------------------------------------------------------

    def _wants(self, item: _Item) -> bool:
        return self._filter is None or item.type in self._filter

    def _offer(self, item: _Item) -> None:
        if self._wants(item):
            self._enqueue(item)

    def _enqueue(self, item: _Item) -> None:
        if len(self._queue) >= self._limit and not self._make_room(item):
            return
        self._queue.append(item)
        self._wake.set()

    def _make_room(self, incoming: _Item) -> bool:
        """Free a slot by dropping partials; False if ``incoming`` must not be queued (dropped, or overflow)."""
        limit = self._limit
        # 1. partials superseded by a later partial or utterance_end of the same utterance (incoming included)
        later: set[str | None] = set()
        if incoming.type in ("partial", "utterance_end"):
            later.add(incoming.utterance_id)
        kept: list[_Item] = []
        for it in reversed(self._queue):
            if it.type == "partial":
                if it.utterance_id in later:
                    continue
                later.add(it.utterance_id)
            elif it.type == "utterance_end":
                later.add(it.utterance_id)
            kept.append(it)
        kept.reverse()
        # 2. the oldest partials, whatever their utterance
        i = 0
        while len(kept) >= limit and i < len(kept):
            if kept[i].type == "partial":
                del kept[i]
            else:
                i += 1
        self.dropped_partials += len(self._queue) - len(kept)
        self._queue = deque(kept)
        if len(kept) < limit:
            return True
        # 3. nothing droppable is left
        if incoming.type == "partial":
            self.dropped_partials += 1
            return False
        self._fail(f"too slow: {limit} undelivered events that cannot be dropped; reconnect with since_seq")
        return False

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self._hub.slow_disconnects += 1
        log.warning("event subscriber cut off: %s (%d partials dropped before)", reason, self.dropped_partials)
        self._finish()

    def _finish(self) -> None:
        self._hub._subscribers.discard(self)
        self._local.clear()
        self._replay.clear()
        self._queue.clear()
        self._done.set()
        self._wake.set()
