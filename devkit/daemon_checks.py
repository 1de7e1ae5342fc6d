"""What every run of the real daemon must satisfy, checked on what a client and the journal saw.

Shared by the daemon tests, the desktop end-to-end test and the demo model's daemon gate: the WebSocket
protocol's invariants over an event stream, the committed text per utterance (from events or the journal), and
"the daemon committed what was said" within a small number of word errors.
"""

from __future__ import annotations

from collections.abc import Iterable

from devkit.demo_speech import wer
from qasr_live.outputs.journal import JournalEntry

# A streaming commit is final, so a partial that misheard a word keeps it: this many wrong words are allowed
# on top of what offline transcription gets right.
EXTRA_ERRORS = 2


def check_event_stream(events: list[dict]) -> dict[str, list[dict]]:
    """The protocol invariants every run must satisfy; returns the events grouped by utterance."""
    assert events[0]["type"] == "hello" and events[0]["seq"] == 0
    numbered = [e["seq"] for e in events if e["seq"] > 0]
    assert numbered == sorted(set(numbered)), "published seq numbers must strictly increase"
    utterances: dict[str, list[dict]] = {}
    for e in events:
        if "utterance_id" in e and e["type"] != "output":
            utterances.setdefault(e["utterance_id"], []).append(e)
    for uid, evs in utterances.items():
        kinds = [e["type"] for e in evs]
        assert kinds[0] == "utterance_start", (uid, kinds)
        assert kinds.count("utterance_end") <= 1 and ("utterance_end" not in kinds or kinds[-1] == "utterance_end")
        commits = [e for e in evs if e["type"] == "commit"]
        assert [c["idx"] for c in commits] == list(range(len(commits))), "commit idx must count 0, 1, 2, ..."
        revs = [e["rev"] for e in evs if e["type"] == "partial"]
        assert revs == sorted(set(revs)), "partial rev must increase"
        end = evs[-1]
        if end["type"] == "utterance_end" and end["reason"] == "no_speech":
            assert not commits, "a no-speech utterance must not commit text"
    return utterances


def commits_by_utterance(events: list[dict]) -> dict[str, str]:
    """The committed text of each utterance, from the `commit` events a client received."""
    out: dict[str, str] = {}
    for e in events:
        if e["type"] == "commit":
            out[e["utterance_id"]] = out.get(e["utterance_id"], "") + e["text"]
    return out


def journal_by_utterance(entries: Iterable[JournalEntry]) -> dict[str, str]:
    """The committed text of each utterance, from the journal's entries."""
    out: dict[str, str] = {}
    for entry in entries:
        out[entry.utterance_id] = out.get(entry.utterance_id, "") + entry.text
    return out


def assert_heard(said: list[str], committed: list[str]) -> None:
    """The daemon committed what was said (which offline transcription gets right): at most `EXTRA_ERRORS`
    wrong words (a streaming commit is final, so a partial that misheard a word keeps it)."""
    _, errors, words = wer([" ".join(said)], [" ".join(committed)])
    assert errors <= EXTRA_ERRORS, f"{errors}/{words} words wrong: said {said}, committed {committed}"
