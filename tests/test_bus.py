"""The in-process event hub: numbering, replay and the drop policy, driven directly (no sockets).

The hub's behaviour through a real WebSocket server (replay on reconnect, filters, slow clients) is tested in
test_websocket.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

from qasr_live.bus import EventHub
from qasr_live.events import CommitEvent, HelloEvent, PartialEvent, StateEvent, UtteranceStartEvent

IDLE = StateEvent(state="idle", mode="ptt")


def run(coro: Awaitable[Any], timeout: float = 15.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def commit(i: int, text: str | None = None) -> CommitEvent:
    return CommitEvent(utterance_id="u1", idx=i, text=f" w{i}" if text is None else text)


def test_queue_drops_superseded_then_oldest_partials_never_commits() -> None:
    """The drop policy, driven through the hub directly (the same objects the server uses)."""

    async def main() -> None:
        hub = EventHub()
        hello = HelloEvent(protocol=1, server_version="x", session_id=hub.session_id, scopes=[])
        sub = hub.subscribe(queue_limit=8, first=[hello, IDLE])
        assert [json.loads(await sub.next())["type"] for _ in range(2)] == ["hello", "state"]  # type: ignore[arg-type]

        def pending() -> list[tuple[str, str, int]]:
            return [(json.loads(it.text)["type"], it.utterance_id or "", it.seq) for it in sub._queue]

        for rev in range(3):
            hub.publish(PartialEvent(utterance_id="a", rev=rev, text="x"))  # seq 1-3
        hub.publish(commit(0))  # 4
        for rev in range(2):
            hub.publish(PartialEvent(utterance_id="b", rev=rev, text="y"))  # 5-6
        hub.publish(commit(1))  # 7
        hub.publish(PartialEvent(utterance_id="b", rev=2, text="y"))  # 8: full now
        assert len(pending()) == 8
        # a commit arrives: superseded partials go (a@1, a@2 superseded by a@3; b@5, b@6 by b@8)
        hub.publish(commit(2))  # 9
        assert pending() == [
            ("partial", "a", 3),
            ("commit", "u1", 4),
            ("commit", "u1", 7),
            ("partial", "b", 8),
            ("commit", "u1", 9),
        ]
        for i in range(3, 6):
            hub.publish(commit(i))  # 10-12: full again, nothing superseded
        hub.publish(commit(6))  # 13: the oldest partial (a@3) goes
        assert [p[2] for p in pending()] == [4, 7, 8, 9, 10, 11, 12, 13]
        hub.publish(PartialEvent(utterance_id="b", rev=3, text="z"))  # 14 supersedes b@8
        assert [p[2] for p in pending()] == [4, 7, 9, 10, 11, 12, 13, 14]
        hub.publish(UtteranceStartEvent(utterance_id="c", audio_start=0.0))  # 15: drops b@14, the last partial
        hub.publish(PartialEvent(utterance_id="c", rev=0, text="w"))  # 16: no room and nothing to drop: dropped
        assert [p[2] for p in pending()] == [4, 7, 9, 10, 11, 12, 13, 15]
        assert sub.dropped_partials == 8 and not sub.closed
        hub.publish(commit(7))  # 17: a commit that cannot fit: the subscriber is cut off, not the daemon
        assert sub.closed and sub.failure is not None and "too slow" in sub.failure
        assert hub.subscribers == 0 and hub.slow_disconnects == 1
        assert await sub.next() is None
        assert hub.publish(commit(8)) == 18

    run(main())
