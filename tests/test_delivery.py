"""Delivery: commits go to the typing thread in order, every attempt is published as an ``output`` event, and
``drain()`` returns once everything queued is typed (the daemon awaits it at shutdown)."""

from __future__ import annotations

import asyncio
import threading

from qasr_live.events import OutputBackend, OutputEvent
from qasr_live.outputs.delivery import Delivery
from qasr_live.outputs.typing import Attempt, OutputResult


class FakeBus:
    def __init__(self) -> None:
        self.events: list[object] = []

    def publish(self, event: object) -> int:
        self.events.append(event)
        return len(self.events)


class FakeTypist:
    def __init__(self) -> None:
        self.typed: list[tuple[str, str, str]] = []
        self.closed = False

    def type_commit(self, utterance_id: str, text: str) -> OutputResult:
        self.typed.append((utterance_id, text, threading.current_thread().name))
        attempt = Attempt(OutputBackend.PYNPUT, True, None, text, text, 0.0)
        return OutputResult(OutputBackend.PYNPUT, True, None, text, (attempt,))

    def close(self) -> None:
        self.closed = True


def test_commits_are_typed_in_order_and_drain_returns() -> None:
    bus, typist = FakeBus(), FakeTypist()

    async def main() -> None:
        delivery = Delivery(bus, None, typist)  # duck-typed fakes of EventHub and Typist
        delivery.type("u1", "hello ")
        delivery.type("u1", "world ")
        delivery.type("u2", "  next")
        await asyncio.wait_for(delivery.drain(), 5.0)
        delivery.close()

    asyncio.run(main())
    # trailing white space waits for more text of the same utterance; a new utterance starts without it
    assert [(u, t) for u, t, _ in typist.typed] == [("u1", "hello"), ("u1", " world"), ("u2", "next")]
    assert all(name.startswith("qasr-typing") for _, _, name in typist.typed)
    outputs = [e for e in bus.events if isinstance(e, OutputEvent)]
    assert [(e.utterance_id, e.text, e.ok) for e in outputs] == [
        ("u1", "hello", True),
        ("u1", " world", True),
        ("u2", "next", True),
    ]
    assert typist.closed
