"""Delivery: commits go to the typing thread in order, every attempt is published as an ``output`` event, and
``drain()`` returns once everything queued is typed (the daemon awaits it at shutdown)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from qasr_live.config import TypingConfig
from qasr_live.events import CommitEvent, OutputBackend, OutputEvent
from qasr_live.outputs.delivery import Delivery, rules_for
from qasr_live.outputs.journal import Journal, read_entries
from qasr_live.outputs.typing import Attempt, OutputResult
from qasr_live.outputs.typing.rules import Release


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

    def type_commit(
        self, utterance_id: str, text: str, *, newlines: bool = False, scratch: bool = False
    ) -> OutputResult:
        self.typed.append((utterance_id, ("<scratch>" if scratch else "") + text, threading.current_thread().name))
        attempt = Attempt(OutputBackend.PYNPUT, True, None, text, text, 0.0)
        return OutputResult(OutputBackend.PYNPUT, True, None, text, (attempt,))

    def close(self) -> None:
        self.closed = True


def test_commits_are_typed_in_order_and_drain_returns() -> None:
    bus, typist = FakeBus(), FakeTypist()

    async def main() -> None:
        delivery = Delivery(bus, None, typist)  # duck-typed fakes of EventHub and Typist
        for i, (utterance, text) in enumerate([("u1", "hello "), ("u1", "world "), ("u2", "  next")]):
            delivery.commit(CommitEvent(utterance_id=utterance, idx=i if utterance == "u1" else 0, text=text), 0, 1)
            delivery.type(utterance, text)
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


def test_voice_commands_are_journaled_raw_and_typed_and_held_words_go_out_at_the_end(tmp_path) -> None:
    """A command cut in two by the streaming commits still acts; the journal and the commit events carry the
    model's text and what was typed; what the rules still hold when the utterance ends is let out then."""
    bus, typist = FakeBus(), FakeTypist()
    path = tmp_path / "journal.jsonl"
    rules = rules_for(TypingConfig(replacements={"teh": "the"}), "English")

    async def main() -> None:
        with Journal(path) as journal:
            delivery = Delivery(bus, journal, typist, rules)
            commits = [
                ("u1", "Dear John new"),
                ("u1", " paragraph teh plan"),
                ("u2", "scratch that"),
                ("u2", " ok new"),
            ]
            for i, (utterance, text) in enumerate(commits):
                delivery.commit(CommitEvent(utterance_id=utterance, idx=i % 2, text=text), i, i + 1)
                delivery.type(utterance, text)
                if i % 2:
                    delivery.end(utterance)
            await asyncio.wait_for(delivery.drain(), 5.0)
            delivery.close()

    asyncio.run(main())
    assert [t for _, t, _ in typist.typed] == ["Dear John", "\n\nthe plan", "<scratch>", "ok", " new"]
    entries = read_entries(path)
    assert [(e.utterance_id, e.idx, e.text, e.typed, e.scratch) for e in entries] == [
        ("u1", 0, "Dear John new", "Dear John", False),
        ("u1", 1, " paragraph teh plan", "\n\nthe plan", False),
        ("u2", 0, "scratch that", "", True),
        ("u2", 1, " ok new", "ok", False),
        ("u2", 2, "", " new", False),  # held back ("new" could begin "new line"), let out at the end
    ]
    commits = [e for e in bus.events if isinstance(e, CommitEvent)]
    assert [(c.text, c.typed, c.scratch) for c in commits] == [(e.text, e.typed, e.scratch) for e in entries]


def test_a_cancelled_utterance_journals_its_held_words_but_types_nothing(tmp_path) -> None:
    bus, typist = FakeBus(), FakeTypist()

    async def main() -> None:
        delivery = Delivery(bus, None, typist, rules_for(TypingConfig(), None))
        delivery.commit(CommitEvent(utterance_id="u1", idx=0, text="hello scratch"), 0, 1)
        delivery.end("u1", type_it=False)  # push-to-talk cancelled before the key came up: never typed
        await asyncio.wait_for(delivery.drain(), 5.0)
        delivery.close()

    asyncio.run(main())
    assert typist.typed == []
    assert [(c.text, c.typed) for c in bus.events if isinstance(c, CommitEvent)] == [
        ("hello scratch", "hello"),
        ("", " scratch"),
    ]


def test_rules_commands_punctuation_replacements_and_hold_back() -> None:
    rules = rules_for(
        TypingConfig(replacements={"teh": "the", "/colou?r/": "colour", "/(\\d+) percent/": "\\1%"}), None
    )
    feed = rules.feed
    assert feed("a", "hello comma world period") == Release("hello, world.")
    # the model punctuated: punctuation words stay words (auto)
    assert feed("b", "Put a comma here.") == Release("Put a comma here.")
    assert feed("c", "Teh TEH teh color, 5 percent. New line. Next") == Release("The THE the colour, 5%.\nNext")
    # "oops" was never typed: dropped, nothing deleted; later text of the utterance is typed
    assert feed("d", "oops scratch that fine") == Release("fine", scratch=True, delete=False)
    assert feed("d", " then scratch that") == Release("", scratch=True, delete=True)
    # the model's own line breaks and controls never reach the window
    assert feed("e", "one\ntwo\x1b[2J") == Release("one two[2J")
    # only the language's own table with recognition.language set
    german = rules_for(TypingConfig(), "German")
    assert german.feed("f", "Hallo neue Zeile Welt new line") == Release("Hallo\nWelt new line")
    assert german.end("f") == Release("")
    off = rules_for(TypingConfig(voice_commands=False, punctuation_words="off"), None)
    assert off.feed("g", "new line comma") == Release("new line comma")


def test_a_failed_typing_notifies_the_user_and_says_where_the_text_is() -> None:
    class FailingTypist(FakeTypist):
        def type_commit(self, utterance_id: str, text: str, *, newlines: bool = False, scratch: bool = False) -> Any:
            attempts = (
                Attempt(OutputBackend.WTYPE, False, "wtype: virtual keyboard protocol not supported", text, "", 0.0),
                Attempt(OutputBackend.CLIPBOARD, False, "clipboard: the text is on the clipboard, ...", text, "", 0.0),
            )
            return OutputResult(OutputBackend.CLIPBOARD, False, "both failed", text, attempts)

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str]] = []

        def notify(self, summary: str, body: str = "", *, urgency: str = "normal") -> str:
            self.calls.append((summary, body))
            return "dbus"

    bus, notifier = FakeBus(), Recorder()

    async def main() -> None:
        delivery = Delivery(bus, None, FailingTypist(), None, notifier)  # type: ignore[arg-type]
        delivery.commit(CommitEvent(utterance_id="u1", idx=0, text="hello"), 0, 1)
        delivery.type("u1", "hello")
        await asyncio.wait_for(delivery.drain(), 5.0)
        delivery.close()

    asyncio.run(main())
    assert notifier.calls == [
        (
            "Dictated text is on the clipboard",
            "Press Ctrl+V to paste it (no typing route worked: wtype: virtual keyboard protocol not supported)",
        )
    ]
